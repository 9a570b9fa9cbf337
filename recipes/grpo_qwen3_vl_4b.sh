#!/usr/bin/env bash
# GuardReasoner-VL on Qwen3-VL-4B: GRPO from the Qwen3-VL-4B R-SFT model with the paper's method
# (gr_vl_verl/trainer/config/gr_vl_trainer.yaml: length-aware reward, beta = 1, dynamic clip); MODEL_FAMILY=qwen3_vl
# replaces the yaml's Qwen2.5-VL image bounds with the paper's RL bounds on Qwen3-VL's 32-pixel grid. Expected
# hardware: one node with 8 GPUs of 80 GB, as the 3B.
#   TRAIN_FILES=rl_train.parquet VAL_FILES=rl_val.parquet MODEL_PATH=ckpt/r_sft_qwen3_vl_4b bash recipes/grpo_qwen3_vl_4b.sh
# The data comes from `gr-vl prep vltrain --model-family qwen3_vl`. See recipes/README.md, "Qwen3-VL".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL_FAMILY=qwen3_vl EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_qwen3_vl_4b_grpo} launch_grpo "$@"
