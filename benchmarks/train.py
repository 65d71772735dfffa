"""BPR training throughput: the step kernel alone and the Ray job around it.

    python benchmarks/train.py --quick      # < 1 min on a 2-core laptop
    python benchmarks/train.py              # bigger data, dim 128

CPU section, one run, same data and model (PITF-IC-OD):
  - kernel: `bpr_step_fused` vs `bpr_step_autograd` (the plain torch step), samples/s;
  - training: a single-process loop (`BPRTrainer`, no Ray) vs the Ray job (`jobs._train_ray.RayEngine`)
    with 1 and 2 workers, samples/s over whole epochs after a warm-up epoch (worker start-up
    excluded, the per-epoch state pull included).
GPU section (only where CUDA exists): one BPR step for PITF-IC-OD at k=128, 100k users,
2000 tags, fused vs autograd.
Per-sample SGD section (PITF without content, on a folksonomy where many users tag the same
items, `jobs._synth_folksonomy`, 10-core, one test post per user): the numba trainer
(`models.recsys.sgd.SGDTrainer`, 1 thread and Hogwild on 2) against Algorithm 1 as a plain
loop compiled by numba (`algorithm1_pitf_jit`, numpy-drawn negatives), the same epochs and
hyperparameters: samples/s and test F1@5 side by side.

Last lines: `RATIO <name> <ours/reference>` (> 1: ours faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.recsys import get_model  # noqa: E402
from models.recsys.bpr import BPRConfig, BPRTrainer  # noqa: E402
from models.recsys.bpr_step import bpr_step_autograd, bpr_step_fused  # noqa: E402
from models.recsys.data import PostData  # noqa: E402


def random_posts(n_posts: int, n_users: int, n_items: int, n_tags: int, seed: int = 0) -> PostData:
    """Posts with 1-4 random tags and random IC/OD vectors (throughput needs no signal)."""
    rng = np.random.default_rng(seed)
    tags = [rng.choice(n_tags, rng.integers(1, 5), replace=False) for _ in range(n_posts)]
    feats = {"ic": rng.random((n_posts, 512), dtype=np.float32), "od": rng.random((n_posts, 80), dtype=np.float32)}
    return PostData.from_lists(rng.integers(0, n_users, n_posts), rng.integers(0, n_items, n_posts), tags,
                               n_tags, feats)


def time_steps(step, model, inp, pos, neg, rows, repeats: int, sync=lambda: None) -> float:
    """samples/s of `step` over `repeats` calls after one warm-up call."""
    step(model, inp, pos, neg, 0.01, 1e-4, rows)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step(model, inp, pos, neg, 0.01, 1e-4, rows)
    sync()
    return repeats * len(pos) / (time.perf_counter() - t0)


def kernel_section(device: str, n_users: int, n_items: int, n_tags: int, dim: int, batch: int,
                   repeats: int, samples_per_post: int = 1) -> tuple[float, float]:
    """(fused, autograd) samples/s of one BPR step for PITF-IC-OD on `device`.

    samples_per_post > 1: the batch's samples share batch/samples_per_post distinct posts
    (several (t+, t-) per post), whose features both steps project once.
    """
    rng = np.random.default_rng(0)
    m = get_model("PITF-IC-OD", n_users=n_users, n_items=n_items, n_tags=n_tags, dim=dim, device=device)
    n_posts = batch // samples_per_post
    b = {"user_index": rng.integers(0, n_users, n_posts), "item_index": rng.integers(0, n_items, n_posts),
         "ic": rng.random((n_posts, 512), dtype=np.float32), "od": rng.random((n_posts, 80), dtype=np.float32)}
    inp = m.inputs(b)
    rows = None if samples_per_post == 1 else torch.as_tensor(rng.integers(0, n_posts, batch), device=device)
    pos = torch.as_tensor(rng.integers(0, n_tags, batch), device=device)
    neg = (pos + torch.as_tensor(rng.integers(1, n_tags, batch), device=device)) % n_tags
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fused = time_steps(bpr_step_fused, m, inp, pos, neg, rows, repeats, sync)
    auto = time_steps(bpr_step_autograd, m, inp, pos, neg, rows, repeats, sync)
    return fused, auto


def local_rate(data: PostData, n_users: int, n_items: int, n_tags: int, dim: int, bpr: BPRConfig,
               epochs: int) -> float:
    m = get_model("PITF-IC-OD", n_users=n_users, n_items=n_items, n_tags=n_tags, dim=dim)
    tr = BPRTrainer(m, data, bpr, total_pairs=len(data.pairs()[0]))
    tr.run_epoch(0)
    t0, n = time.perf_counter(), 0
    for e in range(1, epochs + 1):
        n += tr.run_epoch(e)[1]
    return n / (time.perf_counter() - t0)


def ray_rate(data: PostData, n_users: int, n_items: int, n_tags: int, dim: int, bpr: BPRConfig,
             epochs: int, workers: int, tmp: Path) -> float:
    from jobs._train_ray import RayEngine

    m = get_model("PITF-IC-OD", n_users=n_users, n_items=n_items, n_tags=n_tags, dim=dim)
    eng = RayEngine(m, data, BPRTrainer, bpr, workers, num_cpus=max(2, workers), marker=tmp / "no-fault")
    try:
        eng.run_epoch(0)
        t0, n = time.perf_counter(), 0
        for e in range(1, epochs + 1):
            n += eng.run_epoch(e)[1]
        return n / (time.perf_counter() - t0)
    finally:
        eng.close()


def folksonomy_split(tmp: Path, quick: bool, seed: int = 0) -> tuple[PostData, PostData, PostData, dict]:
    """train/val/test PostData of a generated folksonomy after jobs.prepare (10-core, 1 test post per user)."""
    import pyarrow.parquet as pq

    from jobs._synth_folksonomy import FolksonomyParams, edges_table, make_folksonomy, posts_table
    from jobs._synth_world import tag_names
    from jobs._train_data import _read, load_split
    from jobs.posts import post_data
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from models.recsys.data import IdIndex

    p = FolksonomyParams(seed=seed) if not quick else FolksonomyParams(num_users=500, num_items=4000,
                                                                      num_tags=3000, num_posts=20_000, seed=seed)
    f = make_folksonomy(p)
    pq.write_table(posts_table(f, tag_names(p.num_tags)), tmp / "posts.parquet")
    pq.write_table(edges_table(f), tmp / "edges.parquet")
    prepare(PrepareConfig(posts=str(tmp / "posts.parquet"), out=str(tmp), p_core=10, p_core_items=True,
                          test_per_user=1, seed=seed))
    d = load_split(tmp / "split")
    test, _ = post_data(_read(tmp / "split", "test"), IdIndex(d.user_ids), IdIndex(d.item_ids), d.tags)
    sizes = {"users": len(d.user_ids), "items": len(d.item_ids), "tags": len(d.tags)}
    return d.train, d.val, test, sizes


def user_item_popular(train: PostData, val: PostData, n_users: int = 0, n_items: int = 0):
    """user-item-popular fitted on the training posts, its weight chosen on `val` (what
    jobs.evaluate reports); its tables sized n_users / n_items (0: the training posts' largest
    index + 1)."""
    from models.baselines import PopularityMix, tune_alpha

    post = np.repeat(np.arange(len(train)), np.diff(train.indptr))
    mix = PopularityMix(train.n_tags, n_users or int(train.user_index.max()) + 1,
                        n_items or int(train.item_index.max()) + 1)
    mix.fit(train.user_index[post], train.indices, train.item_index[post], post_index=post)
    tune_alpha(mix, val.user_index, val.item_index, val.indptr, val.indices)
    return mix


def sgd_section(quick: bool) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Rows (what, samples/s) and test F1@5 of the reference loop and the numba trainer."""
    import tempfile

    from models.recsys.bpr import sample_negatives
    from models.recsys.evaluate import evaluate
    from models.recsys.sgd import SGDTrainer, algorithm1

    epochs, dim, lr, reg = (30, 64, 0.05, 5e-5) if quick else (100, 64, 0.05, 5e-5)
    with tempfile.TemporaryDirectory() as tmp:
        train, _, test, sz = folksonomy_split(Path(tmp), quick)
    post, tag = train.pairs()
    codes = np.sort(np.repeat(np.arange(len(train)), np.diff(train.indptr)) * train.n_tags + train.indices)

    def fresh():
        return get_model("PITF", n_users=sz["users"], n_items=sz["items"], n_tags=sz["tags"], dim=dim, seed=0)

    ref = fresh()
    params = {k: v.numpy() for k, v in ref.params.items()}
    algorithm1("PITF", params, train.user_index, train.item_index, post[:10], tag[:10],
               (tag[:10] + 1) % train.n_tags, lr, reg, compiled=True)  # compile outside the clock
    t0 = time.perf_counter()
    for e in range(epochs):
        rng = np.random.default_rng([0, e])
        order = rng.permutation(len(post))
        neg = sample_negatives(post[order], codes, train.n_tags, rng)
        algorithm1("PITF", params, train.user_index, train.item_index, post[order], tag[order], neg, lr, reg,
                   compiled=True)
    rates = {"reference": epochs * len(post) / (time.perf_counter() - t0)}
    f1 = {"reference": evaluate(ref, test)["f1@5"]}
    for threads, draws, key in ((1, 1, "sgd1"), (2, 1, "sgd2"), (1, 4, "sgd1_hard4")):
        cfg = BPRConfig(lr=lr, reg=reg, seed=0, kernel="sgd", threads=threads, negatives=draws)
        SGDTrainer(fresh(), train.subset(np.arange(20)), cfg).run_epoch(0)  # compiles outside the clock
        m = fresh()
        tr = SGDTrainer(m, train, cfg)
        t0 = time.perf_counter()
        for e in range(epochs):
            tr.run_epoch(e)
        rates[key] = epochs * len(post) / (time.perf_counter() - t0)
        f1[key] = evaluate(m, test)["f1@5"]
        tr.close()
    m = fresh()
    torch_tr = BPRTrainer.for_partition(m, train, BPRConfig(lr=lr, reg=reg, seed=0, kernel="torch"))
    t0 = time.perf_counter()
    for e in range(epochs):
        torch_tr.run_epoch(e)
    rates["torch"] = epochs * len(post) / (time.perf_counter() - t0)
    f1["torch"] = evaluate(m, test)["f1@5"]
    print(f"per-sample SGD: PITF dim {dim}, {epochs} epochs, lr {lr}, reg {reg}; {len(train):,} train posts, "
          f"{len(post):,} pairs/epoch, {sz['users']:,} users, {sz['items']:,} items, {sz['tags']:,} tags; "
          f"{len(test):,} test posts")
    rows = [("cpu per-sample: Algorithm 1 loop, numba (reference)", rates["reference"]),
            ("cpu per-sample: SGDTrainer, 1 thread", rates["sgd1"]),
            ("cpu per-sample: SGDTrainer, Hogwild 2 threads", rates["sgd2"]),
            ("cpu per-sample: SGDTrainer, 1 thread, hardest of 4 negatives", rates["sgd1_hard4"]),
            ("cpu batched torch step (BPRTrainer, batch 1024), 1 thread", rates["torch"])]
    print(f"{'what':<62} {'samples/s':>14} {'test F1@5':>10}")
    for (name, rate), key in zip(rows, ("reference", "sgd1", "sgd2", "sgd1_hard4", "torch")):
        print(f"{name:<62} {rate:>14,.0f} {f1[key]:>10.4f}")
    return rows, {**{f"rate_{k}": v for k, v in rates.items()}, **{f"f1_{k}": v for k, v in f1.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, dim 64: under a minute")
    ap.add_argument("--skip-ray", action="store_true", help="kernel and single-process loop only")
    ap.add_argument("--only-sgd", action="store_true", help="only the per-sample SGD section")
    a = ap.parse_args()
    torch.set_num_threads(1)  # the single-process loop gets one core, like each Ray worker
    if a.only_sgd:
        _, r = sgd_section(a.quick)
        print_sgd_ratios(r)
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)  # the single-process loop gets one core, like each Ray worker
    n_posts, n_users, n_items, n_tags, dim, epochs = ((40_000, 4_000, 40_000, 500, 64, 2) if a.quick
                                                      else (100_000, 10_000, 100_000, 2000, 128, 3))
    bpr = BPRConfig(lr=0.01, reg=1e-4, batch_size=1024, epochs=epochs + 1)
    rows = []

    f, g = kernel_section("cpu", n_users, n_items, n_tags, dim, 4096, 5 if a.quick else 20)
    f8, g8 = kernel_section("cpu", n_users, n_items, n_tags, dim, 4096, 5 if a.quick else 20, samples_per_post=8)
    rows += [("cpu kernel: bpr_step_fused", f), ("cpu kernel: bpr_step_autograd (plain torch)", g),
             ("cpu kernel: bpr_step_fused, 8 samples per distinct post", f8),
             ("cpu kernel: bpr_step_autograd, 8 samples per distinct post", g8)]
    data = random_posts(n_posts, n_users, n_items, n_tags)
    local = local_rate(data, n_users, n_items, n_tags, dim, bpr, epochs)
    rows.append(("cpu training: single process, 1 thread", local))
    ray1 = ray2 = float("nan")
    if not a.skip_ray:
        import tempfile

        from jobs._ray import init_ray

        init_ray("", 2)
        with tempfile.TemporaryDirectory() as tmp:
            ray1 = ray_rate(data, n_users, n_items, n_tags, dim, bpr, epochs, 1, Path(tmp))
            ray2 = ray_rate(data, n_users, n_items, n_tags, dim, bpr, epochs, 2, Path(tmp))
        rows += [("cpu training: Ray job, 1 worker", ray1), ("cpu training: Ray job, 2 workers", ray2)]

    gpu = None
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # the projections are TF32 matmuls on tensor cores
        gpu = kernel_section("cuda", 100_000, 100_000, 2000, 128, 1 << 18, 50)
        gpu8 = kernel_section("cuda", 100_000, 100_000, 2000, 128, 1 << 18, 50, samples_per_post=8)
        rows += [("gpu kernel: bpr_step_fused (k=128, 100k users, 2000 tags)", gpu[0]),
                 ("gpu kernel: bpr_step_autograd (plain torch)", gpu[1]),
                 ("gpu kernel: bpr_step_fused, 8 samples per distinct post", gpu8[0]),
                 ("gpu kernel: bpr_step_autograd, 8 samples per distinct post", gpu8[1])]
    print(f"PITF-IC-OD, dim {dim}, {n_posts:,} posts, {len(data.pairs()[0]):,} pairs/epoch, "
          f"{n_users:,} users, {n_tags} tags, batch {bpr.batch_size}")
    print(f"{'what':<62} {'samples/s':>14}")
    for name, rate in rows:
        print(f"{name:<62} {rate:>14,.0f}")
    if gpu is None:
        print("gpu kernel: skipped (no CUDA device here)")
    print(f"RATIO bpr_step_fused_vs_autograd_cpu {f / g:.3f}")
    if not a.skip_ray:
        print(f"RATIO ray_1_worker_vs_single_process {ray1 / local:.3f}")
        print(f"RATIO ray_2_workers_vs_single_process {ray2 / local:.3f}")
    if gpu is not None:
        print(f"RATIO bpr_step_fused_vs_autograd_gpu {gpu[0] / gpu[1]:.3f}")
        print(f"RATIO bpr_step_fused_vs_autograd_gpu_8_per_post {gpu8[0] / gpu8[1]:.3f}")
    _, r = sgd_section(a.quick)
    print_sgd_ratios(r)


def print_sgd_ratios(r: dict[str, float]) -> None:
    """Speed and quality of the numba trainer against the reference loop (> 1: ours faster / better)."""
    print(f"RATIO sgd_1_thread_vs_algorithm1_loop {r['rate_sgd1'] / r['rate_reference']:.3f}")
    print(f"RATIO sgd_hogwild_2_vs_algorithm1_loop {r['rate_sgd2'] / r['rate_reference']:.3f}")
    print(f"RATIO sgd_1_thread_f1_vs_algorithm1_loop {r['f1_sgd1'] / r['f1_reference']:.3f}")
    print(f"RATIO sgd_hogwild_2_f1_vs_algorithm1_loop {r['f1_sgd2'] / r['f1_reference']:.3f}")
    print(f"RATIO sgd_1_thread_vs_torch_batched_step {r['rate_sgd1'] / r['rate_torch']:.3f}")
    print(f"RATIO sgd_hardest_of_4_vs_algorithm1_loop {r['rate_sgd1_hard4'] / r['rate_reference']:.3f}")
    print(f"RATIO sgd_hardest_of_4_f1_vs_algorithm1_loop {r['f1_sgd1_hard4'] / r['f1_reference']:.3f}")


if __name__ == "__main__":
    main()
