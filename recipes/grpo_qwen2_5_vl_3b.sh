#!/usr/bin/env bash
# GuardReasoner-VL-3B: GRPO from the 3B R-SFT checkpoint with the length-aware reward (beta = 1) and the
# dynamic clip. Expected hardware: one node with 8 GPUs of 80 GB (H100/A100); about 23 steps on ~12K samples.
#   TRAIN_FILES=rl_train.parquet VAL_FILES=rl_val.parquet MODEL_PATH=ckpt/r_sft_3b bash recipes/grpo_qwen2_5_vl_3b.sh
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_3b_grpo} REWARD_PRESET=${REWARD_PRESET:-gr-vl} launch_grpo "$@"
