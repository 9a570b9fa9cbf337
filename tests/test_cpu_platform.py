"""The plugin's ``cpu`` platform for verl: selection, what it answers, its adapters and their pin guards."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gr_vl_verl import import_hooks
from gr_vl_verl.cpu import pins, selection, vllm_dist

ROOT = Path(__file__).resolve().parents[1]


# -- pin guards: the one table (gr_vl_verl.cpu.pins) the adapters, `gr-vl check` and a CPU run read ---------------
@pytest.mark.parametrize("pin", pins.all_pins(), ids=lambda p: f"{p.adapter}:{p.module}")
def test_pin_guard_the_installed_package_still_has_each_pinned_line(pin):
    source = import_hooks.module_source(pin.module)
    assert source is not None, pin.module
    assert pin.line in source, f"{pin.module} changed: re-check adapter {pin.adapter!r} for {pin.line!r}"
    assert pins.problem(pin) is None


def test_a_moved_line_is_one_line_naming_adapter_version_and_line():
    from dataclasses import replace

    moved = replace(pins.GLOO_BACKEND, line="backend = 'gone'")
    reason = pins.problem(moved)
    assert reason is not None and "\n" not in reason
    assert f"adapter 'gloo_backend': verl {md.version('verl')} verl.utils.distributed" in reason
    assert "backend = 'gone'" in reason
    assert pins.problem(replace(moved, package="no-such-distribution")) is None  # not installed: nothing to adapt


def test_verl_backend_string_is_still_refused_by_torch():
    """Why the gloo adapter exists: the string verl builds for a cpu platform is invalid in this torch."""
    code = (
        "import torch.distributed as d\n"
        "try:\n    d.init_process_group(backend='cpu:gloo,cpu:gloo', rank=0, world_size=1, init_method='tcp://127.0.0.1:0')\n"
        "except ValueError as e:\n    print('refused', 'Duplicate device type' in str(e))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused True" in proc.stdout, proc.stderr[-2000:]


def config_file(path: Path, base: str, key: str, value: str) -> Path:
    """A user's copy of one of the plugin's configs with ``key`` set (hydra lets only the primary config name a
    search path, so a run's own config is a copy, not a child)."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / "gr_vl_verl" / "trainer" / "config" / f"{base}.yaml")
    OmegaConf.update(config, key, value, force_add=True)
    OmegaConf.save(config, path)
    return path


# -- selection: the run's trainer.device (command line or config) beats the environment -------------------------
def test_the_runs_device_beats_the_environment():
    assert selection.choose("cpu", {})
    assert selection.choose("cpu", {"VERL_PLATFORM": "nvidia"})
    assert selection.choose("cpu", {"VERL_PLATFORM": "cpu"})
    assert not selection.choose("cuda", {})
    assert not selection.choose("cuda", {"VERL_PLATFORM": "nvidia"})
    assert selection.choose(None, {"VERL_PLATFORM": "cpu"})  # a Ray worker: no config, the driver's choice
    assert not selection.choose(None, {})
    with pytest.raises(selection.SelectionError, match="VERL_PLATFORM=cpu is set .* trainer.device=cuda"):
        selection.choose("cuda", {"VERL_PLATFORM": "cpu"})


def test_command_line_device_at_import():
    assert selection.device_from_argv(["main_ppo", "trainer.device=cpu"]) == "cpu"
    assert selection.device_from_argv(["x", "++trainer.device=cpu", "trainer.device=cuda"]) == "cuda"
    assert selection.device_from_argv(["main_ppo", "trainer.n_gpus_per_node=1"]) is None
    assert selection.requested(["main_ppo", "trainer.device=cpu"], {})
    assert selection.requested(["main_ppo"], {"VERL_PLATFORM": "cpu"})
    assert selection.requested(["main_ppo", "trainer.device=cpu"], {"VERL_PLATFORM": "nvidia"})
    assert not selection.requested(["main_ppo", "trainer.device=cuda"], {})
    # a conflict is not decided at import (verl swallows errors there): the entry point refuses it
    assert not selection.requested(["main_ppo", "trainer.device=cuda"], {"VERL_PLATFORM": "cpu"})


def test_device_from_a_composed_config_file_selects_and_a_leftover_environment_is_refused(tmp_path):
    """GRPO: the device in a yaml file (not on the command line) selects; cuda beside VERL_PLATFORM=cpu is
    refused, by the rule and by main_ppo.prepare before anything starts."""
    from hydra import compose, initialize_config_dir

    config_file(tmp_path / "my_grpo.yaml", "gr_vl_trainer", "trainer.device", "cpu")
    with initialize_config_dir(str(tmp_path), version_base=None):
        from_file = compose("my_grpo")
    assert from_file.trainer.device == "cpu" and selection.choose(from_file.trainer.device, {})
    cuda = _compose("cuda")
    with pytest.raises(selection.SelectionError):
        selection.choose(cuda.trainer.device, {"VERL_PLATFORM": "cpu"})
    default = _compose(None)  # verl's default device, cuda
    with pytest.raises(selection.SelectionError):
        selection.choose(default.trainer.device, {"VERL_PLATFORM": "cpu"})


def test_prepare_refuses_a_leftover_verl_platform_beside_cuda(monkeypatch):
    from gr_vl_verl.trainer import main_ppo

    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    with pytest.raises(main_ppo.SettingsError, match="VERL_PLATFORM=cpu is set in the environment but the run says"):
        main_ppo.prepare(_compose("cuda"))
    assert not selection.active()


_PROBE = """
import json, os, sys
import verl
from verl.plugin.platform import get_platform, PlatformRegistry
from verl.utils.device import get_device_id, get_nccl_backend, get_torch_device
p = get_platform()
out = {"platform": type(p).__name__, "registered": "cpu" in PlatformRegistry.registered_names()}
if out["platform"] == "CPUPlatform":
    import torch, ray, ray.runtime_context
    import verl.workers.engine.fsdp.transformer_impl
    from verl.workers.engine.base import EngineRegistry
    from verl.utils.distributed import initialize_global_process_group_ray
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1")
    initialize_global_process_group_ray()
    t = torch.ones(2); torch.distributed.all_reduce(t)
    dev = get_torch_device()
    out.update(
        device_id=str(get_device_id()), backend=get_nccl_backend(), pg=torch.distributed.get_backend(),
        allreduce=t.tolist(), engine=EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
        memory=[dev.memory_reserved(), dev.max_memory_allocated()], name=dev.get_device_name(),
        rng=bool(dev.get_rng_state().numel()), free_total=[x > 0 for x in dev.mem_get_info()],
    )
    torch.distributed.destroy_process_group()
from gr_vl_verl import import_hooks, plugin
out.update(errors=plugin.REGISTRATION_ERRORS, applied=sorted(import_hooks.APPLIED), env=os.environ.get("VERL_PLATFORM"))
print("RESULT " + json.dumps(out))
"""


def _probe(argv_device: str, env: dict[str, str] | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    environ.update(env or {})
    port = str(29500 + os.getpid() % 1000)
    argv = [sys.executable, "-c", _PROBE, f"trainer.device={argv_device}", port]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=environ)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_trainer_device_cpu_selects_the_platform_and_its_adapters_work():
    out = _probe("cpu")
    assert out["platform"] == "CPUPlatform"
    assert out["device_id"] == "cpu" and out["backend"] == "gloo" and out["pg"] == "gloo"
    assert out["allreduce"] == [1.0, 1.0]
    assert out["engine"] == "FSDPEngineWithLMHead"
    assert out["memory"] == [0, 0] and out["name"] == "cpu" and out["rng"] and out["free_total"] == [True, True]
    assert out["errors"] == []
    assert {"gloo_backend", "cpu_engines", "accelerator_ids"} <= set(out["applied"])


def test_platform_is_registered_but_not_chosen_for_cuda():
    """Without trainer.device=cpu no CPU adapter applies (docs/cpu.md lists what is active instead)."""
    out = _probe("cuda")
    assert out["registered"]
    assert out["platform"] != "CPUPlatform"
    assert out["errors"] == []
    assert out["env"] is None
    assert not set(out["applied"]) & {p.adapter for p in pins.CPU_ADAPTER_PINS}


# -- a moved line stops a CPU run before Ray starts ----------------------------------------------------------------
_MOVED_PIN = """
import dataclasses, sys
from gr_vl_verl.cpu import pins
pins.PINS["resource_check"] = dataclasses.replace(pins.PINS["resource_check"], line="node_info.get('GONE')")
import ray
def _no_ray(*args, **kwargs):
    raise SystemExit("RAY STARTED")
ray.init = _no_ray
sys.argv = ["main_ppo", "trainer.device=cpu", "trainer.n_gpus_per_node=1", "hydra.run.dir=" + sys.argv[1]]
from gr_vl_verl.trainer.main_ppo import main
main()
"""


def test_a_moved_pinned_line_stops_a_cpu_run_before_ray_starts(tmp_path):
    """The pin table's entry for one adapter points at a line verl does not have: ``main_ppo`` exits with one
    line naming the adapter, verl's version and the line, before ``ray.init`` (poisoned here) is reached."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    argv = [sys.executable, "-c", _MOVED_PIN, str(tmp_path / "hydra")]
    proc = subprocess.run(argv, timeout=300, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "RAY STARTED" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"gr_vl_verl: adapter 'resource_check': verl {md.version('verl')} verl.single_controller.ray.base no "
        f"longer has the line it replaces: \"node_info.get('GONE')\" ({pins.docs_hint()})"
    ), proc.stderr[-3000:]


_STRICT_ADAPTER = """
import dataclasses
import verl  # the plugin selects the platform from VERL_PLATFORM=cpu, as in a Ray worker
from gr_vl_verl.cpu import pins
pins.PINS["resource_check"] = dataclasses.replace(pins.PINS["resource_check"], line="node_info.get('GONE')")
try:
    import verl.single_controller.ray.base
except pins.PinError as e:
    print("REFUSED", e)
else:
    print("IMPORTED")
"""


def test_an_adapter_that_cannot_apply_fails_the_import_in_a_worker():
    """Where no entry point checks first (a Ray worker), the import of the adapted module fails with the line."""
    env = dict(os.environ, VERL_PLATFORM="cpu")
    proc = subprocess.run([sys.executable, "-c", _STRICT_ADAPTER], capture_output=True, text=True, timeout=300, env=env)
    assert "REFUSED adapter 'resource_check': verl" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "node_info.get('GONE')" in proc.stdout


def test_plugin_imported_before_verl_registers_cleanly():
    """``gr-vl check`` imports the plugin first; the registrations must wait for verl's packages to finish."""
    code = (
        "import gr_vl_verl.plugin as p, verl\n"
        "from verl.plugin.platform import PlatformRegistry\n"
        "import verl.experimental.reward_loop.reward_manager\n"
        "print('RESULT', 'cpu' in PlatformRegistry.registered_names(), p.REGISTRATION_ERRORS)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RESULT True []" in proc.stdout, proc.stdout[-1000:] + proc.stderr[-2000:]


# -- what main_ppo sets on the CPU, and only there ------------------------------------------------------------
def _compose(device: str | None, more: list[str] | None = None):
    from hydra import compose, initialize_config_module

    overrides = [f"trainer.device={device}"] if device else []
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        return compose("gr_vl_trainer", overrides=[*overrides, "trainer.n_gpus_per_node=2", *(more or [])])


def test_cpu_settings_are_applied_and_logged_one_line_each(caplog, monkeypatch):
    from gr_vl_verl.cpu import config as cpu_config
    from gr_vl_verl.cpu.verl_platform import RAY_RESOURCE

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    config = _compose("cpu", ["actor_rollout_ref.rollout.tensor_model_parallel_size=1"])  # verl's default is 2
    with caplog.at_level("WARNING", logger="gr_vl_verl.cpu.config"):
        applied = cpu_config.apply(config)
    assert len([r for r in caplog.records if "gr_vl cpu:" in r.getMessage()]) == len(applied)
    assert config.ray_kwargs.ray_init.resources == {RAY_RESOURCE: 2}
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "cpu"
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VLLM_CPU_KVCACHE_SPACE == vllm_dist.CPU_KVCACHE_GIB == "1"
    assert config.reward.num_workers == 1 and config.actor_rollout_ref.rollout.agent.num_workers == 1
    assert config.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert config.actor_rollout_ref.rollout.enable_sleep_mode is False
    assert config.actor_rollout_ref.rollout.free_cache_engine is False
    # fp32 compute in the actor (and a reference model) and the rollout engine: no bf16 arithmetic on this CPU
    fp32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    from omegaconf import OmegaConf

    for role in ("actor", "ref"):
        assert OmegaConf.to_container(config.actor_rollout_ref[role].fsdp_config.mixed_precision) == fp32
    assert config.actor_rollout_ref.rollout.dtype == "float32"
    # the rollout model in vLLM's engine-core process, which needs the variable in every worker (docs/cpu.md);
    # the dtype goes through verl's own rollout.dtype, not the engine arguments that override it
    engine = OmegaConf.to_container(config.actor_rollout_ref.rollout.engine_kwargs.vllm)
    assert engine == {"skip_mm_profiling": True, "distributed_executor_backend": "uni"}
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VLLM_ENABLE_V1_MULTIPROCESSING == "0"


def test_the_runs_own_rollout_engine_keys_win_and_tensor_parallel_keeps_vllms_executor(monkeypatch):
    from gr_vl_verl.cpu import config as cpu_config

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tp1 = "actor_rollout_ref.rollout.tensor_model_parallel_size=1"
    own = _compose("cpu", [tp1, "+actor_rollout_ref.rollout.engine_kwargs.vllm.skip_mm_profiling=false"])
    cpu_config.apply(own)
    assert own.actor_rollout_ref.rollout.engine_kwargs.vllm.skip_mm_profiling is False
    assert own.actor_rollout_ref.rollout.engine_kwargs.vllm.distributed_executor_backend == "uni"
    tp = _compose("cpu", ["actor_rollout_ref.rollout.tensor_model_parallel_size=2"])
    cpu_config.apply(tp)
    assert "distributed_executor_backend" not in tp.actor_rollout_ref.rollout.engine_kwargs.vllm
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in tp.ray_kwargs.ray_init.runtime_env.env_vars


@pytest.mark.parametrize(
    ("environ", "address", "joins"),
    [
        ({}, None, False),
        ({"RAY_ADDRESS": ""}, None, False),
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, None, True),
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, "auto", True),
        ({"RAY_ADDRESS": "local"}, None, False),
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, "local", False),
        ({}, "10.0.0.1:6379", True),
        ({}, "auto", True),
    ],
)
def test_joining_a_cluster_follows_rays_address_rule(environ, address, joins):
    from omegaconf import OmegaConf

    from gr_vl_verl.cpu import config as cpu_config

    config = OmegaConf.create({"ray_kwargs": {"ray_init": {"address": address}}})
    assert cpu_config.joins_existing_cluster(config, environ) is joins


def test_a_run_joining_a_cluster_leaves_num_cpus_and_resources_to_the_nodes(monkeypatch):
    """Ray refuses ``num_cpus`` and ``resources`` when ``ray.init`` connects to a running cluster."""
    from gr_vl_verl.cpu import config as cpu_config

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    config = _compose("cpu")
    keys = {s.key for s in cpu_config.apply(config)}
    assert not keys & {"ray_kwargs.ray_init.num_cpus", "ray_kwargs.ray_init.resources"}
    assert config.ray_kwargs.ray_init.num_cpus is None and "resources" not in config.ray_kwargs.ray_init
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "cpu"
    monkeypatch.delenv("RAY_ADDRESS")
    assert {"ray_kwargs.ray_init.num_cpus", "ray_kwargs.ray_init.resources"} <= {
        s.key for s in cpu_config.settings(_compose("cpu"))
    }


@pytest.mark.parametrize(("own", "applied"), [(None, False), (True, True), (False, False)])
def test_a_local_cpu_run_starts_ray_without_its_dashboard_unless_the_run_asks(monkeypatch, own, applied):
    """No dashboard processes beside a local CPU run (they take seconds of two cores to start); the run's own
    ``ray_init.include_dashboard`` wins; a run joining a cluster gets no such key (its head decides)."""
    from omegaconf import open_dict

    from gr_vl_verl.cpu import config as cpu_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = _compose("cpu")
    if own is not None:
        with open_dict(config):
            config.ray_kwargs.ray_init.include_dashboard = own
    cpu_config.apply(config)
    assert config.ray_kwargs.ray_init.include_dashboard is applied
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    joining = _compose("cpu")
    cpu_config.apply(joining)
    assert "include_dashboard" not in joining.ray_kwargs.ray_init


def test_a_launch_joining_a_cluster_hands_its_environment_to_rays_workers(monkeypatch):
    """Ray's workers on a cluster started before have their node's environment, not the driver's: what
    ``launch.run`` sets for verl's workers (the metrics file) goes into ``ray_init.runtime_env`` as strings,
    beside the CPU platform's own variables."""
    from hydra import compose, initialize_config_module

    from gr_vl_verl.cpu import config as cpu_config
    from gr_vl_verl.trainer import launch

    argv = [sys.executable, "-m", "gr_vl_verl.trainer.main_ppo", "trainer.device=cpu"]
    environ = {"RAY_ADDRESS": "127.0.0.1:6379", "VERL_FILE_LOGGER_PATH": "/m/it's.jsonl", "HF_HUB_OFFLINE": "1"}
    assert launch.worker_env_overrides(argv, {k: v for k, v in environ.items() if k != "RAY_ADDRESS"}) == []
    assert launch.worker_env_overrides(["torchrun", "-m", "verl.trainer.sft_trainer"], environ) == []
    overrides = launch.worker_env_overrides(argv, environ)
    monkeypatch.setenv("RAY_ADDRESS", environ["RAY_ADDRESS"])
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        config = compose("gr_vl_trainer", overrides=["trainer.device=cpu", *overrides])
    cpu_config.apply(config)
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.VERL_FILE_LOGGER_PATH == "/m/it's.jsonl" and env_vars.HF_HUB_OFFLINE == "1"
    assert env_vars.VERL_PLATFORM == "cpu"


def test_prepare_leaves_a_cuda_config_alone(monkeypatch):
    from omegaconf import OmegaConf

    from gr_vl_verl.trainer import main_ppo

    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    config = _compose("cuda")
    before = OmegaConf.to_container(config)
    main_ppo.prepare(config)
    after = OmegaConf.to_container(config)
    assert after["ray_kwargs"] == before["ray_kwargs"]
    assert after["transfer_queue"] == before["transfer_queue"]
    assert "VERL_PLATFORM" not in os.environ


# -- vLLM's CPU build under the name verl looks up ----------------------------------------------------------
def test_vllm_cpu_build_answers_as_vllm_with_a_cpu_version():
    source = md.version("vllm-cpu")
    assert md.version("vllm") == vllm_dist.local_cpu_version(source) == f"{source}+cpu"
    assert md.metadata("vllm")["Name"] == "vllm"
    assert vllm_dist.vllm_is_cpu_build()
    assert "answered as vllm by the plugin" in vllm_dist.status()


def test_verl_accepts_the_vllm_cpu_build():
    code = "import verl.third_party.vllm as v; print('VERSION', v.vllm_version)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert f"VERSION {md.version('vllm-cpu')}+cpu" in proc.stdout, proc.stderr[-2000:]


# -- verl's text-only Qwen2.5-VL forward under transformers 5 ------------------------------------------------
def test_text_only_batch_goes_through_verls_forward(tiny_model_dir):
    """verl 0.9.1 calls ``.mean()`` on the vision tower's ModelOutput for a text-only batch; the fix unpacks it."""
    import torch
    import verl.models.transformers.qwen2_vl as qwen2_vl
    from transformers import AutoModelForImageTextToText

    import gr_vl_verl.plugin  # noqa: F401 - installs the fix (verl's entry point does the same)

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    inner = model.model
    assert getattr(qwen2_vl._get_input_embeds, "_gr_vl_replaced", False)
    ids = torch.tensor([[5, 6, 7, 8]])
    embeds, _ = qwen2_vl._get_input_embeds(inner, ids)
    assert embeds.shape == (1, 4, inner.config.text_config.hidden_size)
    # the dummy image reaches the vision tower: its parameters get a (zero) gradient, as verl intends
    embeds.sum().backward()
    grads = [p.grad for p in inner.visual.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    with pytest.raises(AttributeError, match="mean"):
        qwen2_vl._get_input_embeds.__wrapped__(inner, ids)


def test_sft_batch_mixing_text_and_image_rows_collates(tiny_verl, tmp_path):
    """verl's own SFT collate, unchanged, on a batch whose first row is text-only: the dataset class that
    ``gr_vl_sft.yaml`` names (``data.custom_cls``), built by verl's ``create_sft_dataset``, gives every row
    ``multi_modal_inputs``; verl's ``MultiTurnSFTDataset`` alone stops with the KeyError."""
    from data_helpers import VLTRAIN
    from hydra import compose, initialize_config_module
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.dataset.dataset_utils import DatasetPadMode, SFTTensorCollator
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from gr_vl_verl.cli import main
    from gr_vl_verl.trainer.sft_dataset import GuardSFTDataset

    argv = ["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(tmp_path), "--formats", "sft",
            "--sft-min-pixels", "784", "--sft-max-pixels", "12544", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    tokenizer, processor = tiny_verl
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        data = compose("gr_vl_sft").data
    assert data.pad_mode == "no_padding"
    parquet = str(tmp_path / "sft_train.parquet")
    dataset = create_sft_dataset(parquet, data, tokenizer, processor)
    assert type(dataset) is GuardSFTDataset
    items = [dataset[i] for i in range(len(dataset))]
    assert all("multi_modal_inputs" in i for i in items)
    text = next(i for i in items if i["multi_modal_inputs"] is None)
    image = next(i for i in items if i["multi_modal_inputs"] is not None)
    collate = SFTTensorCollator(DatasetPadMode.NO_PADDING)
    assert not getattr(SFTTensorCollator.collate_variable_batch, "_gr_vl_replaced", False)  # verl's own
    inputs = collate([text, image])["multi_modal_inputs"].tolist()
    assert inputs[0] is None and "pixel_values" in inputs[1]
    plain = MultiTurnSFTDataset(parquet, tokenizer, data, processor)
    first_text = next(i for i in range(len(plain)) if "multi_modal_inputs" not in plain[i])
    first_image = next(i for i in range(len(plain)) if "multi_modal_inputs" in plain[i])
    with pytest.raises(KeyError, match="multi_modal_inputs"):
        collate([plain[first_text], plain[first_image]])
