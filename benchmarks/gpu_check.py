"""One call that checks every GPU path against its CPU reference, then times it.

    python benchmarks/gpu_check.py --out DIR               # on one CUDA GPU, under 8 minutes
    python benchmarks/gpu_check.py --out DIR --cpu-smoke   # every section on the CPU, tiny sizes

Sections, in the order they run (each has a time budget; one that would take the run past
--budget-s is skipped with the reason, so one call always returns):

  env        the device and versions; fp16 and bf16 GEMM TFLOP/s, the ceiling of the CNN figures
  topk       torch-cuda and Triton top-k vs `topk_reference` (n=10^6 posts, T=2000, k=10); posts/s
  bpr        one PITF-IC-OD BPR step on CUDA vs the same step on the CPU (fused and autograd) and
             vs `bpr_step_reference`; samples/s
  decode     batched nvJPEG decode (`decode_batch_torch`) vs PIL pixels; images/s both ways
  backends   VGG16-GAP and YOLOv2 on the cuda backend, eager and compiled, fp16 and bf16, vs CPU
             fp32 (cosine >= 0.999 per vector); images/s per batch size beside the GEMM ceiling
  extractor  JPEG files -> both vectors with decode on the GPU vs the CPU path; images/s
  onnx       the ONNX export on onnxruntime's CUDA provider vs CPU fp32 (agreement only)
  tensorrt   engines built through the tensorrt backend (skipped when tensorrt cannot be imported)

Writes DIR/gpu_check.json (per check: pass/fail, the numbers, the target of
benchmarks/RESULTS.md) and DIR/gpu_check.md, prints the table and `RATIO` lines. Exit 1 if any
agreement check fails or a section errors; 2 on bad arguments or no CUDA device.

`--cpu-smoke` runs the same functions with the device set to the CPU (the Triton kernel under
TRITON_INTERPRET=1, `torch.compile` with dynamo's eager backend): tests/test_gpu_check.py runs it,
so the script cannot rot while no GPU is at hand. Its numbers mean nothing.
Imports: torch, torchvision, numpy, Pillow, triton, onnxruntime and this repository's `models/`,
nothing else (no Ray, LMDB, faiss, polars).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

START = time.monotonic()        # the budget counts from process start, torch's import included
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _gpu_kernels as kernels  # noqa: E402
from benchmarks import _gpu_vision as vision  # noqa: E402
from benchmarks._gpu_common import GPU_SIZES, SMOKE_SIZES, Check, Ctx  # noqa: E402

DEFAULT_BUDGET_S = 480.0        # 8 minutes
GRACE_S = 20.0                  # past the budget, a watchdog writes what it has and exits 1


@dataclass(frozen=True)
class Section:
    """One section: its name, its budget on an H100 (an estimate, seconds), how to run it."""

    name: str
    budget_s: float
    run: Callable[[Ctx], None]
    skip_reason: Callable[[Ctx], str] = lambda ctx: ""   # a reason to skip before the budget is asked


SECTIONS = (
    Section("env", 15, kernels.section_env),
    Section("topk", 60, kernels.section_topk),
    Section("bpr", 45, kernels.section_bpr),
    Section("decode", 30, vision.section_decode),
    Section("backends", 240, vision.section_backends),
    Section("extractor", 75, vision.section_extractor),
    Section("onnx", 45, vision.section_onnx, lambda ctx: vision.onnx_provider(ctx)[1]),
    Section("tensorrt", 150, vision.section_tensorrt, vision.tensorrt_skip),
)
NAMES = tuple(s.name for s in SECTIONS)


def budget_skip(name: str, elapsed: float, budget: float, total: float) -> str:
    """The reason to skip a section whose budget would take the run past `total`, else ""."""
    if elapsed + budget <= total:
        return ""
    return (f"{elapsed:.0f} s spent + this section's {budget:.0f} s budget would pass the run's {total:.0f} s "
            f"(--budget-s); run it alone with --sections {name}")


def run_sections(ctx: Ctx, sections: list[Section], records: list[dict], report: Callable[[], object]) -> None:
    """Each section in turn, within the total budget; a section's error is recorded, not raised."""
    for sec in sections:
        rec: dict[str, Any] = {"name": sec.name, "budget_s": sec.budget_s, "status": "", "elapsed_s": 0.0, "reason": ""}
        records.append(rec)
        ctx.section = sec.name
        reason = sec.skip_reason(ctx) or budget_skip(sec.name, ctx.elapsed(), sec.budget_s, ctx.total_s)
        if reason:
            rec.update(status="skipped", reason=reason)
            ctx.add("section skipped", "section", "skip", reason=reason)
            print(f"[{ctx.elapsed():6.1f} s] {sec.name}: skipped: {reason}", flush=True)
            continue
        print(f"[{ctx.elapsed():6.1f} s] {sec.name}: running (budget {sec.budget_s:.0f} s)", flush=True)
        t0, c0 = time.monotonic(), time.process_time()
        ctx.section_end = t0 + sec.budget_s
        try:
            sec.run(ctx)
            rec["status"] = "done"
        except Exception as e:  # noqa: BLE001 — report it and go on: one call must check everything
            import traceback

            rec.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
            ctx.add("section error", "section", "error", f"{type(e).__name__}: {e}"[:200],
                    reason=traceback.format_exc()[-2000:])
        rec["elapsed_s"] = round(time.monotonic() - t0, 2)
        rec["cpu_s"] = round(time.process_time() - c0, 2)
        over = rec["elapsed_s"] - sec.budget_s
        if over > 0:
            rec["reason"] = (rec["reason"] + "; " if rec["reason"] else "") + f"over its budget by {over:.0f} s"
        print(f"[{ctx.elapsed():6.1f} s] {sec.name}: {rec['status']} in {rec['elapsed_s']:.1f} s "
              f"(CPU {rec['cpu_s']:.1f} s)", flush=True)
        report()


# ------------------------------------------------------------------ reports


def _clean(x: object) -> object:
    """JSON-safe: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        x = x.item()  # type: ignore[union-attr]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status in ("fail", "error")]


def ratios(ctx: Ctx) -> dict[str, float]:
    """RATIO figures (ours / a reference measured in the same run) the sections left in the cache."""
    out = {k[len("ratio_"):]: v for k, v in ctx.cache.items() if k.startswith("ratio_")}
    for m in vision.MODELS:
        eager, comp = ctx.cache.get(f"rate:{m} cuda eager fp16"), ctx.cache.get(f"rate:{m} cuda compiled fp16")
        if eager and comp:
            out[f"{m}_compiled_vs_eager_fp16"] = comp / eager
    return out


def table(checks: list[Check]) -> list[str]:
    rows = ["| section | check | status | result | target |", "|---|---|---|---|---|"]
    for c in checks:
        result = c.summary or (c.reason.splitlines() or [""])[0]
        target = c.target + ("" if c.meets_target is None else (": met" if c.meets_target else ": missed"))
        rows.append(f"| {c.section} | {c.name} | {c.status.upper()} | {result.replace('|', '/')} | {target} |")
    return rows


def write_reports(ctx: Ctx, out: Path, records: list[dict], argv: list[str]) -> dict:
    checks = list(ctx.checks)
    bad = failed(checks)
    doc = {"tool": "benchmarks/gpu_check.py", "mode": "cpu-smoke" if ctx.smoke else "gpu", "argv": argv,
           "ok": not bad, "budget_s": ctx.total_s, "elapsed_s": round(ctx.elapsed(), 1),
           "machine": ctx.cache.get("machine", {}), "sections": records,
           "checks": [asdict(c) for c in checks], "ratios": ratios(ctx)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(_clean(doc), indent=2) + "\n")
    m = doc["machine"]
    lines = ["# GPU check (`benchmarks/gpu_check.py`)", "",
             f"Mode **{doc['mode']}**, {m.get('date_utc', '?')} UTC, {m.get('device', '?')}; torch {m.get('torch')}, "
             f"triton {m.get('triton')}, torchvision {m.get('torchvision')}, onnxruntime {m.get('onnxruntime')}; "
             f"load average {m.get('load_avg')} at the start.",
             f"Elapsed {doc['elapsed_s']} s of a {ctx.total_s:.0f} s budget. Result: "
             + ("**PASS**" if not bad else f"**FAIL** ({len(bad)} failed or errored)"),
             "", *table(checks), "", "## Sections", "", "| section | budget s | took s | status | note |",
             "|---|---:|---:|---|---|"]
    lines += [f"| {r['name']} | {r['budget_s']:.0f} | {r['elapsed_s']} | {r['status']} | {r['reason']} |"
              for r in records]
    lines += ["", "## Ratios (ours / reference, same run)", "", "```",
              *[f"RATIO {k} {v:.3f}" for k, v in doc["ratios"].items()], "```", ""]
    (out / "gpu_check.md").write_text("\n".join(lines))
    return doc


# ------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md (created)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run every section on the CPU at tiny sizes (Triton interpreted): a test, not a measurement")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help="total seconds for the run; a section whose budget would pass it is skipped "
                         "(default %(default)s: 8 minutes)")
    ap.add_argument("--sections", default=",".join(NAMES),
                    help=f"comma-separated sections to run, in the fixed order (default: all: {','.join(NAMES)})")
    a = ap.parse_args(argv)
    wanted = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in NAMES]
    if unknown or not wanted:
        ap.error(f"--sections: unknown section(s) {unknown or [a.sections]}; valid: {','.join(NAMES)}")
    a.sections = wanted
    if not a.budget_s > 0:
        ap.error(f"--budget-s must be > 0 seconds, got {a.budget_s}")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        ap.error(f"--out {a.out} is a file; give a folder (it is created if missing)")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""     # the CPU run stays on the CPU even on a GPU machine
        os.environ["TRITON_INTERPRET"] = "1"        # before triton is imported
    import torch

    if args.cpu_smoke:
        torch.set_num_threads(1)                    # tiny tensors: threads only spin-wait for each other
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or pass --cpu-smoke for the CPU smoke run", file=sys.stderr)
        return 2
    out = Path(args.out)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Ctx("cpu" if args.cpu_smoke else "cuda", args.cpu_smoke, SMOKE_SIZES if args.cpu_smoke else GPU_SIZES,
                  Path(tmp), START, args.budget_s)
        ctx.cache["machine"] = kernels.machine_info(ctx.dev)
        records: list[dict] = []
        report = lambda: write_reports(ctx, out, records, argv_used)  # noqa: E731
        watchdog = threading.Timer(args.budget_s + GRACE_S - ctx.elapsed(), _on_timeout, (ctx, report))
        watchdog.daemon = True
        watchdog.start()
        run_sections(ctx, [s for s in SECTIONS if s.name in args.sections], records, report)
        watchdog.cancel()
        doc = report()
    print("\n".join(["", *table(ctx.checks), ""]))
    for k, v in doc["ratios"].items():
        print(f"RATIO {k} {v:.3f}")
    bad = failed(ctx.checks)
    print(f"\n{'PASS' if not bad else f'FAIL: {len(bad)} check(s) failed or errored'}; "
          f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {ctx.elapsed():.0f} s")
    return 1 if bad else 0


def _on_timeout(ctx: Ctx, report: Callable[[], dict]) -> None:
    """Past budget + grace: record the running section as timed out, write, print, exit 1."""
    ctx.add("section timed out", "section", "error",
            f"still running {ctx.elapsed():.0f} s into the run (budget {ctx.total_s:.0f} s + {GRACE_S:.0f} s)",
            reason="stopped by the watchdog; rerun this section alone with --sections")
    report()
    print("\n".join(["", *table(ctx.checks), "", "FAIL: timed out"]), flush=True)
    os._exit(1)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written: skip the interpreter's teardown, where a C++ thread pool still
    # running can abort the process (SIGABRT), replacing the exit code of a finished run.
    os._exit(code)
