#!/usr/bin/env bash
# Hard-sample mining (the paper's rejection sampling, §2.3.1) with the 3B or 7B R-SFT model: `gr-vl mine`
# generates 4 answers per training row through vLLM (temperature 1.0, top_p 0.95, up to 4096 tokens: the
# command's defaults, the paper's values), keeps the rows with no right answer, draws at most 12,000 of them and
# splits them 80/20 (seed 42) into $OUT/rl_train.parquet and $OUT/rl_val.parquet. The model size is whatever
# MODEL_PATH holds; nothing else differs between 3B and 7B (either fits one 80 GB GPU per engine).
#   export MODEL_PATH=checkpoints/guardreasoner_vl/gr_vl_3b_r_sft/global_step_1923/huggingface
#   DATA=data/rl_train.parquet OUT=data/mined bash recipes/mine_qwen2_5_vl.sh
# Expected hardware: one node with 8 GPUs (GPUS=8: eight engines), or a Ray cluster (RAY_ADDRESS, GPUS in all).
# Answers go to $OUT/generations/ shard by shard: run the same command again to resume.
# See recipes/README.md for every variable and its default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_mine "$@"
