"""The Ray Data pipeline of `gr-vl generate`, for real: two CPU actors, the transformers backend, the tiny
Qwen2.5-VL; resume byte for byte, a row that does not decode, a failed actor, a pool Ray cannot place.

Ray runs in one child process (:func:`ray_driver.run_driver`), which starts a local cluster, runs
:func:`drive_pipeline` and returns what it saw; the files it wrote stay for the tests to read. The pytest
process never starts Ray.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_driver import run_driver
from test_generation import MAX_TOKENS, SHARD, config, prepare_inputs, rows_of

from gr_vl_verl.data.schemas import GENERATIONS_SCHEMA, RL_SCHEMA, read_generations
from gr_vl_verl.generation import shards as sh


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from gr_vl_verl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


class ThreadProbe:
    """A UDF in the pipeline's actor pool that says whether each call runs on the thread that built it."""

    def __init__(self, config) -> None:
        import threading

        self.built_on = threading.get_ident()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import threading

        same = threading.get_ident() == self.built_on
        return pa.table(
            {"same_thread": [same] * batch.num_rows, "main": [threading.current_thread().name] * batch.num_rows}
        )


def drive_pipeline(prepared_dir: str, model: str, work: str) -> dict:
    """Everything that needs Ray, in one local cluster; returns what each step printed, raised or counted."""
    import ray

    from gr_vl_verl.generation import FolderMismatch, GenerationError, generate

    data, work_dir = Path(prepared_dir), Path(work)
    seen: dict = {}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        two = work_dir / "two"
        rc, printed, _ = _cli(["generate", "--data", str(data / "rl_train.parquet"), "--model", model, "--out",
                               str(two), "--backend", "transformers", "--n", "2", "--temperature", "1.0",
                               "--max-tokens", str(MAX_TOKENS), "--seed", "1", "--shard-size", str(SHARD),
                               "--concurrency", "2", "--batch-size", "3", "--no-progress"])  # fmt: skip
        seen["two"] = {"rc": rc, "printed": printed}

        # What an interrupted run leaves: a finished shard, missing ones, a temp file of the write in flight.
        out = work_dir / "resumed"
        shutil.copytree(two, out)
        (out / "shard-00000.parquet").unlink()
        (out / "shard-00001.parquet").unlink()
        (out / ".shard-00001.parquet.x1y2.tmp").write_bytes(b"partial")
        (out / sh.SUMMARY).unlink()
        kept = (out / "shard-00002.parquet").stat()
        rc, printed, _ = _cli(["generate", "--data", str(data / "rl_train.parquet"), "--model", model, "--out",
                               str(out), "--backend", "transformers", "--n", "2", "--temperature", "1.0",
                               "--max-tokens", str(MAX_TOKENS), "--seed", "1", "--shard-size", str(SHARD),
                               "--concurrency", "1", "--batch-size", "5", "--no-progress"])  # fmt: skip
        after = (out / "shard-00002.parquet").stat()
        seen["resume"] = {
            "rc": rc,
            "printed": printed,
            "kept": (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns),
        }
        again = generate(data / "rl_train.parquet", out, config(model))
        seen["again"] = [again.shards_written, again.shards_skipped, again.rows]
        seen["refused"] = []
        for path, cfg in ((data / "rl_train.parquet", config(model, seed=2)), (data / "eval.parquet", config(model))):
            try:
                generate(path, out, cfg)
                seen["refused"].append(None)
            except FolderMismatch as e:
                seen["refused"].append(str(e))

        rows = pq.read_table(data / "rl_train.parquet").to_pylist()
        bad = next(i for i, r in enumerate(rows) if i >= 3 and r["images"])
        rows[bad]["images"][0]["bytes"] = b"\x89PNG broken"
        broken = work_dir / "broken.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), broken)
        rc, _, err = _cli(["generate", "--data", str(broken), "--model", model, "--out", str(work_dir / "o"),
                           "--backend", "transformers", "--max-tokens", "2", "--shard-size", "100",
                           "--no-progress"])  # fmt: skip
        seen["broken"] = {"rc": rc, "err": err, "row": bad, "id": rows[bad]["extra_info"]["id"]}

        # The pipeline's own engine actors, whose engine cannot start: from_pretrained refuses the attention
        # implementation in each actor's constructor.
        try:
            generate(data / "rl_train.parquet", work_dir / "failed", config(model, concurrency=2,
                     engine_kwargs={"attn_implementation": "no_such_attention"}))  # fmt: skip
            seen["failed_actor"] = None
        except GenerationError as e:
            seen["failed_actor"] = {"message": str(e), "type": type(e).__name__}

        # the pool's calls run on the thread that built the engine, the actor's main one (Ray Data's default
        # would hand them to a thread of its own)
        import ray.data

        from gr_vl_verl.generation.pipeline import _pool_args

        probe = ray.data.range(6, override_num_blocks=3).map_batches(ThreadProbe, **_pool_args(config(model)))
        seen["threads"] = probe.take_all()

        seen["unplaceable"] = []
        for name, cfg in (("cpu", config(model, concurrency=8)), ("gpu", config(model, num_gpus=1))):
            try:
                generate(data / "eval.parquet", work_dir / name, cfg)
                seen["unplaceable"].append(None)
            except GenerationError as e:
                seen["unplaceable"].append(str(e))
    finally:
        ray.shutdown()
    return seen


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_inputs(tmp_path_factory.mktemp("prep"))


@pytest.fixture(scope="module")
def ray_results(prepared, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("ray")
    return work, run_driver("test_generation_ray:drive_pipeline", str(prepared), str(tiny_model_dir), str(work))


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.parquet"))}


def test_two_actors_write_every_row_and_sample_in_input_order(prepared, ray_results):
    work, seen = ray_results
    two = work / "two"
    assert seen["two"]["rc"] == 0
    assert "shards: 3 written, 0 already done, of 3" in seen["two"]["printed"]
    assert "rows: 34 generated (34 in the input), samples: 68" in seen["two"]["printed"]
    names = [p.name for p in sorted(two.glob("shard-*.parquet"))]
    assert names == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert all(pq.read_schema(two / n) == GENERATIONS_SCHEMA for n in names)
    got = list(read_generations(two))
    ids = [r["id"] for r in rows_of(prepared / "rl_train.parquet")]
    assert [(g["id"], g["sample"]) for g in got] == [(i, j) for i in ids for j in (0, 1)]  # rows x n
    assert all(1 <= g["output_tokens"] <= MAX_TOKENS and g["finish_reason"] in ("stop", "length") for g in got)
    assert sum(g["output"] != h["output"] for g, h in zip(got[::2], got[1::2], strict=True)) > len(ids) // 2
    saved = json.loads((two / sh.SUMMARY).read_text())
    assert (saved["rows"], saved["samples"], saved["shards_written"]) == (34, 68, 3)
    assert saved["output_tokens"] == sum(g["output_tokens"] for g in got)
    # the rates are this run's counts over its own seconds (the rows it generated, not the input's)
    assert saved["rows_per_s"] == pytest.approx(34 / saved["seconds"], rel=1e-2)
    assert saved["output_tokens_per_s"] == pytest.approx(saved["output_tokens"] / saved["seconds"], rel=1e-2)
    # both engines did work, and between them every row once: the actors named by Ray, not the flag echoed
    actors = saved["actors"]
    assert len(actors) == 2 and len({a["actor"] for a in actors}) == 2
    assert all(a["rows"] > 0 for a in actors) and sum(a["rows"] for a in actors) == 34
    assert all(len(a["node"]) == 56 for a in actors)  # Ray node ids (hex); one local node here
    # each actor's time in its engine's generate calls: part of the run, summed in the total
    assert all(0 < a["engine_seconds"] < saved["seconds"] for a in actors)
    assert saved["engine_seconds"] == pytest.approx(sum(a["engine_seconds"] for a in actors), abs=2e-3)
    assert "actors: 2, rows each: " in seen["two"]["printed"]
    manifest = json.loads((two / sh.MANIFEST).read_text())
    assert '"min_pixels": 262144' in json.dumps(manifest)  # an RL parquet: the RL config's processor bounds


def test_one_actor_resumes_a_two_actor_run_byte_for_byte(ray_results):
    """An interrupted two-actor run, resumed by one actor with other batches: the finished shard is left alone,
    the missing ones (text, image and text-image rows) come out byte-identical to what two actors wrote."""
    work, seen = ray_results
    out, resume = work / "resumed", seen["resume"]
    assert resume["rc"] == 0
    assert "shards: 2 written, 1 already done, of 3" in resume["printed"] and "rows: 24 generated" in resume["printed"]
    assert resume["kept"]  # the finished shard was not rewritten
    assert _files(out) == _files(work / "two")
    assert not list(out.glob(".*.tmp")) and (out / sh.SUMMARY).exists()
    assert seen["again"] == [0, 3, 0]
    seed, other_input = seen["refused"]
    assert seed is not None and "seed 1 (now 2)" in seed
    assert other_input is not None and "rl_train.parquet with 34 rows" in other_input


def test_a_row_that_does_not_decode_stops_the_run_naming_it(ray_results):
    work, seen = ray_results
    broken = seen["broken"]
    err = broken["err"].strip()
    assert broken["rc"] == 1 and len(err.splitlines()) == 1
    assert f"broken.parquet row {broken['row']}: row {broken['id']!r}: image 1 of 1 does not decode" in err
    assert not list((work / "o").glob("shard-*")) and not (work / "o" / sh.SUMMARY).exists()


def test_a_failed_engine_actor_stops_the_run_in_one_line(ray_results):
    """The pipeline's engine actors fail in their constructor: the run stops (Ray does not restart an actor whose
    constructor raised) with one line naming the cause, not Ray's wrapper, and leaves no shard or summary."""
    work, seen = ray_results
    failed = seen["failed_actor"]
    assert failed is not None and failed["type"] == "GenerationError"
    assert failed["message"].startswith("generation failed: ValueError: Specified `attn_implementation=")
    assert "no_such_attention" in failed["message"] and len(failed["message"].splitlines()) == 1
    assert not list((work / "failed").glob("shard-*")) and not (work / "failed" / sh.SUMMARY).exists()


def test_engine_calls_run_on_the_thread_that_built_the_engine(ray_results):
    _, seen = ray_results
    assert len(seen["threads"]) == 6
    assert all(t["same_thread"] and t["main"] == "MainThread" for t in seen["threads"])


def test_a_pool_this_ray_cannot_place_is_refused_before_it_starts(ray_results):
    work, seen = ray_results
    cpu, gpu = seen["unplaceable"]
    assert cpu is not None and "8 actor(s) need CPU 8 (it has 4)" in cpu
    assert gpu is not None and "1 actor(s) need GPU 1 (it has 0)" in gpu
    assert not list((work / "cpu").glob("shard-*")) and not (work / "cpu" / sh.SUMMARY).exists()
