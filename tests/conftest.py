"""Test-wide settings: nothing leaves the machine, caches stay in a temp folder."""

import os
import tempfile

_cache = tempfile.mkdtemp(prefix="gr_vl_test_cache_")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(_cache, "hf"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_cache, "datasets"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL checkpoint (tokenizer, processor, random weights) built offline, once per run."""
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from verl.utils import hf_tokenizer

    return hf_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_verl(tiny_model_dir):
    """(tokenizer, processor) of the tiny model as verl loads them (``hf_tokenizer``, ``hf_processor``)."""
    from verl.utils import hf_processor, hf_tokenizer

    processor = hf_processor(str(tiny_model_dir))
    assert processor is not None, "verl could not build the tiny model's processor"
    return hf_tokenizer(str(tiny_model_dir)), processor


@pytest.fixture(scope="session")
def eval_parquet(tmp_path_factory):
    """The bundled benchmark sample as an eval parquet (`gr-vl prep vltest`), images at the evaluation bounds
    (the sample images are small, so they stay a few tokens)."""
    from data_helpers import VLTEST

    from gr_vl_verl.cli import main

    out = tmp_path_factory.mktemp("vltest")
    argv = ["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset", str(VLTEST / "images"),
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out / "eval.parquet"
