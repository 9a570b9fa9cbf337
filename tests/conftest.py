"""Test-wide settings: nothing leaves the machine, caches stay in a temp folder that is removed at the end, and
the session fails if the pytest process started Ray or the work tree gained files."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_cache = tempfile.mkdtemp(prefix="gr_vl_test_cache_")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(_cache, "hf"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_cache, "datasets"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# Hypothesis keeps its example database and caches in ./.hypothesis by default: here, in the temp folder.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(_cache, "hypothesis"))


import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

settings.register_profile(
    "gr_vl", database=DirectoryBasedExampleDatabase(os.path.join(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"], "db"))
)
settings.load_profile("gr_vl")

ROOT = Path(__file__).resolve().parents[1]
#: Folders tests may create in the work tree: caches of Python and of the tools themselves.
_CACHES = (".venv", ".pytest_cache", ".ruff_cache", "__pycache__")


def _is_cache(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    return any(part in _CACHES or part.endswith(".egg-info") for part in parts)


def untracked_paths(root: Path = ROOT) -> set[str] | None:
    """Untracked and ignored files of the work tree, caches left out; None outside a git checkout."""
    try:
        argv = ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "-z", "--", ".", ":!.venv"]
        done = subprocess.run(argv, timeout=120, cwd=root, capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    entries = done.stdout.decode(errors="replace").split("\0")
    return {e[3:] for e in entries if e[:2] in ("??", "!!") and not _is_cache(e[3:])}


def _written_by_tests(path: str) -> bool:
    """Whether a new path can be the suite's doing: an untracked source file (code or docs) that appears
    meanwhile is someone editing the tree while the suite runs, not a test's output."""
    return not path.endswith((".py", ".md"))


@pytest.fixture(scope="session", autouse=True)
def _suite_leaves_nothing_behind():
    """At the end of the session: Ray was never initialised in this process (drivers run in children,
    ``ray_driver.py``), the work tree gained no files (Hydra's ``outputs/``, ``.hypothesis/``, a run's
    folder), and the cache folder above is removed."""
    before = untracked_paths()
    yield
    shutil.rmtree(_cache, ignore_errors=True)
    problems = []
    ray = sys.modules.get("ray")  # only a process that imported Ray can have initialised it
    if ray is not None and ray.is_initialized():
        problems.append("Ray was initialised in the pytest process; run its driver in a child (ray_driver.py)")
    after = untracked_paths()
    new = sorted(p for p in (after or set()) - (before or set()) if _written_by_tests(p))
    if before is not None and after is not None and new:
        problems.append(f"the tests wrote {len(new)} file(s) into the work tree {ROOT}: {new[:20]}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL checkpoint (tokenizer, processor, random weights) built offline, once per run."""
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory):
    """A tiny Qwen3-VL checkpoint (32-pixel grid; docs/models.md) built offline, once per run."""
    from gr_vl_verl.tiny import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


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
