#!/usr/bin/env bash
# GuardReasoner-VL-Eco on Qwen3-VL-4B: as grpo_qwen3_vl_4b.sh, with the Eco reward (the length gain stops at 500
# characters of output; docs/reward.md). Expected hardware: one node with 8 GPUs of 80 GB.
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL_FAMILY=qwen3_vl EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_eco_qwen3_vl_4b_grpo} \
    launch_grpo gr_vl.reward.preset=gr-vl-eco "$@"
