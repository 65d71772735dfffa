"""node2vec benchmark: our exact p/q walks + skip-gram (numba, gensim) vs PecanPy (SparseOTF) vs csrgraph's walks.

    .venv/bin/python benchmarks/node2vec.py            # full: 100k nodes, >= 1M edges, p=0.5, q=2
    .venv/bin/python benchmarks/node2vec.py --quick    # 10k nodes, 100k edges (< 1 min)

One run, one graph (power-law degrees, planted communities, 10% of edges held
out for link prediction), the same walk count/length and the same skip-gram
settings (gensim Word2Vec sg=1, dim, window, epochs, negative 5, sample 1e-3,
the same number of threads) for every contender. Measured:

* walk steps/s: ours (numba kernel, warm from the on-disk JIT cache), optionally
  ours as the job runs it (Ray tasks, `--ray`), PecanPy SparseOTF warm (its
  closures compiled on a tiny call first) and cold (as a user runs it), csrgraph's
  biased walks on a sample of start nodes (its p/q step is O(deg v * deg t));
* skip-gram seconds on the same walks: our numba trainer (negatives shared per
  window, the job's default) and gensim (the reference, what PecanPy runs);
* end-to-end seconds from the CSR graph to vectors, ours and PecanPy's;
* link-prediction AUC (cosine) of held-out edges vs non-edges: ours with each
  trainer, and PecanPy's.

PecanPy 2.0.9 imports nptyping, which fails on numpy 2, so it runs in its own
venv (`--pecanpy-python`, default /tmp/pecanpy-venv/bin/python; create it with
`python -m venv /tmp/pecanpy-venv && /tmp/pecanpy-venv/bin/pip install "numpy<2" pecanpy`)
as a subprocess reading our CSR arrays from an .npz. Without it the PecanPy rows
are skipped and no RATIO lines are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.node2vec import SkipGramConfig, build_graph, random_walks, train_skipgram  # noqa: E402
from models.node2vec.quality import link_prediction_auc, sample_non_edges, split_edges  # noqa: E402

PECANPY_SCRIPT = r"""
import json, sys, time
import numpy as np
from gensim.models import Word2Vec
from pecanpy import pecanpy
npz, out, p, q, r, l, dim, window, epochs, workers, seed = sys.argv[1:]
p, q = float(p), float(q)
r, l, dim, window, epochs, workers, seed = map(int, (r, l, dim, window, epochs, workers, seed))
res = {}
# cold: exactly as a user runs it (numba compiles its closures on the first walk)
t0 = time.perf_counter()
g = pecanpy.SparseOTF(p=p, q=q, workers=workers, verbose=False, random_state=seed)
g.read_npz(npz, weighted=False, implicit_ids=True)
res["load_s"] = time.perf_counter() - t0
t1 = time.perf_counter()
walks = g.simulate_walks(r, l)
res["walk_cold_s"] = time.perf_counter() - t1
res["steps"] = int(sum(len(w) for w in walks))
t2 = time.perf_counter()
w2v = Word2Vec(walks, vector_size=dim, window=window, sg=1, min_count=0, workers=workers, epochs=epochs,
               negative=5, seed=seed)
res["skipgram_s"] = time.perf_counter() - t2
res["e2e_s"] = time.perf_counter() - t0
np.save(out, w2v.wv[g.nodes].astype(np.float32))
del walks, w2v
# warm: reuse one compiled move_forward, compile on a tiny call, then time the walks
mf = g.get_move_forward()
g.get_move_forward = lambda: mf
g.simulate_walks(1, 3)
t3 = time.perf_counter()
walks = g.simulate_walks(r, l)
res["walk_warm_s"] = time.perf_counter() - t3
print(json.dumps(res))
"""


def make_graph(n: int, m: int, communities: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Power-law expected degrees (Pareto 2.5), 80% of edges inside planted communities (Chung-Lu)."""
    rng = np.random.default_rng(seed)
    comm = rng.integers(0, communities, n)
    w = np.minimum((rng.pareto(1.5, n) + 1.0), 200.0)
    order = np.argsort(comm, kind="stable")  # nodes grouped by community
    cw = np.cumsum(w[order])
    bounds = np.searchsorted(comm[order], np.arange(communities + 1))
    lo = np.r_[0.0, cw][bounds[:-1]]
    hi = np.r_[0.0, cw][bounds[1:]]
    src = order[np.searchsorted(cw, rng.random(m) * cw[-1], side="right")]
    inside = rng.random(m) < 0.8
    c = comm[src]
    u = np.where(inside, lo[c] + rng.random(m) * (hi[c] - lo[c]), rng.random(m) * cw[-1])
    dst = order[np.minimum(np.searchsorted(cw, u, side="right"), n - 1)]
    return src.astype(np.int64), dst.astype(np.int64)


def time_it(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def run_pecanpy(python: str, g, tmp: Path, args) -> dict | None:
    if not Path(python).exists():
        print(f"(PecanPy skipped: {python} not found)")
        return None
    npz = tmp / "graph.csr.npz"
    np.savez(npz, indptr=g.indptr.astype(np.uint32), indices=g.indices.astype(np.uint32),
             data=g.weights, IDs=np.arange(g.n_nodes).astype(str))
    out = tmp / "pecanpy_vecs.npy"
    cmd = [python, "-c", PECANPY_SCRIPT, str(npz), str(out), str(args.p), str(args.q), str(args.walks),
           str(args.length), str(args.dim), str(args.window), str(args.epochs), str(args.workers), str(args.seed)]
    env = {**os.environ, "PYTHONPATH": "", "NUMBA_NUM_THREADS": str(args.workers)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print("(PecanPy failed)\n" + proc.stderr[-2000:])
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["vecs"] = np.load(out)
    return res


def time_csrgraph(g, args) -> tuple[float, int]:
    """csrgraph's biased walks from a sample of start nodes (after JIT warm-up), steps/s."""
    cg = g.to_csrgraph()
    cg.random_walks(walklen=5, epochs=1, start_nodes=np.arange(10), return_weight=1 / args.p,
                    neighbor_weight=1 / args.q)  # compile
    starts = np.random.default_rng(0).choice(g.n_nodes, min(args.csrgraph_starts, g.n_nodes), replace=False)
    starts = starts[g.degree()[starts] > 0]
    _, dt = time_it(cg.random_walks, walklen=args.length, epochs=1, start_nodes=starts,
                    return_weight=1 / args.p, neighbor_weight=1 / args.q)
    return starts.size * args.length / dt, starts.size


def ours_via_ray(g, args) -> float:
    """Walk steps/s as jobs.embed_users runs them (Ray tasks, arrays in the object store)."""
    from jobs._ray import init_ray
    from jobs.embed_users import EmbedUsersConfig, run_walks

    init_ray(num_cpus=args.workers)
    cfg = EmbedUsersConfig(p=args.p, q=args.q, walk_length=args.length, walks_per_node=1, seed=args.seed)
    run_walks(cfg, g)  # warm the workers (JIT cache load)
    cfg.walks_per_node = args.walks
    blocks, dt = time_it(run_walks, cfg, g)
    return sum(b.size for b in blocks) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k nodes, 100k edges")
    ap.add_argument("--nodes", type=int, default=0)
    ap.add_argument("--edges", type=int, default=0)
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--q", type=float, default=2.0)
    ap.add_argument("--walks", type=int, default=0, help="walks per node (default 2, as the issue measured)")
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csrgraph-starts", type=int, default=20000)
    ap.add_argument("--ray", action="store_true", help="also time the walks as Ray tasks (jobs.embed_users)")
    ap.add_argument("--pecanpy-python", default="/tmp/pecanpy-venv/bin/python")
    args = ap.parse_args()
    args.nodes = args.nodes or (10_000 if args.quick else 100_000)
    args.edges = args.edges or (100_000 if args.quick else 1_000_000)
    args.walks = args.walks or 2

    # Extra draws cover duplicates and self-loops (hubs repeat), so the graph keeps >= the asked edges.
    src, dst = make_graph(args.nodes, int(args.edges * 1.2), max(args.nodes // 500, 4), args.seed)
    train, held = split_edges(src, dst, 0.1, args.seed)
    g_full = build_graph(src, dst)
    g, t_build = time_it(build_graph, src[train], dst[train], nodes=g_full.node_ids)
    deg = g.degree()
    print(f"graph: {g_full.n_nodes:,} nodes, {g_full.n_edges // 2:,} undirected edges "
          f"(train {g.n_edges // 2:,}), max degree {deg.max()}, mean {deg.mean():.1f}; "
          f"p={args.p} q={args.q} walks {args.walks} x {args.length}, dim {args.dim}, window {args.window}, "
          f"{args.workers} threads; CSR build {t_build:.2f}s")
    hu, hv = g.dense(src[held]), g.dense(dst[held])
    keep = hu != hv
    hu, hv = hu[keep], hv[keep]
    nu, nv = sample_non_edges(g_full, 20000, args.seed + 1)

    # ours: walks (warm cache: compile once on a tiny graph), then skip-gram;
    # and the numba skip-gram's JIT cache, both outside the timing
    tiny = build_graph(np.array([0, 1]), np.array([1, 2]))
    sg = SkipGramConfig(dim=args.dim, window=args.window, epochs=args.epochs, workers=args.workers, seed=args.seed)
    train_skipgram([random_walks(tiny, 3, 1, args.p, args.q)], tiny.n_nodes, sg)
    t0 = time.perf_counter()
    walks, t_walk = time_it(random_walks, g, args.length, args.walks, args.p, args.q, args.seed,
                            threads=args.workers)
    vecs, t_sg = time_it(train_skipgram, [walks], g.n_nodes, sg)
    t_ours = time.perf_counter() - t0
    ours_sps = walks.size / t_walk
    auc_ours = link_prediction_auc(vecs, hu, hv, nu, nv)
    sg_gensim = dataclasses.replace(sg, trainer="gensim")
    vecs_g, t_sg_g = time_it(train_skipgram, [walks], g.n_nodes, sg_gensim)
    auc_gensim = link_prediction_auc(vecs_g, hu, hv, nu, nv)
    tokens = int((walks >= 0).sum())
    del walks, vecs_g

    rows = [("ours: walks (numba kernel)", f"{ours_sps / 1e6:.2f} M steps/s", f"{t_walk:.2f}"),
            ("ours: skip-gram (numba, shared negatives)", f"{tokens / t_sg / 1e3:.0f}k tokens/s", f"{t_sg:.2f}"),
            ("ours: walks + skip-gram (gensim)", f"AUC {auc_gensim:.4f}", f"{t_walk + t_sg_g:.2f}"),
            ("  of which skip-gram (gensim)", f"{tokens / t_sg_g / 1e3:.0f}k tokens/s", f"{t_sg_g:.2f}"),
            ("ours: end to end (numba skip-gram)", f"AUC {auc_ours:.4f}", f"{t_ours:.2f}")]
    if args.ray:
        rows.append(("ours: walks as Ray tasks (job)", f"{ours_via_ray(g, args) / 1e6:.2f} M steps/s", ""))
    cg_sps, cg_n = time_csrgraph(g, args)
    rows.append((f"csrgraph biased walks ({cg_n:,} starts)", f"{cg_sps / 1e6:.2f} M steps/s", ""))
    with tempfile.TemporaryDirectory() as d:
        pp = run_pecanpy(args.pecanpy_python, g, Path(d), args)
    if pp:
        auc_pp = link_prediction_auc(pp["vecs"], hu, hv, nu, nv)
        pp_warm = pp["steps"] / pp["walk_warm_s"]
        rows += [("PecanPy SparseOTF: walks warm", f"{pp_warm / 1e6:.2f} M steps/s", f"{pp['walk_warm_s']:.2f}"),
                 ("PecanPy SparseOTF: walks cold (incl. JIT)", f"{pp['steps'] / pp['walk_cold_s'] / 1e6:.2f} M steps/s",
                  f"{pp['walk_cold_s']:.2f}"),
                 ("PecanPy: skip-gram (gensim)", "", f"{pp['skipgram_s']:.2f}"),
                 ("PecanPy: end to end", f"AUC {auc_pp:.4f}", f"{pp['e2e_s']:.2f}")]
    print(f"\n| {'what':<44} | {'rate / quality':<18} | {'seconds':>8} |\n|{'-' * 46}|{'-' * 20}|{'-' * 10}|")
    for a, b, c in rows:
        print(f"| {a:<44} | {b:<18} | {c:>8} |")
    print()
    print(f"RATIO walk_steps_per_s_vs_csrgraph {ours_sps / cg_sps:.2f}")
    print(f"RATIO skipgram_numba_vs_gensim {t_sg_g / t_sg:.2f}")
    print(f"RATIO link_auc_numba_vs_gensim {auc_ours / auc_gensim:.3f}")
    if pp:
        print(f"RATIO walk_steps_per_s_vs_pecanpy {ours_sps / pp_warm:.2f}")
        print(f"RATIO end_to_end_vs_pecanpy {pp['e2e_s'] / t_ours:.2f}")
        print(f"RATIO link_auc_vs_pecanpy {auc_ours / auc_pp:.3f}")


if __name__ == "__main__":
    main()
