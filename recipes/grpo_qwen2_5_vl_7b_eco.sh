#!/usr/bin/env bash
# GuardReasoner-VL-Eco-7B: as grpo_qwen2_5_vl_7b.sh, with the Eco reward (gain capped at 500 characters).
# Expected hardware: one node with 8 GPUs of 80 GB, with CPU offload (OFFLOAD=False to turn it off).
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_eco_7b_grpo} OFFLOAD=${OFFLOAD:-True} \
    MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-16384} launch_grpo gr_vl.reward.preset=gr-vl-eco "$@"
