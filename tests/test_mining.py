"""Hard-sample mining: counting right answers in both parse modes, the histogram, the keep rule, the cap, the
split, the image-only keep, bad generations, byte-identical outputs, and `gr-vl mine` end to end."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import png
from ray_driver import run_cli

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.mining import (
    MiningConfig,
    MiningError,
    mine,
    read_row_meta,
    select_rows,
    tally_generations,
)
from gr_vl_verl.data.records import GuardSample, infer_modality
from gr_vl_verl.data.schemas import GENERATIONS_SCHEMA, RL_SCHEMA, SFT_SCHEMA, read_generations
from gr_vl_verl.data.writers import AtomicParquetWriter, RowOptions, rl_row
from gr_vl_verl.protocol import Labels, format_answer

H, U = "harmful", "unharmful"
FLIP = {H: U, U: H}


def right(p: str, r: str | None) -> str:
    return format_answer("step by step", p, r)


def wrong(p: str, r: str | None) -> str:
    return format_answer("step by step", FLIP[p], r)


def gen(rid: str, sample: int, output: str) -> dict:
    return {"id": rid, "sample": sample, "output": output, "output_tokens": 10, "finish_reason": "stop"}


def write_generations(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), path)
    return path


# --------------------------------------------------------------------------------------------------
# Which answers count as right
# --------------------------------------------------------------------------------------------------
GOLD = {"a": Labels(H, U), "b": Labels(U, None)}


def tally(gens: list[dict], parse: str = "strict", k: int = 4):
    from gr_vl_verl.data.mining import RowMeta

    rows = {rid: RowMeta(i, "text", gold) for i, (rid, gold) in enumerate(GOLD.items())}
    return tally_generations(gens, rows, MiningConfig(k=k, parse=parse))


def test_right_means_both_labels_right_in_both_parse_modes():
    outputs = [
        right(H, U),  # well formed, both right
        "Request: harmful\nResponse: unharmful",  # no tags: only compat reads these labels
        "<think>x</think><result>Request: harmful\nResponse: harmful</result>",  # response wrong
        "<think>x</think><result>Request: unharmful\nResponse: unharmful</result>",  # prompt wrong
    ]
    gens = [gen("a", i, o) for i, o in enumerate(outputs)]
    assert tally(gens, "strict").correct["a"] == 1
    assert tally(gens, "compat").correct["a"] == 2
    # compat takes the first labels anywhere, even in the reasoning; strict only those in <result>
    sneaky = "<think>Request: unharmful? no.</think><result>Request: harmful\nResponse: unharmful</result>"
    assert tally([gen("a", 0, sneaky)], "strict").correct["a"] == 1
    assert tally([gen("a", 0, sneaky)], "compat").correct["a"] == 0


def test_an_absent_response_is_judged_unharmful():
    gens = [
        gen("b", 0, right(U, None)),  # "Response: None"
        gen("b", 1, right(U, U)),  # "Response: unharmful" is right too
        gen("b", 2, "<think>x</think><result>Request: unharmful\nResponse: harmful</result>"),
        gen("b", 3, "<think>x</think><result>Request: unharmful</result>"),  # no response label: wrong
    ]
    assert tally(gens).correct["b"] == 2


def test_bad_generations_are_errors_naming_them():
    with pytest.raises(MiningError, match="'zzz'.*no row with that id"):
        tally([gen("zzz", 0, right(H, U))])
    with pytest.raises(MiningError, match=r"\('a', sample 1\) appears more than once"):
        tally([gen("a", 1, right(H, U)), gen("a", 1, wrong(H, U))])
    with pytest.raises(MiningError, match=r"\('a', sample 7\) appears more than once"):
        tally([gen("a", 7, "x"), gen("a", 7, "x")])  # beyond k, still checked
    with pytest.raises(MiningError, match="sample must be an integer >= 0"):
        tally([gen("a", -1, "x")])
    with pytest.raises(MiningError, match="output must be a string"):
        tally([gen("a", 0, None)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"max_correct": 5}, "max_correct"),
        ({"max_correct": -1}, "max_correct"),
        ({"sample_num": 0}, "sample_num"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"parse": "loose"}, "parse"),
        ({"keep_all_modalities": ("video",)}, "unknown modality"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MiningConfig(**kwargs)


# --------------------------------------------------------------------------------------------------
# A data file with known answers
# --------------------------------------------------------------------------------------------------
def corpus(n: int) -> list[GuardSample]:
    """``n`` rows cycling text / image / text_image, with and without responses."""
    out = []
    for i in range(n):
        kind = ("text", "image", "text_image")[i % 3]
        images = (png(20, 20, (i % 256, 0, 0)),) if kind != "text" else ()
        request = "" if kind == "image" else f"request {i}"
        response = f"answer {i}" if i % 2 else None
        p, r = (H if i % 4 == 0 else U), (None if response is None else (H if i % 5 == 0 else U))
        out.append(GuardSample(f"row-{i:04d}", "src", infer_modality(request, len(images)), request, response,
                               images, p, r))  # fmt: skip
    return out


def write_rl(path: Path, samples: list[GuardSample]) -> Path:
    with AtomicParquetWriter(path, RL_SCHEMA) as w:
        for i, s in enumerate(samples):
            w.write(rl_row(s, i, RowOptions()))
    return path


def answers(samples: list[GuardSample], n_right: dict[str, int], k: int = 4) -> list[dict]:
    """k generations per row, the first ``n_right[id]`` right and the rest wrong."""
    rows = []
    for s in samples:
        for j in range(k):
            out = right(s.prompt_label, s.response_label) if j < n_right[s.id] else wrong(s.prompt_label, None)
            rows.append(gen(s.id, j, out))
    return rows


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[GuardSample], dict[str, int]]:
    samples = corpus(30)
    n_right = {s.id: i % 5 for i, s in enumerate(samples)}  # 0..4 right answers, six rows each
    return write_rl(tmp_path / "rl.parquet", samples), samples, n_right


def test_histogram_and_keep_rule(data):
    path, samples, n_right = data
    rows = read_row_meta(path)
    t = tally_generations(answers(samples, n_right), rows, MiningConfig())
    sel = select_rows(rows, t, MiningConfig(sample_num=None, val_fraction=0.0))
    assert sel.stats["totals"]["histogram"] == {str(c): 6 for c in range(5)}
    assert sel.train == [i for i, s in enumerate(samples) if n_right[s.id] == 0] and sel.val == []
    per = sel.stats["modalities"]
    for m in ("text", "image", "text_image"):
        idx = [i for i, s in enumerate(samples) if s.modality == m]
        assert per[m]["rows"] == len(idx) == 10
        assert per[m]["histogram"] == {str(c): sum(n_right[samples[i].id] == c for i in idx) for c in range(5)}
        assert per[m]["kept"] == sum(n_right[samples[i].id] == 0 for i in idx)
    sel = select_rows(rows, t, MiningConfig(max_correct=1, sample_num=None, val_fraction=0.0))
    assert sel.train == [i for i, s in enumerate(samples) if n_right[s.id] <= 1]
    sel = select_rows(rows, t, MiningConfig(max_correct=4, sample_num=None, val_fraction=0.0))
    assert len(sel.train) == 30


def test_keep_all_modality_keeps_every_image_row(data):
    path, samples, n_right = data
    rows = read_row_meta(path)
    gens = [g for g in answers(samples, n_right) if not (g["id"] == "row-0001")]  # an image row without answers
    t = tally_generations(gens, rows, MiningConfig())
    config = MiningConfig(keep_all_modalities=("image",), sample_num=None, val_fraction=0.0)
    sel = select_rows(rows, t, config)
    images = {i for i, s in enumerate(samples) if s.modality == "image"}
    hard = {i for i, s in enumerate(samples) if n_right[s.id] == 0}
    assert set(sel.train) == images | hard
    assert sel.stats["modalities"]["image"]["kept_without_k_answers"] == 1
    assert sel.stats["modalities"]["image"]["skipped"] == {}
    # without the option that row is skipped, and image rows follow the keep rule
    sel = select_rows(rows, t, MiningConfig(sample_num=None, val_fraction=0.0))
    assert set(sel.train) == hard - {1} and sel.stats["modalities"]["image"]["skipped"] == {"no_answers": 1}
    assert MiningConfig.original() == MiningConfig(parse="compat", keep_all_modalities=("image",))


def test_rows_without_k_answers_are_skipped_or_strict_errors(data):
    path, samples, n_right = data
    rows = read_row_meta(path)
    gens = answers(samples, n_right)
    gens = [g for g in gens if not (g["id"] == "row-0000" and g["sample"] == 3) and g["id"] != "row-0005"]
    gens.append(gen("row-0000", 4, right(H, None)))  # beyond k: does not stand in for sample 3
    t = tally_generations(gens, rows, MiningConfig())
    sel = select_rows(rows, t, MiningConfig(sample_num=None, val_fraction=0.0))
    assert sel.stats["totals"]["skipped"] == {"no_answers": 1, "too_few_answers": 1}
    assert sel.stats["skipped_examples"] == {"too_few_answers": ["row-0000"], "no_answers": ["row-0005"]}
    assert sel.stats["generations"] == {"read": len(gens), "beyond_k": 1}
    assert 0 not in sel.train and 5 not in sel.train
    with pytest.raises(MiningError, match="row 0 \\(id 'row-0000'\\): 3 of the first 4 answers"):
        select_rows(rows, t, MiningConfig(strict=True))


def test_cap_and_split_are_seeded(data):
    path, samples, n_right = data
    rows = read_row_meta(path)
    everything = {s.id: 0 for s in samples}  # every row hard
    t = tally_generations(answers(samples, everything), rows, MiningConfig())
    a = select_rows(rows, t, MiningConfig(sample_num=20, val_fraction=0.25, seed=1))
    assert len(a.train) == 15 and len(a.val) == 5 and not set(a.train) & set(a.val)
    assert a.train == sorted(a.train) and a.val == sorted(a.val)
    assert a.stats["totals"]["selected"] == 20 and a.stats["totals"]["kept"] == 30
    b = select_rows(rows, t, MiningConfig(sample_num=20, val_fraction=0.25, seed=1))
    c = select_rows(rows, t, MiningConfig(sample_num=20, val_fraction=0.25, seed=2))
    assert (a.train, a.val) == (b.train, b.val) != (c.train, c.val)
    # under the cap: everything is kept, only the split is drawn; a split always leaves a training row
    d = select_rows(rows, t, MiningConfig(sample_num=100, val_fraction=0.2))
    assert len(d.train) + len(d.val) == 30 and len(d.val) == 6
    one = {"row-0000": rows["row-0000"]}
    assert select_rows(one, t, MiningConfig(val_fraction=0.9)).train == [0]


# --------------------------------------------------------------------------------------------------
# Files and the command
# --------------------------------------------------------------------------------------------------
def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_outputs_copy_rows_and_do_not_depend_on_generation_order(data, tmp_path):
    path, samples, n_right = data
    gens = answers(samples, n_right)
    config = MiningConfig(max_correct=1, val_fraction=0.25, seed=3)
    stats = mine(path, gens, tmp_path / "a", config)
    shuffled = list(gens)
    random.Random(0).shuffle(shuffled)
    mine(path, shuffled, tmp_path / "b", config)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert set(digests(tmp_path / "a")) == {"rl_train.parquet", "rl_val.parquet", "mining_stats.json"}

    source = pq.read_table(path).to_pylist()
    by_id = {r["extra_info"]["id"]: r for r in source}
    seen = []
    for split in ("train", "val"):
        rows = pq.read_table(tmp_path / "a" / f"rl_{split}.parquet").to_pylist()
        assert pq.read_schema(tmp_path / "a" / f"rl_{split}.parquet").metadata == RL_SCHEMA.metadata
        for index, row in enumerate(rows):
            original = by_id[row["extra_info"]["id"]]
            # unchanged apart from the split it is now in and its index in that file
            assert row["extra_info"] == {**original["extra_info"], "split": split, "index": index}
            assert {k: v for k, v in row.items() if k != "extra_info"} == {
                k: v for k, v in original.items() if k != "extra_info"
            }
            seen.append(row["extra_info"]["id"])
    assert sorted(seen) == sorted(s.id for s in samples if n_right[s.id] <= 1)
    assert stats["outputs"] == {"rl_train.parquet": 9, "rl_val.parquet": 3}
    # a run without a val share removes a stale val file rather than leave it beside the new train file
    mine(path, gens, tmp_path / "a", MiningConfig(val_fraction=0.0))
    assert not (tmp_path / "a" / "rl_val.parquet").exists()


def test_duplicate_ids_and_missing_labels_in_the_data(tmp_path):
    samples = corpus(3)
    rows = [rl_row(s, i, RowOptions()) for i, s in enumerate(samples)]
    dup = rows + [rows[0]]
    pq.write_table(pa.Table.from_pylist(dup, schema=RL_SCHEMA), tmp_path / "dup.parquet")
    with pytest.raises(MiningError, match="row 3: id 'row-0000' already used by row 0"):
        read_row_meta(tmp_path / "dup.parquet")
    rows[1] = {**rows[1], "reward_model": {"style": "rule", "ground_truth": {"prompt_label": None,
                                                                             "response_label": None}}}  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), tmp_path / "nolabel.parquet")
    with pytest.raises(MiningError, match="row 1 \\(id 'row-0001'\\).*prompt_label"):
        read_row_meta(tmp_path / "nolabel.parquet")


def run_mine(*argv: str) -> int:
    return cli_main(["mine", *argv])


def test_cli_end_to_end_with_sharded_generations(data, tmp_path, capsys):
    path, samples, n_right = data
    gens = answers(samples, n_right)
    shards = tmp_path / "gen"
    write_generations(shards / "shard-00000.parquet", gens[:50])
    write_generations(shards / "shard-00001.parquet", gens[50:])
    out = tmp_path / "mined"
    args = ["--data", str(path), "--generations", str(shards), "--out", str(out)]
    assert run_mine(*args, "--max-correct", "1", "--sample-num", "10", "--seed", "7") == 0
    printed = capsys.readouterr().out
    assert "right answers per row:" in printed and "selected: 10 (train 8, val 2)" in printed
    stats = json.loads((out / "mining_stats.json").read_text())
    assert stats["inputs"] == {"data": str(path), "generations": [str(p) for p in sorted(shards.iterdir())]}
    assert stats["config"]["sample_num"] == 10 and stats["totals"]["kept"] == 12
    assert stats["totals"]["histogram"] == {str(c): 6 for c in range(5)}
    first = digests(out)
    assert run_mine(*args, "--max-correct", "1", "--sample-num", "10", "--seed", "7") == 0
    assert digests(out) == first
    assert run_mine(*args, "--sample-num", "all", "--keep-all-modality", "image", "--parse", "compat") == 0
    assert json.loads((out / "mining_stats.json").read_text())["totals"]["selected"] == 6 + 10 - 2

    # bad flags, paths and kinds: exit 2; bad generations: exit 1; nothing half-written
    def fails(code: int, needle: str, *argv: str) -> None:
        assert run_mine(*argv) == code
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err

    fails(2, "k must be", *args, "--k", "0")
    fails(2, "max_correct", *args, "--max-correct", "9")
    fails(2, "--data: no file", "--data", str(tmp_path / "nope.parquet"), *args[2:])
    fails(2, "--generations: no generation parquet", *args[:2], "--generations", str(tmp_path / "x"), *args[4:])
    pq.write_table(pa.Table.from_pylist([], schema=SFT_SCHEMA), tmp_path / "sft.parquet")
    fails(2, "holds sft rows, expected rl", "--data", str(tmp_path / "sft.parquet"), *args[2:])
    fails(2, "holds gr_vl_verl rl rows, not generations", *args[:2], "--generations", str(path), *args[4:])
    fails(2, "exists and is not a folder", *args[:4], "--out", str(path))  # before any work, in either mode
    fails(2, "exists and is not a folder", *args[:2], "--model", str(tmp_path), "--out", str(path))
    write_generations(shards / "shard-00002.parquet", [gen("stranger", 0, "x")])
    before = digests(out)
    fails(1, "'stranger'", *args)
    assert digests(out) == before
    (shards / "shard-00002.parquet").unlink()
    write_generations(shards / "shard-00002.parquet", [gens[0]])  # the same (id, sample) in two shards
    fails(1, "appears more than once", *args)
    (shards / "shard-00002.parquet").unlink()
    write_generations(shards / "shard-00000.parquet", gens[:40])  # rows 0-9 lose answers
    fails(1, "of the first 4 answers", *args, "--strict")
    absent = {"p_harmful_request": None, "p_harmful_response": None}  # written without: read as null
    assert list(read_generations(shards))[0] == {**gens[0], **absent}


def test_generations_written_elsewhere_are_mined_by_their_columns(data, tmp_path, capsys):
    """A parquet without our schema metadata but with the generation columns and types (another tool's, with
    an extra column, wider ints and large strings) is mined like a `gr-vl generate` shard, with a warning; one
    without a column, or with a wrong type, is refused naming it."""
    path, samples, n_right = data
    gens = answers(samples, n_right)
    ours = write_generations(tmp_path / "ours" / "shard-00000.parquet", gens)
    foreign = pa.table(
        {
            "id": pa.array([g["id"] for g in gens], pa.large_string()),
            "sample": pa.array([g["sample"] for g in gens], pa.int64()),
            "output": pa.array([g["output"] for g in gens], pa.large_string()),
            "output_tokens": pa.array([g["output_tokens"] for g in gens], pa.int64()),
            "finish_reason": [g["finish_reason"] for g in gens],
            "model": ["other-tool"] * len(gens),
        }
    )
    pq.write_table(foreign, tmp_path / "foreign.parquet")
    assert run_mine("--data", str(path), "--generations", str(ours), "--out", str(tmp_path / "a")) == 0
    capsys.readouterr()
    assert run_mine("--data", str(path), "--generations", str(tmp_path / "foreign.parquet"), "--out",
                    str(tmp_path / "b")) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "foreign.parquet: not written by `gr-vl generate`" in err
    for name in ("rl_train.parquet", "rl_val.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for table, message in (
        (foreign.drop(["finish_reason"]), "no column `finish_reason`"),
        (foreign.set_column(1, "sample", pa.array([str(g["sample"]) for g in gens])), "column `sample` is string"),
    ):
        pq.write_table(table, tmp_path / "bad.parquet")
        assert run_mine("--data", str(path), "--generations", str(tmp_path / "bad.parquet"), "--out",
                        str(tmp_path / "c")) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert run_mine("--data", str(path), "--generations", str(path), "--out", str(tmp_path / "c")) == 2
    assert "holds gr_vl_verl rl rows, not generations" in capsys.readouterr().err


def test_model_mode_generates_the_k_answers_then_mines(data, tmp_path, tiny_model_dir, capsys):
    """--model: the k answers come from the Ray Data generation pipeline (tiny model, transformers backend)
    into OUT/generations, with the paper's sampling defaults, and mining reads exactly those."""
    path, samples, _ = data
    out = tmp_path / "mined"
    argv = ["--data", str(path), "--out", str(out), "--k", "2", "--sample-num", "all", "--val-fraction", "0.25"]
    gen_flags = ["--model", str(tiny_model_dir), "--backend", "transformers", "--max-tokens", "8", "--no-progress"]
    done = run_cli(["mine", *argv, *gen_flags])  # generation starts Ray: in a child process
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "generations" / "generate_manifest.json").read_text())
    settings = json.dumps(manifest)
    assert '"temperature": 1.0' in settings and '"top_p": 0.95' in settings and '"n": 2' in settings
    assert '"min_pixels": 262144' in settings  # mining sees the images as the RL config bounds them
    gens = list(read_generations(out / "generations"))
    assert sorted((g["id"], g["sample"]) for g in gens) == sorted((s.id, j) for s in samples for j in range(2))
    # mining the same generations by hand gives the same outputs: --model is generation + --generations
    by_hand = tmp_path / "by_hand"
    assert run_mine(*argv[:2], "--out", str(by_hand), *argv[4:], "--generations", str(out / "generations")) == 0
    for name in ("rl_train.parquet", "rl_val.parquet"):
        assert (out / name).read_bytes() == (by_hand / name).read_bytes()
    # a random tiny model answers nothing in the trained format: every row has 0 right answers and is kept
    stats = json.loads((out / "mining_stats.json").read_text())
    assert stats["totals"]["histogram"] == {"0": len(samples), "1": 0, "2": 0}
    capsys.readouterr()
    assert run_mine(*argv) == 2  # neither --model nor --generations
    assert "exactly one of --model" in capsys.readouterr().err
