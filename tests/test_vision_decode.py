"""Decoding: formats to RGB, EXIF orientation, bad inputs with a reason, fuzzed bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from _fuzz import counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from models.vision.decode import (
    REASONS,
    DecodeFailure,
    DecodeLimits,
    decode_batch_torch,
    decode_image,
    read_bytes,
    try_decode,
)

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


JPEG = encode(Image.fromarray(PIXELS), "JPEG", quality=90)
PNG = encode(Image.fromarray(PIXELS), "PNG")


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "PNG"), ("L", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
    ("P", "GIF"), ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"),
    ("RGB", "TIFF"),
])
def test_modes_and_formats_become_rgb(mode, fmt):
    im = Image.fromarray(PIXELS).convert(mode) if mode != "I;16" else Image.fromarray(
        PIXELS[:, :, 0].astype(np.uint16) * 257)
    arr = decode_image(encode(im, fmt))
    assert arr.dtype == np.uint8 and arr.shape == (24, 40, 3)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    g = np.full((8, 8), 32768, dtype=np.uint16)        # mid-gray in 16 bits
    arr = decode_image(encode(Image.fromarray(g), "PNG"))
    assert 120 <= int(arr[0, 0, 0]) <= 135


def test_rgba_transparent_composited_on_white():
    a = np.zeros((4, 4, 4), np.uint8)                  # fully transparent black
    arr = decode_image(encode(Image.fromarray(a), "PNG"))
    assert (arr == 255).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
    im = Image.fromarray(PIXELS)
    exif = im.getexif()
    exif[0x0112] = orientation
    data = encode(im, "PNG", exif=exif)                 # lossless, so the comparison is exact
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), ref)
    jpg = encode(im, "JPEG", exif=exif, quality=95)     # the batched torch path (nvJPEG on GPU)
    ((t, reason),) = decode_batch_torch([jpg], device="cpu")
    ref_j = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(jpg))).convert("RGB"))
    assert reason == "" and t.shape == ref_j.shape
    assert np.abs(t.numpy().astype(int) - ref_j).max() <= 2


def test_jpeg_draft_downscales_big_photos():
    big = encode(Image.fromarray(np.zeros((1024, 2048, 3), np.uint8)), "JPEG")
    arr = decode_image(big, DecodeLimits(draft=256))
    assert arr.shape[0] >= 256 and arr.shape[0] < 1024 and arr.shape[1] == 2 * arr.shape[0]


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"hello, not an image at all", "not-an-image"),
    (JPEG[: len(JPEG) // 2], "truncated"),
    (PNG[: len(PNG) - 30], "truncated"),
    (_png_header_only(100_000, 100_000), "too-many-pixels"),   # a decompression bomb, refused from its header
    (_png_header_only(0, 10), "not-an-image"),                 # PIL refuses a 0-wide header
])
def test_bad_bytes_give_a_reason(data, reason):
    arr, got = try_decode(data)
    assert arr is None and got == reason


def test_pixel_and_byte_limits():
    with pytest.raises(DecodeFailure) as e:
        decode_image(PNG, DecodeLimits(max_pixels=24 * 40 - 1))
    assert e.value.reason == "too-many-pixels"
    assert decode_image(PNG, DecodeLimits(max_pixels=24 * 40)).shape == (24, 40, 3)
    with pytest.raises(DecodeFailure) as e:
        decode_image(PNG, DecodeLimits(max_bytes=10))
    assert e.value.reason == "too-large"


def test_read_bytes_reasons(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    (tmp_path / "big.jpg").write_bytes(b"x" * 100)
    for path, reason, limits in [(tmp_path / "nope.jpg", "missing", DecodeLimits()),
                                 (tmp_path / "e.jpg", "empty", DecodeLimits()),
                                 (tmp_path / "big.jpg", "too-large", DecodeLimits(max_bytes=10)),
                                 (tmp_path, "unreadable", DecodeLimits())]:
        with pytest.raises(DecodeFailure) as e:
            read_bytes(path, limits)
        assert e.value.reason == reason


def test_batched_torch_decode_mixes_formats_and_failures():
    out = decode_batch_torch([JPEG, PNG, b"junk", JPEG[:200]], device="cpu")
    assert out[0][1] == "" and tuple(out[0][0].shape) == (24, 40, 3)
    assert out[1][1] == "" and np.array_equal(out[1][0].numpy(), PIXELS)     # PNG via the CPU fallback
    assert out[2] == (None, "not-an-image")
    assert out[3][0] is None and out[3][1] in REASONS


# ---------------------------------------------------------------- fuzzing (hypothesis)
# Each property checks: no exception escapes, a failure has a known reason, a success is a
# (H, W, 3) uint8 image within the pixel limit. The small pixel limit keeps every case's decode
# work bounded; a hang would trip pytest-timeout. Each property checks that it ran its cases
# (`_fuzz.counted`); the run's summary lists the counts.

FUZZ_LIMITS = DecodeLimits(max_pixels=1 << 20, max_bytes=1 << 20)


def _check(data: bytes) -> None:
    arr, reason = try_decode(data, FUZZ_LIMITS)
    if arr is None:
        assert reason in REASONS
    else:
        assert reason == "" and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        assert arr.shape[0] * arr.shape[1] <= FUZZ_LIMITS.max_pixels


def _mutate(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(base)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


FUZZ_CASES = 300
FUZZ = settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=24)
cuts = st.none() | st.integers(0, 4096)


@counted(FUZZ_CASES)
@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _check(data)


@counted(FUZZ_CASES)
@FUZZ
@given(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF", b"BM", b"II*\x00"]),
       st.binary(max_size=1024))
def test_fuzz_magic_prefixed_bytes(magic, tail):
    _check(magic + tail)


@counted(FUZZ_CASES)
@FUZZ
@given(edits, cuts)
def test_fuzz_mutated_jpeg(e, cut):
    _check(_mutate(JPEG, e, cut))


@counted(FUZZ_CASES)
@FUZZ
@given(edits, cuts)
def test_fuzz_mutated_png(e, cut):
    _check(_mutate(PNG, e, cut))


@counted(100)
@settings(max_examples=100, deadline=None, derandomize=True)
@given(edits, cuts)
def test_fuzz_mutated_jpeg_batched_torch_path(e, cut):
    ((t, reason),) = decode_batch_torch([_mutate(JPEG, e, cut)], device="cpu", limits=FUZZ_LIMITS)
    assert (t is None and reason in REASONS) or (reason == "" and t.ndim == 3 and t.shape[2] == 3)
