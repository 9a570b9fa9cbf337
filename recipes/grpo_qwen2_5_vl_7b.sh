#!/usr/bin/env bash
# GuardReasoner-VL-7B: GRPO from the 7B R-SFT model with the length-aware reward (beta = 1) and the dynamic
# clip; the method is gr_vl_verl/trainer/config/gr_vl_trainer.yaml. Expected hardware: one node with 8 GPUs
# of 80 GB; parameters and optimizer state are offloaded to CPU (OFFLOAD=False with more memory, e.g. H200s).
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gr_vl_7b_grpo} OFFLOAD=${OFFLOAD:-True} \
    MAX_TOKEN_LEN_PER_GPU=${MAX_TOKEN_LEN_PER_GPU:-16384} launch_grpo "$@"
