"""Pixels and features for the synthetic archive (`jobs.synth`).

Every tag has a *visual signature*: a palette of three colours, a background texture
(stripes, checker, noise, gradient, rings) with a period and an angle, and a shape
(circle, rectangle, triangle). A post's image is drawn from the signatures of its
tags: the first tag paints the background texture in its palette, every tag adds a
few of its shapes in its colours. So colour, texture and shapes carry signal about
the tags, and a CNN feature extractor has something to find. `jobs.synth` passes only
the post's *visual* tags; a post with none (only place/event tags) gets a neutral grey
noise image and noise-only features, the same for every such post.

Rendering is a paletted ("P" mode) PIL image: numpy computes one uint8 texture plane
by broadcasting a row against a column (no per-pixel Python), PIL draws the shapes
and converts the palette to RGB in C, so an image costs little beyond the JPEG encoder
(benchmarks/results/design-measurements.md). `render_many` runs slices of image specs in a process pool.

`synthetic_features` is the `--no-images` shortcut: VGG16-like (512-d, ReLU) and
YOLO-like (80-d, probabilities) vectors with the same tag dependence, written straight
into the feature store for archive-scale tests of later stages.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.views import IC_DIM, OD_DIM

TEXTURES = ("stripes", "checker", "noise", "gradient", "rings")
SHAPES = ("circle", "rectangle", "triangle")
MAX_TAGS = 6          # tags per post, so at most 6 signatures per image
_BG_LEVELS = 128      # palette indices 0..127: the background gradient; 128..: shape colours
# Below this many images one process is faster than starting a spawn pool (its imports take a while).
POOL_MIN_IMAGES = 1000


@dataclass
class TagSignatures:
    """Visual signature of each of T tags (arrays indexed by tag)."""

    palette: np.ndarray   # (T, 3, 3) uint8: background colour A, background colour B, accent
    texture: np.ndarray   # (T,) int8 index into TEXTURES
    shape: np.ndarray     # (T,) int8 index into SHAPES
    period: np.ndarray    # (T,) float32 texture period in pixels at 500 px width
    angle: np.ndarray     # (T,) float32 texture angle in radians


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each in [0, 1]) -> RGB uint8, shape (..., 3)."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in
                      [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], 0)
    rgb = np.take_along_axis(table, i[None, ..., None], 0)[0]
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def make_signatures(num_tags: int, rng: np.random.Generator) -> TagSignatures:
    """Random, well-spread signatures: each tag a hue family, a texture and a shape."""
    t = num_tags
    hue = rng.random(t)
    sat = rng.uniform(0.55, 1.0, t)
    val = rng.uniform(0.6, 1.0, t)
    a = _hsv_to_rgb(hue, sat, val)                                     # bright
    b = _hsv_to_rgb(hue + 0.06, sat * 0.8, val * 0.45)                 # dark, same hue
    c = _hsv_to_rgb(hue + rng.uniform(0.35, 0.65, t), rng.uniform(0.5, 1.0, t), rng.uniform(0.7, 1.0, t))
    return TagSignatures(
        palette=np.stack([a, b, c], 1),
        texture=rng.integers(0, len(TEXTURES), t).astype(np.int8),
        shape=rng.integers(0, len(SHAPES), t).astype(np.int8),
        period=rng.uniform(10.0, 48.0, t).astype(np.float32),
        angle=rng.uniform(0.0, np.pi, t).astype(np.float32),
    )


def hex_colours(rgb: np.ndarray) -> list[str]:
    """(n, 3) uint8 -> ['#rrggbb', ...] (for the ground-truth tag table)."""
    return ["#" + "".join(f"{int(v):02x}" for v in row) for row in rgb]


# --------------------------------------------------------------------------- one image


def _texture(kind: int, w: int, h: int, period: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Background levels (h, w) uint8 in [0, 127] for one texture kind."""
    x = np.arange(w, dtype=np.float32)[None, :]          # (1, w)
    y = np.arange(h, dtype=np.float32)[:, None]          # (h, 1)
    phase = np.float32(rng.random())
    name = TEXTURES[kind]
    if name == "stripes":
        v = (x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))) * np.float32(1.0 / period) + phase
        t = np.sin(v * np.float32(2 * np.pi))             # (h, w) in [-1, 1]
        return ((t + 1) * 63.5).astype(np.uint8)
    if name == "checker":
        cx = ((x + phase * period) // period).astype(np.int32)
        cy = ((y + phase * period) // period).astype(np.int32)
        return (((cx + cy) & 1) * 100 + 14).astype(np.uint8)
    if name == "noise":
        gh, gw = max(2, int(h / period) + 2), max(2, int(w / period) + 2)
        small = (rng.random((gh, gw)) * 127).astype(np.uint8)
        return np.asarray(Image.fromarray(small, "L").resize((w, h), Image.Resampling.BILINEAR))  # no overshoot past 127
    if name == "gradient":
        v = x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))
        lo, hi = float(v.min() if v.size else 0), float(v.max() if v.size else 1)
        span = np.float32(max(hi - lo, 1.0))
        ripple = np.sin(v * np.float32(2 * np.pi / (3 * period))) * np.float32(0.08)
        return (np.clip((v - np.float32(lo)) / span + ripple, 0, 1) * 127).astype(np.uint8)
    # rings around a random centre
    ox, oy = np.float32(rng.random() * w), np.float32(rng.random() * h)
    d = np.sqrt((x - ox) ** 2 + (y - oy) ** 2) * np.float32(1.0 / period) + phase
    return ((np.sin(d * np.float32(2 * np.pi)) + 1) * 63.5).astype(np.uint8)


def _palette(tags: np.ndarray, sig: TagSignatures) -> list[int]:
    """768-entry PIL palette: background gradient of the first tag, then 3 colours per tag."""
    a, b = sig.palette[tags[0], 0].astype(np.float32), sig.palette[tags[0], 1].astype(np.float32)
    ramp = np.linspace(0.0, 1.0, _BG_LEVELS, dtype=np.float32)[:, None]
    pal = np.zeros((256, 3), np.uint8)
    pal[:_BG_LEVELS] = np.rint(b + (a - b) * ramp).astype(np.uint8)
    for j, t in enumerate(tags):
        pal[_BG_LEVELS + 3 * j: _BG_LEVELS + 3 * j + 3] = sig.palette[t]
    return pal.reshape(-1).tolist()


def _draw_shapes(draw: ImageDraw.ImageDraw, kind: int, count: int, fill: int, outline: int,
                 w: int, h: int, rng: np.random.Generator) -> None:
    """`count` shapes of one kind at random places and sizes, in palette indices."""
    side = min(w, h)
    for _ in range(count):
        r = float(rng.uniform(0.07, 0.2)) * side
        cx, cy = float(rng.random()) * w, float(rng.random()) * h
        width = max(1, int(r / 8))
        name = SHAPES[kind]
        if name == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
        elif name == "rectangle":
            ar = float(rng.uniform(0.5, 1.5))
            draw.rectangle([cx - r * ar, cy - r / ar, cx + r * ar, cy + r / ar], fill=fill, outline=outline,
                           width=width)
        else:
            rot = float(rng.random()) * 2 * np.pi
            pts = [(cx + r * np.cos(rot + k * 2 * np.pi / 3), cy + r * np.sin(rot + k * 2 * np.pi / 3))
                   for k in range(3)]
            draw.polygon(pts, fill=fill, outline=outline, width=width)


def render(number: int, w: int, h: int, tags: np.ndarray, gray: bool, sig: TagSignatures,
           seed: int) -> Image.Image:
    """The image of one post: `tags` (k,) tag indices, first = background; RGB or L.

    Deterministic in (seed, number): the same archive seed redraws the same pixels in any
    process, in any order.
    """
    rng = np.random.default_rng([seed, 7, number])
    tags = tags[tags >= 0][:MAX_TAGS]
    if not len(tags):
        return _neutral(w, h, gray, rng)
    t0 = int(tags[0])
    scale = w / 500.0
    period = float(sig.period[t0]) * scale * float(rng.uniform(0.8, 1.25))
    angle = float(sig.angle[t0]) + float(rng.normal(0, 0.1))
    levels = _texture(int(sig.texture[t0]), w, h, max(period, 2.0), angle, rng)   # (h, w) uint8
    im = Image.fromarray(levels, "P")
    im.putpalette(_palette(tags, sig))
    draw = ImageDraw.Draw(im)
    for j, t in enumerate(tags):
        base = _BG_LEVELS + 3 * j
        # The background tag adds accents; the other tags add their own shapes in colour A.
        fill, outline = (base + 2, base + 1) if j == 0 else (base, base + 1)
        _draw_shapes(draw, int(sig.shape[t]), int(rng.integers(1, 4)), fill, outline, w, h, rng)
    return im.convert("L" if gray else "RGB")


def _neutral(w: int, h: int, gray: bool, rng: np.random.Generator) -> Image.Image:
    """An image that shows no tag: grey value noise (what a photo of nothing taggable looks like)."""
    levels = _texture(TEXTURES.index("noise"), w, h, 24.0 * w / 500.0 + 2.0, 0.0, rng)   # (h, w) in [0, 127]
    grey = (np.uint8(60) + levels).astype(np.uint8)                                     # 60..187, no colour
    im = Image.fromarray(grey, "L")
    return im if gray else im.convert("RGB")


def image_relpath(number: int, png: bool) -> str:
    """Same string as `jobs.synth.image_strings` builds, vectorised, for the parquet."""
    return f"images/{number // 1000:03d}/{number}.{'png' if png else 'jpg'}"


# --------------------------------------------------------------------------- many images


@dataclass
class ImageSpecs:
    """What to draw for n distinct images (one row per file)."""

    number: np.ndarray    # (n,) int64: file number (global index of the post that first posted it)
    width: np.ndarray     # (n,) int32
    height: np.ndarray    # (n,) int32
    gray: np.ndarray      # (n,) bool
    png: np.ndarray       # (n,) bool
    tags: np.ndarray      # (n, MAX_TAGS) int32 tag indices, -1 padded, first = background

    def __len__(self) -> int:
        return len(self.number)

    def slice(self, a: int, b: int) -> ImageSpecs:
        return ImageSpecs(self.number[a:b], self.width[a:b], self.height[a:b], self.gray[a:b],
                          self.png[a:b], self.tags[a:b])

    @staticmethod
    def concat(parts: list[ImageSpecs]) -> ImageSpecs:
        if not parts:
            return ImageSpecs(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
                              np.zeros(0, bool), np.zeros(0, bool), np.zeros((0, MAX_TAGS), np.int32))
        return ImageSpecs(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("number", "width", "height", "gray", "png", "tags")))


_WORKER: dict = {}


def _init_worker(root: str, sig: TagSignatures, seed: int, skip_existing: bool, quality: int) -> None:
    _WORKER.update(root=Path(root), sig=sig, seed=seed, skip=skip_existing, quality=quality, dirs=set())


def _render_slice(specs: ImageSpecs) -> tuple[int, int]:
    """Render and save one slice; returns (written, skipped). Files appear atomically."""
    root: Path = _WORKER["root"]
    written = skipped = 0
    for k in range(len(specs)):
        n, png = int(specs.number[k]), bool(specs.png[k])
        path = root / image_relpath(n, png)
        if _WORKER["skip"] and path.exists():
            skipped += 1
            continue
        if path.parent not in _WORKER["dirs"]:
            path.parent.mkdir(parents=True, exist_ok=True)
            _WORKER["dirs"].add(path.parent)
        im = render(n, int(specs.width[k]), int(specs.height[k]), specs.tags[k], bool(specs.gray[k]),
                    _WORKER["sig"], _WORKER["seed"])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if png:
            im.save(tmp, "PNG", compress_level=1)
        else:
            im.save(tmp, "JPEG", quality=_WORKER["quality"])
        os.replace(tmp, path)   # a killed run never leaves a truncated image under its final name
        written += 1
    return written, skipped


def render_many(specs: ImageSpecs, root: Path, sig: TagSignatures, seed: int, workers: int,
                skip_existing: bool = True, quality: int = 85, slice_size: int = 128) -> Iterator[tuple[int, int]]:
    """Render all `specs` under `root`, yielding (written, skipped) per finished slice.

    workers <= 1 or fewer than POOL_MIN_IMAGES renders in this process; otherwise a
    spawn-context pool (safe when the parent has threads, e.g. a Ray driver). The output
    does not depend on it.
    """
    slices = [specs.slice(a, a + slice_size) for a in range(0, len(specs), slice_size)]
    args = (str(root), sig, seed, skip_existing, quality)
    if workers <= 1 or len(specs) < POOL_MIN_IMAGES or len(slices) < 2:
        _init_worker(*args)
        for s in slices:
            yield _render_slice(s)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, len(slices)), initializer=_init_worker, initargs=args) as pool:
        yield from pool.imap_unordered(_render_slice, slices)


# --------------------------------------------------------------------------- features


@dataclass
class FeatureModel:
    """How tags show up in synthetic CNN features (the ground truth of `--write-features`)."""

    directions: np.ndarray   # (T, 512) float32: each tag's direction in VGG16-like space
    class_logit: np.ndarray  # (T, 80) float32: each tag's logit per COCO-like class


def make_feature_model(num_tags: int, rng: np.random.Generator) -> FeatureModel:
    """Each tag: a random 512-d direction and 1-2 detector classes it lights up."""
    directions = rng.normal(0.0, 1.0, (num_tags, IC_DIM)).astype(np.float32)
    logits = np.full((num_tags, OD_DIM), -4.0, np.float32)
    rows = np.arange(num_tags)
    logits[rows, rng.integers(0, OD_DIM, num_tags)] = rng.uniform(1.5, 3.5, num_tags)
    second = rng.random(num_tags) < 0.5
    logits[rows[second], rng.integers(0, OD_DIM, int(second.sum()))] = rng.uniform(0.0, 2.0, int(second.sum()))
    return FeatureModel(directions, logits)


def synthetic_features(tags: np.ndarray, model: FeatureModel, rng: np.random.Generator,
                       noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Features for n items from their tags (n, MAX_TAGS) int32, -1 padded.

    z = relu(sum of the tags' directions + noise)            (n, 512), like pooled VGG16 conv5
    o = sigmoid(max over the tags of the class logits + noise) (n, 80), like YOLO max class prob
    """
    valid = tags >= 0                                          # (n, K)
    safe = np.where(valid, tags, 0)
    z = np.zeros((len(tags), IC_DIM), np.float32)
    o_logit = np.full((len(tags), OD_DIM), -6.0, np.float32)
    for j in range(tags.shape[1]):
        m = valid[:, j]
        z[m] += model.directions[safe[m, j]]
        o_logit[m] = np.maximum(o_logit[m], model.class_logit[safe[m, j]])
    z += rng.standard_normal(z.shape, dtype=np.float32) * np.float32(noise)   # float32: half the memory
    o_logit += rng.standard_normal(o_logit.shape, dtype=np.float32) * np.float32(0.5 * noise)
    np.maximum(z, 0.0, out=z)
    return z, (1.0 / (1.0 + np.exp(-o_logit))).astype(np.float32)
