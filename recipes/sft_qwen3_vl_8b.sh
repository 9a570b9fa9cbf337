#!/usr/bin/env bash
# R-SFT of Qwen3-VL-8B-Instruct on GuardReasoner-VLTrain: as sft_qwen3_vl_4b.sh, sized as the 7B. Expected
# hardware: one node with 8 GPUs of 80 GB (FSDP shards the ~16 bytes/parameter of weights, gradients and AdamW
# state: ~18 GB per GPU for 8.8B parameters); with fewer or smaller GPUs, OFFLOAD=True.
#   TRAIN_FILES=sft_train.parquet MODEL_PATH=models/Qwen3-VL-8B-Instruct bash recipes/sft_qwen3_vl_8b.sh
# The data comes from `gr-vl prep vltrain --model-family qwen3_vl`. See recipes/README.md, "Qwen3-VL".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL_FAMILY=qwen3_vl EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_qwen3_vl_8b_r_sft} \
    MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-8192} launch_sft "$@"
