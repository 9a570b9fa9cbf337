"""The guard API (`load_guard(...).classify(items)`) and `gr-vl classify`, on the tiny Qwen2.5-VL.

The tiny model's weights are random, so its labels are mostly None: these tests check the shape of results,
that prompts and images are the training / evaluation ones, that outputs and token counts are what the model
generates, and that bad items are refused before any generation, naming the item.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib

import pyarrow.parquet as pq
import pytest
from data_helpers import VLTRAIN, png
from PIL import Image
from ray_driver import run_in_group

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.images import EVAL_MAX_PIXELS, EVAL_MIN_PIXELS, ImagePolicy, normalize_image
from gr_vl_verl.data.schemas import read_prepared
from gr_vl_verl.generation import GenerationConfig
from gr_vl_verl.generation.engines import TransformersEngine
from gr_vl_verl.generation.prompts import build_request
from gr_vl_verl.guard import RESULT_KEYS, Guard, GuardInputError, load_guard, prepare_item, prepare_items
from gr_vl_verl.protocol import INSTRUCTION, LABELS, build_messages, format_answer, parse_answer, predicted_labels

MAX_TOKENS = 6
IMAGE = VLTRAIN / "image" / "img_000.png"


@pytest.fixture(scope="module")
def guard(tiny_model_dir) -> Guard:
    return load_guard(tiny_model_dir, backend="transformers", max_tokens=MAX_TOKENS, device="cpu")


def items() -> list[dict]:
    return [
        {"request": "How can I get into my neighbour's email account?"},
        {"request": "Tell me how to build a weapon.", "response": "I cannot help with that."},
        {"image": str(IMAGE)},
        {"image": Image.open(IMAGE), "request": "Describe this picture."},
        {"image": IMAGE.read_bytes(), "request": "Is it dangerous?", "response": "It shows a kitchen knife."},
    ]


def cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    rc = cli_main(["classify", *argv])
    captured = capsys.readouterr()
    return rc, captured.out.splitlines(), captured.err.strip()


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------
def test_load_guard_is_importable_from_the_package_without_the_heavy_stack():
    code = (
        "import sys\n"
        "from gr_vl_verl import load_guard\n"
        "import gr_vl_verl, gr_vl_verl.guard\n"
        "assert load_guard is gr_vl_verl.guard.load_guard and 'load_guard' in dir(gr_vl_verl)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'verl', 'ray', 'vllm') if m in sys.modules))"
    )
    done = run_in_group([sys.executable, "-c", code], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    import gr_vl_verl

    with pytest.raises(AttributeError, match="has no attribute 'load_gaurd'"):
        gr_vl_verl.load_gaurd  # noqa: B018


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
def test_classify_gives_one_result_per_item_in_order(guard):
    batch = items()
    results = guard.classify(batch)
    assert len(results) == len(batch)
    for item, result in zip(batch, results, strict=True):
        assert tuple(result) == RESULT_KEYS
        assert result["request"] in (*LABELS, None)
        assert result["response"] in (*LABELS, None)
        if "response" not in item:
            assert result["response"] is None  # nothing to judge
        # the labels and the reasoning are the protocol's reading of the output (strict, the default mode)
        labels = predicted_labels(result["output"], "strict")
        assert result["request"] == labels.prompt_label
        assert result["response"] == (labels.response_label if "response" in item else None)
        think = parse_answer(result["output"]).think
        assert result["reasoning"] == (think.strip() if think is not None else None)
        assert isinstance(result["output"], str) and result["output"]
        assert type(result["output_tokens"]) is int and 1 <= result["output_tokens"] <= MAX_TOKENS
    # a result depends on its item only, not on the batch around it
    assert [guard.classify([item])[0] for item in items()] == results
    assert len({r["output"] for r in results}) > 1  # the order check above means something


def test_output_and_token_count_are_what_the_model_generates(guard, tiny_model_dir):
    """The guard's output and ``output_tokens`` against ``generate`` called directly on a freshly loaded model:
    the count is the number of generated token ids (end of sequence included), and the output their decoding."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = processor.tokenizer
    for item in items()[:2]:
        messages = build_messages(item["request"], item.get("response"))
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1, repetition_penalty=1.0
            )
        ids = out[0, inputs["input_ids"].shape[1] :].tolist()
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        result = guard.classify([item])[0]
        assert result["output"] == tokenizer.decode(ids, skip_special_tokens=True)
        assert result["output_tokens"] == len(ids)


def test_guard_answers_benchmark_rows_as_the_eval_pipeline_does(guard, eval_parquet, tiny_model_dir):
    """Each eval parquet row through the generation engine (what `gr-vl eval` runs) and the same sample as a guard
    item give the same output: same prompt, same image bytes, same pixels. The guard's default bounds are the
    evaluation ones, as the eval parquet's images and the processor bounds `gr-vl eval` gives an eval parquet."""
    assert guard.image_policy == ImagePolicy.evaluation()
    assert guard.config.pixels == {"min_pixels": EVAL_MIN_PIXELS, "max_pixels": EVAL_MAX_PIXELS}
    engine = TransformersEngine(
        GenerationConfig(
            model=str(tiny_model_dir),
            backend="transformers",
            max_tokens=MAX_TOKENS,
            progress=False,
            min_pixels=EVAL_MIN_PIXELS,
            max_pixels=EVAL_MAX_PIXELS,
        )  # fmt: skip
    )
    rows = pq.read_table(eval_parquet).to_pylist()
    samples = list(read_prepared(eval_parquet))
    guard_items = []
    for s in samples:
        item = {"request": s.request, "response": s.response}
        if s.images:
            (item["image"],) = s.images
        guard_items.append(item)
    # The prompt messages are the parquet's, byte for byte, except that a text benchmark's own prompt (which the
    # eval row keeps verbatim, as the released evaluator sent it) ends in a blank line the template's lacks.
    guard_messages = [prepare_item(i, "x").messages for i in guard_items]
    same = [k for k, (m, r) in enumerate(zip(guard_messages, rows, strict=True)) if m == r["prompt"]]
    for k, (m, r) in enumerate(zip(guard_messages, rows, strict=True)):
        if k not in same:
            assert r["modality"] == "text" and r["prompt"][-1]["content"] == m[-1]["content"] + "\n", r["id"]
    assert {rows[k]["modality"] for k in same} == {"image", "text_image"}
    results = guard.classify([guard_items[k] for k in same])
    completions = engine.generate([build_request(rows[k], engine.processor) for k in same])
    assert [(r["output"], r["output_tokens"]) for r in results] == [(c[0].text, c[0].tokens) for c in completions]


def test_max_tokens_applies_to_one_call(guard):
    item = [items()[0]]
    full, short = guard.classify(item)[0], guard.classify(item, max_tokens=2)[0]
    assert full["output_tokens"] > 2, "the answer runs past 2 tokens, so the limit cuts it"
    assert short["output_tokens"] == 2 and full["output"].startswith(short["output"])  # greedy: the same start
    assert guard.classify(item)[0]["output_tokens"] == guard.classify(item, max_tokens=MAX_TOKENS)[0]["output_tokens"]
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        guard.classify(item, max_tokens=0)


class _CannedEngine:
    """Answers each request with the next canned text, in the engines' ``Completion`` shape, and records what
    the guard asked for. It stands at the guard's engine seam (what a trained model would say cannot be made to
    order); the real engines run in test_serve.py, test_model_families_vllm.py and below."""

    def __init__(self, answers: list[str], processor):
        self.answers = answers
        self.processor = processor  # the guard builds each request with the model's real processor
        self.calls: list = []

    def generate(self, requests, max_tokens=None):
        from gr_vl_verl.generation.engines import Completion

        self.calls.append((requests, max_tokens))
        return [[Completion(text, len(text), "stop")] for text in self.answers[: len(requests)]]


def test_labels_and_reasoning_in_each_parse_mode(tiny_model_dir):
    """Answers a trained guard gives: labels in each parse mode, the reasoning, no response label without a
    response, one request per item with its image, a max_tokens override for one call only."""
    well_formed = format_answer("The request asks for a weapon.", "harmful", "unharmful")  # the trained format
    no_think = "<result>Request: unharmful\nResponse: harmful</result>"
    cut_off = "<think>\nStep 1: the image shows"
    answers = [well_formed, well_formed, no_think, cut_off, well_formed]
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = GenerationConfig(model=str(tiny_model_dir), backend="transformers", max_tokens=100)
    engine = _CannedEngine(answers, processor)
    guard = Guard(engine, config, "strict", ImagePolicy())
    batch = items()
    results = guard.classify(batch, max_tokens=7)
    requests, max_tokens = engine.calls[-1]
    assert len(requests) == len(batch) and [bool(r.images) for r in requests] == ["image" in i for i in batch]
    assert max_tokens == 7
    assert results[0] == {"request": "harmful", "response": None, "reasoning": "The request asks for a weapon.",
                          "output": well_formed, "output_tokens": len(well_formed),
                          "p_harmful": {"request": None, "response": None},  # canned text: no log-probs
                          "label_source": {"request": "text", "response": "text"}}  # fmt: skip
    assert (results[1]["request"], results[1]["response"]) == ("harmful", "unharmful")  # item 1 has a response
    assert (results[2]["request"], results[2]["reasoning"]) == (None, None)  # strict: no <think>, no labels
    assert (results[3]["request"], results[3]["reasoning"]) == (None, None)  # cut off before </think>
    assert results[4]["response"] == "unharmful"
    guard.classify(batch)
    assert engine.calls[-1][1] in (None, 100)  # the override was for one call
    compat = Guard(_CannedEngine(answers, processor), config, "compat", ImagePolicy()).classify(batch)
    assert [(r["request"], r["response"]) for r in compat] == [
        ("harmful", None), ("harmful", "unharmful"), ("unharmful", None), (None, None), ("harmful", "unharmful"),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Items: the training prompt, prep's image bounds, clear refusals
# --------------------------------------------------------------------------------------------------
def test_an_item_becomes_the_training_prompt_with_the_evaluation_image_bounds():
    raw = png(40, 30)
    by_bytes = prepare_item({"request": " Is this safe? ", "image": raw, "response": "Yes."}, "x")
    assert by_bytes.messages == build_messages("Is this safe?", "Yes.", 1)
    assert by_bytes.messages[0] == {"role": "system", "content": INSTRUCTION}
    assert by_bytes.images == (normalize_image(raw, ImagePolicy.evaluation()),) and by_bytes.has_response
    with Image.open(io.BytesIO(by_bytes.images[0])) as img:  # 1,200 pixels: scaled up to the evaluator's 3,136
        assert EVAL_MIN_PIXELS <= img.width * img.height < 2 * EVAL_MIN_PIXELS
    assert prepare_item({"image": Image.open(io.BytesIO(raw)), "request": "Is this safe?", "response": "Yes."},
                        "x") == by_bytes  # fmt: skip
    path = prepare_item({"image": IMAGE}, "x")
    assert path.images == (normalize_image(IMAGE, ImagePolicy.evaluation()),) and not path.has_response
    no_response = prepare_item({"request": "hi", "response": "None"}, "x")
    assert no_response.messages == build_messages("hi", None) and not no_response.has_response


def _bomb() -> bytes:
    """A PNG header claiming 100000 x 100000 pixels: refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({}, "an item needs a request, an image, or both"),
        ({"request": "   ", "response": "Sure."}, "an item needs a request, an image, or both"),
        ({"image": "MISSING"}, "image file not found: "),
        ({"image": b"hello, not an image"}, "<19 bytes>: cannot decode"),
        ({"image": "BOMB"}, "could be decompression bomb"),
        ({"image": Image.new("1", (9000, 9000))}, "image 9000x9000 = 81000000 pixels > max_source_pixels"),
        ({"image": png(2000, 5)}, "aspect ratio 2000x5 exceeds 200"),
        ({"request": "hi", "reponse": "Sure."}, "unknown key(s) ['reponse']"),
        ({"request": 3}, "`request` must be a string, got int"),
        ({"image": 3.5}, "`image` must be a path, bytes or a PIL image, got float"),
        ({"request": "look: <image>"}, "request text contains a literal '<image>'"),
        ("How do I pick a lock?", "an item is a dict with request/image/response, got str"),
    ],
)
def test_bad_items_are_refused_naming_the_item(guard, tmp_path, bad, message):
    if isinstance(bad, dict) and bad.get("image") in ("MISSING", "BOMB"):
        bad = {"image": tmp_path / "missing.png" if bad["image"] == "MISSING" else _bomb()}
    for call in (prepare_items, guard.classify):  # the guard refuses before generating anything
        with pytest.raises(GuardInputError) as e:
            call([{"request": "fine"}, bad])
        assert str(e.value).startswith("items[1]: ") and message in str(e.value)
        assert len(str(e.value).splitlines()) == 1


def test_items_must_be_a_list():
    with pytest.raises(GuardInputError, match="wrap it in a list"):
        prepare_items({"request": "one item, not a list"})


def test_load_guard_refuses_bad_settings(tiny_model_dir):
    with pytest.raises(ValueError, match="model path not found: /no/such/model"):
        load_guard("/no/such/model", backend="transformers")
    with pytest.raises(ValueError, match="mode must be one of"):
        load_guard(tiny_model_dir, backend="transformers", mode="loose")
    with pytest.raises(ValueError, match="device must be one of"):
        load_guard(tiny_model_dir, backend="transformers", device="tpu")
    with pytest.raises(ValueError, match="vLLM here is its CPU build: device='cuda'"):
        load_guard(tiny_model_dir, backend="vllm", device="cuda")  # the stack installs vLLM's CPU build


# --------------------------------------------------------------------------------------------------
# gr-vl classify
# --------------------------------------------------------------------------------------------------
def test_cli_single_item_prints_one_json_object(guard, tiny_model_dir, capsys):
    item = {"request": "Tell me how to build a weapon.", "response": "I cannot help with that."}
    argv = ["--model", str(tiny_model_dir), "--backend", "transformers", "--device", "cpu",
            "--max-tokens", str(MAX_TOKENS), "--request", item["request"], "--response", item["response"]]  # fmt: skip
    rc, out, _ = cli(argv, capsys)
    assert rc == 0 and len(out) == 1
    assert json.loads(out[0]) == guard.classify([item])[0]


def test_cli_input_file_keeps_order_and_count(guard, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "batch"
    (folder / "pics").mkdir(parents=True)
    (folder / "pics" / "a.png").write_bytes(IMAGE.read_bytes())
    lines = [
        {"request": "How do I bake bread at home?"},
        {"image": "pics/a.png"},  # relative to the file's folder, not the working directory
        {"image": "pics/a.png", "request": "Is it dangerous?", "response": "It shows a kitchen knife."},
        {"request": "Tell me how to build a weapon.", "response": "I cannot help with that."},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[2:]) + "\n"
    (folder / "items.jsonl").write_text(text)
    argv = ["--model", str(tiny_model_dir), "--backend", "transformers", "--device", "cpu",
            "--max-tokens", str(MAX_TOKENS), "--input", str(folder / "items.jsonl")]  # fmt: skip
    rc, out, _ = cli(argv, capsys)
    assert rc == 0 and len(out) == len(lines)  # the blank line is not an item
    expected = guard.classify([{**x, "image": folder / x["image"]} if "image" in x else x for x in lines])
    assert [json.loads(line) for line in out] == expected


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"request": "hi"}\n{"image": "nope.png"}\n', [], "items.jsonl line 2: image file not found: "),
        ('{"request": "hi"}\n\n{"response": "Sure."}\n', [], "items.jsonl line 3: an item needs a request, an image"),
        ('{"request": "hi"}\n{"request": "hi"\n', [], "items.jsonl line 2: not JSON"),
        ('{"request": "hi", "id": 7}\n', [], "items.jsonl line 1: unknown key(s) ['id']"),
        ("\n\n", [], "no items (the file is empty)"),
        ('{"request": "hi"}\n', ["--request", "hi"], "--input cannot be combined with --request"),
        (None, [], "--input: file not found"),
    ],
)
def test_cli_input_errors_exit_2_naming_the_line(tiny_model_dir, tmp_path, capsys, content, extra, message):
    path = tmp_path / "items.jsonl"
    if content is not None:
        path.write_text(content)
    rc, out, err = cli(["--model", str(tiny_model_dir), "--backend", "transformers", "--input", str(path), *extra],
                       capsys)  # fmt: skip
    assert rc == 2 and out == [] and len(err.splitlines()) == 1
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "/no/such/picture.png"], "the item: image file not found: /no/such/picture.png"),
        (["--response", "Sure."], "the item: an item needs a request, an image, or both"),
        ([], "give --request and/or --image (one item), or --input FILE.jsonl"),
        (["--request", "hi", "--model", "/no/such/model"], "model path not found: /no/such/model"),
    ],
)
def test_cli_item_errors_exit_2(tiny_model_dir, capsys, argv, message):
    rc, out, err = cli(["--model", str(tiny_model_dir), "--backend", "transformers", *argv], capsys)
    assert rc == 2 and out == [] and len(err.splitlines()) == 1 and message in err
