"""Image decoding with bounded work: bytes -> (H, W, 3) uint8 RGB, or a reason it failed.

Untrusted input: the pixel count is checked from the header *before* decoding
(decompression bombs -> `too-many-pixels`), the byte size is capped, only the first frame of an
animation is decoded and only a fixed set of formats is tried. Decode work is linear in
bytes + pixels, so both caps together bound decode time. Any failure is a `DecodeFailure` with
one of `REASONS`; callers turn it into an error record, never a crash.

CPU path: PIL (EXIF orientation applied; grayscale, 16-bit, CMYK, YCbCr, RGBA/LA/P with
transparency (composited on white), PNG, GIF, WebP, BMP, TIFF -> RGB). JPEGs are decoded with
DCT scaling (`draft`) to the smallest size >= what preprocessing needs.

GPU path (`decode_batch_torch(..., device="cuda")`): JPEGs are decoded in one batched nvJPEG call
through `torchvision.io.decode_jpeg`; anything else (PNG, CMYK JPEG, a JPEG nvJPEG rejects)
falls back to the CPU path. The header is still read with PIL first for the pixel limit and the
EXIF orientation.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # decoding to tensors imports torch lazily (the numpy path does not need it)
    import torch

# Why an image failed; `decode-error` is the catch-all for a decoder exception we did not expect.
# `denied` and `read-failed` (a transient error that outlasted the retries) come from reading
# images through object stores (jobs/_image_io.py).
REASONS = ("missing", "empty", "unreadable", "too-large", "not-an-image", "too-many-pixels",
           "truncated", "corrupt", "decode-error", "denied", "read-failed")
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF")
JPEG_FORMATS = ("JPEG", "MPO")


@dataclass(frozen=True)
class DecodeLimits:
    """Caps on untrusted images (defaults fit any real photo, refuse bombs)."""

    max_pixels: int = 64_000_000       # width x height from the header (a 64 MP photo)
    max_bytes: int = 64 * 1024 * 1024  # file size
    draft: int = 448                   # JPEG DCT downscale floor (>= both models' input sizes); 0: off


class DecodeFailure(Exception):
    """An image that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def read_bytes(path: str | Path, limits: DecodeLimits = DecodeLimits()) -> bytes:
    """The file's bytes, or DecodeFailure(missing | empty | too-large | unreadable)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise DecodeFailure("unreadable", f"{p} is not a regular file")
        if size > limits.max_bytes:
            raise DecodeFailure("too-large", f"{size} bytes > {limits.max_bytes}")
        data = p.read_bytes()
    except FileNotFoundError:
        raise DecodeFailure("missing", str(p)) from None
    except OSError as e:
        raise DecodeFailure("unreadable", f"{p}: {e.strerror or e}") from None
    if not data:
        raise DecodeFailure("empty", str(p))
    return data


def _open_header(data: bytes, limits: DecodeLimits):
    """PIL image with only the header parsed; enforces format and pixel limits."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DecodeFailure("empty")
    if len(data) > limits.max_bytes:
        raise DecodeFailure("too-large", f"{len(data)} bytes > {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeFailure("too-many-pixels", str(e)[:120]) from None
    except UnidentifiedImageError:
        raise DecodeFailure("not-an-image", "no known image header") from None
    except EOFError as e:
        raise DecodeFailure("truncated", f"header cut short: {e}"[:160]) from None
    except (SyntaxError, struct_error()) as e:
        raise DecodeFailure("corrupt", f"bad header: {e}"[:160]) from None
    except (OSError, ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise DecodeFailure(reason, f"bad header: {type(e).__name__}: {e}"[:160]) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeFailure("corrupt", f"size {w}x{h}")
    if w * h > limits.max_pixels:
        raise DecodeFailure("too-many-pixels", f"{w}x{h} = {w * h} > {limits.max_pixels}")
    return im


def _formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()  # registers every plugin, so `formats=` knows MPO/WEBP/...
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def struct_error() -> type[Exception]:
    import struct

    return struct.error


def _to_rgb(im) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit gray: scale to 8 bits instead of letting convert() clip at 255.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        g = np.clip(np.nan_to_num(a) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"))   # a writable copy (torch.from_numpy wants one)


def _orientation(im) -> int:
    """EXIF orientation tag (1..8), 1 when absent or unreadable."""
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF must not fail the image  # noqa: BLE001
        return 1
    return o if 1 <= o <= 8 else 1


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied; DecodeFailure otherwise."""
    with warnings.catch_warnings():   # PIL warns (e.g. "Corrupt EXIF data") on hostile files: we decide
        warnings.simplefilter("ignore", UserWarning)
        return _decode(data, limits)


def _decode(data: bytes, limits: DecodeLimits) -> np.ndarray:
    from PIL import Image

    im = _open_header(data, limits)
    try:
        if im.format in JPEG_FORMATS and limits.draft and im.mode in ("RGB", "L", "YCbCr"):
            im.draft("RGB" if im.mode != "L" else "L", (limits.draft, limits.draft))
        im.seek(0)
        im.load()
        orientation = _orientation(im)
        rgb = _to_rgb(im)
    except DecodeFailure:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeFailure("too-many-pixels", str(e)[:120]) from None
    except OSError as e:
        msg = str(e)
        reason = "truncated" if ("truncated" in msg.lower() or "broken data stream" in msg) else "corrupt"
        raise DecodeFailure(reason, msg[:160]) from None
    except (SyntaxError, EOFError) as e:
        raise DecodeFailure("truncated" if isinstance(e, EOFError) else "corrupt", str(e)[:160]) from None
    except MemoryError:
        raise DecodeFailure("too-many-pixels", "out of memory while decoding") from None
    except Exception as e:  # PIL plugins raise many types on hostile input  # noqa: BLE001
        raise DecodeFailure("decode-error", f"{type(e).__name__}: {e}"[:160]) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DecodeFailure("corrupt", f"decoded shape {rgb.shape}")
    if orientation != 1:
        rgb = np.ascontiguousarray(apply_orientation_np(rgb, orientation))
    return rgb


def try_decode(data: bytes, limits: DecodeLimits = DecodeLimits()) -> tuple[np.ndarray | None, str]:
    """(image, "") or (None, reason): never raises for bad bytes."""
    try:
        return decode_image(data, limits), ""
    except DecodeFailure as e:
        return None, e.reason


# ------------------------------------------------------------------ EXIF orientation

def apply_orientation_np(a: np.ndarray, o: int) -> np.ndarray:
    """(H, W, C) array transformed as PIL's ImageOps.exif_transpose does for orientation o."""
    if o == 2:
        return a[:, ::-1]
    if o == 3:
        return a[::-1, ::-1]
    if o == 4:
        return a[::-1]
    if o == 5:
        return a.transpose(1, 0, 2)
    if o == 6:
        return np.rot90(a, -1)
    if o == 7:
        return a.transpose(1, 0, 2)[::-1, ::-1]
    if o == 8:
        return np.rot90(a, 1)
    return a


def apply_orientation_torch(t, o: int):
    """Same as `apply_orientation_np` for a (H, W, C) torch tensor (any device)."""
    import torch

    if o == 2:
        return t.flip(1)
    if o == 3:
        return t.flip(0).flip(1)
    if o == 4:
        return t.flip(0)
    if o == 5:
        return t.transpose(0, 1)
    if o == 6:
        return torch.rot90(t, -1, (0, 1))
    if o == 7:
        return t.transpose(0, 1).flip(0).flip(1)
    if o == 8:
        return torch.rot90(t, 1, (0, 1))
    return t


# ------------------------------------------------------------------ batched torch / nvJPEG path

def decode_batch_torch(datas: list[bytes], device: str = "cuda",
                       limits: DecodeLimits = DecodeLimits()) -> list[tuple[torch.Tensor | None, str]]:
    """Decode a batch: JPEGs with one `torchvision.io.decode_jpeg(..., device=device)` call.

    Returns per input (tensor (H, W, 3) uint8 on `device`, "") or (None, reason). Non-JPEGs, CMYK
    JPEGs and JPEGs the batched call rejects are decoded on the CPU (PIL) and moved to `device`.
    Runs on "cpu" too (libjpeg-turbo through torchvision), which is how it is tested here.
    """
    import torch

    with warnings.catch_warnings():   # torchvision 0.29 deprecates io in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    out: list[tuple[torch.Tensor | None, str]] = [(None, "")] * len(datas)
    jpeg_idx, jpeg_bufs, orient = [], [], {}
    for i, data in enumerate(datas):
        try:
            im = _open_header(data, limits)
        except DecodeFailure as e:
            out[i] = (None, e.reason)
            continue
        if im.format in JPEG_FORMATS and im.mode in ("RGB", "L", "YCbCr"):
            jpeg_idx.append(i)
            jpeg_bufs.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            orient[i] = _orientation(im)
        else:
            out[i] = _cpu_to(data, limits, device)
    if jpeg_bufs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = _decode_jpegs(decode_jpeg, ImageReadMode.RGB, jpeg_bufs, device)
        for i, t in zip(jpeg_idx, decoded):
            if t is None or t.ndim != 3 or t.shape[0] != 3:
                out[i] = _cpu_to(datas[i], limits, device)
            else:
                out[i] = (apply_orientation_torch(t.permute(1, 2, 0), orient[i]).contiguous(), "")
    return out


def _decode_jpegs(decode_jpeg, mode, bufs: list, device: str) -> list:
    """One batched call (nvJPEG batches on GPU); if any JPEG fails it, retry one by one."""
    try:
        return list(decode_jpeg(bufs, mode=mode, device=device))      # list of (3, H, W) uint8
    except Exception:  # noqa: BLE001 — one bad JPEG fails the batch
        out = []
        for buf in bufs:
            try:
                out.append(decode_jpeg(buf, mode=mode, device=device))
            except Exception:  # noqa: BLE001 — decoded on the CPU path instead, with a reason
                out.append(None)
        return out


def _cpu_to(data: bytes, limits: DecodeLimits, device: str) -> tuple[torch.Tensor | None, str]:
    import torch

    arr, reason = try_decode(data, DecodeLimits(limits.max_pixels, limits.max_bytes, draft=0))
    if arr is None:
        return None, reason
    return torch.from_numpy(arr).to(device), ""
