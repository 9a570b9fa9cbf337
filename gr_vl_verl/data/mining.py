"""Hard-sample mining (GuardReasoner-VL, paper §2.3.1): keep the RL rows the reasoning-SFT model gets wrong.

The model answers every row ``k`` times (``gr-vl generate``); an answer is right only when both labels are
(:func:`gr_vl_verl.protocol.answer_correct`; an absent response counts as unharmful). Rows with at most
``max_correct`` right answers out of their ``k`` are kept, capped at ``sample_num`` by seeded sampling, and
split into train and val. The paper's defaults: k = 4, keep if all four are wrong, 12,000 rows, 80/20.

The data is read twice and never held: first only ids, modalities and labels, then, after the selection, the
chosen rows are copied batch by batch. Generations are streamed and reduced to a count per row.

Pure Python + pyarrow: no torch, no verl.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gr_vl_verl.atomic import write_json_atomic
from gr_vl_verl.data.records import MODALITIES
from gr_vl_verl.data.schemas import RL_SCHEMA, parquet_batches, parquet_kind
from gr_vl_verl.data.writers import AtomicParquetWriter
from gr_vl_verl.protocol import PARSE_MODES, Labels, ParseMode, answer_correct, normalize_label, predicted_labels

TRAIN_FILE, VAL_FILE, STATS_FILE = "rl_train.parquet", "rl_val.parquet", "mining_stats.json"
#: How many ids per skip reason the stats file lists (all of them are counted).
EXAMPLE_IDS = 20


class MiningError(ValueError):
    """The inputs cannot be mined (bad generations, rows without labels, a strict-mode skip)."""


@dataclass(frozen=True)
class MiningConfig:
    """Which rows count as hard and how many to keep; the defaults are the paper's."""

    k: int = 4  # answers per row that decide
    max_correct: int = 0  # keep a row with at most this many right answers (0: all k wrong)
    sample_num: int | None = 12000  # cap on the kept rows (None: keep all)
    val_fraction: float = 0.2
    seed: int = 42
    parse: ParseMode = "strict"
    # Modalities kept whatever the answers (the released code kept every image-only row).
    keep_all_modalities: tuple[str, ...] = ()
    strict: bool = False  # a row without k answers is an error instead of a counted skip

    def __post_init__(self) -> None:
        def whole(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not whole(self.k) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if not whole(self.max_correct) or not 0 <= self.max_correct <= self.k:
            raise ValueError(f"max_correct must be an integer in [0, k={self.k}], got {self.max_correct!r}")
        if self.sample_num is not None and (not whole(self.sample_num) or self.sample_num < 1):
            raise ValueError(f"sample_num must be an integer >= 1 or None (no cap), got {self.sample_num!r}")
        if not (isinstance(self.val_fraction, int | float) and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.parse not in PARSE_MODES:
            raise ValueError(f"parse must be one of {PARSE_MODES}, got {self.parse!r}")
        bad = sorted(set(self.keep_all_modalities) - set(MODALITIES))
        if bad:
            raise ValueError(f"unknown modality {bad} in keep_all_modalities; expected some of {MODALITIES}")
        object.__setattr__(self, "keep_all_modalities", tuple(sorted(set(self.keep_all_modalities))))

    @classmethod
    def original(cls) -> MiningConfig:
        """The released ``rejection_sampling.py``: labels read anywhere in the output, image-only rows kept."""
        return cls(parse="compat", keep_all_modalities=("image",))

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "max_correct": self.max_correct,
            "sample_num": self.sample_num,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "parse": self.parse,
            "keep_all_modalities": list(self.keep_all_modalities),
            "strict": self.strict,
        }


class RowMeta(NamedTuple):
    index: int
    modality: str
    gold: Labels


def read_row_meta(path: Path) -> dict[str, RowMeta]:
    """Id -> (row index, modality, gold labels) of an RL parquet, reading neither prompts nor images."""
    path = Path(path)
    if parquet_kind(path) != "rl":
        raise MiningError(f"{path}: holds {parquet_kind(path)} rows; mining reads an RL parquet")
    rows: dict[str, RowMeta] = {}
    index = 0
    for batch in parquet_batches(path, batch_size=4096, columns=["extra_info", "reward_model"]):
        infos, rewards = batch.column("extra_info").to_pylist(), batch.column("reward_model").to_pylist()
        for info, reward in zip(infos, rewards, strict=True):
            rid = info["id"]
            if rid in rows:
                raise MiningError(f"{path}: row {index}: id {rid!r} already used by row {rows[rid].index}")
            truth = (reward or {}).get("ground_truth") or {}
            try:
                gold = Labels(
                    normalize_label(truth.get("prompt_label"), "prompt_label", allow_none=False),
                    normalize_label(truth.get("response_label"), "response_label", allow_none=True),
                )
            except ValueError as e:
                raise MiningError(f"{path}: row {index} (id {rid!r}): reward_model.ground_truth: {e}") from None
            rows[rid] = RowMeta(index, info["modality"], gold)
            index += 1
    return rows


@dataclass
class Tally:
    """Per row: which of the first k samples were seen (a bit mask) and how many of them were right."""

    seen: dict[str, int] = field(default_factory=dict)
    correct: Counter = field(default_factory=Counter)
    generations: int = 0
    beyond_k: set[tuple[str, int]] = field(default_factory=set)  # samples >= k: checked for duplicates only


def tally_generations(
    generations: Iterable[Mapping[str, Any]], rows: Mapping[str, RowMeta], config: MiningConfig
) -> Tally:
    """Count right answers per row. A generation for an id the data lacks, a duplicate ``(id, sample)`` or a
    malformed generation is a MiningError naming it: answers from another data file must not be mined."""
    tally = Tally()
    for g in generations:
        rid, sample, output = g.get("id"), g.get("sample"), g.get("output")
        meta = rows.get(rid)  # type: ignore[arg-type]
        if meta is None:
            raise MiningError(f"generation for id {rid!r} (sample {sample!r}): no row with that id in the data")
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
            raise MiningError(f"generation for id {rid!r}: sample must be an integer >= 0, got {sample!r}")
        if not isinstance(output, str):
            raise MiningError(f"generation ({rid!r}, sample {sample}): output must be a string, got {output!r:.40}")
        if sample < config.k:
            bit, mask = 1 << sample, tally.seen.get(rid, 0)
            duplicate = bool(mask & bit)
            tally.seen[rid] = mask | bit
        else:
            duplicate = (rid, sample) in tally.beyond_k
            tally.beyond_k.add((rid, sample))
        if duplicate:
            raise MiningError(f"generation ({rid!r}, sample {sample}) appears more than once")
        tally.generations += 1
        if sample < config.k and answer_correct(predicted_labels(output, config.parse), meta.gold):
            tally.correct[rid] += 1
    return tally


@dataclass
class Selection:
    train: list[int]  # row indices, ascending
    val: list[int]
    stats: dict[str, Any]


def _modality_stats(k: int) -> dict[str, Any]:
    return {"rows": 0, "with_k_answers": 0, "histogram": {str(c): 0 for c in range(k + 1)}, "skipped": Counter(),
            "kept": 0, "kept_without_k_answers": 0, "selected": 0, "train": 0, "val": 0}  # fmt: skip


def select_rows(rows: Mapping[str, RowMeta], tally: Tally, config: MiningConfig) -> Selection:
    """Keep the hard rows, cap them by seeded sampling, split them; with counts per modality."""
    per = {m: _modality_stats(config.k) for m in MODALITIES}
    examples: dict[str, list[str]] = {}
    first_k = (1 << config.k) - 1
    pool: list[int] = []
    modality_of: dict[int, str] = {}
    for rid, meta in sorted(rows.items(), key=lambda kv: kv[1].index):
        stats = per.setdefault(meta.modality, _modality_stats(config.k))
        stats["rows"] += 1
        keep_all = meta.modality in config.keep_all_modalities
        have = (tally.seen.get(rid, 0) & first_k).bit_count()
        if have < config.k:
            if keep_all:
                stats["kept_without_k_answers"] += 1
            else:
                reason = "no_answers" if have == 0 else "too_few_answers"
                if config.strict:
                    raise MiningError(f"row {meta.index} (id {rid!r}): {have} of the first {config.k} answers")
                stats["skipped"][reason] += 1
                ids = examples.setdefault(reason, [])
                if len(ids) < EXAMPLE_IDS:
                    ids.append(rid)
                continue
        else:
            stats["with_k_answers"] += 1
            right = tally.correct.get(rid, 0)
            stats["histogram"][str(right)] += 1
            if right > config.max_correct and not keep_all:
                continue
        stats["kept"] += 1
        pool.append(meta.index)
        modality_of[meta.index] = meta.modality

    rng = random.Random(config.seed)
    chosen = pool
    if config.sample_num is not None and len(pool) > config.sample_num:
        chosen = sorted(rng.sample(pool, config.sample_num))
    # half up, and at least one training row
    n_val = min(int(len(chosen) * config.val_fraction + 0.5), max(len(chosen) - 1, 0))
    val = sorted(rng.sample(chosen, n_val))
    val_set = set(val)
    train = [i for i in chosen if i not in val_set]
    for i in chosen:
        stats = per[modality_of[i]]
        stats["selected"] += 1
        stats["val" if i in val_set else "train"] += 1

    totals = _modality_stats(config.k)
    for stats in per.values():
        for key, value in stats.items():
            if key == "histogram":
                for c, n in value.items():
                    totals["histogram"][c] += n
            elif key == "skipped":
                totals["skipped"].update(value)
            else:
                totals[key] += value
    for stats in (*per.values(), totals):
        stats["skipped"] = dict(sorted(stats["skipped"].items()))
    summary = {
        "config": config.to_dict(),
        "modalities": per,
        "totals": totals,
        "generations": {"read": tally.generations, "beyond_k": len(tally.beyond_k)},
        "skipped_examples": examples,
    }
    return Selection(train, val, summary)


def write_selection(data: Path, out_dir: Path, selection: Selection, batch_size: int = 64) -> dict[str, int]:
    """Copy the chosen rows into ``rl_train``/``rl_val`` (the latter only if any), one batch at a time.

    Rows are unchanged except ``extra_info.split`` (the file the row is now in, as prep writes it; the reward
    manager names it in its error messages) and ``extra_info.index`` (its position in that file, as prep writes
    it; verl's ``RLHFDataset`` hands it on as each sample's ``index``).
    """
    out_dir = Path(out_dir)
    where = {i: "train" for i in selection.train} | {i: "val" for i in selection.val}
    files = {"train": out_dir / TRAIN_FILE}
    if selection.val:
        files["val"] = out_dir / VAL_FILE
    written = dict.fromkeys(files, 0)
    with ExitStack() as stack:
        writers = {split: stack.enter_context(AtomicParquetWriter(path, RL_SCHEMA)) for split, path in files.items()}
        index = 0
        for batch in parquet_batches(data, batch_size):
            for row in batch.to_pylist():
                split = where.get(index)
                index += 1
                if split is None:
                    continue
                row["extra_info"] = {**row["extra_info"], "split": split, "index": written[split]}
                writers[split].write(row)
                written[split] += 1
    if not selection.val:
        (out_dir / VAL_FILE).unlink(missing_ok=True)  # a previous run's val file would pass for this run's
    return written


def mine(
    data: Path,
    generations: Iterable[Mapping[str, Any]],
    out_dir: Path,
    config: MiningConfig,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Select the hard rows of ``data`` from ``generations`` (any iterable of generation rows, e.g.
    :func:`gr_vl_verl.data.schemas.read_generations`) and write them and ``mining_stats.json`` to ``out_dir``."""
    rows = read_row_meta(data)
    if not rows:
        raise MiningError(f"{data}: no rows to mine")
    selection = select_rows(rows, tally_generations(generations, rows, config), config)
    if not selection.train:
        raise MiningError(f"{data}: no row was selected (see the histogram: {selection.stats['totals']['histogram']})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_selection(data, out_dir, selection)
    stats = {"inputs": {"data": str(data), **(inputs or {})}, **selection.stats,
             "outputs": {(TRAIN_FILE if s == "train" else VAL_FILE): n for s, n in written.items()}}  # fmt: skip
    write_json_atomic(out_dir / STATS_FILE, stats)
    return stats
