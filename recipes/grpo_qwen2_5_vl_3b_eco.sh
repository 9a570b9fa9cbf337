#!/usr/bin/env bash
# GuardReasoner-VL-Eco-3B: as grpo_qwen2_5_vl_3b.sh, with the Eco reward (the length gain stops at 500
# characters of output, as in the released code; docs/reward.md). Expected hardware: one node with 8 GPUs of 80 GB.
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_eco_3b_grpo} launch_grpo gr_vl.reward.preset=gr-vl-eco "$@"
