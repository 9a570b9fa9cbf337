#!/usr/bin/env bash
# R-SFT of Qwen3-VL-4B-Instruct on GuardReasoner-VLTrain, the paper's first stage on a newer base model: the
# method is gr_vl_verl/trainer/config/gr_vl_sft.yaml as for Qwen2.5-VL; MODEL_FAMILY=qwen3_vl puts the paper's
# SFT image bounds on Qwen3-VL's 32-pixel grid (recipes/README.md, "Qwen3-VL"). Expected hardware: one node with
# 8 GPUs of 80 GB, as the 3B.
#   TRAIN_FILES=sft_train.parquet MODEL_PATH=models/Qwen3-VL-4B-Instruct bash recipes/sft_qwen3_vl_4b.sh
# The data comes from `gr-vl prep vltrain --model-family qwen3_vl`. The last step is saved as a Hugging Face
# folder: $CKPT_DIR/global_step_<N>/huggingface (the GRPO MODEL_PATH).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL_FAMILY=qwen3_vl EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_qwen3_vl_4b_r_sft} launch_sft "$@"
