"""GuardSample validation, image checks and the streaming JSON reader (pure, fast)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from data_helpers import png
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gr_vl_verl.data.images import (
    ImagePolicy,
    bound_size,
    decode_image,
    merge_horizontal,
    normalize_image,
    normalize_image_bounds,
    placeholder_png,
)
from gr_vl_verl.data.readers import iter_json_rows, resolve_image_path
from gr_vl_verl.data.records import GuardSample, SampleError, require_training_labels


def sample(**kw) -> GuardSample:
    base = dict(
        id="a",
        source="s",
        modality="text",
        request=" hi ",
        response=None,
        images=(),
        prompt_label="Harmful",
        response_label=None,
    )
    base.update(kw)
    return GuardSample(**base)


# --------------------------------------------------------------------------------------------------
# GuardSample
# --------------------------------------------------------------------------------------------------
def test_sample_normalises_text_and_labels():
    s = sample(response=" None ", reasoning="  r ")
    assert (s.request, s.response, s.prompt_label, s.reasoning) == ("hi", None, "harmful", "r")
    assert s.tasks == ("prompt",)
    assert s.ground_truth == {"prompt_label": "harmful", "response_label": None}


@pytest.mark.parametrize(
    "kw, reason",
    [
        (dict(prompt_label="maybe"), "bad_label"),
        (dict(prompt_label=None), "missing_label"),
        (dict(response_label="harmful"), "bad_label"),  # a response label but no response
        (dict(modality="image"), "modality_mismatch"),
        (dict(modality="audio"), "bad_field"),
        (dict(request="", images=()), "missing_field"),
        (dict(id=""), "missing_field"),
        (dict(request="look <image> here"), "bad_field"),
        (dict(images=("not bytes",)), "bad_field"),
    ],
)
def test_sample_rejects_with_reason(kw, reason):
    with pytest.raises(SampleError) as err:
        sample(**kw)
    assert err.value.reason == reason
    assert "'a'" in str(err.value) or kw.get("id") == ""


def test_modality_follows_content():
    assert sample(modality="image", request="", images=(b"x",)).modality == "image"
    assert sample(modality="text_image", images=(b"x",)).modality == "text_image"


# The GuardReasoner text format: "Answers: " with its space, text around the blocks, a final newline.
ANSWER = (
    "Let me check.\n<think>\n## Step 1: it asks for a weapon.\n</think>\n"
    "<result>\nAnswers: \nRequest: harmful\nResponse: None\n</result>\n"
)


def test_answer_is_kept_as_written_and_gives_the_reasoning():
    s = sample(answer=ANSWER)
    assert s.answer == ANSWER and s.reasoning == "## Step 1: it asks for a weapon."
    assert sample(answer=ANSWER, reasoning=" ## Step 1: it asks for a weapon. ").answer == ANSWER
    assert sample(answer="<result>Request: harmful\nResponse: None</result>").reasoning is None


@pytest.mark.parametrize(
    "kw, reason, message",
    [
        (dict(answer=ANSWER, prompt_label="unharmful"), "bad_label", "answer says Request: harmful"),
        (dict(answer=ANSWER.replace("Response: None", "Response: harmful")), "bad_label", "Response: harmful"),
        (dict(answer="<think>x</think><result>Request: harmful</result>"), "bad_label", "no 'Response:"),
        (dict(answer=ANSWER, reasoning="other"), "bad_field", "reasoning differs"),
        (dict(answer=b"<think>"), "bad_field", "answer must be a string"),
    ],
)
def test_answer_must_agree_with_the_labels(kw, reason, message):
    with pytest.raises(SampleError, match=message) as err:
        sample(**kw)
    assert err.value.reason == reason


def test_training_rows_need_decided_labels():
    require_training_labels(sample(response="ok", response_label="unharmful"))
    with pytest.raises(SampleError, match="no response_label"):
        require_training_labels(sample(response="ok"))
    with pytest.raises(SampleError, match="prompt_label"):
        require_training_labels(sample(response="ok", prompt_label=None, response_label="harmful"))


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
@given(
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.integers(1, 10**6),
    st.integers(1, 10**7),
)
def test_bound_size_lands_in_bounds_and_keeps_aspect(w, h, lo, span):
    hi = lo * 2 + span  # the bounds any real setting uses are at least a factor 2 apart
    if max(w, h) / min(w, h) > 200:
        return  # refused before resizing (qwen_vl_utils limit)
    nw, nh = bound_size(w, h, lo, hi)
    if lo <= w * h <= hi:
        assert (nw, nh) == (w, h)
        return
    if w * h > hi:
        assert nw * nh <= hi
    else:
        assert nw * nh >= lo
    if min(nw, nh) == 1:
        return  # a side clamped to one pixel cannot keep the aspect ratio
    # one scale factor for both sides, up to rounding each side by less than a pixel
    assert abs(nw * h - nh * w) < w + h


def test_normalize_bounds_and_reencodes_as_png(tmp_path):
    policy = ImagePolicy(min_pixels=100, max_pixels=2500)
    big = Image.open(io.BytesIO(normalize_image(png(200, 100, fmt="JPEG"), policy)))
    assert big.format == "PNG" and big.mode == "RGB" and big.width * big.height <= 2500
    assert abs(big.width / big.height - 2) < 0.1
    small = Image.open(io.BytesIO(normalize_image(png(4, 4), policy)))
    assert small.width * small.height >= 100
    ok = png(30, 30)
    assert normalize_image(ok, policy) == ok  # already a bounded RGB PNG: bytes kept as they are
    path = tmp_path / "x.png"
    path.write_bytes(png(30, 30, fmt="GIF"))
    assert Image.open(io.BytesIO(normalize_image(path, policy))).format == "PNG"
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert Image.open(io.BytesIO(normalize_image(buf.getvalue(), policy))).getpixel((0, 0)) == (255, 255, 255)


def test_one_decode_gives_each_bound_its_own_version(tmp_path):
    policy = ImagePolicy(min_pixels=100, max_pixels=10_000)
    bounds = ((100, 10_000), (1_024, 2_500), (100, 10_000), (10, 400))
    path = tmp_path / "x.jpg"
    path.write_bytes(png(200, 100, fmt="JPEG"))
    versions = normalize_image_bounds(path, policy, bounds)
    # each version is what normalize_image gives with those bounds alone (scaled from the original)
    for version, (lo, hi) in zip(versions, bounds, strict=True):
        assert version == normalize_image(path, ImagePolicy(min_pixels=lo, max_pixels=hi))
        w, h = Image.open(io.BytesIO(version)).size
        assert w * h <= hi
    assert versions[0] is versions[2]  # same size, one encoding
    ok = png(30, 30)
    assert normalize_image_bounds(ok, policy, ((100, 10_000), (900, 900))) == (ok, ok)  # in both: bytes kept
    with pytest.raises(ValueError, match="need 1 <= min_pixels <= max_pixels"):
        ImagePolicy(min_pixels=10, max_pixels=5)


def _empty_file(folder: Path) -> Path:
    path = folder / "empty.png"
    path.write_bytes(b"")
    return path


def _truncated() -> bytes:
    noisy = Image.effect_noise((64, 64), 50).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    data = buf.getvalue()
    return data[: len(data) // 2]


def _bomb() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels with almost no data: refuse before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p / "missing.png", "image_missing"),
        (lambda p: _empty_file(p), "image_empty"),
        (lambda p: b"", "image_empty"),
        (lambda p: b"\x89PNG\r\n\x1a\nnot really", "image_corrupt"),
        (lambda p: b"hello world, not an image", "image_corrupt"),
        (lambda p: _truncated(), "image_corrupt"),
        (lambda p: png(2000, 5), "image_aspect"),
        (lambda p: b"\x89PNG" + bytes(20_000), "image_oversized"),  # over max_file_bytes below
    ],
)
def test_bad_images_are_refused_with_reason(tmp_path, make, reason):
    data = make(tmp_path)
    policy = ImagePolicy(min_pixels=1, max_pixels=10**6, max_file_bytes=10_000)
    with pytest.raises(SampleError) as err:
        normalize_image(data, policy)
    assert err.value.reason == reason


def test_decompression_bomb_refused_before_decoding():
    data = _bomb()
    assert len(data) < 2_000_000  # tiny file, 10^10 pixels
    with pytest.raises(SampleError) as err:
        decode_image(data, ImagePolicy())
    assert err.value.reason == "image_bomb"


def test_placeholder_and_merge():
    ph = Image.open(io.BytesIO(placeholder_png()))
    assert ph.size == (1, 1) and ph.getpixel((0, 0)) == (255, 255, 255)
    a, b = Image.new("RGB", (10, 20), (255, 0, 0)), Image.new("RGB", (30, 10), (0, 0, 255))
    m = merge_horizontal([a, b])
    assert m.size == (40, 20)
    assert m.getpixel((5, 5)) == (255, 0, 0) and m.getpixel((15, 5)) == (0, 0, 255)
    assert m.getpixel((15, 15)) == (255, 255, 255)  # canvas below the shorter image stays white
    assert max(merge_horizontal([a, b], max_side=8).size) == 8


# --------------------------------------------------------------------------------------------------
# Streaming JSON and safe paths
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_json_array_streams_in_any_chunk_size(tmp_path, chunk):
    rows = [{"i": i, "s": "é" * i, "n": [1.5, None, True]} for i in range(50)] + [123456789, "x", []]
    path = tmp_path / "a.json"
    path.write_text("  \n" + json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    assert list(iter_json_rows(path, chunk_size=chunk)) == rows


def test_json_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"a": 1}, {"b": ')
    with pytest.raises(ValueError, match="truncated"):
        list(iter_json_rows(path))
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    out = list(iter_json_rows(path))
    assert out[0] == {"a": 1} and out[2] == {"b": 2}
    assert isinstance(out[1], SampleError) and out[1].reason == "bad_json" and ":2:" in str(out[1])


def test_image_paths_cannot_escape_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "image").mkdir(parents=True)
    assert resolve_image_path(root, "./image/a.png") == (root / "image" / "a.png").resolve()
    for bad in ("../secret.png", "/etc/passwd", "image/../../x.png"):
        with pytest.raises(SampleError) as err:
            resolve_image_path(root, bad)
        assert err.value.reason == "path_escape"
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(SampleError, match="outside"):
        resolve_image_path(root, "link/anything.png")
