"""`gr-vl generate`: prompts built as verl builds them, seeded engines, the Ray Data pipeline for real (two CPU
actors, the transformers backend, the tiny Qwen2.5-VL), resume, and errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import VLTEST, VLTRAIN

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.schemas import RL_SCHEMA, row_id
from gr_vl_verl.generation import (
    FolderMismatch,
    GenerationConfig,
    generate,
    sample_seed,
)
from gr_vl_verl.generation import shards as sh
from gr_vl_verl.generation.engines import (
    vllm_engine_kwargs,
    vllm_prompt,
    vllm_sampling_kwargs,
)
from gr_vl_verl.generation.prompts import Request, RowError, build_request, decode_images, image_messages

MAX_TOKENS = 4
SHARD = 12  # the 34 sample rows make shards of 12, 12 and 10


def prepare_inputs(out: Path) -> Path:
    """The bundled sample as RL parquets (both layouts) and an eval parquet, images a few tokens each."""
    small = ["--min-pixels", "784", "--max-pixels", "12544", "--no-progress", "--row-group-size", "5"]
    assert cli_main(["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(out), "--formats", "rl", *small]) == 0
    assert cli_main(["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(out / "original"), "--formats",
                     "rl", "--original-rl", *small]) == 0  # fmt: skip
    assert cli_main(["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset",
                     str(VLTEST / "images"), "--out", str(out), *small, "--eval-min-pixels", "784",
                     "--eval-max-pixels", "12544"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_inputs(tmp_path_factory.mktemp("prep"))


def rows_of(path: Path) -> list[dict]:
    kind = pq.read_schema(path).metadata[b"gr_vl_verl.kind"].decode()
    return [{**r, "id": row_id(kind, r)} for r in pq.read_table(path).to_pylist()]


def config(model, **kw) -> GenerationConfig:
    kw = {"backend": "transformers", "n": 2, "temperature": 1.0, "max_tokens": MAX_TOKENS, "seed": 1,
          "shard_size": SHARD, "progress": False, **kw}  # fmt: skip
    return GenerationConfig(model=str(model), **kw)


# --------------------------------------------------------------------------------------------------
# Settings and seeds
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 0}, "n (samples per row) must be >= 1"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"shard_size": 0}, "shard_size must be >= 1"),
        ({"backend": "sglang"}, "backend must be one of vllm, transformers"),
        ({"tensor_parallel_size": 2}, "tensor_parallel_size > 1 needs the vllm backend"),
        ({"backend": "vllm", "num_gpus": 1}, "vLLM here is its CPU build, which uses no GPUs"),
        ({"engine_kwargs": {"dtype": object()}}, "engine_kwargs must hold JSON values only"),
        ({"model": "/no/such/checkpoint"}, "model path not found: /no/such/checkpoint"),
    ],
)
def test_config_refuses_bad_settings(tiny_model_dir, change, message):
    with pytest.raises(ValueError) as e:
        config(change.pop("model", tiny_model_dir), **change)
    assert message in str(e.value)


def test_sample_seed_depends_on_seed_row_and_sample_only():
    seeds = {sample_seed(s, r, j) for s in (0, 1) for r in ("a", "b") for j in (0, 1, 2)}
    assert len(seeds) == 12 and all(0 <= x < 2**63 for x in seeds)
    assert sample_seed(0, "a", 1) == sample_seed(0, "a", 1)
    assert sample_seed(0, "a\x001", 0) != sample_seed(0, "a", 10)  # fields cannot run into each other


def test_vllm_arguments_are_built_without_vllm(tiny_model_dir):
    sampled = config(tiny_model_dir, temperature=1.0, top_p=0.95, max_tokens=4096)
    assert vllm_sampling_kwargs(sampled, 123) == {
        "n": 1, "temperature": 1.0, "top_p": 0.95, "max_tokens": 4096, "seed": 123, "skip_special_tokens": True,
    }  # fmt: skip
    greedy = config(tiny_model_dir, temperature=0.0)
    assert vllm_sampling_kwargs(greedy, 123)["seed"] is None and vllm_sampling_kwargs(greedy, 1)["temperature"] == 0
    gpu = GenerationConfig(model=str(tiny_model_dir), backend="vllm", seed=7, engine_kwargs={"max_model_len": 8192})
    assert vllm_engine_kwargs(gpu) == {
        "model": str(tiny_model_dir), "tensor_parallel_size": 1, "distributed_executor_backend": "uni",
        "limit_mm_per_prompt": {"image": 2}, "seed": 7, "max_model_len": 8192,
        "enable_chunked_prefill": False,  # vLLM's CPU build here: seeded requests need whole-prompt prefill
        "skip_mm_profiling": True,  # and nothing reads the vision encoder's memory profile (docs/cpu.md)
        "dtype": "float32",  # no bf16 arithmetic on this CPU (docs/cpu.md, "Precision")
    }  # fmt: skip
    assert (
        vllm_engine_kwargs(
            GenerationConfig(model=str(tiny_model_dir), backend="vllm", engine_kwargs={"skip_mm_profiling": False})
        )["skip_mm_profiling"]
        is False
    )  # the user's engine arguments win
    assert gpu.gpus_per_actor == 0  # vLLM's CPU build here: its actors ask Ray for CPUs only
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 needs vLLM's GPU build"):
        GenerationConfig(model=str(tiny_model_dir), backend="vllm", tensor_parallel_size=2)
    assert vllm_prompt(Request("x", "text", [])) == {"prompt": "text"}
    img = decode_images("x", [{"bytes": _png()}])
    assert vllm_prompt(Request("x", "t", img)) == {"prompt": "t", "multi_modal_data": {"image": img}}


def test_vllms_thread_warning_is_dropped_and_its_other_warnings_kept():
    import importlib.util
    import logging
    import re

    from gr_vl_verl.cpu.vllm_dist import THREAD_WARNING, THREAD_WARNING_LOGGER, quiet_thread_warning

    # the text and the logger are vLLM's own (the pinned build's source, read without importing it)
    source = Path(importlib.util.find_spec(THREAD_WARNING_LOGGER).origin).read_text()
    assert THREAD_WARNING in re.sub(r'"\s*\n\s*"', "", source)  # adjacent literals joined, as Python does
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log, keep = logging.getLogger(THREAD_WARNING_LOGGER), Keep()
    log.addHandler(keep)
    try:
        quiet_thread_warning()
        quiet_thread_warning()
        log.warning(THREAD_WARNING + " after the thread binding, skip it.")
        log.warning("KV cache of 1 GiB")
    finally:
        log.removeHandler(keep)
    assert seen == ["KV cache of 1 GiB"] and len(log.filters) == 1


def test_a_failure_in_the_actor_is_named_by_its_own_type_and_message():
    from ray.exceptions import UserCodeException

    from gr_vl_verl.generation.pipeline import _root_message

    # Ray Data's wrapper carries the UDF's exception as its cause, whose text alone is the key
    try:
        try:
            {}["179"]
        except KeyError as e:
            raise UserCodeException("UDF failed to process a data block.") from e
    except UserCodeException as e:
        assert _root_message(e) == "KeyError: '179'"
    # a worker's traceback carried as text: its last exception line
    text = RuntimeError("Traceback (most recent call last):\n  File x\nValueError: bad attn")
    assert _root_message(text) == "ValueError: bad attn"


# --------------------------------------------------------------------------------------------------
# Rows into model input, as verl builds them
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["rl_train.parquet", "original/rl_train.parquet", "eval.parquet"])
def test_request_is_what_verl_builds_for_the_rollout(prepared, tiny_model_dir, tmp_path, variant):
    from omegaconf import OmegaConf
    from transformers import AutoProcessor
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    path = prepared / variant
    data_config = OmegaConf.create(
        {"cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts": False, "max_prompt_length": 4096}
    )
    dataset = RLHFDataset(str(path), hf_tokenizer(str(tiny_model_dir)), data_config, processor)
    rows = rows_of(path)
    assert len(dataset) == len(rows)
    patch = processor.image_processor.patch_size
    for i, row in enumerate(rows):
        ours = build_request(row, processor)
        messages = dataset[i]["raw_prompt"]
        assert ours.prompt == processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images, _, _ = RLHFDataset._process_multi_modal_info(messages, patch, data_config)
        theirs = images or []
        assert [(im.mode, im.size, im.tobytes()) for im in ours.images] == [
            (im.mode, im.size, im.tobytes()) for im in theirs
        ]
    assert any(build_request(r, processor).images for r in rows)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_rows_that_cannot_be_built_name_the_row():
    prompt = [{"role": "user", "content": "Human user:\n<image>\n<image>\nhi"}]
    with pytest.raises(RowError, match=r"row 'r7': 2 <image> placeholder\(s\) but 1 image\(s\)"):
        image_messages("r7", prompt, decode_images("r7", [{"bytes": _png()}]))
    with pytest.raises(RowError, match=r"row 'r8': 0 <image> placeholder\(s\) but 1 image\(s\)"):
        image_messages("r8", [{"role": "user", "content": "text"}], decode_images("r8", [{"bytes": _png()}]))
    with pytest.raises(RowError, match=r"row 'r9': image 2 of 2 does not decode"):
        decode_images("r9", [{"bytes": _png()}, {"bytes": _png()[:40]}])
    parts = image_messages("r1", prompt, decode_images("r1", [{"bytes": _png()}] * 2))[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]


# --------------------------------------------------------------------------------------------------
# The transformers engine: a sample depends on its row, seed and index only
# --------------------------------------------------------------------------------------------------
def test_transformers_samples_do_not_depend_on_batch_or_global_rng(prepared, tiny_model_dir):
    import torch

    from gr_vl_verl.generation.engines import TransformersEngine

    engine = TransformersEngine(config(tiny_model_dir, n=3, max_tokens=6))
    rows = rows_of(prepared / "rl_train.parquet")[:6] + rows_of(prepared / "eval.parquet")[-3:]
    requests = [build_request(r, engine.processor) for r in rows]
    state = torch.get_rng_state()
    together = engine.generate(requests)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    torch.rand(1000)  # and what it holds does not matter
    alone = [engine.generate([r])[0] for r in reversed(requests)][::-1]
    assert together == alone
    assert all(
        len(c) == 3 and 1 <= x.tokens <= 6 and x.finish_reason in ("stop", "length") for c in together for x in c
    )
    assert all(len({x.text for x in c}) > 1 for c in together[:3])  # samples of a row differ
    other_seed = TransformersEngine(config(tiny_model_dir, n=3, max_tokens=6, seed=2)).generate(requests)
    assert sum(a != b for a, b in zip(together, other_seed, strict=True)) >= len(requests) - 1
    greedy = TransformersEngine(config(tiny_model_dir, n=3, max_tokens=6, temperature=0.0))
    first, again = greedy.generate(requests[:4]), greedy.generate(requests[:4])
    assert first == again and all(c[0] == c[1] == c[2] for c in first)


# --------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rl_train.parquet", "eval.parquet"])
@pytest.mark.parametrize(("shard_size", "chunk"), [(7, 3), (12, 64), (1, 1), (100, 4)])
def test_shards_cover_every_row_once_in_order(prepared, name, shard_size, chunk):
    path = prepared / name
    plan = sh.plan_shards(path, shard_size)
    assert pq.ParquetFile(path).metadata.num_row_groups > 1  # reads must cross row-group boundaries
    got = [t for k in range(plan.shards) for t in sh.read_shard(plan, k, chunk)]
    assert all(t.num_rows <= chunk for t in got)
    table = pa.concat_tables(got)
    expected = rows_of(path)
    assert table.column(sh.ROW).to_pylist() == list(range(len(expected)))
    assert table.column(sh.SHARD).to_pylist() == [i // shard_size for i in range(len(expected))]
    assert table.column("id").to_pylist() == [r["id"] for r in expected]
    assert table.column("images").to_pylist() == [r["images"] for r in expected]
    assert plan.file(Path("o"), 0).name == "shard-00000.parquet"


def test_bad_inputs_are_refused_before_any_work(prepared, tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(RL_SCHEMA.empty_table(), empty)
    cfg = config(tiny_model_dir)
    with pytest.raises(ValueError, match="empty.parquet: has no rows"):
        generate(empty, tmp_path / "o1", cfg)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        generate(tmp_path / "missing.parquet", tmp_path / "o2", cfg)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="junk.parquet: not a readable parquet file"):
        generate(tmp_path / "junk.parquet", tmp_path / "o3", cfg)
    rows = pq.read_table(prepared / "rl_train.parquet").to_pylist()
    rows[3]["extra_info"]["id"] = rows[0]["extra_info"]["id"]
    pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match=f"dup.parquet: row id {rows[0]['extra_info']['id']!r} appears 2 times"):
        generate(tmp_path / "dup.parquet", tmp_path / "o5", cfg)
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "shard-00000.parquet").write_bytes(b"")
    with pytest.raises(FolderMismatch, match="holds shard files but no generate_manifest.json"):
        generate(prepared / "rl_train.parquet", tmp_path / "o4", cfg)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # refused before making anything


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/no/such/model"], "model path not found: /no/such/model"),
        (["--data", "/no/such.parquet"], "--data: file not found: /no/such.parquet"),
        (["--data", "EMPTY"], "has no rows"),
        (["--n", "0"], "n (samples per row) must be >= 1, got 0"),
        (["--temperature", "-1"], "temperature must be >= 0"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(prepared, tiny_model_dir, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty.parquet"
    pq.write_table(RL_SCHEMA.empty_table(), empty)
    args = {"--data": str(prepared / "rl_train.parquet"), "--model": str(tiny_model_dir), "--out": str(tmp_path / "o")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        args[flag] = str(empty) if value == "EMPTY" else value
    rc = cli_main(["generate", "--backend", "transformers", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
