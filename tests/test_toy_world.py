"""The toy guard world: seeded byte for byte, read by the real readers, labels that follow its rules, held out."""

import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from gr_vl_verl.cli import main
from gr_vl_verl.data.toy_world import (
    HARMFUL_INTENTS,
    HELD_OUT_OBJECTS,
    HELD_OUT_SETTINGS,
    TRAIN_OBJECTS,
    TRAIN_SETTINGS,
    WorldConfig,
    generate,
)
from gr_vl_verl.protocol import parse_user_content, predicted_labels

SMALL = dict(text=24, image=12, text_image=24, bench_text=6, bench_image=8, bench_text_image=10)
RED = (220, 20, 20)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate(out, WorldConfig(seed=3, **SMALL))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    generate(tmp_path / "again", WorldConfig(seed=3, **SMALL))
    generate(tmp_path / "other", WorldConfig(seed=4, **SMALL))
    first = tree_digest(world)
    assert first == tree_digest(tmp_path / "again")
    other = tree_digest(tmp_path / "other")
    assert set(other) == set(first)
    assert sum(first[k] != other[k] for k in first) > len(first) // 2


def test_refuses_a_non_empty_folder(world):
    with pytest.raises(FileExistsError, match="not empty"):
        generate(world, WorldConfig(seed=3, **SMALL))


def test_real_readers_take_it_unchanged(world, tmp_path):
    train, test = world / "GuardReasoner-VLTrain", world / "GuardReasoner-VLTest"
    assert main(["prep", "vltrain", "--data-root", str(train), "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["prep", "vltest", "--benchmark-dir", str(test / "benchmark"), "--image-dataset",
                 str(test / "images"), "--out", str(tmp_path), "--no-progress"]) == 0  # fmt: skip
    n_train = SMALL["text"] + SMALL["image"] + SMALL["text_image"]
    assert pq.read_metadata(tmp_path / "sft_train.parquet").num_rows == n_train
    assert pq.read_metadata(tmp_path / "rl_train.parquet").num_rows == n_train
    n_bench = 4 * SMALL["bench_text"] + SMALL["bench_image"] + SMALL["bench_text_image"]
    assert pq.read_metadata(tmp_path / "eval.parquet").num_rows == n_bench
    for name in ("vltrain_summary.json", "vltest_summary.json"):
        summary = json.loads((tmp_path / name).read_text())
        assert summary["dropped"] == [], name
        assert all(out["skipped"] == {} for out in summary["outputs"].values()), name


def _red(png: bytes) -> bool:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return any(px == RED for px in img.getdata())


def _train_records(world: Path):
    for f in sorted((world / "GuardReasoner-VLTrain").glob("*.json")):
        for line in f.read_text().splitlines():
            yield json.loads(line)


def test_labels_follow_the_rules(world):
    """Each training label is re-derived from what the row shows: the intent word, red pixels, the response."""
    root = world / "GuardReasoner-VLTrain"
    seen = {"text": 0, "image": 0}
    for rec in _train_records(world):
        user = parse_user_content(rec["messages"][1]["content"])
        gold = predicted_labels(rec["messages"][2]["content"])
        text_harm = any(re.search(rf"\bto {i} |\bI {i} ", user.request) for i in HARMFUL_INTENTS)
        image_harm = bool(rec["images"]) and _red((root / rec["images"][0][2:]).read_bytes())
        seen["text"] += text_harm
        seen["image"] += image_harm
        assert gold.prompt_label == ("harmful" if text_harm or image_harm else "unharmful"), rec
        if user.response is None:
            assert gold.response_label in (None, "unharmful")
        elif user.response.startswith("I cannot"):
            assert gold.response_label == "unharmful"
        elif "while you are at it" in user.response:
            assert gold.response_label == "harmful"
        else:
            assert gold.response_label == gold.prompt_label
    assert seen["text"] > 0 and seen["image"] > 0


def test_benchmarks_are_held_out(world):
    train_text = " ".join(parse_user_content(r["messages"][1]["content"]).request for r in _train_records(world))
    assert not any(o in train_text for o in HELD_OUT_OBJECTS + HELD_OUT_SETTINGS)
    bench = world / "GuardReasoner-VLTest" / "benchmark"
    for name in ("ToxicChat", "WildGuardTestPrompt", "HarmBenchResponse", "WildGuardTestResponse"):
        for row in json.loads((bench / f"{name}.json").read_text()):
            request = parse_user_content(row["input"][:-1]).request
            assert not any(o in request for o in TRAIN_OBJECTS + TRAIN_SETTINGS), (name, request)
    # no benchmark picture equals a training picture
    train_pngs = {p.read_bytes() for p in (world / "GuardReasoner-VLTrain").rglob("*.png")}
    assert not train_pngs & {p.read_bytes() for p in bench.rglob("*.png")}


def test_generator_is_pure():
    """The generator imports neither torch nor verl nor vLLM (``datasets`` only when it writes the images)."""
    import subprocess
    import sys

    code = (
        "import sys, gr_vl_verl.data.toy_world, gr_vl_verl.commands.toy_world\n"
        "print(sorted(m for m in ('torch', 'verl', 'vllm', 'transformers', 'ray', 'datasets') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
