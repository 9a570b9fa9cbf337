"""Batch guard generation as a Ray Data pipeline: shards of input rows → an actor pool of engines → shard files.

::

    from_items(missing shard indices) ── map_batches(read_shard)          tasks: read the shard's rows
        ── map_batches(GenerateBatch, ActorPoolStrategy(concurrency))     actors: one engine each
        ── iter_batches on the driver                                    group by shard, write when complete

The driver only ever holds generated text of unfinished shards; rows and images stream through Ray's object
store. Each shard is written (temp file + rename) the moment its last row arrives, so an interrupted run
loses at most the shards in flight and a re-run does only the missing ones.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gr_vl_verl.atomic import write_json_atomic
from gr_vl_verl.generation import shards as sh
from gr_vl_verl.generation.config import GenerationConfig, GenerationError, input_pixels
from gr_vl_verl.generation.engines import VLLM_MISSING, vllm_available
from gr_vl_verl.generation.summary import GenerationSummary


class BadRowError(GenerationError):
    """An input row cannot become model input (its image does not decode, placeholders do not match)."""


# --------------------------------------------------------------------------------------------------
# What runs on the workers
# --------------------------------------------------------------------------------------------------
def _read_shards(batch: dict[str, Any], plan: sh.ShardPlan, chunk_rows: int) -> Iterator[pa.Table]:
    for k in batch["shard"]:
        yield from sh.read_shard(plan, int(k), chunk_rows)


class GenerateBatch:
    """One engine per actor; turns REQUEST_SCHEMA batches into RESULT_SCHEMA batches.

    A row that cannot be built comes back as one result row carrying ``_error`` (and nothing else of the
    batch), so the driver can name it; an engine failure raises as usual.
    """

    def __init__(self, config: GenerationConfig) -> None:
        import ray

        from gr_vl_verl.fate_share import children_die_with_this_process
        from gr_vl_verl.generation.engines import make_engine

        self.config = config
        context = ray.get_runtime_context()
        self.where = {sh.ACTOR: context.get_actor_id() or f"pid {os.getpid()}", sh.NODE: context.get_node_id()}
        if config.backend == "vllm":  # its engine processes would outlive an actor that dies abruptly (fate_share)
            children_die_with_this_process()
        self.engine = make_engine(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from gr_vl_verl.generation.prompts import RowError, build_request

        rows = batch.to_pylist()
        requests = []
        for row in rows:
            try:
                requests.append(build_request(row, self.engine.processor))
            except RowError as e:
                failed = {sh.SHARD: row[sh.SHARD], sh.ROW: row[sh.ROW], "id": row["id"], sh.ERROR: str(e)}
                return _result([{**failed, **self.where}])
        out = []
        start = time.perf_counter()
        generated = self.engine.generate(requests)
        call_s = time.perf_counter() - start
        for row, completions in zip(rows, generated, strict=True):
            for j, c in enumerate(completions):
                out.append(
                    {
                        sh.SHARD: row[sh.SHARD],
                        sh.ROW: row[sh.ROW],
                        "id": row["id"],
                        "sample": j,
                        "output": c.text,
                        "output_tokens": c.tokens,
                        "finish_reason": c.finish_reason,
                        "p_harmful_request": c.p_harmful_request,
                        "p_harmful_response": c.p_harmful_response,
                        **self.where,
                        sh.ENGINE_S: 0.0 if out else call_s,
                    }
                )
        return _result(out)


def _result(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=sh.RESULT_SCHEMA)


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray already initialised in this process, else connect (``address``) or start a local one;
    shut down only what was started here."""
    import ray

    if ray.is_initialized():
        yield
        return
    with _local_worker_priority(address):
        ray.init(address=address, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


#: Ray's raylet setting for its workers' niceness (``worker_niceness``, default 15), read from the environment
#: when the raylet starts, as every ``RAY_<setting>`` is.
RAY_WORKER_NICENESS = "RAY_worker_niceness"


@contextmanager
def _local_worker_priority(address: str | None) -> Iterator[None]:
    """Start a local Ray's workers at the driver's priority.

    Ray starts its workers at niceness 15, and vLLM's engine processes inherit it from the actor. On a machine
    with few cores everything else (Ray's own daemons, the driver, any other work) then wins the CPU over the
    engine, which is what does the run's work. Only for a Ray this process starts: a cluster given by address
    keeps its own setting, and a value the user exported is kept.
    """
    if address or os.environ.get("RAY_ADDRESS") or RAY_WORKER_NICENESS in os.environ:
        yield
        return
    os.environ[RAY_WORKER_NICENESS] = "0"
    try:
        yield
    finally:
        os.environ.pop(RAY_WORKER_NICENESS, None)


def _check_resources(config: GenerationConfig) -> bool:
    """Whether this Ray has room for the whole pool now. A fixed (local) Ray that cannot place every actor
    fails here, before the pool is built (it would wait forever); a cluster given by address, which may scale
    up, only gets a warning."""
    import ray

    tp_cpus = config.tensor_parallel_size if config.backend == "vllm" and config.tensor_parallel_size > 1 else 0
    need = {
        "CPU": config.concurrency * (config.num_cpus + tp_cpus),
        "GPU": config.concurrency * config.gpus_per_actor,
    }
    have = ray.cluster_resources()
    short = [f"{k} {need[k]:g} (it has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0)]
    if not short:
        return True
    message = f"{config.concurrency} actor(s) need " + ", ".join(short) + " in this Ray cluster"
    if not (config.ray_address or os.environ.get("RAY_ADDRESS")):
        raise GenerationError(message + "; lower --concurrency / --num-cpus / --num-gpus")
    print(f"warning: {message}; waiting for the cluster to scale", file=sys.stderr)
    return False


def _placement_group_strategy(tensor_parallel_size: int) -> dict[str, Any]:
    # One placement group per engine, its GPUs packed together; vLLM's Ray executor places its tensor-parallel
    # workers in it (the pattern of Ray Data's own vLLM stage, ray 2.60).
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.placement_group([{"GPU": 1, "CPU": 1}] * tensor_parallel_size, strategy="PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}


def _pool_args(config: GenerationConfig) -> dict[str, Any]:
    from functools import partial

    import ray

    args: dict[str, Any] = {
        # Ray Data runs a class UDF's calls on a thread of its own, not the actor's main thread that built the
        # engine (``make_callable_class_single_threaded``); true multi-threading at Ray's default of one call at a
        # time runs them on the main thread, as a script drives vLLM (docs/generation.md, "Against bare vLLM")
        "compute": ray.data.ActorPoolStrategy(size=config.concurrency, enable_true_multi_threading=True),
        "batch_size": config.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": config.num_cpus,
        "fn_constructor_kwargs": {"config": config},
    }
    if config.backend == "vllm" and config.tensor_parallel_size > 1:
        args["num_gpus"] = 0
        args["ray_remote_args_fn"] = partial(_placement_group_strategy, config.tensor_parallel_size)
    elif config.gpus_per_actor > 0:
        args["num_gpus"] = config.gpus_per_actor
    return args


#: How long a run waits for its whole pool of engines to start before the rows go out.
POOL_START_S = 3600


@contextmanager
def _data_context(config: GenerationConfig, wait_for_pool: bool) -> Iterator[None]:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.wait_for_min_actors_s
    ctx.enable_progress_bars = False  # ours counts rows; Ray's per-operator bars would interleave with it
    if wait_for_pool:
        # Ray Data hands blocks to whichever actor is ready first; the first engine to load would take the
        # first blocks (two in flight per actor) while the others still load, on this node or on another
        # one. When the pool fits the cluster as it is (_check_resources), start every engine before any row
        # goes out; an engine that fails to start still fails the run at once. A pool that waits for an
        # autoscaler does not wait for it here.
        ctx.wait_for_min_actors_s = POOL_START_S
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(\(\w+\))?: ")


def _root_message(exc: BaseException) -> str:
    """One line saying what failed: the last ``SomeError: message`` line of the innermost exception that has
    one. Ray carries a worker's exception as traceback text inside its own (ActorDiedError, RayTaskError), or as
    the cause of its own (Ray Data's ``UserCodeException``, whose cause's text is only its message, e.g. a
    KeyError's key): an exception that is not Ray's is named by its type and message."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):
        lines = [_ANSI.sub("", line).strip() for line in str(e).splitlines()]
        found = [line for line in lines if _EXCEPTION_LINE.match(line)]
        if found:
            return found[-1]
        if not type(e).__module__.startswith("ray."):
            break  # else the loop ends on ``exc`` itself, the outermost
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _run(plan: sh.ShardPlan, todo: list[int], out_dir: Path, config: GenerationConfig, summary: GenerationSummary):
    import ray
    from tqdm import tqdm

    n = config.n
    ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        _read_shards,
        batch_size=1,
        fn_kwargs={"plan": plan, "chunk_rows": config.batch_size},
        compute=ray.data.TaskPoolStrategy(size=min(len(todo), max(2, config.concurrency))),
        num_cpus=0,  # reading is I/O; the actors hold the CPUs
    )
    ds = ds.map_batches(GenerateBatch, **_pool_args(config))
    pending: dict[int, list[pa.Table]] = {}
    got: Counter = Counter()
    total_rows = sum(plan.shard_rows(k) for k in todo)
    bar = tqdm(total=total_rows, unit="row", desc="generate", disable=not config.progress, file=sys.stderr)
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for table in batches:
            errors = table.column(sh.ERROR).drop_null()
            if len(errors):
                row = table.filter(table.column(sh.ERROR).is_valid()).slice(0, 1).to_pylist()[0]
                raise BadRowError(f"{plan.path} row {row[sh.ROW]}: {errors[0].as_py()}")
            for k in set(table.column(sh.SHARD).to_pylist()):
                part = table.filter(pc.equal(table.column(sh.SHARD), k))
                pending.setdefault(k, []).append(part)
                got[k] += part.num_rows
                if got[k] == plan.shard_rows(k) * n:
                    written = sh.write_shard(plan.file(out_dir, k), pending.pop(k))
                    summary.shards_written += 1
                    summary.rows += plan.shard_rows(k)
                    summary.samples += written.num_rows
                    summary.output_tokens += pc.sum(written.column("output_tokens")).as_py() or 0
                    summary.finish_reasons.update(written.column("finish_reason").to_pylist())
            firsts = table.filter(pc.equal(table.column("sample"), 0))  # one per input row
            where = zip(firsts.column(sh.ACTOR).to_pylist(), firsts.column(sh.NODE).to_pylist(), strict=True)
            summary.served.update(where)
            called = table.filter(pc.greater(table.column(sh.ENGINE_S), 0.0))
            columns = [called.column(c).to_pylist() for c in (sh.ACTOR, sh.NODE, sh.ENGINE_S)]
            for actor, node, secs in zip(*columns, strict=True):
                summary.engine_seconds[(actor, node)] += secs
            bar.update(firsts.num_rows)
    finally:
        batches.close()  # a generator: closing it shuts the streaming executor down when we leave early
        bar.close()
    if pending:
        raise GenerationError(f"the pipeline ended with shard(s) {sorted(pending)} incomplete")


def _family(model: str | Path):
    """The family of a local checkpoint (its ``config.json``), whose grid the stage's bounds are put on; the
    paper's (Qwen2.5-VL) for a name the hub would resolve, as before families were known."""
    from gr_vl_verl.models.detect import family_of_model
    from gr_vl_verl.models.families import DEFAULT_FAMILY

    return family_of_model(model) if (Path(model).expanduser() / "config.json").is_file() else DEFAULT_FAMILY


def generate(data_path: str | Path, out_dir: str | Path, config: GenerationConfig) -> GenerationSummary:
    """Generate ``config.n`` samples for every row of an RL or eval parquet into ``out_dir`` (resumable).

    Without image bounds in ``config`` the processor gets those of the input's stage (:func:`input_pixels`).

    Returns the run's summary, also saved as ``out_dir/generate_summary.json``. Raises FileNotFoundError /
    ValueError (bad input path, kind, empty input; :class:`~.shards.FolderMismatch` for a folder of another
    run) before any work, :class:`GenerationError` (:class:`BadRowError` for a bad row) when the work fails.
    """
    out_dir = Path(out_dir)
    plan = sh.plan_shards(Path(data_path), config.shard_size)
    if config.min_pixels is None:
        low, high = input_pixels(plan.kind, _family(config.model))
        config = dataclasses.replace(config, min_pixels=low, max_pixels=high)
    sh.prepare_folder(out_dir, plan, config.output_settings())
    todo = [k for k in range(plan.shards) if not sh.shard_done(out_dir, plan, k, config.n)]
    summary = GenerationSummary(
        data=str(plan.path),
        out=str(out_dir),
        rows_total=plan.rows,
        shards_total=plan.shards,
        shards_skipped=plan.shards - len(todo),
        config=config.to_dict(),
    )
    if todo:
        if config.backend == "vllm" and not vllm_available():
            raise GenerationError(VLLM_MISSING)
        start = time.perf_counter()
        with ray_session(config.ray_address):
            fits = _check_resources(config)
            with _data_context(config, wait_for_pool=fits):
                try:
                    _run(plan, todo, out_dir, config, summary)
                except GenerationError:
                    raise
                except Exception as e:  # Ray wraps actor and task failures; report the cause in one line
                    raise GenerationError(f"generation failed: {_root_message(e)}") from e
        summary.seconds = time.perf_counter() - start
    write_json_atomic(out_dir / sh.SUMMARY, summary.to_dict())
    return summary
