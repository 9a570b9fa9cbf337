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
from gr_vl_verl.data.toy_world import BACKGROUNDS, BENIGN_INTENTS, HARMFUL_INTENTS, OBJECTS, WorldConfig, generate
from gr_vl_verl.protocol import parse_user_content, predicted_labels

SMALL = dict(text=24, image=32, text_image=24, bench_text=6, bench_image=8, bench_text_image=10)
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


def _pair(request: str) -> tuple[str, str] | None:
    for intent in HARMFUL_INTENTS + BENIGN_INTENTS:
        for obj in OBJECTS:
            if f" {intent} {obj} " in f" {request} ":
                return intent, obj
    return None


def _look(png: bytes) -> tuple[int, int] | None:
    """(background index, half holding the cross) of a picture with a cross; None without one."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = list(img.getdata())
    red = [i % img.width for i, px in enumerate(pixels) if px == RED]
    if not red:
        return None
    background = max(set(pixels), key=pixels.count)
    return BACKGROUNDS.index(background), int(sum(red) / len(red) >= img.width / 2)


def test_benchmarks_are_held_out(world):
    """No benchmark request pairs an intent with an object as a training request does; no benchmark cross sits on
    a background and in a half of the picture where a training cross does; every word and colour is shared."""
    train_pairs, train_looks = set(), set()
    root = world / "GuardReasoner-VLTrain"
    for rec in _train_records(world):
        pair = _pair(parse_user_content(rec["messages"][1]["content"]).request)
        train_pairs |= {pair} if pair else set()
        look = _look((root / rec["images"][0][2:]).read_bytes()) if rec["images"] else None
        train_looks |= {look} if look else set()
    bench = world / "GuardReasoner-VLTest" / "benchmark"
    bench_pairs = set()
    for name in ("ToxicChat", "WildGuardTestPrompt", "HarmBenchResponse", "WildGuardTestResponse"):
        for row in json.loads((bench / f"{name}.json").read_text()):
            pair = _pair(parse_user_content(row["input"][:-1]).request)
            assert pair is not None, row["input"]
            bench_pairs.add(pair)
    bench_looks = {_look(p.read_bytes()) for p in (bench / "HarmImageTest").glob("*.png")} - {None}
    assert train_pairs and bench_pairs and not train_pairs & bench_pairs
    assert train_looks and bench_looks and not train_looks & bench_looks
    assert {i for i, _ in bench_pairs} <= {i for i, _ in train_pairs}  # known words, new pairings
    assert {o for _, o in bench_pairs} <= {o for _, o in train_pairs}
    assert {b for b, _ in bench_looks} <= {b for b, _ in train_looks}
    train_pngs = {p.read_bytes() for p in root.rglob("*.png")}
    assert not train_pngs & {p.read_bytes() for p in bench.rglob("*.png")}


def test_generator_is_pure():
    """The generator imports neither torch nor verl nor vLLM (``datasets`` only when it writes the images)."""
    from purity import heavy_modules_loaded

    modules = ["gr_vl_verl.data.toy_world", "gr_vl_verl.data.toy_world_files", "gr_vl_verl.commands.toy_world"]
    assert heavy_modules_loaded(modules, ("torch", "verl", "vllm", "transformers", "ray", "datasets")) == []


def test_a_tiny_tokenizer_learned_on_the_world_reads_its_words_whole(world):
    """The demo's tokenizer learns on the world's training turns: its answers take fewer tokens than with the
    default tiny tokenizer, and every training word of a request is one token."""
    from gr_vl_verl.data.toy_world_files import training_texts
    from gr_vl_verl.tiny import build_tokenizer

    texts = training_texts(world / "GuardReasoner-VLTrain")
    assert len(texts) == 2 * (SMALL["text"] + SMALL["image"] + SMALL["text_image"])
    plain, learned = build_tokenizer(), build_tokenizer(extra_texts=texts)
    answers = texts[1::2]
    assert sum(len(learned(t)["input_ids"]) for t in answers) < 0.85 * sum(len(plain(t)["input_ids"]) for t in answers)
    for word in ("poison", "greenhouse", "vandalise"):
        assert len(learned.tokenize(" " + word)) == 1, word
