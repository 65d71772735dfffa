"""Top-k scoring benchmark: the CPU job end to end beside the bare kernel; the GPU kernel.

    .venv/bin/python benchmarks/score.py --quick          # 50k posts (< 1 min)
    .venv/bin/python benchmarks/score.py --posts 1000000  # the archive-scale run
    .venv/bin/python benchmarks/score.py --workdir DIR --reuse   # keep/reuse the archive + store

CPU section (one run, the same posts): a synthetic archive (`jobs.synth --no-images
--write-features`: IC/OD vectors straight into the store) and a seeded PITF-IC-OD model
(T = --tags tags, dim --dim, so D = 3 * dim + 1) are built first (not timed). Then:

* job: `jobs.score.run` with 2 Ray workers (a local Ray started beforehand, 2 CPUs),
  --exclude-own-tags, k = 10: store -> post_vectors -> top-k -> Parquet + store view; in both
  feature modes, alternating (--rounds of each, best kept): `ship` (the default: the driver
  reads each shard's features and sends them with the task, which may run on any node) and
  `store` (each task reads the store itself, on the store's node);
* bare kernel: what each task computes (post_vectors + top-k excluding own tags + rescore)
  on the same posts with features already in memory, in 2 processes running together, 1 torch thread each
  (as the 2 Ray workers run it); also the numpy kernel, and torch without the rescore step.
  Measured right after the job, best of 2.

`RATIO score_job_vs_bare_kernel` = job posts/s / kernel posts/s (1 - it = the overhead
outside the kernel: store reads, Ray, writes; target <= 30%, i.e. RATIO >= 0.70), for the
default (ship) mode; `RATIO score_job_store_mode_vs_bare_kernel` the same for tasks reading the
store; `RATIO score_ship_vs_store` = ship posts/s / store posts/s in the same run.
`RATIO score_job_vs_in_job_kernel` = the same with the kernel's rate as timed inside the
job's tasks (compute worker-seconds / (2 x wall)): immune to load drifting between the two
measurements on a shared machine.

GPU section (only where CUDA exists): T = 2000, k = 10, D = 193, features already on the GPU;
plain torch (matmul + torch.topk, blocked) vs the fused Triton kernel.
`RATIO score_gpu_triton_vs_torch` (target: >= 100M posts/s for triton).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def build(work: Path, n_posts: int, n_tags: int, dim: int, seed: int, reuse: bool) -> Path:
    """Synthetic archive + store (IC/OD) + saved PITF-IC-OD model under work (the job's --out)."""
    import pyarrow.parquet as pq

    from jobs.synth import SynthConfig
    from jobs.synth import run as synth
    from models.recsys import get_model, save

    model_dir = work / "models" / "PITF-IC-OD"
    if reuse and (model_dir / "model.json").is_file():
        return model_dir
    t0 = time.perf_counter()
    synth(SynthConfig(out=str(work), num_posts=n_posts, num_users=max(n_posts // 25, 10),
                      num_tags=min(n_tags, 500), no_images=True, write_features=True, seed=seed))
    t_synth = time.perf_counter() - t0
    posts = pq.read_table(work / "archive" / "posts.parquet", columns=["user_id", "tags"])
    users = np.unique(posts.column("user_id").to_numpy())
    seen = sorted({t for ts in posts.column("tags").to_pylist() for t in ts})
    vocab = seen + [f"extra-{i}" for i in range(n_tags - len(seen))]
    m = get_model("PITF-IC-OD", n_users=len(users), n_items=0, n_tags=n_tags, dim=dim, seed=seed)
    save(m, model_dir, meta={"tags": vocab, "user_ids": users})
    print(f"built {n_posts} posts, {len(users)} users, T={n_tags} in {t_synth:.1f}s (synth + features)")
    return model_dir


VARIANTS = (("torch", "torch", True), ("numpy", "numpy", True), ("torch-norescore", "torch", False))


def _kernel_worker(work: str, model_dir: str, k: int, part: int, parts: int, n_max: int, barrier,
                   batch: int = 8192) -> dict[str, float]:
    """One of `parts` processes: its share of the posts, features loaded untimed, then per
    variant (after a barrier, so the processes run together) the seconds of
    post_vectors + top-k (+ rescore), best of 2."""
    import torch

    from featurestore import Store
    from jobs import score as J
    from jobs._score_plan import read_posts_sorted
    from models import scoring as S
    from models.csr import take_rows
    from models.recsys import load
    from models.recsys.data import IdIndex
    from models.recsys.saved import feature_views, id_vocab, tag_vocabulary

    torch.set_num_threads(1)  # as in a Ray worker with num_cpus=1
    model = load(model_dir)
    tm = np.ascontiguousarray(model.tag_matrix(), np.float32)
    posts = read_posts_sorted(J.ScoreConfig(out=work), tag_vocabulary(model))  # as the job reads them
    rows = np.array_split(np.arange(min(n_max, len(posts["post_id"]))), parts)[part]
    uid, iid = posts["user_id"][rows], posts["item_id"][rows]
    indptr, indices = take_rows(posts["indptr"], posts["indices"], rows)  # --exclude-own-tags, as the job
    store = Store.open(Path(work) / "store", readonly=True)
    feats = {f: store.reader(v).get_many(iid) for f, v in feature_views(model).items()}
    uindex = IdIndex(id_vocab(model, "user"))
    batches = []
    for s in range(0, len(uid), batch):
        e = min(s + batch, len(uid))
        b = {"user_index": uindex(uid[s:e]), "item_index": np.full(e - s, -1)}
        for f, (v, found) in feats.items():
            b[f], b[f"has_{f}"] = v[s:e], found[s:e]
        batches.append((b, indptr[s:e + 1] - indptr[s], indices[indptr[s]:indptr[e]]))
    out: dict[str, float] = {}
    for name, kernel, resc in 2 * VARIANTS:
        barrier.wait()
        t0 = time.perf_counter()
        for b, ip, ix in batches:
            pv = model.post_vectors(b)
            r = S.topk(pv, tm, k, ip, ix, kernel=kernel)
            if resc:
                S.rescore(pv, tm, r)
        out[name] = min(out.get(name, np.inf), time.perf_counter() - t0)
    return out


def bare_kernel(work: Path, model_dir: Path, k: int, n_max: int, procs: int = 2) -> dict[str, float]:
    """posts/s of the kernel alone on the job's posts: `procs` processes at once, 1 thread each
    (the job's 2 Ray workers, minus store reads, Ray and writes), features already in memory."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Manager() as mgr:
        barrier = mgr.Barrier(procs)
        with ctx.Pool(procs) as pool:
            res = pool.starmap(_kernel_worker, [(str(work), str(model_dir), k, i, procs, n_max, barrier)
                                                for i in range(procs)])
    return {name: n_max / max(r[name] for r in res) for name, _, _ in VARIANTS}


def check_sample(work: Path, model_dir: Path, k: int, n_sample: int = 300, seed: int = 0) -> tuple[int, int]:
    """(same, checked): the job's Parquet rows vs brute-force numpy (`topk_reference`) on a sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.features import gather
    from models import scoring as S
    from models.csr import csr_from_lists
    from models.recsys import load
    from models.recsys.saved import feature_views

    model = load(model_dir)
    vocab = {t: i for i, t in enumerate(model.tags)}
    out = pa.concat_tables([pq.read_table(p) for p in sorted((work / "topk" / model_dir.name).glob("part-*.parquet"))])
    pick = np.sort(np.random.default_rng(seed).choice(out.num_rows, min(n_sample, out.num_rows), replace=False))
    got_rows = out.take(pa.array(pick)).to_pydict()
    posts = pq.read_table(work / "archive" / "posts.parquet", columns=["post_id", "user_id", "item_id", "tags"])
    pos = {p: i for i, p in enumerate(posts.column("post_id").to_numpy())}
    rows = posts.take(pa.array([pos[p] for p in got_rows["post_id"]])).to_pydict()
    uid, iid = np.array(rows["user_id"]), np.array(rows["item_id"])
    batch, _ = gather(work / "store", uid, iid, views=feature_views(model))
    batch["user_index"] = np.array([{u: i for i, u in enumerate(model.user_ids)}.get(u, -1) for u in uid])
    batch["item_index"] = np.full(len(uid), -1)
    pv, tm = model.post_vectors(batch), model.tag_matrix()
    ip, ix = csr_from_lists([[vocab[t] for t in ts if t in vocab] for ts in rows["tags"]])
    want = S.topk_reference(pv, tm, k, ip, ix)
    same = 0
    for r in range(len(uid)):
        got = S.TopK(np.array([[vocab[t] for t in got_rows["tags"][r]]], np.int32),
                     np.array([got_rows["scores"][r]], np.float32))
        same += S.same_topk(pv[r:r + 1], tm, got, S.TopK(want.tags[r:r + 1], want.scores[r:r + 1]),
                            ip[r:r + 2] - ip[r], ix[ip[r]:ip[r + 1]])[0]
    return same, len(uid)


def _warm() -> int:
    import time as _t

    import torch  # noqa: F401  (the imports a scoring task pays once per worker)

    import featurestore  # noqa: F401
    import jobs.score  # noqa: F401
    import models.recsys  # noqa: F401
    import models.scoring  # noqa: F401

    _t.sleep(0.5)  # hold the CPU slot so the second task starts the second worker
    return os.getpid()


def warm_workers(n: int = 2) -> None:
    """Start the Ray workers and import torch & co. there, as a long-lived cluster has them."""
    import ray

    pids = ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(n)])
    assert len(set(pids)) == n, pids


def job(work: Path, model_dir: Path, k: int, shard: int, features: str = "ship") -> dict:
    """One fresh run of the job (the top-k view and parts of an earlier run dropped first)."""
    import shutil

    from featurestore import Store
    from jobs import score as J

    with Store.open(work / "store") as store:
        for v in store.list_views():
            if v.startswith("post/topk@"):
                store.drop_view(v)
    shutil.rmtree(work / "topk", ignore_errors=True)
    cfg = J.ScoreConfig(out=str(work), model=str(model_dir), k=k, exclude_own_tags=True,
                        shard_size=shard, max_in_flight=4, num_cpus=2, features=features)
    return J.run(cfg)


def gpu_section(n: int = 4_000_000, t: int = 2000, d: int = 193, k: int = 10) -> float | None:
    """posts/s of plain torch vs the fused Triton kernel on the GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        print("GPU section: skipped (no CUDA device on this machine)")
        return None
    from models import _scoring_triton as tt
    from models.scoring import topk_torch_tensors

    g = torch.Generator(device="cuda").manual_seed(0)
    posts = torch.randn(n, d, device="cuda", generator=g)
    tags = torch.randn(t, d, device="cuda", generator=g)
    posts_h, tags_h = posts.half(), tags.half()
    rows = []
    for name, fn in (
        ("torch fp32 (matmul + topk)", lambda: topk_torch_tensors(posts, tags, k, block=1 << 16)),
        ("torch fp16 (matmul + topk)", lambda: topk_torch_tensors(posts_h, tags_h, k, block=1 << 16)),
        ("triton fused fp32 ieee", lambda: tt.topk_fused(posts, tags, k, precision="ieee")),
        ("triton fused tf32", lambda: tt.topk_fused(posts, tags, k, precision="tf32")),
        ("triton fused fp16", lambda: tt.topk_fused(posts_h, tags_h, k)),
    ):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        rows.append((name, 3 * n / (time.perf_counter() - t0)))
    print(f"\nGPU kernel, {torch.cuda.get_device_name()}: n={n:,} T={t} D={d} k={k}, features on the GPU")
    for name, r in rows:
        print(f"  {name:32s} {r / 1e6:10.1f} M posts/s")
    best = max(r for name, r in rows if name.startswith("triton"))
    return best / rows[0][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50k posts")
    ap.add_argument("--posts", type=int, default=200_000)
    ap.add_argument("--tags", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=0, help="0: posts / 16")
    ap.add_argument("--kernel-posts", type=int, default=200_000, help="posts for the bare kernel (a prefix)")
    ap.add_argument("--workdir", default="", help="keep the archive/store/model here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse the archive in --workdir (drops old top-k)")
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="job runs per feature mode (alternating; best kept)")
    args = ap.parse_args()
    n = 50_000 if args.quick else args.posts
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    work = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    model_dir = build(work, n, args.tags, args.dim, 0, args.reuse)

    import ray

    from jobs._ray import init_ray

    init_ray(num_cpus=2)
    t0 = time.perf_counter()
    warm_workers()
    t_warm = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {"store": [], "ship": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(job(work, model_dir, args.k, args.shard_size or max(n // 16, 1000), mode))
    ray.shutdown()
    best = {mode: max(rs, key=lambda r: r["posts_per_s"]) for mode, rs in runs.items()}
    s = best["ship"]
    same, checked = check_sample(work, model_dir, args.k)
    kern = bare_kernel(work, model_dir, args.k, min(args.kernel_posts, n))
    ts = s["time_s"]
    print(f"\nCPU, 2 cores, n={n:,} posts, T={args.tags}, D={3 * args.dim + 1}, k={args.k}, --exclude-own-tags")
    print(f"{'what':44s} {'posts/s':>12s}")
    for mode, rs in runs.items():
        rates = " / ".join(f"{r['posts_per_s']:,.0f}" for r in rs)
        print(f"{'job end to end, features ' + mode + ' (best of)':44s} {best[mode]['posts_per_s']:12,.0f}   ({rates})")
    for name, r in kern.items():
        print(f"{'bare kernel ' + name + ' (2 processes x 1 thread)':44s} {r:12,.0f}")
    print(f"brute-force numpy check of a random sample: {same}/{checked} posts have the same top-k (up to ties)")
    print(f"(Ray worker start + imports before the job, not in the job's time: {t_warm:.1f}s)")
    print(f"job time split (s), ship: {json.dumps(ts)}; shipped {s['shipped_mb']} MB")
    print(f"job time split (s), store: {json.dumps(best['store']['time_s'])}")
    share = {w: ts[key] / (2 * ts["total"]) for w, key in (("kernel", "compute_worker"),
                                                         ("feature gathers", "store_reads_worker"))}
    print("in-job accounting, share of the 2 workers' time over the job's wall: "
          + ", ".join(f"{w} {100 * v:.0f}%" for w, v in share.items())
          + f", rest (Ray, driver contention, idle) {100 * (1 - sum(share.values())):.0f}%")
    gpu = None if args.no_gpu else gpu_section()
    print(f"RATIO score_job_vs_bare_kernel {s['posts_per_s'] / kern['torch']:.3f}")
    print(f"RATIO score_job_store_mode_vs_bare_kernel {best['store']['posts_per_s'] / kern['torch']:.3f}")
    print(f"RATIO score_ship_vs_store {s['posts_per_s'] / best['store']['posts_per_s']:.3f}")
    # the same kernel timed inside the job's own tasks (same moment, same contention)
    print(f"RATIO score_job_vs_in_job_kernel {share['kernel']:.3f}")
    if gpu is not None:
        print(f"RATIO score_gpu_triton_vs_torch {gpu:.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
