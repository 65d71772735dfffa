"""Archive-scale benchmark: wall time and peak memory of each job at two sizes 10x apart.

    .venv/bin/python benchmarks/scale.py --quick                 # sizes 10-1000x smaller (QUICK), ~8 min
    .venv/bin/python benchmarks/scale.py                         # the target sizes (long)
    .venv/bin/python benchmarks/scale.py --jobs extract,train --workdir /tmp/tagrec-scale

Per job and size: the inputs are built first (`jobs.synth --no-images`, `jobs.prepare`, a
model for score; not timed, cached in --workdir), the job's previous outputs are removed, and
the job runs as a subprocess measured by `benchmarks._proc.run_measured` (whole process tree:
driver, raylet, Ray workers). Memory figures:

* `anon`: peak of (sum RssAnon over the tree + the largest RssShmem, i.e. the Ray object store
  once) — what the job needs; the bounds are checked on it;
* `rss`: peak of the plain RSS sum (adds file-backed pages: LMDB's map, mmapped spill files,
  libraries; and counts shared memory once per process).

Inputs per job (size = the target's unit):
  extract      posts in the manifest; users = posts/10; no image files (every image 'missing':
               bookkeeping + error records, not the CNNs); --random-weights
  embed_users  users; posts = users; ~10 follows per user (--avg-degree 11); walks and walk
               length from --walks/--walk-length (default 10 x 80: 8e8 walk tokens at
               10^6 users, ~30 min with the numba skip-gram, ~3 h with gensim's)
  embed_walks  the same inputs; only embed_users' read + CSR graph + Ray walk phase, at 10 x 80
  train        (post, tag) assignments; posts = size / 2.456 (synth's mean tags per post),
               users = posts/10; features written to the store; PITF-IC-OD, 1 epoch
  score        posts; users = posts/10; features written to the store; model: PITF-IC-OD
               trained 1 epoch on a separate 10^5-post archive (most users/items unseen:
               fallbacks, not the scoring kernel, are what differ)

RATIO lines (>1 = better, as every benchmark in this repo):
  RATIO <job>_time_linearity  = 10 / (time(big) / time(small))   (1 = exactly linear, >1 sublinear)
  RATIO <job>_cpu_linearity   = the same with the CPU seconds of the process tree (steadier than
                                wall time when other work shares the machine)
  RATIO <job>_mem_flatness    = 10 / (anon(big) / anon(small))   (1 = memory grows as fast as the
                                                                  input; >>1 = it streams)
  RATIO <job>_mem_headroom    = bound / anon(big)                (>= 1: within the bound)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._proc import RunStats, gib, run_measured  # noqa: E402

PY = sys.executable
TAGS_PER_POST = 2.456   # jobs.synth's mean tags per post (measured: 245,629 tags / 100,000 posts)
FULL = {"extract": (10**5, 10**6), "embed_users": (10**5, 10**6), "embed_walks": (10**5, 10**6), "train": (10**6, 10**7),
        "score": (10**6, 10**7)}
# --quick: the smallest sizes that still show the trend (each run costs a Ray start, ~20-60 s here)
QUICK = {"extract": (10**4, 10**5), "embed_users": (10**3, 10**4), "embed_walks": (10**4, 10**5),
         "train": (10**4, 10**5), "score": (10**4, 10**5)}
BOUND_GIB = {"extract": 2.0, "embed_users": 4.0, "embed_walks": 4.0, "train": 6.0, "score": 4.0}   # at the big size
UNIT = {"extract": "posts", "embed_users": "users", "embed_walks": "users", "train": "tag assignments", "score": "posts"}


def sh(cmd: list[str]) -> None:
    """Run a setup step (not measured); fail loudly with its output."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"setup failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def synth(d: Path, posts: int, users: int, *extra: str) -> None:
    if (d / "archive" / "posts.parquet").exists():
        return
    shutil.rmtree(d, ignore_errors=True)
    sh([PY, "-m", "jobs.synth", "--out", str(d), "--num-posts", str(posts), "--num-users", str(users),
        "--num-tags", "2000", "--num-communities", "50", "--no-images", *extra])


def prepare(d: Path) -> None:
    if not (d / "split" / "train.parquet").exists():
        sh([PY, "-m", "jobs.prepare", "--out", str(d)])


# ------------------------------------------------------------------ per job: setup -> command


def setup_extract(work: Path, n: int, args: argparse.Namespace) -> list[str]:
    d = work / f"extract-{n}"
    synth(d, n, max(n // 10, 1))
    shutil.rmtree(d / "store", ignore_errors=True)             # extract resumes: start empty
    return [PY, "-m", "jobs.extract", "--out", str(d), "--random-weights", "--num-cpus", str(args.num_cpus)]


def setup_embed_users(work: Path, n: int, args: argparse.Namespace) -> list[str]:
    d = work / f"embed-{n}"
    synth(d, n, n, "--avg-degree", "11")
    shutil.rmtree(d / "store", ignore_errors=True)             # a finished view makes a re-run a no-op
    return [PY, "-m", "jobs.embed_users", "--out", str(d), "--walks-per-node", str(args.walks),
            "--walk-length", str(args.walk_length), "--num-cpus", str(args.num_cpus)]


WALKS_ONLY = """
import shutil, sys, tempfile
from pathlib import Path
from jobs.embed_users import EmbedUsersConfig, read_graph, read_users, run_walks
cfg = EmbedUsersConfig(out=sys.argv[1], walks_per_node=int(sys.argv[2]), walk_length=int(sys.argv[3]),
                       num_cpus=int(sys.argv[4]))
graph, _ = read_graph(cfg, read_users(cfg))
spill = Path(tempfile.mkdtemp(prefix="walks-", dir=cfg.out))
try:
    blocks = run_walks(cfg, graph, spill)
    print("walks", sum(b.shape[0] for b in blocks), "steps", sum(int((b >= 0).sum()) for b in blocks))
finally:
    shutil.rmtree(spill)
"""


def setup_embed_walks(work: Path, n: int, args: argparse.Namespace) -> list[str]:
    """embed_users' read + graph + walk phase alone at 10 x 80 (skip-gram excluded:
    at 10^6 users that is 8e8 tokens, hours of gensim on 2 cores)."""
    d = work / f"embed-{n}"
    synth(d, n, n, "--avg-degree", "11")
    return [PY, "-c", WALKS_ONLY, str(d), "10", "80", str(args.num_cpus)]


def setup_train(work: Path, n: int, args: argparse.Namespace) -> list[str]:
    posts = int(round(n / TAGS_PER_POST))
    d = work / f"train-{n}"
    synth(d, posts, max(posts // 10, 1), "--write-features")
    prepare(d)
    for sub in ("models", "checkpoints"):
        shutil.rmtree(d / sub, ignore_errors=True)
    return [PY, "-m", "jobs.train", "--out", str(d), "--model", "PITF-IC-OD", "--epochs", "1",
            "--num-cpus", str(args.num_cpus)]


def setup_score(work: Path, n: int, args: argparse.Namespace) -> list[str]:
    m = work / "score-model"
    synth(m, 10**5, 10**4, "--write-features")
    prepare(m)
    if not (m / "models" / "PITF-IC-OD" / "model.json").exists():
        sh([PY, "-m", "jobs.train", "--out", str(m), "--model", "PITF-IC-OD", "--epochs", "1"])
    d = work / f"score-{n}"
    synth(d, n, max(n // 10, 1), "--write-features")
    shutil.rmtree(d / "topk", ignore_errors=True)               # score resumes: drop what it wrote
    from featurestore import Store

    with Store.open(str(d / "store"), create=False) as store:
        for v in store.list_views():
            if v.startswith("post/topk@"):
                store.drop_view(v)
    return [PY, "-m", "jobs.score", "--out", str(d), "--model", str(m / "models" / "PITF-IC-OD"),
            "--num-cpus", str(args.num_cpus)]


SETUP = {"extract": setup_extract, "embed_users": setup_embed_users, "embed_walks": setup_embed_walks, "train": setup_train,
         "score": setup_score}


# ------------------------------------------------------------------ measuring and reporting


def measure(job: str, n: int, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    cmd = SETUP[job](Path(args.workdir), n, args)
    setup_s = time.perf_counter() - t0
    load0 = os.getloadavg()[0]
    st: RunStats = run_measured(cmd, timeout_s=args.timeout)
    load1 = os.getloadavg()[0]
    row = {"job": job, "size": n, "unit": UNIT[job], "wall_s": round(st.wall_s, 2),
           "anon_gib": round(gib(st.peak_anon_bytes), 3), "rss_gib": round(gib(st.peak_rss_bytes), 3),
           "cpu_s": st.cpu_s, "file_gib": round(gib(st.peak_file_bytes), 3), "procs": st.peak_processes, "rc": st.returncode,
           "load": f"{load0:.1f}-{load1:.1f}", "setup_s": round(setup_s, 1),
           "when": time.strftime("%H:%M:%S", time.gmtime())}
    if st.returncode:
        row["tail"] = st.tail[-1500:]
    print(f"  {job:<12} {n:>10,} {UNIT[job]:<16} wall {st.wall_s:8.1f}s  cpu {st.cpu_s:8.1f}s  anon {row['anon_gib']:6.2f} GiB  "
          f"rss {row['rss_gib']:6.2f} GiB  procs {st.peak_processes:3d}  load {row['load']}  rc {st.returncode}",
          flush=True)
    if st.returncode:
        print(st.tail[-1500:], flush=True)
    if args.log:
        with open(args.log, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def ratios(job: str, small: dict, big: dict) -> list[str]:
    if small["rc"] or big["rc"]:
        return [f"# {job}: a run failed, no ratios"]
    tg = big["wall_s"] / max(small["wall_s"], 1e-9)
    mg = big["anon_gib"] / max(small["anon_gib"], 1e-9)
    out = [f"RATIO {job}_time_linearity {10 / tg:.3f}", f"RATIO {job}_mem_flatness {10 / mg:.3f}"]
    if small.get("cpu_s") and big.get("cpu_s"):  # CPU time: steadier than wall time on a shared machine
        out.append(f"RATIO {job}_cpu_linearity {10 / (big['cpu_s'] / small['cpu_s']):.3f}")
    if big["size"] == FULL[job][1]:
        out.append(f"RATIO {job}_mem_headroom {BOUND_GIB[job] / max(big['anon_gib'], 1e-9):.3f}")
    return out


def print_table(rows: list[dict]) -> None:
    print("\n| job | size | unit | wall s | peak anon+shm GiB | peak RSS GiB | procs | load |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['job']} | {r['size']:,} | {r['unit']} | {r['wall_s']} | {r['anon_gib']} | "
              f"{r['rss_gib']} | {r['procs']} | {r['load']} |")
    print()


def report(log: Path) -> None:
    """Table + RATIO lines from a --log file: runs made separately (or resumed) still pair up."""
    latest: dict[tuple[str, int], dict] = {}
    for r in map(json.loads, log.read_text().splitlines()):
        latest[(r["job"], r["size"])] = r
    rows = sorted(latest.values(), key=lambda r: (list(SETUP).index(r["job"]), r["size"]))
    print_table(rows)
    for job in SETUP:
        sizes = sorted(n for j, n in latest if j == job)
        for small in sizes:
            if (job, small * 10) in latest:
                for line in ratios(job, latest[(job, small)], latest[(job, small * 10)]):
                    print(line.replace(f"RATIO {job}_", f"RATIO {job}_{small:.0e}_".replace("+0", "")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the QUICK sizes (10-1000x smaller than the target sizes)")
    ap.add_argument("--jobs", default="extract,embed_walks,embed_users,train,score", help="comma list")
    ap.add_argument("--sizes", default="", help="override: comma list of sizes for every job given")
    ap.add_argument("--workdir", default="/tmp/tagrec-scale", help="inputs are cached here")
    ap.add_argument("--walks", type=int, default=10, help="embed_users --walks-per-node (target: 10)")
    ap.add_argument("--walk-length", type=int, default=80, help="embed_users --walk-length (target: 80)")
    ap.add_argument("--num-cpus", type=int, default=2, help="local Ray CPUs of every job")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per measured run")
    ap.add_argument("--log", default="", help="append each row as JSON to this file")
    ap.add_argument("--report", default="", help="only print the table and RATIO lines of a --log file "
                                                 "(the latest row per job and size)")
    args = ap.parse_args()
    if args.report:
        report(Path(args.report))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(f"# scale benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    lines: list[str] = []
    allrows: list[dict] = []
    for job in args.jobs.split(","):
        sizes = [int(float(s)) for s in args.sizes.split(",")] if args.sizes else \
            list(QUICK[job] if args.quick else FULL[job])
        rows = [measure(job, n, args) for n in sizes]
        allrows += rows
        if len(rows) == 2:
            lines += ratios(job, rows[0], rows[1])
    print_table(allrows)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
