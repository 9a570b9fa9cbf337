#!/usr/bin/env bash
# GuardReasoner-VL-7B: GRPO from the 7B R-SFT checkpoint with the length-aware reward (beta = 1) and the
# dynamic clip. Expected hardware: one node with 8 GPUs of 80 GB; parameters and optimizer state are offloaded
# to CPU (OFFLOAD=False if you have more memory, e.g. 141 GB H200s).
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_7b_grpo} REWARD_PRESET=${REWARD_PRESET:-gr-vl} OFFLOAD=${OFFLOAD:-True} \
    MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-16384} launch_grpo "$@"
