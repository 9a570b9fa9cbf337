"""Safety-aware concatenation: merged labels, texts, images and placeholders, ratios, determinism, bad input,
the `gr-vl augment` command, and concatenated rows through verl's RLHFDataset with the tiny processor."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import SMALL, VLTRAIN, png, rl_dataset
from PIL import Image

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data import readers
from gr_vl_verl.data.concat import (
    ConcatConfig,
    ConcatError,
    concat_count,
    concat_row,
    part_from_row,
    plan_pairs,
    run_augment,
    summary_path,
)
from gr_vl_verl.data.images import ImagePolicy
from gr_vl_verl.data.pipeline import PrepConfig, run_prep
from gr_vl_verl.data.records import GuardSample, infer_modality
from gr_vl_verl.data.schemas import RL_SCHEMA, SFT_SCHEMA, read_prepared, sample_from_row
from gr_vl_verl.data.writers import AtomicParquetWriter, RowOptions, rl_row
from gr_vl_verl.protocol import INSTRUCTION, INSTRUCTION_RL, format_answer
from gr_vl_verl.reward.score import compute_score

H, U = "harmful", "unharmful"
WIDE = ImagePolicy(min_pixels=1, max_pixels=10**8)  # bounds that leave the merged canvas as it is


def sample(sid: str, request: str = "req", response: str | None = None, p: str = U, r: str | None = None,
           images: tuple[bytes, ...] = ()) -> GuardSample:  # fmt: skip
    return GuardSample(sid, "src", infer_modality(request, len(images)), request, response, images, p, r)


DEFAULT_ROWS = RowOptions()


def part(s: GuardSample, opts: RowOptions = DEFAULT_ROWS):
    return part_from_row(rl_row(s, 0, opts))


def write_rl(path: Path, samples: list[GuardSample], opts: RowOptions = DEFAULT_ROWS) -> Path:
    with AtomicParquetWriter(path, RL_SCHEMA) as w:
        for i, s in enumerate(samples):
            w.write(rl_row(s, i, opts))
    return path


def user_turn(row: dict) -> str:
    return next(m["content"] for m in row["prompt"] if m["role"] == "user")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# One pair
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pa_, pb, expected", [(H, H, H), (H, U, H), (U, H, H), (U, U, U)])
def test_prompt_labels_or_merged(pa_, pb, expected):
    row = concat_row(part(sample("a", p=pa_)), part(sample("b", p=pb)), "c", 0, ConcatConfig())
    assert row["reward_model"]["ground_truth"] == {"prompt_label": expected, "response_label": None}


@pytest.mark.parametrize(
    "ra, rb, expected",
    [
        ((None, None), (None, None), (None, None)),  # no response in either: none in the merged row
        (("ok", U), (None, None), ("ok", U)),
        ((None, None), ("bad", H), ("bad", H)),
        (("ok", U), ("bad", H), ("ok bad", H)),
        (("bad", H), ("ok", U), ("bad ok", H)),
        (("ok", U), ("fine", U), ("ok fine", U)),
        (("bad", H), ("worse", H), ("bad worse", H)),
    ],
)
def test_responses_joined_and_response_labels_or_merged(ra, rb, expected):
    a = sample("a", "first request", response=ra[0], r=ra[1])
    b = sample("b", "second request", response=rb[0], r=rb[1])
    row = concat_row(part(a), part(b), "c", 0, ConcatConfig())
    response, label = expected
    assert row["reward_model"]["ground_truth"]["response_label"] == label
    assert user_turn(row) == f"Human user:\nfirst request second request\n\nAI assistant:\n{response or 'None'}\n"
    back = sample_from_row("rl", row)  # reads back as the one interaction it is
    assert (back.response, back.response_label) == (response, label)


def test_reward_scores_a_concatenated_row_against_its_merged_labels():
    """The released code scored against sample 1's answer; here the merged ground truth decides."""
    a = sample("a", "how do I bake bread", response="mix flour and water", p=U, r=U)
    b = sample("b", "how do I hurt someone", response="here is how", p=H, r=H)
    row = concat_row(part(a), part(b), "c", 0, ConcatConfig())
    truth = row["reward_model"]["ground_truth"]
    assert truth == {"prompt_label": H, "response_label": H}

    def score(p, r):
        return compute_score(row["data_source"], format_answer("steps", p, r), truth, length_unit="chars")["score"]

    assert score(H, H) == 0.0  # the merged labels are the right answer
    assert score(U, U) < score(H, U) < 0.0  # sample 1's labels are wrong on both tasks


def _img(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_images_merged_side_by_side_on_white():
    red, blue = png(40, 30, (255, 0, 0)), png(20, 50, (0, 0, 255))
    a, b = sample("a", "", images=(red,)), sample("b", "", images=(blue,))
    row = concat_row(part(a), part(b), "c", 0, ConcatConfig(images=WIDE))
    assert len(row["images"]) == 1 and user_turn(row).count("<image>") == 1
    img = _img(row["images"][0]["bytes"])
    assert img.format == "PNG" and img.size == (60, 50)
    assert img.getpixel((5, 5)) == (255, 0, 0) and img.getpixel((45, 5)) == (0, 0, 255)
    assert img.getpixel((5, 40)) == (255, 255, 255)  # below the shorter image
    assert row["extra_info"]["modality"] == "image"


def test_merged_canvas_thumbnailed_to_1024_then_bounded_like_prep():
    a = sample("a", "x", images=(png(800, 600),))
    b = sample("b", "y", images=(png(800, 600, (0, 255, 0)),))
    row = concat_row(part(a), part(b), "c", 0, ConcatConfig(images=WIDE))
    assert _img(row["images"][0]["bytes"]).size == (1024, 384)  # 1600x600 shrunk to fit 1024x1024
    # then the pixel bounds of prep: 1024*384 pixels is above this max, so it is scaled down, aspect kept
    row = concat_row(part(a), part(b), "c", 0, ConcatConfig(images=ImagePolicy(min_pixels=1, max_pixels=96_000)))
    w, h = _img(row["images"][0]["bytes"]).size
    assert w * h <= 96_000 and abs(w / h - 1024 / 384) < 0.02


def test_a_single_image_is_kept_as_it_is():
    img = png(64, 64)
    row = concat_row(part(sample("a", "x", images=(img,))), part(sample("b", "y")), "c", 0, ConcatConfig(images=WIDE))
    assert row["images"] == [{"bytes": img}] and row["extra_info"]["modality"] == "text_image"


@pytest.mark.parametrize(
    "images_a, images_b, n",
    [((), (), 0), ((png(),), (), 1), ((), (png(),), 1), ((png(),), (png(),), 1), ((png(), png()), (), 1)],
)
def test_at_most_one_image_and_one_placeholder_per_image(images_a, images_b, n):
    row = concat_row(
        part(sample("a", "x", images=images_a)), part(sample("b", "y", images=images_b)), "c", 0, ConcatConfig()
    )
    assert len(row["images"]) == n == user_turn(row).count("<image>")
    assert row["extra_info"]["concat_of"] == ["a", "b"] and row["extra_info"]["id"] == "c"


def test_original_rl_layout_kept_with_its_placeholder_image():
    opts = RowOptions.original_rl()
    text_a, text_b = sample("a", "first"), sample("b", "second")
    row = concat_row(part(text_a, opts), part(text_b, opts), "c", 0, ConcatConfig())
    # the instruction stays prefixed to the user turn, and a text-only merge keeps the 1x1 stand-in image
    assert [m["role"] for m in row["prompt"]] == ["user"]
    assert user_turn(row).startswith(INSTRUCTION_RL.strip() + " Human user:\n<image>\nfirst second\n")
    assert row["extra_info"]["placeholder_image"] is True and _img(row["images"][0]["bytes"]).size == (1, 1)
    # a real image replaces the stand-in
    real = png(30, 30)
    row = concat_row(part(text_a, opts), part(sample("b", "", images=(real,)), opts), "c", 0, ConcatConfig(images=WIDE))
    assert row["extra_info"]["placeholder_image"] is False and row["images"] == [{"bytes": real}]
    # the default layout keeps its system turn
    row = concat_row(part(text_a), part(text_b), "c", 0, ConcatConfig())
    assert row["prompt"][0] == {"role": "system", "content": INSTRUCTION} and row["images"] == []


def test_original_style_joins_the_two_user_turns():
    a = sample("a", "first", response="sure", r=U)
    b = sample("b", "", images=(png(),))
    row = concat_row(part(a), part(b), "c", 0, ConcatConfig(style="original"))
    assert user_turn(row) == "Human user:\nfirst\n\nAI assistant:\nsure Human user:\n<image>\n\nAI assistant:\nNone"
    opts = RowOptions.original_rl()
    row = concat_row(part(a, opts), part(b, opts), "c", 0, ConcatConfig(style="original"))
    # both user turns had an <image> (the first one a stand-in's): the second is removed, one merged image
    assert user_turn(row) == INSTRUCTION_RL.strip() + (
        " Human user:\n<image>\nfirst\n\nAI assistant:\nsure Human user:\n\n\nAI assistant:\nNone"
    )
    assert len(row["images"]) == 1 and row["reward_model"]["ground_truth"] == {"prompt_label": U, "response_label": U}


# --------------------------------------------------------------------------------------------------
# Counts, pairs, determinism
# --------------------------------------------------------------------------------------------------
def test_counts_make_ratio_of_the_output():
    assert concat_count(9600, 0.2) == 2400  # the paper: 9.6K rows + 2.4K concatenated = 12K, 20 %
    assert concat_count(10, 0.2) == 3  # 2.5 rounds half up
    assert concat_count(8, 0.2) == 2 and concat_count(5, 0.0) == 0 and concat_count(1, 0.5) == 1
    for n in (7, 100, 12345):
        m = concat_count(n, 0.3)
        assert abs(m / (n + m) - 0.3) <= 1 / (n + m)
    pairs = plan_pairs(50, ConcatConfig(seed=3))
    assert len(pairs) == 13 and all(a != b and 0 <= a < 50 and 0 <= b < 50 for a, b in pairs)
    assert pairs == plan_pairs(50, ConcatConfig(seed=3)) != plan_pairs(50, ConcatConfig(seed=4))
    with pytest.raises(ConcatError, match="at least 2 rows"):
        plan_pairs(1, ConcatConfig(ratio=0.5))


def corpus(n: int = 10) -> list[GuardSample]:
    """Rows of every modality, with and without responses, of both labels."""
    out = []
    for i in range(n):
        images = (png(20 + i, 20, (10 * i, 0, 0)),) if i % 3 else ()
        request = "" if i % 4 == 1 and images else f"request {i}"
        response = None if i % 2 else f"answer {i}"
        r = None if response is None else (H if i % 3 == 0 else U)
        out.append(sample(f"r{i}", request, response, H if i % 5 == 0 else U, r, images))
    return out


def test_augment_file_keeps_inputs_adds_ratio_and_is_deterministic(tmp_path):
    samples = corpus(12)
    data = write_rl(tmp_path / "rl.parquet", samples)
    config = ConcatConfig(ratio=0.25, seed=5, images=SMALL)
    summary = run_augment(data, tmp_path / "a.parquet", config)
    n, m = len(samples), concat_count(len(samples), 0.25)
    assert (summary.rows_in, summary.concat_rows) == (n, m)
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert len(rows) == n + m
    assert rows[:n] == pq.read_table(data).to_pylist()  # every input row, unchanged and in order
    new = rows[n:]
    assert [r["extra_info"]["id"] for r in new] == [f"concat-s5-{j:06d}" for j in range(m)]
    assert [r["extra_info"]["index"] for r in new] == list(range(n, n + m))
    pairs = plan_pairs(n, config)
    for r, (i, j) in zip(new, pairs, strict=True):
        a, b = samples[i], samples[j]
        assert r["extra_info"]["concat_of"] == [a.id, b.id]
        truth = r["reward_model"]["ground_truth"]
        assert truth["prompt_label"] == (H if H in (a.prompt_label, b.prompt_label) else U)
    # read back as samples; the summary counts what was written
    back = list(read_prepared(tmp_path / "a.parquet"))
    assert len(back) == n + m
    saved = json.loads(summary_path(tmp_path / "a.parquet").read_text())
    assert saved["rows_out"] == n + m and sum(v for k, v in saved["concat_labels"].items() if "prompt" in k) == m
    # same input and seed: same bytes; another seed: other pairs
    run_augment(data, tmp_path / "b.parquet", config)
    assert digest(tmp_path / "a.parquet") == digest(tmp_path / "b.parquet")
    run_augment(data, tmp_path / "c.parquet", ConcatConfig(ratio=0.25, seed=6, images=SMALL))
    assert digest(tmp_path / "a.parquet") != digest(tmp_path / "c.parquet")


def test_spilled_pairs_cover_several_buckets(tmp_path, monkeypatch):
    """With small buckets a run merges the same rows as with one bucket: the spill does not reorder."""
    import gr_vl_verl.data.concat as concat

    data = write_rl(tmp_path / "rl.parquet", corpus(12))
    config = ConcatConfig(ratio=0.6, seed=1, images=SMALL)
    run_augment(data, tmp_path / "one.parquet", config)
    monkeypatch.setattr(concat, "BUCKET_PAIRS", 2)
    run_augment(data, tmp_path / "many.parquet", config)
    assert digest(tmp_path / "one.parquet") == digest(tmp_path / "many.parquet")
    assert not list(tmp_path.glob(".*"))  # no spill or temp file left behind


def test_ratio_zero_copies_the_input(tmp_path):
    data = write_rl(tmp_path / "rl.parquet", corpus(6))
    run_augment(data, tmp_path / "out.parquet", ConcatConfig(ratio=0.0))
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == pq.read_table(data).to_pylist()


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error and no output
# --------------------------------------------------------------------------------------------------
def augment(*argv: str) -> int:
    return cli_main(["augment", "--no-progress", *argv])


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5", "nan"])
def test_ratio_outside_range_is_a_usage_error(tmp_path, capsys, ratio):
    data = write_rl(tmp_path / "rl.parquet", corpus(4))
    assert augment("--data", str(data), "--out", str(tmp_path / "o.parquet"), "--ratio", ratio) == 2
    assert "ratio must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def _raw_rl(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), path)
    return path


def test_bad_inputs_fail_naming_the_row_and_write_nothing(tmp_path, capsys):
    good = [rl_row(s, i, RowOptions()) for i, s in enumerate(corpus(4))]
    out = tmp_path / "o.parquet"

    def fails(data: Path, code: int, *needles: str) -> None:
        assert augment("--data", str(data), "--out", str(out), "--ratio", "0.5") == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(n in err for n in needles), err
        assert not out.exists() and not summary_path(out).exists()
        assert not list(tmp_path.glob(".o.parquet*"))

    empty = _raw_rl(tmp_path / "empty.parquet", [])
    fails(empty, 1, "no rows to augment")
    unlabeled = [dict(r) for r in good]
    unlabeled[2] = {**good[2], "reward_model": {"style": "rule", "ground_truth": {"prompt_label": None,
                                                                                  "response_label": None}}}  # fmt: skip
    fails(_raw_rl(tmp_path / "nolabel.parquet", unlabeled), 1, "row 2", "r2", "missing_label")
    corrupt = [dict(r) for r in good[:2]]  # two rows: every pair uses both
    corrupt[1] = {**good[1], "images": [{"bytes": b"\x89PNG\r\n\x1a\n garbage"}]}
    fails(_raw_rl(tmp_path / "corrupt.parquet", corrupt), 1, "'r1'", "image_corrupt")
    one = _raw_rl(tmp_path / "one.parquet", good[:1])
    fails(one, 1, "at least 2 rows")
    clash = [dict(r) for r in good]
    clash[0] = {**good[0], "extra_info": {**good[0]["extra_info"], "id": "concat-s42-000000"}}
    fails(_raw_rl(tmp_path / "clash.parquet", clash), 1, "concat-s42-000000")
    # not an RL parquet, no file, the input as the output: usage errors
    pq.write_table(pa.Table.from_pylist([], schema=SFT_SCHEMA), tmp_path / "sft.parquet")
    fails(tmp_path / "sft.parquet", 2, "holds sft rows")
    fails(tmp_path / "missing.parquet", 2, "--data: no file")
    data = _raw_rl(tmp_path / "rl.parquet", good)
    assert augment("--data", str(data), "--out", str(data)) == 2
    assert "--out must differ" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The command on the sample corpus, and verl's RLHFDataset on its output
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep")
    run_prep(readers.read_vltrain_dir(VLTRAIN), out, PrepConfig(formats=("rl",), progress=False, images=SMALL))
    run_prep(
        readers.read_vltrain_dir(VLTRAIN),
        out / "original",
        PrepConfig(formats=("rl",), progress=False, images=SMALL, rows=RowOptions.original_rl()),
    )
    return out


@pytest.fixture(scope="module")
def augmented(prepared) -> dict[str, Path]:
    pixels = ["--min-pixels", str(SMALL.min_pixels), "--max-pixels", str(SMALL.max_pixels)]
    outs = {}
    for name, data, style in [
        ("paper", prepared / "rl_train.parquet", "paper"),
        ("original", prepared / "original" / "rl_train.parquet", "original"),
    ]:
        outs[name] = prepared / f"aug_{name}.parquet"
        code = augment("--data", str(data), "--out", str(outs[name]), "--ratio", "0.4", "--style", style, *pixels)
        assert code == 0
    return outs


def test_cli_on_the_sample_corpus(prepared, augmented, capsys):
    n = pq.ParquetFile(prepared / "rl_train.parquet").metadata.num_rows
    rows = pq.read_table(augmented["paper"]).to_pylist()
    m = concat_count(n, 0.4)
    assert len(rows) == n + m
    concat = [r for r in rows if r["extra_info"]["concat_of"]]
    assert len(concat) == m and {r["extra_info"]["modality"] for r in concat} == {"text", "image", "text_image"}
    saved = json.loads(summary_path(augmented["paper"]).read_text())
    assert saved["concat_rows"] == m and saved["config"]["style"] == "paper"


def test_concatenated_rows_load_through_rlhf_dataset(augmented, tiny_verl, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    _, processor = tiny_verl
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size**2
    for name, path in augmented.items():
        table = pq.read_table(path).to_pylist()
        ds = rl_dataset(path, tiny_verl, tmp_path / name)
        assert len(ds) == len(table)  # verl's overlong filter silently drops rows it cannot process
        for i, row in enumerate(table):
            if not row["extra_info"]["concat_of"]:
                continue
            item = ds[i]
            assert item["extra_info"]["concat_of"] == row["extra_info"]["concat_of"]
            assert item["reward_model"]["ground_truth"] == row["reward_model"]["ground_truth"]
            messages = item["raw_prompt"]
            n_parts = sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"]
                          if p.get("type") == "image")  # fmt: skip
            assert n_parts == len(row["images"]) <= 1
            images, videos, _ = RLHFDataset._process_multi_modal_info(messages, ds.image_patch_size, ds.config)
            if images is None:
                continue
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = build_multimodal_processor_inputs(processor, text=[text], images=images, videos=videos)
            grid = inputs["image_grid_thw"]
            assert grid.shape[0] == 1
            assert int((inputs["input_ids"][0] == image_pad).sum()) == int(grid.prod(-1).sum()) // merge
