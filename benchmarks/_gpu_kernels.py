"""Sections of `benchmarks/gpu_check.py` without images: the machine and its GEMM ceiling,
top-k scoring, the BPR step."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

from benchmarks._gpu_common import BPR_UPDATE_RTOL, TOPK_ATOL, TOPK_RTOL, Ctx, fmt_rate, rate

REF_USERS = 2000   # user table of the model stepped by bpr_step_reference


def bpr_steps() -> dict[str, Callable[..., Any]]:
    """The BPR step functions this check runs, imported in this one place (re-point it here if
    models/recsys/bpr.py moves them)."""
    from models.recsys.bpr_step import bpr_step_autograd, bpr_step_fused, bpr_step_reference

    return {"fused": bpr_step_fused, "autograd": bpr_step_autograd, "reference": bpr_step_reference}


@contextlib.contextmanager
def fp32_matmul() -> Iterator[None]:
    """Full fp32 matmuls (TF32 off), as the scoring and training jobs run them; the cuda vision
    backend turns TF32 on for the whole process, so sections after it would otherwise differ."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------ machine


def machine_info(dev: str) -> dict[str, Any]:
    """Versions and the device, for the report's header."""
    import os
    import time

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "numpy": np.__version__, "cpus": os.cpu_count(),
                            "load_avg": [round(x, 2) for x in os.getloadavg()],
                            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    for mod in ("torchvision", "triton", "onnxruntime", "PIL", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 — absent or broken: say which
            info[mod] = f"not importable ({type(e).__name__})"
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"sm_{p.major}{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}), smoke run"
    return info


def section_env(ctx: Ctx) -> None:
    """The device and the fp16/bf16 GEMM TFLOP/s: the ceiling the CNN figures are read against."""
    import torch

    info = machine_info(ctx.dev)
    ctx.add("machine", "info", "measured", f"{info['device']}, torch {info['torch']}, triton {info['triton']}", info)
    n = ctx.sizes.gemm_n
    tflops = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        g = torch.Generator(device=ctx.dev).manual_seed(0)
        a = torch.randn(n, n, device=ctx.dev, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=ctx.dev, dtype=dtype, generator=g)
        flops = rate(partial(torch.matmul, a, b), 2 * n**3, ctx, reps=ctx.sizes.gemm_reps, warmup=3)
        tflops[name] = flops / 1e12
        ctx.add(f"GEMM {name} {n}x{n}x{n}", "speed", "measured", f"{tflops[name]:.1f} TFLOP/s",
                {"tflops": tflops[name], "n": n})
    ctx.cache["tflops"] = tflops


# ------------------------------------------------------------------ top-k


def _exclusions(n: int, t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CSR own tags: 0-4 random tags per post (as --exclude-own-tags passes them)."""
    lens = rng.integers(0, 5, n)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=indptr[1:])
    return indptr, rng.integers(0, t, int(indptr[-1])).astype(np.int32)


def _check_all_rows(ids: np.ndarray, scores: np.ndarray, p: Any, t: Any, k: int,
                    excl: tuple[np.ndarray, np.ndarray] | None, block: int = 16384) -> dict[str, Any]:
    """`same_topk`'s conditions on every row, vectorised against float64 scores on the device.

    Per row: reported scores equal the exact float64 scores of the returned tags, each
    returned tag scores at least the true k-th best, the sorted exact scores equal the true
    top k, no tag twice, no excluded tag (its exact score is -inf), all within
    atol + rtol * max(1, |score|).
    """
    import torch

    p64, t64 = p.double(), t.double().T.contiguous()
    n, bad, same_ids, worst = ids.shape[0], 0, 0, 0.0
    first = ""
    dev = p.device
    for s in range(0, n, block):
        e = min(s + block, n)
        s64 = p64[s:e] @ t64                                                  # (b, T) exact scores
        if excl is not None:
            indptr, indices = excl
            lo, hi = int(indptr[s]), int(indptr[e])
            rows = np.repeat(np.arange(e - s), np.diff(indptr[s:e + 1]))
            s64[torch.from_numpy(rows).to(dev), torch.from_numpy(indices[lo:hi].astype(np.int64)).to(dev)] = -np.inf
        ref_s, ref_i = torch.topk(s64, k, dim=1)
        gi = torch.from_numpy(np.ascontiguousarray(ids[s:e], np.int64)).to(dev)
        gs = torch.from_numpy(np.ascontiguousarray(scores[s:e], np.float64)).to(dev)
        exact = s64.gather(1, gi.clamp_min(0))
        tol = TOPK_ATOL + TOPK_RTOL * ref_s.abs().amax(1, keepdim=True).clamp_min(1.0)
        err = ((gs - exact).abs() / tol).amax(1)                               # > 1: a reported score is off
        miss = ((ref_s[:, -1:] - exact) / tol).amax(1)                         # > 1: a tag below the k-th best
        sorted_err = ((exact.sort(1, descending=True).values - ref_s).abs() / tol).amax(1)
        srt = gi.sort(1).values
        dup = (srt[:, 1:] == srt[:, :-1]).any(1) | (gi < 0).any(1)
        wrong = (err > 1) | (miss > 1) | (sorted_err > 1) | dup | ~torch.isfinite(err)
        bad += int(wrong.sum())
        same_ids += int((gi == ref_i).all(1).sum())
        worst = max(worst, float(torch.nan_to_num(err, nan=np.inf).max()))
        if wrong.any() and not first:
            r = int(wrong.nonzero()[0, 0])
            first = (f"row {s + r}: got {ids[s + r].tolist()} {scores[s + r].tolist()}, "
                     f"exact top {ref_i[r].tolist()} {ref_s[r].tolist()}")
    return {"rows": n, "bad_rows": bad, "rows_same_ids": same_ids, "worst_score_err_over_tol": worst,
            "first_bad": first}


def section_topk(ctx: Ctx) -> None:
    """torch (cuda) and Triton top-k vs topk_reference at T tags, k, n posts; posts/s."""
    import torch

    from models.scoring import (
        TopK,
        get_kernel,
        same_topk,
        topk_reference,
        topk_torch_tensors,
        topk_triton,
    )

    sz = ctx.sizes
    n, t, d, k = sz.topk_posts, sz.topk_tags, sz.topk_dim, sz.topk_k
    g = torch.Generator(device=ctx.dev).manual_seed(0)
    p_dev = torch.randn(n, d, device=ctx.dev, generator=g)
    t_dev = torch.randn(t, d, device=ctx.dev, generator=g)
    posts, tags = p_dev.cpu().numpy(), t_dev.cpu().numpy()
    rng = np.random.default_rng(0)
    excl = _exclusions(n, t, rng)
    sample = np.sort(rng.choice(n, min(sz.topk_ref_rows, n), replace=False))
    sub_ptr = np.concatenate([[0], np.cumsum(np.diff(excl[0])[sample])]).astype(np.int64)
    sub_idx = np.concatenate([excl[1][excl[0][r]:excl[0][r + 1]] for r in sample]).astype(np.int32)
    torch_name = "torch-cuda" if ctx.dev == "cuda" else "torch"
    kernels = {torch_name: get_kernel(torch_name), "triton": topk_triton}
    shape = f"n={n:,} T={t} D={d} k={k}"
    with fp32_matmul():
        for use_excl in (False, True):
            args = excl if use_excl else (None, None)
            s_args = (sub_ptr, sub_idx) if use_excl else (None, None)
            want = topk_reference(posts[sample], tags, k, *s_args)
            for kname, fn in kernels.items():
                res = fn(posts, tags, k, *args)
                nums = _check_all_rows(res.tags, res.scores, p_dev, t_dev, k, excl if use_excl else None)
                ok_ref, why = same_topk(posts[sample], tags, TopK(res.tags[sample], res.scores[sample]), want,
                                        indptr=s_args[0], indices=s_args[1], rtol=TOPK_RTOL, atol=TOPK_ATOL)
                nums.update(reference_rows=len(sample), reference_ok=ok_ref, reference_problem=why)
                ok = ok_ref and nums["bad_rows"] == 0
                label = f"{kname} vs topk_reference{', own tags excluded' if use_excl else ''}"
                ctx.agreement(label, ok, f"{shape}: {nums['bad_rows']} bad rows, {nums['rows_same_ids']:,} with "
                              f"identical ids; {len(sample)} rows vs topk_reference: {'ok' if ok_ref else why}",
                              nums, f"same_topk on every row (float64 on the device) and on {len(sample)} rows "
                              f"against topk_reference; rtol {TOPK_RTOL}, atol {TOPK_ATOL}")
        _topk_speed(ctx, kernels, torch_name, posts, tags, p_dev, t_dev, topk_torch_tensors, shape)


def _topk_speed(ctx: Ctx, kernels: dict, torch_name: str, posts: np.ndarray, tags: np.ndarray,
                p_dev: Any, t_dev: Any, topk_torch_tensors: Callable, shape: str) -> None:
    from models import _scoring_triton as tt

    n, k = posts.shape[0], ctx.sizes.topk_k
    on_device = {torch_name: lambda: topk_torch_tensors(p_dev, t_dev, k, block=65536),
                 "triton": lambda: tt.topk_fused(p_dev, t_dev, k)}
    rates = {}
    for kname, fn in on_device.items():
        rates[kname] = rate(fn, n, ctx)
        ctx.add(f"{kname} posts/s, features on the device", "speed", "measured",
                f"{fmt_rate(rates[kname])} posts/s ({shape})", {"posts_per_s": rates[kname]},
                target_key="topk", value=rates[kname])
    for kname, fn in kernels.items():         # the job's call: numpy in, numpy out
        r = rate(partial(fn, posts, tags, k), n, ctx, reps=1)
        ctx.add(f"{kname} posts/s, numpy in and out", "speed", "measured",
                f"{fmt_rate(r)} posts/s (host copies included)", {"posts_per_s": r})
    ctx.cache["ratio_topk_triton_vs_torch"] = rates["triton"] / rates[torch_name]


# ------------------------------------------------------------------ BPR


def _bpr_data(ctx: Ctx, n_samples: int, per_post: int, seed: int, users: int = 0) -> dict[str, Any]:
    """Posts (ids, IC/OD features) and samples (post row, t+, t-) as numpy; users: the user
    table's size (default: the run's)."""
    sz = ctx.sizes
    rng = np.random.default_rng(seed)
    n_posts = max(n_samples // per_post, 1)
    users = users or sz.bpr_users
    batch = {"user_index": rng.integers(0, users, n_posts), "item_index": rng.integers(0, sz.bpr_items, n_posts),
             "ic": rng.random((n_posts, 512), dtype=np.float32), "od": rng.random((n_posts, 80), dtype=np.float32)}
    pos = rng.integers(0, sz.bpr_tags, n_samples)
    return {"batch": batch, "rows": rng.integers(0, n_posts, n_samples) if per_post > 1 else None,
            "pos": pos, "neg": (pos + rng.integers(1, sz.bpr_tags, n_samples)) % sz.bpr_tags}


def _bpr_model(ctx: Ctx, device: str, batch: dict, users: int = 0) -> Any:
    from models.recsys import get_model

    sz = ctx.sizes
    m = get_model("PITF-IC-OD", n_users=users or sz.bpr_users, n_items=sz.bpr_items, n_tags=sz.bpr_tags,
                  dim=sz.bpr_dim, seed=0, device=device)
    m.fit_centre(batch)                              # centring on the device too
    return m


def _bpr_args(m: Any, data: dict) -> tuple:
    import torch

    dev = m.device
    rows = None if data["rows"] is None else torch.as_tensor(data["rows"], device=dev)
    return (m.inputs(data["batch"]), torch.as_tensor(data["pos"], device=dev),
            torch.as_tensor(data["neg"], device=dev), rows)


def _compare_updates(before: dict, a: dict, b: dict) -> tuple[bool, dict]:
    """Per parameter: max |update_b - update_a| / max |update_a| (updates = after - before)."""
    worst, worst_name, max_abs = 0.0, "", 0.0
    for name, p0 in before.items():
        ua, ub = a[name].cpu().double() - p0.double(), b[name].cpu().double() - p0.double()
        scale = float(ua.abs().max()) if ua.numel() else 0.0
        diff = float((ub - ua).abs().max()) if ua.numel() else 0.0
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        if not np.isfinite(rel) or rel > worst:
            worst, worst_name = rel, name
        max_abs = max(max_abs, float((a[name].cpu().double() - b[name].cpu().double()).abs().max()))
    return worst <= BPR_UPDATE_RTOL, {"worst_update_rel_err": worst, "worst_param": worst_name,
                                      "max_abs_param_diff": max_abs}


def section_bpr(ctx: Ctx) -> None:
    """One PITF-IC-OD BPR step on the device vs the same step on the CPU, and vs
    bpr_step_reference; samples/s of the fused and autograd steps."""
    steps = bpr_steps()
    sz = ctx.sizes
    lr, reg = 0.05, 1e-4
    where = "cuda" if ctx.dev == "cuda" else "cpu (smoke)"
    with fp32_matmul():
        data = _bpr_data(ctx, sz.bpr_batch, sz.bpr_per_post, seed=0)
        for name in ("fused", "autograd"):
            m_cpu, m_dev = _bpr_model(ctx, "cpu", data["batch"]), _bpr_model(ctx, ctx.dev, data["batch"])
            before = {k: v.clone() for k, v in m_cpu.params.items()}
            for m in (m_cpu, m_dev):
                inp, pos, neg, rows = _bpr_args(m, data)
                steps[name](m, inp, pos, neg, lr, reg, rows)
            ok, nums = _compare_updates(before, m_cpu.params, m_dev.params)
            ctx.agreement(f"bpr_step_{name} on {where} vs on CPU", ok,
                          f"{sz.bpr_batch:,} samples, {sz.bpr_per_post} per post: worst update rel err "
                          f"{nums['worst_update_rel_err']:.1e} ({nums['worst_param']})", nums,
                          f"every parameter's update within {BPR_UPDATE_RTOL} x its largest CPU update")
        # bpr_step_reference's autograd writes a dense gradient of the whole user table per
        # sample, so it gets a small one (the step does not depend on the table's size).
        users = min(sz.bpr_users, REF_USERS)
        ref = _bpr_data(ctx, sz.bpr_ref_batch, 1, seed=1, users=users)
        m_cpu, m_dev = _bpr_model(ctx, "cpu", ref["batch"], users), _bpr_model(ctx, ctx.dev, ref["batch"], users)
        before = {k: v.clone() for k, v in m_cpu.params.items()}
        steps["reference"](m_cpu, *_bpr_args(m_cpu, ref)[:3], lr, reg)
        steps["fused"](m_dev, *_bpr_args(m_dev, ref)[:3], lr, reg)
        ok, nums = _compare_updates(before, m_cpu.params, m_dev.params)
        ctx.agreement(f"bpr_step_fused on {where} vs bpr_step_reference", ok,
                      f"{sz.bpr_ref_batch} samples, {users:,} users: worst update rel err {nums['worst_update_rel_err']:.1e} "
                      f"({nums['worst_param']})", nums,
                      f"every parameter's update within {BPR_UPDATE_RTOL} x its largest reference update")
        _bpr_speed(ctx, steps, lr, reg)


def _bpr_speed(ctx: Ctx, steps: dict, lr: float, reg: float) -> None:
    sz = ctx.sizes
    rates: dict[str, float] = {}
    for per_post in (1, sz.bpr_per_post):
        data = _bpr_data(ctx, sz.bpr_batch, per_post, seed=2)
        for name in ("fused", "autograd"):
            m = _bpr_model(ctx, ctx.dev, data["batch"])
            inp, pos, neg, rows = _bpr_args(m, data)
            r = rate(partial(steps[name], m, inp, pos, neg, lr, reg, rows), sz.bpr_batch, ctx)
            rates[f"{name}/{per_post}"] = r
            ctx.add(f"bpr_step_{name} samples/s, {per_post} per post", "speed", "measured",
                    f"{fmt_rate(r)} samples/s (k={sz.bpr_dim}, {sz.bpr_tags} tags, batch {sz.bpr_batch:,})",
                    {"samples_per_s": r, "batch": sz.bpr_batch, "samples_per_post": per_post},
                    target_key="bpr", value=r)
    ctx.cache["ratio_bpr_fused_vs_autograd"] = rates["fused/1"] / rates["autograd/1"]
