#!/usr/bin/env bash
# R-SFT of Qwen2.5-VL-7B-Instruct on GuardReasoner-VLTrain (the paper's first stage) with verl's own SFT
# trainer; the method is gr_vl_verl/trainer/config/gr_vl_sft.yaml. Expected hardware: one node with 8 GPUs of
# 80 GB (FSDP shards the ~16 bytes/parameter of weights, gradients and AdamW state: ~14 GB per GPU); with fewer
# or smaller GPUs, OFFLOAD=True.
# The last step is saved as a Hugging Face folder: $CKPT_DIR/global_step_<N>/huggingface (the GRPO MODEL_PATH).
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_7b_r_sft} MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-8192} launch_sft "$@"
