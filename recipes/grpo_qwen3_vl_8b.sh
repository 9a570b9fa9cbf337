#!/usr/bin/env bash
# GuardReasoner-VL on Qwen3-VL-8B: as grpo_qwen3_vl_4b.sh from the Qwen3-VL-8B R-SFT model, sized as the 7B.
# Expected hardware: one node with 8 GPUs of 80 GB; parameters and optimizer state are offloaded to CPU
# (OFFLOAD=False with more memory, e.g. H200s).
#   TRAIN_FILES=rl_train.parquet VAL_FILES=rl_val.parquet MODEL_PATH=ckpt/r_sft_qwen3_vl_8b bash recipes/grpo_qwen3_vl_8b.sh
# See recipes/README.md, "Qwen3-VL".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL_FAMILY=qwen3_vl EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_qwen3_vl_8b_grpo} OFFLOAD=${OFFLOAD:-True} \
    MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-16384} launch_grpo "$@"
