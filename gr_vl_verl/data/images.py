"""Image checks and normalisation: every image that reaches a parquet decodes, is bounded, and is PNG.

Why here and not at training time: verl's ``RLHFDataset`` silently drops a row whose image fails to process
(its overlong filter catches every exception), and a decompression bomb would take a dataloader worker down.
Checking once at prep time turns both into counted, named skips.

Pixel bounds follow Qwen2.5-VL's ``min_pixels``/``max_pixels``, one pair per stage, each what the released
code ran with: RL trained with 262144 and 4194304 (EasyR1's config), SFT with LLaMA-Factory's 1024 and 589824,
and the released evaluator left ``qwen_vl_utils``' defaults, 3136 and 12845056. An image is scaled, keeping its
aspect ratio, so its area lies in ``[min_pixels, max_pixels]`` (one already inside keeps its size); the
processor then only rounds to its 28-pixel grid. One decode can give several bounded versions
(:func:`normalize_image_bounds`), so the SFT, RL and eval outputs each get their own bounds. Aspect ratios
above 200 are refused because ``qwen_vl_utils`` raises on them.

Pure Python + Pillow: no torch, no verl.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile

from gr_vl_verl.data.records import ImageData, SampleError

# The released RL config (EasyR1's min_pixels/max_pixels; docs/method.md §5, docs/training.md): the RL bounds.
MIN_PIXELS = 262144
MAX_PIXELS = 4194304
# The released evaluator (generate.py) passed images through qwen_vl_utils.process_vision_info with its defaults,
# IMAGE_MIN_TOKEN_NUM = 4 and IMAGE_MAX_TOKEN_NUM = 16384 tokens of 28 x 28 pixels: the evaluation bounds.
EVAL_MIN_PIXELS = 4 * 28 * 28
EVAL_MAX_PIXELS = 16384 * 28 * 28
# The released R-SFT ran through LLaMA-Factory, whose scripts set no image bounds, so its defaults applied:
# ProcessorArguments.image_min_pixels = 32 * 32 and image_max_pixels = 768 * 768 (docs/data.md).
SFT_MIN_PIXELS = 32 * 32
SFT_MAX_PIXELS = 768 * 768
# qwen_vl_utils.vision_process.MAX_RATIO: smart_resize raises above it.
MAX_ASPECT_RATIO = 200.0

# A truncated file must fail, not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImagePolicy:
    """Limits applied to every image; the default bounds are the RL ones (:meth:`evaluation`: the evaluator's)."""

    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    max_file_bytes: int = 64 * 1024 * 1024
    # Refuse before decoding anything whose header claims more pixels than this (decompression bombs). Kept
    # under Pillow's own MAX_IMAGE_PIXELS so this check, with its clear message, is the one that fires.
    max_source_pixels: int = 8192 * 8192

    def __post_init__(self) -> None:
        check_bounds((self.min_pixels, self.max_pixels), "image policy")
        if self.max_file_bytes < 1 or self.max_source_pixels < 1:
            raise ValueError("max_file_bytes and max_source_pixels must be >= 1")

    @classmethod
    def evaluation(cls) -> ImagePolicy:
        """The released evaluator's bounds, which the eval parquet and the guard use."""
        return cls(min_pixels=EVAL_MIN_PIXELS, max_pixels=EVAL_MAX_PIXELS)

    @property
    def bounds(self) -> tuple[int, int]:
        return self.min_pixels, self.max_pixels


def bound_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Scale ``(width, height)`` by one factor so the area lies in ``[min_pixels, max_pixels]``."""
    area = width * height
    if min_pixels <= area <= max_pixels:
        return width, height
    if area > max_pixels:
        # floor keeps the area at or below the bound
        scale = math.sqrt(max_pixels / area)
        w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
        # a side clamped to 1 (extreme aspect, tiny bound) gives the other side the whole budget
        return (w, min(h, max_pixels // w)) if w == 1 else (min(w, max_pixels // h), h)
    # ceil keeps the area at or above the bound
    scale = math.sqrt(min_pixels / area)
    w, h = math.ceil(width * scale), math.ceil(height * scale)
    return w, h


def _read_bytes(data: ImageData, policy: ImagePolicy) -> bytes:
    if isinstance(data, bytes):
        raw = data
    else:
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            raise SampleError("image_missing", f"image file not found: {data}") from None
        except OSError as e:
            raise SampleError("image_missing", f"image file unreadable: {data}: {e}") from None
        if size > policy.max_file_bytes:
            raise SampleError("image_oversized", f"{data}: {size} bytes > max {policy.max_file_bytes}")
        raw = data.read_bytes()
    if not raw:
        raise SampleError("image_empty", f"image is empty (0 bytes): {_name(data)}")
    if len(raw) > policy.max_file_bytes:
        raise SampleError("image_oversized", f"{_name(data)}: {len(raw)} bytes > max {policy.max_file_bytes}")
    return raw


def _name(data: ImageData) -> str:
    return str(data) if isinstance(data, Path) else f"<{len(data)} bytes>"


def decode_image(data: ImageData, policy: ImagePolicy | None = None) -> Image.Image:
    """Decode fully, refusing missing, empty, oversized, truncated, corrupt and bomb images; RGB out."""
    policy = policy or ImagePolicy()
    return _decode(_read_bytes(data, policy), _name(data), policy)


def _decode(raw: bytes, name: str, policy: ImagePolicy) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if w < 1 or h < 1:
                raise SampleError("image_corrupt", f"{name}: zero-sized image {w}x{h}")
            if w * h > policy.max_source_pixels:
                raise SampleError(
                    "image_bomb",
                    f"{name}: {w}x{h} = {w * h} pixels > max_source_pixels {policy.max_source_pixels}",
                )
            img.load()
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SampleError("image_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated data as OSError and garbage as UnidentifiedImageError (an OSError).
        raise SampleError("image_corrupt", f"{name}: cannot decode: {e}") from None
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise SampleError("image_aspect", f"{name}: aspect ratio {w}x{h} exceeds {MAX_ASPECT_RATIO:g}")
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as ``qwen_vl_utils`` does at load time)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.split()[3])
        return canvas
    return img.convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    """PNG without metadata: the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


PixelBounds = tuple[int, int]  # (min_pixels, max_pixels)


def check_bounds(bounds: PixelBounds, what: str = "pixel bounds") -> None:
    lo, hi = bounds
    if not 1 <= lo <= hi:
        raise ValueError(f"{what}: need 1 <= min_pixels <= max_pixels, got {lo}, {hi}")


def normalize_image(data: ImageData, policy: ImagePolicy | None = None) -> bytes:
    """Decode, verify, bound to the pixel limits and re-encode as PNG."""
    policy = policy or ImagePolicy()
    return normalize_image_bounds(data, policy, ((policy.min_pixels, policy.max_pixels),))[0]


def normalize_image_bounds(data: ImageData, policy: ImagePolicy, bounds: tuple[PixelBounds, ...]) -> tuple[bytes, ...]:
    """One PNG per ``(min_pixels, max_pixels)`` pair, from a single decode and verification by ``policy``.

    Each version is scaled from the original (never from another version), so it equals what
    :func:`normalize_image` gives with those bounds; pairs that land on the same size share one encoding.
    """
    raw = _read_bytes(data, policy)
    img = _decode(raw, _name(data), policy)
    by_size: dict[tuple[int, int], bytes] = {}
    out = []
    for lo, hi in bounds:
        size = bound_size(img.width, img.height, lo, hi)
        if size not in by_size:
            by_size[size] = _encode_at(img, raw, size)
        out.append(by_size[size])
    return tuple(out)


def _encode_at(img: Image.Image, raw: bytes, size: tuple[int, int]) -> bytes:
    if size == img.size and img.format == "PNG" and img.mode == "RGB":
        # Already what we would write (decoded in full above): keep the bytes, skip a costly re-encode.
        return raw
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return encode_png(img)


def placeholder_png() -> bytes:
    """The original RL data's stand-in for text-only rows: a 1x1 white PNG."""
    return encode_png(Image.new("RGB", (1, 1), (255, 255, 255)))


def merge_horizontal(images: list[Image.Image], max_side: int | None = None) -> Image.Image:
    """Paste images left to right on a white canvas as tall as the tallest (safety-aware concatenation).

    ``max_side`` shrinks the result to fit a square of that side as the released code did
    (``thumbnail((1024, 1024), LANCZOS)``): aspect ratio kept, never enlarged.
    """
    if not images:
        raise ValueError("merge_horizontal needs at least one image")
    rgb = [to_rgb(im) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in rgb), max(im.height for im in rgb)), (255, 255, 255))
    x = 0
    for im in rgb:
        canvas.paste(im, (x, 0))
        x += im.width
    if max_side is not None:
        canvas.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return canvas
