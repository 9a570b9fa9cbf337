#!/usr/bin/env bash
# R-SFT of Qwen2.5-VL-3B-Instruct on GuardReasoner-VLTrain (the paper's first stage) with verl's own SFT
# trainer; the method is gr_vl_verl/trainer/config/gr_vl_sft.yaml. Expected hardware: one node with 8 GPUs of
# 80 GB (the paper used 4); 3 epochs of ~123K samples at 192 per step are ~1,920 steps.
#   TRAIN_FILES=sft_train.parquet MODEL_PATH=models/Qwen2.5-VL-3B-Instruct bash recipes/sft_qwen2_5_vl_3b.sh
# The last step is saved as a Hugging Face folder: $CKPT_DIR/global_step_<N>/huggingface (the GRPO MODEL_PATH).
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_3b_r_sft} launch_sft "$@"
