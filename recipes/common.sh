#!/usr/bin/env bash
# Shared launchers for the GuardReasoner-VL recipes (sourced by recipes/{sft,mine,grpo,eval}_*.sh; not run
# directly).
#
# The method lives in one place per stage: yaml for training (gr_vl_verl/trainer/config/gr_vl_sft.yaml for
# R-SFT, gr_vl_trainer.yaml for GRPO), the defaults of the `gr-vl` commands for mining and evaluation. The
# scripts add only paths, hardware (GPUs, nodes, tensor parallelism, memory, offload, token budgets) and run
# bookkeeping. Every variable below can be set from the environment; extra arguments win over everything else:
# hydra overrides for verl (e.g. `actor_rollout_ref.rollout.n=8`), flags for `gr-vl` (e.g. `--batch-size 256`).
#
# Dry run: GR_VL_DRY_RUN=1 starts nothing. The training launchers print the overrides, one per line, and the
# command on stderr; the `gr-vl` launchers print the whole command line, shell-quoted, on stdout.

_gr_vl_fail() {
    echo "error: $*" >&2
    exit 2
}

_gr_vl_require_set() {  # name, what it is
    [[ -n "${!1:-}" ]] || _gr_vl_fail "$1 is not set: export $1=<$2>"
}

_gr_vl_require_path() {  # name, what it is
    local name=$1 what=$2 value=${!1:-}
    _gr_vl_require_set "$name" "$what"
    local item
    IFS=',' read -r -a _items <<< "$value"
    for item in "${_items[@]}"; do
        [[ -e "$item" ]] || _gr_vl_fail "$name: '$item' does not exist ($what)"
    done
}

_gr_vl_hydra_list() {  # comma-separated paths -> hydra list literal
    local out="" item
    IFS=',' read -r -a _items <<< "$1"
    for item in "${_items[@]}"; do out+="${out:+,}'$item'"; done
    printf '[%s]' "$out"
}

# The method's settings moved from environment variables to the yaml; say so rather than ignore them.
_gr_vl_moved_variables() {
    local var key
    for var in TRAIN_BATCH_SIZE:data.train_batch_size PPO_MINI_BATCH_SIZE:actor_rollout_ref.actor.ppo_mini_batch_size \
        ROLLOUT_N:actor_rollout_ref.rollout.n TEMPERATURE:actor_rollout_ref.rollout.temperature \
        LR:actor_rollout_ref.actor.optim.lr WEIGHT_DECAY:actor_rollout_ref.actor.optim.weight_decay \
        MAX_PROMPT_LENGTH:data.max_prompt_length MAX_RESPONSE_LENGTH:data.max_response_length \
        TOTAL_EPOCHS:trainer.total_epochs CLIP_SCHEDULE:gr_vl.clip.kind \
        CLIP_EPS:actor_rollout_ref.actor.clip_ratio_low/high REWARD_PRESET:gr_vl.reward.preset; do
        key=${var#*:}
        var=${var%%:*}
        if [[ -n "${!var:-}" ]]; then
            echo "warning: $var is no longer read (the method is in gr_vl_trainer.yaml); pass $key=... as an argument" >&2
        fi
    done
}

_gr_vl_run() {  # name of the command array, name of the overrides array, extra arguments (hydra overrides)
    local -n _gr_vl_cmd=$1 _gr_vl_ovr=$2
    shift 2
    if [[ "${GR_VL_DRY_RUN:-0}" == 1 ]]; then
        printf '%s\n' "${_gr_vl_ovr[@]}" "$@"
        echo "command: ${_gr_vl_cmd[*]}" >&2
        exit 0
    fi
    exec "${_gr_vl_cmd[@]}" "${_gr_vl_ovr[@]}" "$@"
}

# verl's `file` logger writes one JSON line per step to $VERL_FILE_LOGGER_PATH, opened with "wb": each launch gets
# its own file beside the checkpoints (metrics_<UTC time>.jsonl), so a resumed run keeps the earlier steps and
# `gr-vl curves $CKPT_DIR` draws them all.
_gr_vl_metrics_file() {  # checkpoint folder
    if [[ -z "${VERL_FILE_LOGGER_PATH:-}" ]]; then
        export VERL_FILE_LOGGER_PATH="$1/metrics_$(date -u +%Y%m%dT%H%M%SZ).jsonl"
        [[ "${GR_VL_DRY_RUN:-0}" == 1 ]] || mkdir -p "$1"
    fi
    [[ "${GR_VL_DRY_RUN:-0}" != 1 ]] || echo "metrics: $VERL_FILE_LOGGER_PATH" >&2
}

# Model family (MODEL_FAMILY; the Qwen3-VL recipes set qwen3_vl). The paper's image bounds are pixel areas on
# Qwen2.5-VL's 28-pixel grid; another family gets them converted to its own grid (the same number of vision tokens
# per image) by gr_vl_verl.models.families, the one table of them, so no number is written here twice. Unset: the
# yaml's bounds (GRPO) and the processor's own (R-SFT), the paper's setting.
_gr_vl_family_pixels() {  # family, stage (rl, sft, eval) -> "MIN MAX" on stdout
    "${PYTHON:-python3}" -c 'import sys
from gr_vl_verl.models.families import UnknownModelFamily, get_family
try:
    print(*get_family(sys.argv[1]).pixels(sys.argv[2]))
except UnknownModelFamily as e:
    sys.exit(f"error: MODEL_FAMILY: {e}")' "$1" "$2" ||
        _gr_vl_fail "MODEL_FAMILY=$1: ${PYTHON:-python3} could not read its $2 pixel bounds (gr_vl_verl.models.families)"
}

# LoRA (LORA_RANK > 0; unset or 0: every weight trains, the paper's setting), through verl's own LoRA: peft wraps
# the actor (R-SFT: the model), only the adapters train, and the GRPO rollout serves the adapter to vLLM (verl
# starts vLLM with LoRA enabled and loads the new adapter after each update). LORA_ALPHA defaults to twice the
# rank; LORA_TARGETS to all-linear; LORA_EXCLUDE, a regex of module names peft skips, to the vision tower
# (.*visual.*), so the image encoder stays as the base model has it (LORA_EXCLUDE=none adapts it too). A LoRA run
# usually wants a larger learning rate than full fine-tuning: pass it as an override. `gr-vl merge-lora` turns a
# checkpoint into a plain model folder (docs/lora.md).
_gr_vl_lora() {  # name of the overrides array, key prefix (model. or actor_rollout_ref.model.)
    local -n _gr_vl_lora_ovr=$1
    local prefix=$2 rank=${LORA_RANK:-0}
    [[ "$rank" =~ ^[0-9]+$ ]] || _gr_vl_fail "LORA_RANK must be a non-negative integer (0: no LoRA), got '$rank'"
    ((rank > 0)) || return 0
    local alpha=${LORA_ALPHA:-$((2 * rank))} targets=${LORA_TARGETS:-all-linear} exclude=${LORA_EXCLUDE:-.*visual.*}
    [[ "$alpha" =~ ^[1-9][0-9]*$ ]] || _gr_vl_fail "LORA_ALPHA must be a positive integer, got '$alpha'"
    [[ "$targets" =~ ^[A-Za-z0-9_.,-]+$ ]] || _gr_vl_fail "LORA_TARGETS: module names, comma-separated, or all-linear; got '$targets'"
    [[ "$targets" == all-linear ]] || targets="[$targets]"
    _gr_vl_lora_ovr+=("${prefix}lora_rank=$rank" "${prefix}lora_alpha=$alpha" "${prefix}target_modules=$targets")
    if [[ "$exclude" == none ]]; then
        _gr_vl_lora_ovr+=("${prefix}exclude_modules=null")
    else
        _gr_vl_lora_ovr+=("${prefix}exclude_modules='$exclude'")
    fi
}

# GRPO (stage 5): python -m gr_vl_verl.trainer.main_ppo with gr_vl_trainer.yaml.
#   Required: TRAIN_FILES, VAL_FILES (RL parquet from `gr-vl prep` / `gr-vl augment`), MODEL_PATH (the R-SFT model
#   as a Hugging Face folder). Extra arguments: hydra overrides.
launch_grpo() {
    _gr_vl_require_path TRAIN_FILES "training parquet file(s), comma-separated"
    _gr_vl_require_path VAL_FILES "validation parquet file(s), comma-separated"
    _gr_vl_require_path MODEL_PATH "the R-SFT model directory"
    _gr_vl_moved_variables

    # Hardware
    local nnodes=${NNODES:-1} gpus=${GPUS_PER_NODE:-8}
    local rollout_tp=${ROLLOUT_TP:-2} gpu_mem=${GPU_MEMORY_UTILIZATION:-0.6}
    local offload=${OFFLOAD:-False} max_tokens=${MAX_TOKEN_LEN_PER_GPU:-24576}
    # Run bookkeeping
    local project=${PROJECT_NAME:-guardreasoner_vl} experiment=${EXPERIMENT_NAME:-gr_vl_grpo}
    local ckpt_dir=${CKPT_DIR:-checkpoints/$project/$experiment}
    local logger=${LOGGER:-'["console","tensorboard","file"]'}
    local use_v1=${USE_V1:-True}

    local command=("${PYTHON:-python3}" -m gr_vl_verl.trainer.main_ppo)
    local overrides=(
        "data.train_files=$(_gr_vl_hydra_list "$TRAIN_FILES")"
        "data.val_files=$(_gr_vl_hydra_list "$VAL_FILES")"
        "actor_rollout_ref.model.path=$MODEL_PATH"
        actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$max_tokens"
        actor_rollout_ref.actor.fsdp_config.param_offload="$offload"
        actor_rollout_ref.actor.fsdp_config.optimizer_offload="$offload"
        actor_rollout_ref.rollout.tensor_model_parallel_size="$rollout_tp"
        actor_rollout_ref.rollout.gpu_memory_utilization="$gpu_mem"
        trainer.nnodes="$nnodes"
        trainer.n_gpus_per_node="$gpus"
        trainer.use_v1="$use_v1"
        "trainer.logger=$logger"
        trainer.project_name="$project"
        trainer.experiment_name="$experiment"
        "trainer.default_local_dir=$ckpt_dir"
        trainer.val_before_train=True
        trainer.save_freq=5
        # verl's actor default is sharded state only; hf_model adds global_step_<N>/actor/huggingface with the
        # weights, the folder evaluation loads (without it that folder has config and tokenizer, no weights)
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"
        trainer.test_freq=5
    )
    if [[ -n "${MODEL_FAMILY:-}" ]]; then
        # verl hands data.mm_processor_kwargs to the processor (dataset filter, rollout prompts, vLLM)
        local pixels
        pixels=$(_gr_vl_family_pixels "$MODEL_FAMILY" rl) || exit 2
        overrides+=(data.mm_processor_kwargs.min_pixels="${pixels% *}" data.mm_processor_kwargs.max_pixels="${pixels#* }")
    fi
    _gr_vl_lora overrides actor_rollout_ref.model.
    _gr_vl_metrics_file "$ckpt_dir"
    _gr_vl_run command overrides "$@"
}

# R-SFT (stage 2): verl's own SFT trainer under torchrun, pointed at gr_vl_sft.yaml.
#   Required: TRAIN_FILES (SFT parquet from `gr-vl prep`), MODEL_PATH (Qwen2.5-VL-*-Instruct, a local folder).
#   Optional: VAL_FILES. Extra arguments: hydra overrides.
launch_sft() {
    _gr_vl_require_path TRAIN_FILES "SFT parquet file(s), comma-separated"
    _gr_vl_require_path MODEL_PATH "the base model directory (Qwen2.5-VL-*-Instruct)"
    [[ -z "${VAL_FILES:-}" ]] || _gr_vl_require_path VAL_FILES "validation SFT parquet file(s), comma-separated"

    # Hardware
    local nnodes=${NNODES:-1} gpus=${GPUS_PER_NODE:-8}
    local offload=${OFFLOAD:-False} max_tokens=${MAX_TOKEN_LEN_PER_GPU:-16384}
    # Run bookkeeping
    local project=${PROJECT_NAME:-guardreasoner_vl} experiment=${EXPERIMENT_NAME:-gr_vl_r_sft}
    local ckpt_dir=${CKPT_DIR:-checkpoints/$project/$experiment}
    local logger=${LOGGER:-'["console","tensorboard","file"]'}

    local val=null
    [[ -z "${VAL_FILES:-}" ]] || val=$(_gr_vl_hydra_list "$VAL_FILES")
    # torchrun, through the same interpreter as the GRPO recipes
    local command=("${PYTHON:-python3}" -m torch.distributed.run --nnodes="$nnodes" --nproc_per_node="$gpus")
    if ((nnodes > 1)); then
        [[ -n "${MASTER_ADDR:-}" ]] || _gr_vl_fail "NNODES=$nnodes needs MASTER_ADDR (and NODE_RANK on each node)"
        command+=(--node_rank="${NODE_RANK:-0}" --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}")
    else
        command+=(--standalone)
    fi
    command+=(-m verl.trainer.sft_trainer --config-path=pkg://gr_vl_verl.trainer.config --config-name=gr_vl_sft)
    local overrides=(
        "data.train_files=$(_gr_vl_hydra_list "$TRAIN_FILES")"
        "data.val_files=$val"
        "model.path=$MODEL_PATH"
        data.max_token_len_per_gpu="$max_tokens"
        engine.param_offload="$offload"
        engine.optimizer_offload="$offload"
        trainer.nnodes="$nnodes"
        trainer.n_gpus_per_node="$gpus"
        "trainer.logger=$logger"
        trainer.project_name="$project"
        trainer.experiment_name="$experiment"
        "trainer.default_local_dir=$ckpt_dir"
    )
    if [[ -n "${MODEL_FAMILY:-}" ]]; then
        # verl's SFT dataset has no mm_processor_kwargs: it passes data.apply_chat_template_kwargs to the
        # processor's chat template call, which hands min_pixels/max_pixels on to the image processor (without
        # them a Qwen3-VL checkpoint's own minimum, 65,536 pixels, would scale the small SFT images up). Flat keys:
        # transformers 5.10 drops a processor_kwargs dict once verl adds enable_thinking beside it.
        # (++: verl's yaml has an empty, closed dict there)
        local pixels
        pixels=$(_gr_vl_family_pixels "$MODEL_FAMILY" sft) || exit 2
        overrides+=(++data.apply_chat_template_kwargs.min_pixels="${pixels% *}"
            ++data.apply_chat_template_kwargs.max_pixels="${pixels#* }")
    fi
    _gr_vl_lora overrides model.
    _gr_vl_metrics_file "$ckpt_dir"
    _gr_vl_run command overrides "$@"
}

# ---- gr-vl commands: hard-sample mining (stage 3) and evaluation (stage 6) ------------------------------------
# The method is the commands' own defaults, so the scripts repeat none of it: `gr-vl mine` generates k = 4
# answers per row at temperature 1.0, top_p 0.95, up to 4096 tokens (seed 42), keeps the rows with no right
# answer and draws at most 12,000 of them, 80/20 into rl_train / rl_val; `gr-vl eval` decodes greedily, up to
# 4096 tokens. The scripts add the paths, the vLLM backend and the hardware. Extra arguments are `gr-vl` flags
# placed after the script's, so they win (argparse keeps the last value; a second --engine-kwargs replaces the
# whole object).

_gr_vl_positive_int() {  # name, value, what it is
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || _gr_vl_fail "$1 must be a positive integer ($3), got '$2'"
}

_gr_vl_require_file() {  # name, what it is: one existing path (no comma-separated list)
    _gr_vl_require_path "$1" "$2"
    [[ "${!1}" != *,* ]] || _gr_vl_fail "$1 takes one path, got '${!1}' ($2)"
}

_gr_vl_require_out() {  # name, what it is: a folder, created if missing
    _gr_vl_require_set "$1" "$2"
    [[ ! -e "${!1}" || -d "${!1}" ]] || _gr_vl_fail "$1: '${!1}' exists and is not a folder ($2)"
}

# vLLM on the GPUs of this node or of the Ray cluster at RAY_ADDRESS: one engine per TP GPUs.
_gr_vl_generation_flags() {  # name of the command array to extend
    local -n _gr_vl_flags=$1
    local gpus=${GPUS:-8} tp=${TP:-1} engine=""
    _gr_vl_positive_int GPUS "$gpus" "GPUs to use, on this node or in all the Ray cluster"
    _gr_vl_positive_int TP "$tp" "vLLM tensor parallelism per engine"
    ((gpus % tp == 0)) || _gr_vl_fail "TP=$tp does not divide GPUS=$gpus (each engine takes TP GPUs)"
    if [[ -n "${GPU_MEMORY_UTILIZATION:-}" ]]; then
        [[ "$GPU_MEMORY_UTILIZATION" =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0+)?)$ ]] || _gr_vl_fail \
            "GPU_MEMORY_UTILIZATION must be in (0, 1] (vLLM's share of each GPU), got '$GPU_MEMORY_UTILIZATION'"
        engine+="\"gpu_memory_utilization\": ${GPU_MEMORY_UTILIZATION/#./0.}"
    fi
    if [[ -n "${MAX_MODEL_LEN:-}" ]]; then
        _gr_vl_positive_int MAX_MODEL_LEN "$MAX_MODEL_LEN" "vLLM's context: prompt + answer tokens"
        engine+="${engine:+, }\"max_model_len\": $MAX_MODEL_LEN"
    fi
    _gr_vl_flags+=(--backend vllm --concurrency $((gpus / tp)) --tensor-parallel-size "$tp")
    [[ -z "$engine" ]] || _gr_vl_flags+=(--engine-kwargs "{$engine}")
    [[ -z "${RAY_ADDRESS:-}" ]] || _gr_vl_flags+=(--ray-address "$RAY_ADDRESS")
}

_gr_vl_quote() {  # words -> one shell line (quoted only where needed)
    local word out=()
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
    done
    printf '%s\n' "${out[*]}"
}

_gr_vl_exec() {  # name of the command array, extra arguments (appended)
    local -n _gr_vl_argv=$1
    shift
    local argv=("${_gr_vl_argv[@]}" "$@")
    if [[ "${GR_VL_DRY_RUN:-0}" == 1 ]]; then
        _gr_vl_quote "${argv[@]}"
        exit 0
    fi
    exec "${argv[@]}"
}

# Mining (stage 3): gr-vl mine --model, which generates the k answers into $OUT/generations (resumable) and
# then selects.
#   Required: DATA (the RL parquet of the whole training corpus, from `gr-vl prep`), MODEL_PATH (the R-SFT model
#   as a Hugging Face folder), OUT (output folder). Extra arguments: gr-vl mine flags.
launch_mine() {
    _gr_vl_require_file DATA "the RL parquet to mine: rl_train.parquet from gr-vl prep"
    _gr_vl_require_path MODEL_PATH "the R-SFT model as a Hugging Face folder"
    _gr_vl_require_out OUT "output folder for rl_train.parquet, rl_val.parquet and generations/"
    local command=("${PYTHON:-python3}" -m gr_vl_verl.cli mine --data "$DATA" --model "$MODEL_PATH" --out "$OUT")
    _gr_vl_generation_flags command
    _gr_vl_exec command "$@"
}

# Evaluation (stage 6): gr-vl eval, greedy answers on the benchmarks, predictions and the F1 report in $OUT.
#   Required: DATA (eval.parquet from `gr-vl prep vltest`), MODEL_PATH (the model to evaluate, a Hugging Face
#   folder), OUT (run folder; its name is the run's name unless --name is given). Extra arguments: gr-vl eval
#   flags (--name, --compare, --mode).
launch_eval() {
    _gr_vl_require_file DATA "the eval parquet: eval.parquet from gr-vl prep vltest"
    _gr_vl_require_path MODEL_PATH "the model to evaluate, a Hugging Face folder"
    _gr_vl_require_out OUT "run folder for generations/, predictions.jsonl and the report"
    local command=("${PYTHON:-python3}" -m gr_vl_verl.cli eval --data "$DATA" --model "$MODEL_PATH" --out "$OUT")
    _gr_vl_generation_flags command
    _gr_vl_exec command "$@"
}
