"""benchmarks/gpu_check.py: the CPU smoke run of every section, with the packages the GPU
machine lacks made unimportable, plus the agreement checks shown to fail on planted errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_check
from benchmarks._gpu_common import SMOKE_SIZES, TARGETS, Ctx, vector_agreement
from benchmarks._gpu_kernels import _check_all_rows, _compare_updates
from benchmarks._gpu_vision import pixel_diff

ROOT = Path(__file__).resolve().parents[1]

# Installed here, absent on the GPU machine (/work/.library/device/KINDS.md's package list), or
# this repository's Ray/LMDB packages: the script must run without any of them.
ABSENT = ("ray", "lmdb", "faiss", "polars", "gensim", "csrgraph", "pydantic", "boto3", "botocore", "moto",
          "smart_open", "cryptography", "jsonschema", "opentelemetry", "opencensus", "flask", "docker",
          "mypy", "platformdirs", "jobs", "featurestore")

# Runs gpu_check.py with every finder on sys.meta_path wrapped so the ABSENT packages are not found
# (as where they are not installed), and logs which file asked for them (one JSON line each).
RUNNER = r'''
import json, os, runpy, sys
absent, root, log = set(json.loads(os.environ["ABSENT"])), os.environ["ROOT"], os.environ["ATTEMPTS"]
open(log, "w").close()

class Absent:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in absent:
            f = sys._getframe(1)
            while f is not None and ("importlib" in f.f_code.co_filename or f.f_code.co_filename.startswith("<")):
                f = f.f_back
            with open(log, "a") as out:        # at once: the script ends with os._exit (no atexit)
                out.write(json.dumps([name, f.f_code.co_filename if f is not None else "?"]) + "\n")
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None
    def __getattr__(self, attr):
        return getattr(self.inner, attr)

sys.meta_path[:] = [Absent(f) for f in sys.meta_path]
sys.argv = [os.path.join(root, "benchmarks", "gpu_check.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One `--cpu-smoke` run (every section), shared by the tests below."""
    d = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ABSENT": json.dumps(ABSENT), "ROOT": str(ROOT),
           "ATTEMPTS": str(d / "attempts.json")}
    env.pop("TRITON_INTERPRET", None)                 # the script must set it itself
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", RUNNER, "--out", str(d / "out"), "--cpu-smoke"], env=env,
                       cwd=d, capture_output=True, text=True, timeout=280)
    attempts = [json.loads(line) for line in (d / "attempts.json").read_text().splitlines()]
    return {"proc": p, "dir": d / "out", "attempts": attempts,
            "doc": json.loads((d / "out" / "gpu_check.json").read_text()) if p.returncode in (0, 1) else {},
            "wall_s": time.monotonic() - t}


def test_cpu_smoke_passes_every_section(smoke):
    p, doc = smoke["proc"], smoke["doc"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert doc["mode"] == "cpu-smoke" and doc["ok"] is True
    status = {r["name"]: r["status"] for r in doc["sections"]}
    assert list(status) == list(gpu_check.NAMES)
    assert all(status[n] == "done" for n in gpu_check.NAMES if n != "tensorrt"), status
    trt = doc["sections"][-1]
    assert trt["status"] == "skipped" and ("tensorrt cannot be imported" in trt["reason"]
                                           or "needs a CUDA device" in trt["reason"])
    agree = [c for c in doc["checks"] if c["kind"] == "agreement"]
    assert agree and all(c["status"] == "pass" for c in agree), [c for c in agree if c["status"] != "pass"]
    per_section = {s: sum(c["section"] == s for c in agree) for s in ("topk", "bpr", "decode", "backends",
                                                                     "extractor", "onnx")}
    # topk: 2 kernels x (with, without exclusion); bpr: fused, autograd, vs reference; backends:
    # 2 models x 2 precisions x eager/compiled; extractor: IC, OD; onnx: 2 models x fp32/fp16.
    assert per_section == {"topk": 4, "bpr": 3, "decode": 1, "backends": 8, "extractor": 2, "onnx": 4}
    speeds = [c for c in doc["checks"] if c["kind"] == "speed"]
    assert {c["section"] for c in speeds} >= {"env", "topk", "bpr", "decode", "backends", "extractor"}
    assert all(c["meets_target"] is None for c in speeds)          # smoke numbers claim nothing
    assert {c["target"] for c in speeds if c["target"]} == {t[2] for t in TARGETS.values()}


def test_cpu_smoke_writes_table_ratios_and_markdown(smoke):
    out, p = smoke["dir"], smoke["proc"]
    md = (out / "gpu_check.md").read_text()
    assert "| section | check | status | result | target |" in md and "Result: **PASS**" in md
    assert "| tensorrt | section skipped | SKIP |" in md
    ratios = dict(re.findall(r"^RATIO (\S+) ([0-9.]+)$", p.stdout, re.M))
    assert set(ratios) >= {"topk_triton_vs_torch", "bpr_fused_vs_autograd", "decode_device_vs_pil",
                           "extractor_device_vs_cpu", "vgg16-gap_compiled_vs_eager_fp16"}
    assert "| backends | yolov2 cuda compiled bf16 | PASS |" in p.stdout


def test_cpu_smoke_imports_nothing_the_gpu_machine_lacks(smoke):
    own = [a for a in smoke["attempts"] if a[1].startswith(str(ROOT))]
    assert own == [], f"the script or models/ tried to import packages absent on the GPU machine: {own}"


# ------------------------------------------------------------------ the checks can fail


def test_vector_agreement_catches_one_bad_vector():
    rng = np.random.default_rng(0)
    ref = rng.random((8, 512))
    assert vector_agreement(ref + rng.normal(0, 1e-4, ref.shape), ref)[0]
    bad = ref.copy()
    bad[5] = rng.random(512)                       # one vector unrelated to its reference
    ok, summary, nums = vector_agreement(bad, ref)
    assert not ok and nums["worst_index"] == 5 and nums["worst_cosine"] < 0.999
    nan = ref.copy()
    nan[2, 7] = np.nan
    assert not vector_agreement(nan, ref)[0]
    assert not vector_agreement(ref[:, :80], ref)[0]                 # wrong shape


def test_topk_row_check_catches_wrong_rows():
    from models.scoring import topk_numpy

    rng = np.random.default_rng(1)
    posts, tags = rng.standard_normal((50, 17)).astype(np.float32), rng.standard_normal((300, 17)).astype(np.float32)
    excl = (np.arange(51, dtype=np.int64) * 2, rng.integers(0, 300, 100).astype(np.int32))
    p, t = torch.from_numpy(posts), torch.from_numpy(tags)
    good = topk_numpy(posts, tags, 10, *excl)
    assert _check_all_rows(good.tags, good.scores, p, t, 10, excl)["bad_rows"] == 0
    for plant in ("swap", "score", "duplicate", "excluded"):
        ids, sc = good.tags.copy(), good.scores.copy()
        if plant == "swap":                         # a tag from outside the top k
            ids[3, 9] = next(j for j in range(300) if j not in set(good.tags[3]) | set(excl[1][6:8]))
        elif plant == "score":
            sc[4, 0] += 0.01
        elif plant == "duplicate":
            ids[5, 1], sc[5, 1] = ids[5, 0], sc[5, 0]
        else:                                       # post 7's own tag returned
            ids[7, 9] = excl[1][14]
        nums = _check_all_rows(ids, sc, p, t, 10, excl)
        assert nums["bad_rows"] == 1, plant
    no_excl = topk_numpy(posts, tags, 10)
    assert _check_all_rows(no_excl.tags, no_excl.scores, p, t, 10, None)["rows_same_ids"] == 50


def test_bpr_update_comparison_catches_a_wrong_update():
    before = {"W_ic": torch.zeros(4, 3), "bias": torch.zeros(5)}
    a = {"W_ic": torch.ones(4, 3), "bias": torch.full((5,), 0.5)}
    assert _compare_updates(before, a, {k: v + 1e-6 for k, v in a.items()})[0]
    wrong = {"W_ic": a["W_ic"].clone(), "bias": a["bias"].clone()}
    wrong["bias"][3] += 0.01                        # 2% of that parameter's update
    ok, nums = _compare_updates(before, a, wrong)
    assert not ok and nums["worst_param"] == "bias"


def test_pixel_diff_gates_on_the_mean():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    noisy = np.clip(ref.astype(int) + rng.integers(-2, 3, ref.shape), 0, 255).astype(np.uint8)
    assert pixel_diff(noisy, "", ref)[2] == ""
    shifted = np.clip(ref.astype(int) + 5, 0, 255).astype(np.uint8)
    assert "mean |d|" in pixel_diff(shifted, "", ref)[2]
    assert "truncated" in pixel_diff(None, "truncated", ref)[2]
    assert "shape" in pixel_diff(ref[:, :8], "", ref)[2]


# ------------------------------------------------------------------ budget, sections, arguments


def test_sections_skip_past_the_budget_and_errors_are_recorded(tmp_path):
    ctx = Ctx("cpu", True, SMOKE_SIZES, tmp_path, time.monotonic(), total_s=100)

    def fails(c):
        c.agreement("planted", False, "off", {}, "tolerance")

    def raises(c):
        raise RuntimeError("planted crash")

    secs = [gpu_check.Section("a", 10, fails), gpu_check.Section("b", 10, raises),
            gpu_check.Section("c", 500, fails), gpu_check.Section("d", 1, fails, lambda c: "not here")]
    records: list[dict] = []
    gpu_check.run_sections(ctx, secs, records, lambda: None)
    assert [r["status"] for r in records] == ["done", "error", "skipped", "skipped"]
    assert "would pass the run's 100 s" in records[2]["reason"] and "--sections c" in records[2]["reason"]
    assert records[3]["reason"] == "not here"
    assert [c.status for c in gpu_check.failed(ctx.checks)] == ["fail", "error"]
    doc = gpu_check.write_reports(ctx, tmp_path / "out", records, [])
    assert doc["ok"] is False and "**FAIL** (2 failed or errored)" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_budget_skip():
    assert gpu_check.budget_skip("x", 100, 60, 480) == ""
    assert "would pass" in gpu_check.budget_skip("x", 430, 60, 480)


@pytest.mark.parametrize("argv,message", [
    (["--out", "o", "--sections", "topk,gpus"], "unknown section(s) ['gpus']; valid: env,topk"),
    (["--out", "o", "--budget-s", "0"], "--budget-s must be > 0"),
    ([], "the following arguments are required: --out"),
])
def test_bad_arguments_exit_2_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(f)])
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would start the real GPU run")
def test_without_cuda_it_points_to_the_smoke_run(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device here" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_targets_match_results_md():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    gpu = text[text.index("## GPU targets"):]
    gpu = gpu[:gpu.index("\n## ", 4)] if "\n## " in gpu[4:] else gpu

    def numbers(row_start: str) -> list[float]:
        row = next(line for line in gpu.splitlines() if line.startswith(row_start))
        return [float(v) * {"k": 1e3, "M": 1e6}[u] for v, u in re.findall(r"≥ ([0-9.]+)([kM])", row)]

    assert numbers("| VGG16-GAP @224") == [TARGETS[k][0] for k in ("vgg16-gap", "yolov2", "extractor")]
    assert numbers("| top-k scoring")[0] == TARGETS["topk"][0]
    assert numbers("| BPR step")[0] == TARGETS["bpr"][0]
