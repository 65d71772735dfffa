"""Image sections of `benchmarks/gpu_check.py`: the cuda backend (eager and compiled, fp16 and
bf16), the ONNX export on onnxruntime, TensorRT, nvJPEG decode, the extractor end to end.

Every output is compared with CPU fp32 torch on the same images (seeded random weights:
no weights are downloaded), then timed. Device and sizes come from the context, so the CPU
smoke run goes through these same functions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from benchmarks._gpu_common import (
    DECODE_MEAN_ABS_MAX,
    TARGETS,
    Ctx,
    cycle,
    fmt_rate,
    odd_images,
    photo_files,
    photos,
    rate,
    vector_agreement,
)

MODELS = ("vgg16-gap", "yolov2")


def _model_cls(name: str) -> Any:
    from models.vision.vgg import VGG16GAP
    from models.vision.yolo import YOLOv2Features

    return VGG16GAP if name == "vgg16-gap" else YOLOv2Features


def _side(ctx: Ctx, name: str) -> int:
    return ctx.sizes.vgg if name == "vgg16-gap" else ctx.sizes.yolo


def model_case(ctx: Ctx, name: str) -> tuple[Any, Any, np.ndarray]:
    """(module with seeded random weights, (N, 3, S, S) float32 inputs from the photos, CPU fp32
    outputs (N, D)): shared by the backend, ONNX and TensorRT sections."""
    key = f"model:{name}"
    if key not in ctx.cache:
        import torch

        from models.vision import preprocess
        from models.vision.decode import DecodeLimits, decode_image

        s = _side(ctx, name)
        imgs = [torch.from_numpy(decode_image(b, DecodeLimits(draft=0)))
                for b in cycle(photos(ctx), ctx.sizes.agree_images)]
        if name == "vgg16-gap":
            x = preprocess.normalize_vgg(torch.stack([preprocess.vgg_crop(i, s) for i in imgs]))
        else:
            x = preprocess.normalize_yolo(torch.stack([preprocess.letterbox(i, s) for i in imgs]))
        torch.manual_seed(0)
        module = _model_cls(name)().eval()
        with torch.inference_mode():
            ref = module(x.contiguous()).numpy()
        ctx.cache[key] = (module, x.contiguous(), ref)
    return ctx.cache[key]


def gflops_per_image(name: str, side: int) -> float:
    """Forward GFLOPs of one image (2 x multiply-adds), counted on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        m = _model_cls(name)().eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            m(torch.empty(1, 3, side, side))
    return counter.get_total_flops() / 1e9


@contextlib.contextmanager
def smoke_compile(ctx: Ctx) -> Iterator[None]:
    """On the CPU smoke run, `torch.compile` captures the graph with dynamo but runs it with the
    'eager' backend: inductor's C++ compilation would dominate the smoke run. On a GPU: untouched."""
    if not ctx.smoke:
        yield
        return
    import torch

    real = torch.compile

    def eager_compile(model: Any = None, **kw: Any) -> Any:
        return real(model, **{**kw, "backend": "eager"})

    torch.compile = eager_compile  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = real


def _fill(x: Any, n: int) -> Any:
    """x (N, ...) repeated to exactly n rows."""
    import torch

    reps = -(-n // x.shape[0])
    return torch.cat([x] * reps)[:n].contiguous()


# ------------------------------------------------------------------ cuda backend


def section_backends(ctx: Ctx) -> None:
    """VGG16-GAP and YOLOv2 on the cuda backend (eager and compiled, fp16 and bf16): vectors vs
    CPU fp32, images/s per batch size beside the GEMM ceiling.

    fp16 (the default) goes first. Eager variants are timed at every batch size; compiled ones
    at the main batch, and at the others (each a recompile) once every variant has run, while
    the section's time allows. A compiled variant is skipped when the time left is below the
    slowest compile so far.
    """
    gflops = {name: gflops_per_image(name, _side(ctx, name)) for name in MODELS}
    compiled_runs = []
    for precision in ("fp16", "bf16"):
        for name in MODELS:
            for compiled in (False, True):
                label = f"{name} cuda {'compiled' if compiled else 'eager'} {precision}"
                need = ctx.cache.get("compile_s", 0.0) if compiled else 0.0
                if ctx.section_left() < need:
                    ctx.add(label, "agreement", "skip", reason=f"{ctx.section_left():.0f} s left of the section's "
                            f"budget, a compile took {need:.0f} s; run --sections backends alone")
                    continue
                try:
                    run = _backend_variant(ctx, name, precision, compiled, gflops[name], label)
                except Exception as e:  # noqa: BLE001 — one variant failing must not hide the others
                    ctx.add(label, "agreement", "error", f"{type(e).__name__}: {e}"[:200], reason=_tail())
                    continue
                if compiled:
                    compiled_runs.append(run)
    for run in compiled_runs:
        _time_batches(ctx, run, [s for s in ctx.sizes.batches if s != ctx.sizes.main_batch], run["first_s"])
        _speed_row(ctx, run)


def _backend_variant(ctx: Ctx, name: str, precision: str, compiled: bool, gflop: float, label: str) -> dict:
    """Build, compare with CPU fp32, time; returns what a later batch sweep needs."""
    from models.vision.backends import CudaBackend

    module, x, ref = model_case(ctx, name)
    side, b = _side(ctx, name), ctx.sizes.main_batch
    t0 = time.monotonic()
    with smoke_compile(ctx):
        runner = CudaBackend(compile=compiled, device=ctx.dev).prepare(module, (side, side), precision, max_batch=b)
    out = runner(_fill(x, b).to(ctx.dev))             # first call: compiles, picks cuDNN kernels
    first_s = time.monotonic() - t0
    if compiled:
        ctx.cache["compile_s"] = max(ctx.cache.get("compile_s", 0.0), first_s)
    ok, summary, nums = vector_agreement(out[:len(ref)].numpy(), ref)
    nums["build_and_first_call_s"] = first_s
    ctx.agreement(label, ok, summary + f"; first call {first_s:.1f} s", nums, "cosine >= 0.999 per vector vs CPU fp32")
    run = {"label": label, "name": name, "precision": precision, "gflop": gflop, "runner": runner, "x": x,
           "first_s": first_s, "rates": {}}
    _time_batches(ctx, run, [b] if compiled else [b, *[s for s in ctx.sizes.batches if s != b]], 0.0)
    run["check"] = ctx.add(label + " img/s", "speed", "measured", target_key=name)
    _speed_row(ctx, run)
    return run


def _time_batches(ctx: Ctx, run: dict, batches: list[int], recompile_s: float) -> None:
    """images/s at each batch size; after the first, only while the section has 2 x recompile_s left."""
    for bs in batches:
        if run["rates"] and ctx.section_left() < 2 * recompile_s:
            break
        run["rates"][bs] = rate(partial(run["runner"], _fill(run["x"], bs).to(ctx.dev)), bs, ctx)


def _speed_row(ctx: Ctx, run: dict) -> None:
    """(Re)fill the variant's speed check from its rates: best batch, the GEMM ceiling, the target."""
    rates, c = run["rates"], run["check"]
    best = max(rates, key=lambda k: rates[k])
    tflops = ctx.cache.get("tflops", {}).get(run["precision"])
    ceiling = tflops * 1e3 / run["gflop"] if tflops else None
    c.numbers = {"img_per_s": {str(k): rates[k] for k in sorted(rates)}, "best_batch": best,
                 "best_img_per_s": rates[best], "gflop_per_image": run["gflop"], "gemm_tflops": tflops,
                 "ceiling_img_per_s": ceiling, "fraction_of_ceiling": rates[best] / ceiling if ceiling else None}
    per = ", ".join(f"{fmt_rate(rates[k])}@{k}" for k in sorted(rates))
    c.summary = f"best {fmt_rate(rates[best])} img/s @{best} ({per}); GEMM ceiling {fmt_rate(ceiling)}"
    c.meets_target = None if ctx.smoke else bool(rates[best] >= TARGETS[run["name"]][0])
    ctx.cache[f"rate:{run['label']}"] = rates[best]


def _tail() -> str:
    import traceback

    return traceback.format_exc()[-1500:]


# ------------------------------------------------------------------ ONNX on onnxruntime


def onnx_provider(ctx: Ctx) -> tuple[str, str]:
    """(provider, "") or ("", why this section is skipped)."""
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        return "", f"onnxruntime cannot be imported ({type(e).__name__}: {e})"
    want = "CUDAExecutionProvider" if ctx.dev == "cuda" else "CPUExecutionProvider"
    have = ort.get_available_providers()
    if want not in have:
        return "", (f"onnxruntime {ort.__version__} has no {want} (providers: {', '.join(have)}); "
                    "onnxruntime-gpu brings it")
    return want, ""


def section_onnx(ctx: Ctx) -> None:
    """The ONNX export (fp32 and fp16 graphs) run by onnxruntime's CUDA provider vs CPU fp32 torch."""
    import onnxruntime as ort

    from models.vision.export import INPUT_NAME, export_onnx

    provider, _ = onnx_provider(ctx)
    for name in MODELS:
        module, x, ref = model_case(ctx, name)
        side = _side(ctx, name)
        for precision in ("fp32", "fp16"):
            label = f"{name} ONNX {precision} on {provider}"
            sess = ort.InferenceSession(export_onnx(module, (side, side), precision), providers=[provider])
            used = sess.get_providers()
            if used[0] != provider:                   # onnxruntime falls back to CPU silently
                ctx.add(label, "agreement", "skip", reason=f"the session fell back to {used}: {provider} did not load")
                continue
            feed = x.numpy().astype(np.float16 if precision == "fp16" else np.float32)
            got = sess.run(None, {INPUT_NAME: feed})[0]
            ok, summary, nums = vector_agreement(got, ref)
            ctx.agreement(label, ok, summary, nums, "cosine >= 0.999 per vector vs CPU fp32 torch")


# ------------------------------------------------------------------ TensorRT


def tensorrt_skip(ctx: Ctx) -> str:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"tensorrt cannot be imported ({type(e).__name__}: {e})"
    return "" if ctx.dev == "cuda" else "TensorRT needs a CUDA device"


def section_tensorrt(ctx: Ctx) -> None:
    """Engines built through the tensorrt backend (fp16) vs CPU fp32; images/s at the main batch."""
    from models.vision.tensorrt_backend import TensorRTBackend

    b = ctx.sizes.main_batch
    be = TensorRTBackend(cache_dir=ctx.tmp / "engines")
    for name in MODELS:
        module, x, ref = model_case(ctx, name)
        side = _side(ctx, name)
        t0 = time.monotonic()
        runner = be.prepare(module, (side, side), "fp16", max_batch=b, model_digest=f"gpu-check:{name}:seed0")
        build_s = time.monotonic() - t0
        ok, summary, nums = vector_agreement(runner(x.to(ctx.dev)).numpy(), ref)
        nums["engine_build_s"] = build_s
        ctx.agreement(f"{name} tensorrt fp16", ok, summary + f"; engine built in {build_s:.0f} s", nums,
                      "cosine >= 0.999 per vector vs CPU fp32")
        xb = _fill(x, b).to(ctx.dev)
        r = rate(partial(runner, xb), b, ctx)
        ctx.add(f"{name} tensorrt fp16 img/s", "speed", "measured", f"{fmt_rate(r)} img/s @{b}",
                {"img_per_s": r, "batch": b}, target_key=name, value=r)


# ------------------------------------------------------------------ decode


def pixel_diff(got: np.ndarray | None, reason: str, ref: np.ndarray) -> tuple[float, int, str]:
    """(mean |d|, max |d|, problem or "") of one decoded (H, W, 3) uint8 image against PIL's."""
    if got is None or got.shape != ref.shape:
        return 0.0, 0, f"{reason or 'shape ' + str(None if got is None else got.shape)} vs PIL {ref.shape}"
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    mean = float(diff.mean())
    return mean, int(diff.max()), (f"mean |d| {mean:.2f} > {DECODE_MEAN_ABS_MAX}" if mean > DECODE_MEAN_ABS_MAX else "")


def section_decode(ctx: Ctx) -> None:
    """`decode_batch_torch` on the device (nvJPEG) vs PIL on the same files; images/s both ways."""
    import torch

    from models.vision.decode import DecodeLimits, decode_batch_torch, decode_image

    full = DecodeLimits(draft=0)
    files = [(f"photo-{i}", b) for i, b in enumerate(photos(ctx))] + odd_images(ctx)
    got = decode_batch_torch([b for _, b in files], ctx.dev, full)
    worst_mean, worst_max, worst_name, bad = 0.0, 0, "", []
    for (label, data), (t, reason) in zip(files, got):
        mean, mx, problem = pixel_diff(None if t is None else t.cpu().numpy(), reason, decode_image(data, full))
        if problem:
            bad.append(f"{label}: {problem}")
        if mean >= worst_mean:
            worst_mean, worst_name = mean, label
        worst_max = max(worst_max, mx)
    nums = {"images": len(files), "worst_mean_abs": worst_mean, "worst_mean_image": worst_name,
            "worst_max_abs": worst_max, "problems": bad}
    ctx.agreement("decode_batch_torch vs PIL pixels", not bad,
                  f"{len(files)} files (JPEG photos, gray, EXIF-rotated, progressive, 4:4:4, PNG, CMYK): "
                  f"worst mean |d| {worst_mean:.2f} ({worst_name}), max |d| {worst_max}"
                  + (f"; {bad[0]}" if bad else ""), nums,
                  f"same shape and mean |d| <= {DECODE_MEAN_ABS_MAX} per image (max reported)")
    datas, b = cycle(photos(ctx), ctx.sizes.timing_images), ctx.sizes.main_batch

    def on_device() -> None:
        for i in range(0, len(datas), b):
            decode_batch_torch(datas[i:i + b], ctx.dev, full)

    dev_rate = rate(on_device, len(datas), ctx, reps=1, warmup=1)
    job = DecodeLimits(draft=ctx.sizes.yolo)         # the CPU decode tasks' setting (draft to the YOLO side)
    some = datas[:max(len(datas) // 4, 1)]
    pil_rate = rate(lambda: [torch.from_numpy(decode_image(d, job)) for d in some], len(some), ctx, reps=1, warmup=0)
    h, w = ctx.sizes.photo_hw
    ctx.add(f"decode_batch_torch on {ctx.dev} img/s", "speed", "measured",
            f"{fmt_rate(dev_rate)} img/s ({w}x{h} JPEGs, batches of {b}); PIL on 1 core {fmt_rate(pil_rate)} img/s",
            {"device_img_per_s": dev_rate, "pil_one_core_img_per_s": pil_rate, "batch": b})
    ctx.cache["ratio_decode_device_vs_pil"] = dev_rate / pil_rate


# ------------------------------------------------------------------ extractor end to end


def section_extractor(ctx: Ctx) -> None:
    """JPEG files -> both vectors as the GPU actor runs it (read, decode on the device,
    preprocess on the device, ImageFeatureExtractor on the cuda backend) vs the CPU path (PIL
    decode, cpu backend fp32) on the same files; images/s end to end."""
    import dataclasses

    import torch

    from models.vision.decode import DecodeLimits, decode_batch_torch, decode_image, read_bytes
    from models.vision.extractor import ExtractorConfig, ImageFeatureExtractor, preprocess_image

    sz = ctx.sizes
    cfg = ExtractorConfig(random_weights=True, seed=0, backend="cuda" if ctx.dev == "cuda" else "cpu",
                          vgg_size=sz.vgg, yolo_size=sz.yolo, max_batch=sz.main_batch, reuse_heap=False)
    x_dev = ImageFeatureExtractor(cfg)
    x_cpu = ImageFeatureExtractor(dataclasses.replace(cfg, backend="cpu", precision="fp32"))
    device_limits, cpu_limits = DecodeLimits(draft=0), DecodeLimits(draft=sz.yolo)

    def device_path(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        crops = []
        for t, reason in decode_batch_torch([read_bytes(p, device_limits) for p in paths], ctx.dev, device_limits):
            if t is None:
                raise RuntimeError(f"a test photo failed to decode on {ctx.dev}: {reason}")
            crops.append(preprocess_image(t, sz.vgg, (sz.yolo, sz.yolo)))
        return x_dev(torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]))

    def cpu_path(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        imgs = [torch.from_numpy(decode_image(read_bytes(p, cpu_limits), cpu_limits)) for p in paths]
        crops = [preprocess_image(t, sz.vgg, (sz.yolo, sz.yolo)) for t in imgs]
        return x_cpu(torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]))

    files = photo_files(ctx)
    agree = cycle(files, sz.agree_images)
    t0 = time.monotonic()
    got = device_path(agree)
    first_s = time.monotonic() - t0
    t0 = time.monotonic()
    want = cpu_path(agree)
    cpu_rate = len(agree) / (time.monotonic() - t0)
    for what, g, w in (("IC (VGG16-GAP)", got[0], want[0]), ("OD (YOLOv2)", got[1], want[1])):
        ok, summary, nums = vector_agreement(g, w)
        ctx.agreement(f"extractor {cfg.backend} {x_dev.precision}, decode on {ctx.dev}: {what}", ok,
                      summary, nums, "cosine >= 0.999 per vector vs the CPU path (PIL decode, cpu backend fp32)")
    timing = cycle(files, sz.timing_images)

    def run_all() -> None:
        for i in range(0, len(timing), sz.main_batch):
            device_path(timing[i:i + sz.main_batch])

    r = rate(run_all, len(timing), ctx, reps=1, warmup=1)
    ctx.add(f"extractor JPEG files -> both vectors img/s ({cfg.backend} {x_dev.precision})", "speed", "measured",
            f"{fmt_rate(r)} img/s (batch {sz.main_batch}; first call {first_s:.1f} s); CPU path "
            f"{fmt_rate(cpu_rate)} img/s", {"img_per_s": r, "cpu_path_img_per_s": cpu_rate,
                                            "first_call_s": first_s, "batch": sz.main_batch},
            target_key="extractor", value=r)
    ctx.cache["ratio_extractor_device_vs_cpu"] = r / cpu_rate
