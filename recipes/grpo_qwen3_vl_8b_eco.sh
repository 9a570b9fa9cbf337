#!/usr/bin/env bash
# GuardReasoner-VL-Eco on Qwen3-VL-8B: as grpo_qwen3_vl_8b.sh, with the Eco reward (gain capped at 500
# characters). Expected hardware: one node with 8 GPUs of 80 GB, with CPU offload (OFFLOAD=False to turn it off).
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL_FAMILY=qwen3_vl EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_eco_qwen3_vl_8b_grpo} OFFLOAD=${OFFLOAD:-True} \
    MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-16384} launch_grpo gr_vl.reward.preset=gr-vl-eco "$@"
