#!/usr/bin/env bash
# Evaluation as in the paper (§3, Tables 1-3) of a GuardReasoner-VL checkpoint (3B or 7B, -Eco or not):
# `gr-vl eval` answers every benchmark row greedily through vLLM, up to 4096 tokens (the command's defaults, the
# paper's protocol), writes $OUT/predictions.jsonl and scores it: F1 per benchmark and the sample-weighted
# averages in $OUT/report.{md,json,csv}, and two charts. The model size is whatever MODEL_PATH holds.
#   export DATA=data/eval.parquet
#   MODEL_PATH=checkpoints/guardreasoner_vl/gr_vl_3b_grpo/global_step_23/actor/huggingface OUT=runs/gr_vl_3b \
#       bash recipes/eval_qwen2_5_vl.sh --name GR-VL-3B
#   MODEL_PATH=... OUT=runs/gr_vl_eco_3b bash recipes/eval_qwen2_5_vl.sh --name GR-VL-Eco-3B --compare runs/gr_vl_3b
# Expected hardware: one node with 8 GPUs (GPUS=8: eight engines), or a Ray cluster (RAY_ADDRESS, GPUS in all).
# Running the same command again resumes the generation and rewrites the report.
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_eval "$@"
