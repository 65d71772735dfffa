"""What the sections of `benchmarks/gpu_check.py` share: checks, sizes, targets, the run's
context (device, time budget, cached inputs), timing and agreement helpers, test images.

Imports only the standard library and numpy at module level; torch and the project's
`models` are imported inside functions, after `gpu_check` has set the environment
(TRITON_INTERPRET for the CPU smoke run).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Agreement tolerances (each check's reason says which one it applied).
COSINE_MIN = 0.999            # per vector, GPU/ONNX/TensorRT output vs CPU fp32 on the same images
# nvJPEG vs PIL, per image: mean |difference| over all pixels and channels, in uint8 levels.
# models/vision/decode.py states no number; tests/test_vision_decode.py holds libjpeg (torchvision
# on CPU) to max |d| <= 2 of PIL, and torchvision's own nvJPEG test holds the GPU decoder to a
# mean |d| < 2 of its CPU decoder (IDCT and chroma upsampling differ), so the mean is gated and
# the max is reported.
DECODE_MEAN_ABS_MAX = 2.0
TOPK_RTOL = TOPK_ATOL = 1e-4   # models.scoring.same_topk's defaults
BPR_UPDATE_RTOL = 1e-3         # |update_gpu - update_cpu| <= this x max |update_cpu|, per parameter

# Targets of benchmarks/RESULTS.md "GPU targets" (tests/test_gpu_check.py checks they agree).
TARGETS: dict[str, tuple[float, str, str]] = {
    "vgg16-gap": (13_000, "img/s", "VGG16-GAP @224 >= 13k img/s"),
    "yolov2": (8_000, "img/s", "YOLO @448 >= 8k img/s"),
    "extractor": (4_500, "img/s", "JPEG -> both vectors >= 4.5k img/s with nvJPEG"),
    "topk": (100e6, "posts/s", "top-k T=2000, k=10: >= 100M posts/s (plain torch ~20.8M)"),
    "bpr": (100e6, "samples/s", "BPR step PITF-IC-OD k=128: >= 100M samples/s (plain autograd ~17.6M)"),
}


@dataclass
class Check:
    """One line of the report: an agreement (pass/fail), a speed (measured) or an info row."""

    section: str
    name: str
    kind: str                      # agreement | speed | info
    status: str                    # pass | fail | measured | skip | error
    summary: str = ""              # one line for the table
    numbers: dict[str, Any] = field(default_factory=dict)
    target: str = ""               # the RESULTS.md target this speed is held to
    meets_target: bool | None = None   # None: no target, or a CPU smoke run (numbers mean nothing)
    reason: str = ""               # tolerance applied, skip reason, or the error


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run: the GPU run's, or the CPU smoke run's tiny ones."""

    gemm_n: int                     # square GEMM side for the TFLOP/s ceiling
    gemm_reps: int
    vgg: int                        # VGG16 input side (224 on the GPU)
    yolo: int                       # YOLOv2 input side (448), a multiple of 32
    agree_images: int               # images compared against CPU fp32
    batches: tuple[int, ...]        # batch sizes timed (eager; compiled where time allows)
    main_batch: int                 # the batch every backend is built and compiled for
    reps: int                       # timed calls per figure
    warmup: int                     # untimed calls before (compilation, cuDNN autotuning)
    photos: int                     # distinct photo JPEGs
    photo_hw: tuple[int, int]       # their height, width
    timing_images: int              # images per decode / end-to-end timing pass
    topk_posts: int
    topk_tags: int
    topk_dim: int                   # D = 3 x 128 + 1 for PITF-IC-OD at dim 128
    topk_k: int
    topk_ref_rows: int              # rows also checked against the slow topk_reference
    bpr_users: int
    bpr_items: int
    bpr_tags: int
    bpr_dim: int
    bpr_batch: int                  # samples per timed step
    bpr_per_post: int               # samples per distinct post in the trainer-path step
    bpr_ref_batch: int              # samples of the step checked against bpr_step_reference


GPU_SIZES = Sizes(gemm_n=8192, gemm_reps=20, vgg=224, yolo=448, agree_images=32,
                  batches=(16, 64, 128, 256, 512), main_batch=256, reps=10, warmup=2,
                  photos=64, photo_hw=(480, 640), timing_images=1024,
                  topk_posts=1_000_000, topk_tags=2000, topk_dim=385, topk_k=10, topk_ref_rows=200,
                  bpr_users=100_000, bpr_items=100_000, bpr_tags=2000, bpr_dim=128, bpr_batch=1 << 18,
                  bpr_per_post=8, bpr_ref_batch=256)
SMOKE_SIZES = Sizes(gemm_n=128, gemm_reps=2, vgg=32, yolo=32, agree_images=2, batches=(1, 2), main_batch=2,
                    reps=1, warmup=0, photos=3, photo_hw=(48, 64), timing_images=4,
                    topk_posts=160, topk_tags=300, topk_dim=33, topk_k=10, topk_ref_rows=40,
                    bpr_users=50, bpr_items=50, bpr_tags=40, bpr_dim=8, bpr_batch=64, bpr_per_post=4,
                    bpr_ref_batch=16)


class Ctx:
    """The run: device, sizes, time budget, the checks so far, and inputs shared by sections."""

    def __init__(self, dev: str, smoke: bool, sizes: Sizes, tmp: Path, start: float, total_s: float) -> None:
        self.dev, self.smoke, self.sizes, self.tmp = dev, smoke, sizes, tmp
        self.start, self.total_s = start, total_s
        self.section = ""
        self.section_end = start + total_s
        self.checks: list[Check] = []
        self.cache: dict[str, Any] = {}

    # -- time
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def section_left(self) -> float:
        """Seconds left of this section's budget (never past the run's total)."""
        return min(self.section_end, self.start + self.total_s) - time.monotonic()

    def sync(self) -> None:
        if self.dev == "cuda":
            import torch

            torch.cuda.synchronize()

    # -- results
    def add(self, name: str, kind: str, status: str, summary: str = "", numbers: dict | None = None,
            target_key: str = "", value: float | None = None, reason: str = "") -> Check:
        target, meets = "", None
        if target_key:
            goal, _, target = TARGETS[target_key]
            if value is not None and not self.smoke:
                meets = bool(value >= goal)
        c = Check(self.section, name, kind, status, summary, numbers or {}, target, meets, reason)
        self.checks.append(c)
        return c

    def agreement(self, name: str, ok: bool, summary: str, numbers: dict, reason: str) -> Check:
        return self.add(name, "agreement", "pass" if ok else "fail", summary, numbers, reason=reason)


# ------------------------------------------------------------------ timing


def rate(fn: Callable[[], object], items: int, ctx: Ctx, reps: int | None = None, warmup: int | None = None) -> float:
    """items/s of `fn` over `reps` calls after `warmup` untimed ones (device synchronised)."""
    reps = ctx.sizes.reps if reps is None else reps
    for _ in range(ctx.sizes.warmup if warmup is None else warmup):
        fn()
    ctx.sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    ctx.sync()
    return items * reps / max(time.perf_counter() - t, 1e-9)


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.1f}"


# ------------------------------------------------------------------ agreement


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row cosine of (n, d) arrays in float64; two zero rows agree (1), one zero row does not (0)."""
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    ng, nr = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
    den = ng * nr
    cos = (g * r).sum(1) / np.where(den > 0, den, 1.0)
    return np.where(den > 0, cos, np.where((ng == 0) & (nr == 0), 1.0, 0.0))


def vector_agreement(got: np.ndarray, ref: np.ndarray) -> tuple[bool, str, dict]:
    """(pass, summary, numbers): worst cosine per vector >= COSINE_MIN; NaN/inf fail.

    Also reported: the worst cosine after subtracting the reference's mean vector from both
    (what tells images apart: the recommenders centre features the same way) and the
    largest |difference| relative to max |reference| (models/vision/backends.py's contract).
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != reference {ref.shape}", {"shape": list(got.shape)}
    cos = cosines(got, ref)
    centre = ref.mean(0, keepdims=True)
    ccos = cosines(got - centre, ref - centre)
    worst = float(cos.min()) if cos.size else 1.0
    finite = bool(np.isfinite(got).all())
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)) if got.size else 0.0
    nums = {"vectors": int(len(cos)), "worst_cosine": worst, "worst_index": int(np.argmin(cos)) if cos.size else -1,
            "worst_centred_cosine": float(ccos.min()) if ccos.size else 1.0, "max_rel_err": rel,
            "finite": finite}
    ok = finite and worst >= COSINE_MIN
    summary = f"worst cos {worst:.6f} of {len(cos)} (centred {nums['worst_centred_cosine']:.4f}), rel err {rel:.1e}"
    return ok, summary if finite else "non-finite outputs; " + summary, nums


# ------------------------------------------------------------------ test images


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 photo-like image: smooth gradients, a few shapes, sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(xx * rng.uniform(0.1, 0.5) + yy * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 255
                    for _ in range(3)], axis=2)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * min(h, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img + 8 * rng.standard_normal(img.shape, dtype=np.float32), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **kw: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def photos(ctx: Ctx) -> list[bytes]:
    """The run's distinct photo JPEGs (quality 90, 4:2:0), cached."""
    if "photos" not in ctx.cache:
        rng = np.random.default_rng(0)
        h, w = ctx.sizes.photo_hw
        ctx.cache["photos"] = [encode(photo(rng, h, w), quality=90) for _ in range(ctx.sizes.photos)]
    return ctx.cache["photos"]


def odd_images(ctx: Ctx) -> list[tuple[str, bytes]]:
    """Files that take the decoder's other paths: gray, EXIF-rotated, progressive, 4:4:4 JPEGs
    (batched GPU decode) and a PNG and a CMYK JPEG (the CPU fallback)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    h, w = ctx.sizes.photo_hw
    a = photo(rng, h, w)
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6                                   # rotate 90 degrees clockwise on display
    return [("gray", encode(a, mode="L", quality=90)),
            ("exif-orientation-6", encode(a, quality=90, exif=exif.tobytes())),
            ("progressive", encode(a, quality=90, progressive=True)),
            ("subsampling-4:4:4", encode(a, quality=95, subsampling=0)),
            ("png", encode(a, "PNG")),
            ("cmyk", encode(a, mode="CMYK", quality=90))]


def photo_files(ctx: Ctx) -> list[str]:
    """The photos written as files (the extractor reads files), cached."""
    if "photo_files" not in ctx.cache:
        folder = ctx.tmp / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, data in enumerate(photos(ctx)):
            p = folder / f"{i:05d}.jpg"
            p.write_bytes(data)
            paths.append(str(p))
        ctx.cache["photo_files"] = paths
    return ctx.cache["photo_files"]


def cycle(items: list, n: int) -> list:
    """The first n items of items repeated."""
    return [items[i % len(items)] for i in range(n)]
