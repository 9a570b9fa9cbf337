#!/usr/bin/env bash
# Shared GRPO launch for GuardReasoner-VL (sourced by recipes/grpo_*.sh; not run directly).
#
# Defaults are the paper's RL hyper-parameters (method.md §6): GRPO without KL, n = 16 rollouts at
# temperature 1.2, 512 prompts per step, AdamW lr 1e-6 / wd 1e-2, prompt and response up to 3072 tokens, one
# epoch, dynamic clipping from eps = 0.2 (linear decay). Mini-batch 256 prompts (the paper's actor batch), so
# each step makes 2 updates and the clip range has something to clip. Each recipe states only its
# differences; every variable below can be overridden from the environment, and any extra arguments are
# passed to verl as hydra overrides (they win over the defaults).
#
# Required:  TRAIN_FILES, VAL_FILES (RL parquet from `gr-vl prep`/`gr-vl augment`), MODEL_PATH (R-SFT checkpoint)
# Dry run:   GR_VL_DRY_RUN=1 prints the overrides, one per line, and starts nothing.

_gr_vl_fail() {
    echo "error: $*" >&2
    exit 2
}

_gr_vl_require_path() {  # name, what it is
    local name=$1 what=$2 value=${!1:-}
    [[ -n "$value" ]] || _gr_vl_fail "$name is not set: export $name=<$what>"
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

launch_grpo() {
    _gr_vl_require_path TRAIN_FILES "training parquet file(s), comma-separated"
    _gr_vl_require_path VAL_FILES "validation parquet file(s), comma-separated"
    _gr_vl_require_path MODEL_PATH "the R-SFT model directory"

    # Hardware
    local nnodes=${NNODES:-1} gpus=${GPUS_PER_NODE:-8}
    local rollout_tp=${ROLLOUT_TP:-2} gpu_mem=${GPU_MEMORY_UTILIZATION:-0.6}
    local offload=${OFFLOAD:-False} max_tokens=${MAX_TOKEN_LEN_PER_GPU:-24576}
    # Method (paper A.5.2)
    local batch=${TRAIN_BATCH_SIZE:-512} mini=${PPO_MINI_BATCH_SIZE:-256} n=${ROLLOUT_N:-16}
    local temperature=${TEMPERATURE:-1.2} lr=${LR:-1e-6} wd=${WEIGHT_DECAY:-1e-2}
    local max_prompt=${MAX_PROMPT_LENGTH:-3072} max_response=${MAX_RESPONSE_LENGTH:-3072}
    local epochs=${TOTAL_EPOCHS:-1} clip_kind=${CLIP_SCHEDULE:-linear} clip_eps=${CLIP_EPS:-0.2}
    local preset=${REWARD_PRESET:-gr-vl}
    # Run bookkeeping
    local project=${PROJECT_NAME:-guardreasoner_vl} experiment=${EXPERIMENT_NAME:-gr_vl_grpo}
    local ckpt_dir=${CKPT_DIR:-checkpoints/$project/$experiment}
    local logger=${LOGGER:-'["console","tensorboard"]'}
    local use_v1=${USE_V1:-True}

    local overrides=(
        algorithm.adv_estimator=grpo
        algorithm.norm_adv_by_std_in_grpo=True
        algorithm.use_kl_in_reward=False
        "data.train_files=$(_gr_vl_hydra_list "$TRAIN_FILES")"
        "data.val_files=$(_gr_vl_hydra_list "$VAL_FILES")"
        data.prompt_key=prompt
        data.image_key=images
        data.train_batch_size="$batch"
        data.max_prompt_length="$max_prompt"
        data.max_response_length="$max_response"
        data.filter_overlong_prompts=True
        data.truncation=error
        "actor_rollout_ref.model.path=$MODEL_PATH"
        actor_rollout_ref.model.use_remove_padding=True
        actor_rollout_ref.model.enable_gradient_checkpointing=True
        actor_rollout_ref.model.use_fused_kernels=True
        actor_rollout_ref.actor.strategy=fsdp2
        actor_rollout_ref.actor.optim.lr="$lr"
        actor_rollout_ref.actor.optim.weight_decay="$wd"
        actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0
        actor_rollout_ref.actor.optim.clip_grad=1.0
        actor_rollout_ref.actor.ppo_mini_batch_size="$mini"
        actor_rollout_ref.actor.ppo_epochs=1
        actor_rollout_ref.actor.use_dynamic_bsz=True
        actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$max_tokens"
        actor_rollout_ref.actor.loss_agg_mode=token-mean
        actor_rollout_ref.actor.use_kl_loss=False
        actor_rollout_ref.actor.kl_loss_coef=0.0
        actor_rollout_ref.actor.entropy_coeff=0
        actor_rollout_ref.actor.clip_ratio_low="$clip_eps"
        actor_rollout_ref.actor.clip_ratio_high="$clip_eps"
        actor_rollout_ref.actor.fsdp_config.param_offload="$offload"
        actor_rollout_ref.actor.fsdp_config.optimizer_offload="$offload"
        actor_rollout_ref.rollout.name=vllm
        actor_rollout_ref.rollout.tensor_model_parallel_size="$rollout_tp"
        actor_rollout_ref.rollout.gpu_memory_utilization="$gpu_mem"
        actor_rollout_ref.rollout.n="$n"
        actor_rollout_ref.rollout.temperature="$temperature"
        actor_rollout_ref.rollout.top_p=1.0
        actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
        actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu="$max_tokens"
        actor_rollout_ref.rollout.multi_stage_wake_up=True
        actor_rollout_ref.rollout.enable_chunked_prefill=False
        actor_rollout_ref.rollout.enforce_eager=False
        actor_rollout_ref.rollout.free_cache_engine=True
        actor_rollout_ref.rollout.val_kwargs.do_sample=True
        actor_rollout_ref.rollout.val_kwargs.temperature=1.0
        actor_rollout_ref.rollout.val_kwargs.top_p=1.0
        actor_rollout_ref.rollout.val_kwargs.n=1
        gr_vl.clip.kind="$clip_kind"
        gr_vl.reward.preset="$preset"
        trainer.use_v1="$use_v1"
        "trainer.logger=$logger"
        trainer.project_name="$project"
        trainer.experiment_name="$experiment"
        "trainer.default_local_dir=$ckpt_dir"
        trainer.nnodes="$nnodes"
        trainer.n_gpus_per_node="$gpus"
        trainer.total_epochs="$epochs"
        trainer.val_before_train=True
        trainer.save_freq=5
        trainer.test_freq=5
    )

    if [[ "${GR_VL_DRY_RUN:-0}" == 1 ]]; then
        printf '%s\n' "${overrides[@]}" "$@"
        return 0
    fi
    exec "${PYTHON:-python3}" -m gr_vl_verl.trainer.main_ppo "${overrides[@]}" "$@"
}
