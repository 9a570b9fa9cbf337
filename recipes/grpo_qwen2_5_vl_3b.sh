#!/usr/bin/env bash
# GuardReasoner-VL-3B: GRPO from the 3B R-SFT model with the length-aware reward (beta = 1) and the dynamic
# clip; the method is gr_vl_verl/trainer/config/gr_vl_trainer.yaml. Expected hardware: one node with 8 GPUs of
# 80 GB (H100/A100); about 23 steps on ~12K samples.
#   TRAIN_FILES=rl_train.parquet VAL_FILES=rl_val.parquet MODEL_PATH=ckpt/r_sft_3b bash recipes/grpo_qwen2_5_vl_3b.sh
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_3b_grpo} launch_grpo "$@"
