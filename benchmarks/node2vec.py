"""node2vec benchmark: speed AND embedding quality of our walks + skip-gram against gensim and PecanPy.

    .venv/bin/python benchmarks/node2vec.py --quick                    # 10k nodes (minutes)
    .venv/bin/python benchmarks/node2vec.py                            # 100k nodes, >= 1M edges
    .venv/bin/python benchmarks/node2vec.py --nodes 1000000 --edges 10000000 --sg-tokens 30000000 \\
        --only speed --no-pecanpy                                       # skip-gram rates at 10^6 users
    .venv/bin/python benchmarks/node2vec.py --quick --blogcatalog DIR   # + the BlogCatalog rows

Sections (`--only speed,planted,blogcatalog,tune`; all by default):

* speed: one power-law graph with planted communities (10% of edges held out), the same
  walks for every skip-gram: walk steps/s (ours, csrgraph's biased walks, PecanPy
  SparseOTF), skip-gram walk tokens/s of our numba trainer (noise drawn per window: the
  default; per pair: word2vec's draws) against gensim on the same walks (fed as an
  iterable, as PecanPy and our job do, and from a corpus file, which gensim reads in C++
  without the GIL), end to end against PecanPy, and link-prediction AUC of each;
* planted: planted-partition graphs at the job's defaults (p = q = 1, 10 walks of 80,
  d 128, window 10, 1 epoch; 10% of edges held out): held-out link AUC and 10-NN
  same-community rate of our trainer (both draw schemes), gensim on our walks and
  PecanPy. The graph where sharing one batched update per window lost quality;
* blogcatalog (needs `--blogcatalog DIR` with edges.parquet and labels.parquet: the
  BlogCatalog social graph of Tang & Liu 2009, 10,312 bloggers, 39 groups; public, not
  in this repository): `jobs.embed_users` as a user runs it (numba, and
  `--sg-trainer gensim` = gensim on the same walks) and PecanPy, scored by the node2vec
  paper's protocol (one-vs-rest logistic regression on 50% of the labelled users,
  top-k predictions, Macro-F1 and Micro-F1 averaged over `--splits` random splits);
* tune (with blogcatalog): `jobs.embed_users --tune --labels` and `--tune` alone, wall
  time and the Macro-F1 of the vectors they write, and gensim on the same walks with the
  p, q and epochs `--tune --labels` chose (the reference for the tuned quality).

RATIO lines: > 1 means ours is faster or better. Quality ratios sit beside the speed ones.

PecanPy 2.0.9 imports nptyping, which fails on numpy 2, so it runs in its own venv
(`--pecanpy-python`, default /tmp/pecanpy-venv/bin/python; create it with
`python -m venv /tmp/pecanpy-venv && /tmp/pecanpy-venv/bin/pip install "numpy<2" pecanpy`)
as a subprocess reading our CSR arrays from an .npz. Without it the PecanPy rows are skipped.
"""

from __future__ import annotations

import argparse
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
from models.node2vec.classify import label_matrix, node_classification  # noqa: E402
from models.node2vec.quality import (  # noqa: E402
    knn_community_rate,
    link_prediction_auc,
    planted_partition,
    sample_non_edges,
    split_edges,
)

PECANPY_SCRIPT = r"""
import json, sys, time
import numpy as np
from gensim.models import Word2Vec
from pecanpy import pecanpy
npz, out, p, q, r, l, dim, window, epochs, workers, seed, warm = sys.argv[1:]
p, q = float(p), float(q)
r, l, dim, window, epochs, workers, seed, warm = map(int, (r, l, dim, window, epochs, workers, seed, warm))
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
if warm:  # reuse one compiled move_forward, compile on a tiny call, then time the walks
    mf = g.get_move_forward()
    g.get_move_forward = lambda: mf
    g.simulate_walks(1, 3)
    t3 = time.perf_counter()
    walks = g.simulate_walks(r, l)
    res["walk_warm_s"] = time.perf_counter() - t3
print(json.dumps(res))
"""

ROWS: list[tuple[str, str, str]] = []
RATIOS: list[tuple[str, float]] = []


def row(what: str, value: str, seconds: float | str = "") -> None:
    ROWS.append((what, value, f"{seconds:.2f}" if isinstance(seconds, float) else seconds))


def ratio(name: str, value: float) -> None:
    RATIOS.append((name, value))


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def time_it(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def make_graph(n: int, m: int, communities: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Power-law expected degrees (Pareto 1.5, capped at 200), 80% of edges inside planted communities."""
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


def run_pecanpy(args, g, p: float, q: float, walks: int, length: int, warm: bool = False) -> dict | None:
    """PecanPy SparseOTF + gensim on graph g in its own venv; None (with a message) when absent."""
    if args.no_pecanpy or not Path(args.pecanpy_python).exists():
        print(f"(PecanPy skipped: {'--no-pecanpy' if args.no_pecanpy else args.pecanpy_python + ' not found'})")
        return None
    with tempfile.TemporaryDirectory() as d:
        npz, out = Path(d) / "graph.csr.npz", Path(d) / "vecs.npy"
        np.savez(npz, indptr=g.indptr.astype(np.uint32), indices=g.indices.astype(np.uint32),
                 data=g.weights, IDs=np.arange(g.n_nodes).astype(str))
        cmd = [args.pecanpy_python, "-c", PECANPY_SCRIPT, str(npz), str(out), str(p), str(q), str(walks),
               str(length), str(args.dim), str(args.window), str(args.epochs), str(args.workers), str(args.seed),
               str(int(warm))]
        env = {**os.environ, "PYTHONPATH": "", "NUMBA_NUM_THREADS": str(args.workers)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print("(PecanPy failed)\n" + proc.stderr[-2000:])
            return None
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["vecs"] = np.load(out)
    return res


def sg_config(args, **kw) -> SkipGramConfig:
    base = dict(dim=args.dim, window=args.window, epochs=args.epochs, workers=args.workers, seed=args.seed)
    return SkipGramConfig(**{**base, **kw})


# --------------------------------------------------------------------------- speed


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


def speed(args) -> None:
    # Extra draws cover duplicates and self-loops (hubs repeat), so the graph keeps >= the asked edges.
    src, dst = make_graph(args.nodes, int(args.edges * 1.2), max(args.nodes // 500, 4), args.seed)
    train, held = split_edges(src, dst, 0.1, args.seed)
    g_full = build_graph(src, dst)
    g, t_build = time_it(build_graph, src[train], dst[train], nodes=g_full.node_ids)
    deg = g.degree()
    print(f"speed graph: {g_full.n_nodes:,} nodes, {g_full.n_edges // 2:,} undirected edges "
          f"(train {g.n_edges // 2:,}), max degree {deg.max()}, mean {deg.mean():.1f}; p={args.p} q={args.q} "
          f"walks {args.walks} x {args.length}, {args.workers} threads; CSR build {t_build:.2f}s; load {load()}")
    hu, hv = g.dense(src[held]), g.dense(dst[held])
    hu, hv = hu[hu != hv], hv[hu != hv]
    nu, nv = sample_non_edges(g_full, 20000, args.seed + 1)
    tiny = build_graph(np.array([0, 1]), np.array([1, 2]))   # JIT caches loaded outside the timings
    for neg in ("window", "pair"):
        train_skipgram([random_walks(tiny, 3, 1, args.p, args.q)], tiny.n_nodes, sg_config(args, negatives=neg))
    walks, t_walk = time_it(random_walks, g, args.length, args.walks, args.p, args.q, args.seed, threads=args.workers)
    sps = walks.size / t_walk
    prefix = bool(args.sg_tokens and walks.size > args.sg_tokens)
    if prefix:   # rates on a prefix of the walks (tables of every node); not every node trained: no AUC
        walks = walks[: max(1, args.sg_tokens // args.length)]
    tokens = int((walks >= 0).sum())
    row("ours: walks (numba kernel)", f"{sps / 1e6:.2f} M steps/s", t_walk)
    rate, auc = {}, {}
    contenders = [("numba", sg_config(args)), ("numba-pair", sg_config(args, negatives="pair"))]
    contenders += [(f"gensim-{c}", sg_config(args, trainer="gensim", corpus=c)) for c in args.gensim_corpus.split(",")]
    for name, cfg in contenders:
        vecs, t = time_it(train_skipgram, [walks], g.n_nodes, cfg)
        rate[name] = tokens / t
        auc[name] = link_prediction_auc(vecs, hu, hv, nu, nv)
        label = {"numba": "numba, noise per window (default)", "numba-pair": "numba, noise per pair",
                 "gensim-memory": "gensim, same walks (iterable)",
                 "gensim-file": "gensim, same walks (corpus file)"}[name]
        quality = "walk prefix" if prefix else f"AUC {auc[name]:.4f}"
        row(f"skip-gram: {label}", f"{rate[name] / 1e3:.0f}k tok/s, {quality}", t)
        print(f"  {name}: {rate[name] / 1e3:.0f}k tokens/s ({tokens:,} tokens), {quality}, load {load()}")
    for ref in (n for n in rate if n.startswith("gensim")):
        tag = "" if ref == "gensim-memory" else "_" + ref.split("-")[1]
        ratio(f"skipgram_tokens_per_s_numba_vs_gensim{tag}", rate["numba"] / rate[ref])
        ratio(f"skipgram_tokens_per_s_numba_pair_vs_gensim{tag}", rate["numba-pair"] / rate[ref])
        if not prefix:
            ratio(f"link_auc_numba_vs_gensim{tag}", auc["numba"] / auc[ref])
            ratio(f"link_auc_numba_pair_vs_gensim{tag}", auc["numba-pair"] / auc[ref])
    if args.ray:
        row("ours: walks as Ray tasks (job)", f"{ours_via_ray(g, args) / 1e6:.2f} M steps/s")
    cg_sps, cg_n = time_csrgraph(g, args)
    row(f"csrgraph biased walks ({cg_n:,} starts)", f"{cg_sps / 1e6:.2f} M steps/s")
    ratio("walk_steps_per_s_vs_csrgraph", sps / cg_sps)
    if prefix:
        return   # end to end needs every walk
    e2e = t_walk + tokens / rate["numba"]
    row("ours: end to end (walks + numba skip-gram)", f"AUC {auc['numba']:.4f}", e2e)
    pp = run_pecanpy(args, g, args.p, args.q, args.walks, args.length, warm=True)
    if pp:
        auc_pp = link_prediction_auc(pp["vecs"], hu, hv, nu, nv)
        pp_warm = pp["steps"] / pp["walk_warm_s"]
        row("PecanPy SparseOTF: walks warm", f"{pp_warm / 1e6:.2f} M steps/s", pp["walk_warm_s"])
        row("PecanPy SparseOTF: walks cold (incl. JIT)", f"{pp['steps'] / pp['walk_cold_s'] / 1e6:.2f} M steps/s",
            pp["walk_cold_s"])
        row("PecanPy: end to end (gensim skip-gram)", f"AUC {auc_pp:.4f}", pp["e2e_s"])
        ratio("walk_steps_per_s_vs_pecanpy", sps / pp_warm)
        ratio("end_to_end_vs_pecanpy", pp["e2e_s"] / e2e)
        ratio("link_auc_numba_vs_pecanpy", auc["numba"] / auc_pp)


# --------------------------------------------------------------------------- planted partition


PLANTED = {"small": (8, 250, 9.96, 2.625), "large": (100, 1000, 15.0, 3.0)}   # communities, size, deg in, deg out


def planted(args) -> None:
    for name in args.planted.split(","):
        n_comm, size, deg_in, deg_out = PLANTED[name]
        src, dst, comm = planted_partition(n_comm, size, deg_in, deg_out, args.seed)
        n = n_comm * size
        train, held = split_edges(src, dst, 0.1, args.seed)
        g = build_graph(src[train], dst[train], nodes=np.arange(n))
        hu, hv = src[held], dst[held]
        hu, hv = hu[hu != hv], hv[hu != hv]
        nu, nv = sample_non_edges(build_graph(src, dst, nodes=np.arange(n)), 20000, args.seed + 1)
        print(f"planted '{name}': {n_comm} x {size} nodes, degree {deg_in} inside + {deg_out} across, "
              f"{g.n_edges // 2:,} training edges; 10 walks x 80, p = q = 1; load {load()}")
        walks, t_walk = time_it(random_walks, g, 80, 10, 1.0, 1.0, args.seed, threads=args.workers)
        scores = {}
        for trainer, cfg in (("numba", sg_config(args, window=10)), ("numba-pair", sg_config(args, window=10,
                                                                                             negatives="pair")),
                             ("gensim", sg_config(args, window=10, trainer="gensim"))):
            vecs, t = time_it(train_skipgram, [walks], n, cfg)
            scores[trainer] = (link_prediction_auc(vecs, hu, hv, nu, nv), knn_community_rate(vecs, comm), t + t_walk)
        pp = run_pecanpy(args, g, 1.0, 1.0, 10, 80)
        if pp:
            scores["pecanpy"] = (link_prediction_auc(pp["vecs"], hu, hv, nu, nv), knn_community_rate(pp["vecs"], comm),
                                 pp["e2e_s"])
        for trainer, (auc, knn, t) in scores.items():
            row(f"planted {name}: {trainer}", f"AUC {auc:.4f}, 10-NN {knn:.4f}", t)
        for trainer in ("numba", "numba-pair"):
            tag = "" if trainer == "numba" else "_pair"
            ratio(f"planted_{name}_auc_numba{tag}_vs_gensim", scores[trainer][0] / scores["gensim"][0])
            ratio(f"planted_{name}_knn_numba{tag}_vs_gensim", scores[trainer][1] / scores["gensim"][1])
        if pp:
            ratio(f"planted_{name}_auc_numba_vs_pecanpy", scores["numba"][0] / scores["pecanpy"][0])
            ratio(f"planted_{name}_knn_numba_vs_pecanpy", scores["numba"][1] / scores["pecanpy"][1])


# --------------------------------------------------------------------------- BlogCatalog


def blogcatalog_archive(src_dir: Path, tmp: Path) -> tuple[Path, Path, Path]:
    """posts.parquet (one untagged post per user), edges.parquet and labels.parquet (user_id, label)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    edges = pq.read_table(src_dir / "edges.parquet")
    labels = pq.read_table(src_dir / "labels.parquet")
    col = "label" if "label" in labels.column_names else "group"
    users = np.unique(np.r_[edges.column("src").to_numpy(), edges.column("dst").to_numpy()])
    pq.write_table(pa.table({"post_id": users, "user_id": users, "image": [f"{u}.jpg" for u in users],
                             "tags": pa.array([[]] * users.size, pa.list_(pa.string()))}), tmp / "posts.parquet")
    pq.write_table(edges.select(["src", "dst"]), tmp / "edges.parquet")
    pq.write_table(pa.table({"user_id": labels.column("user_id"), "label": labels.column(col)}),
                   tmp / "labels.parquet")
    return tmp / "posts.parquet", tmp / "edges.parquet", tmp / "labels.parquet"


def score_view(store: Path, view: str, labels: Path, args) -> dict[str, float]:
    """The paper's node classification on the vectors of the labelled users in a view."""
    import pyarrow.parquet as pq

    from featurestore import Store

    t = pq.read_table(labels)
    users, lab = t.column("user_id").to_numpy(), t.column("label").to_numpy()
    ids = np.unique(users)
    with Store.open(str(store), create=False) as st:
        vecs, found = st.reader(view).get_many(ids)
    assert found.all(), "every labelled BlogCatalog user has a vector"
    y, _ = label_matrix(np.searchsorted(ids, users), lab, ids.size)
    return node_classification(vecs, y, train_frac=0.5, splits=args.splits, seed=args.seed)


def run_job(args, tmp: Path, name: str, **kw) -> tuple[dict, float]:
    from jobs.embed_users import EmbedUsersConfig, run

    posts, edges, _ = tmp / "posts.parquet", tmp / "edges.parquet", tmp / "labels.parquet"
    cfg = EmbedUsersConfig(posts=str(posts), edges=str(edges), out=str(tmp / f"out-{name}"),
                           store=str(tmp / f"store-{name}"), seed=args.seed, num_cpus=args.workers, **kw)
    return time_it(run, cfg)


def blogcatalog(args, tune: bool) -> None:
    src = Path(args.blogcatalog)
    if not (src / "edges.parquet").is_file() or not (src / "labels.parquet").is_file():
        print(f"(BlogCatalog rows skipped: {src}/edges.parquet and labels.parquet not found)")
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _, _, labels = blogcatalog_archive(src, tmp)
        res: dict[str, tuple[dict, float]] = {}
        if "blogcatalog" in args.only:
            for trainer in ("numba", "gensim"):
                _, t = run_job(args, tmp, trainer, sg_trainer=trainer)
                res[trainer] = (score_view(tmp / f"store-{trainer}", "user/node2vec@1", labels, args), t)
                print(f"  BlogCatalog job --sg-trainer {trainer}: {res[trainer][0]}, {t:.1f}s, load {load()}")
            import pyarrow.parquet as pq

            e = pq.read_table(tmp / "edges.parquet")
            g = build_graph(e.column("src").to_numpy(), e.column("dst").to_numpy())
            pp = run_pecanpy(args, g, 1.0, 1.0, 10, 80)
            if pp:
                res["pecanpy"] = (score_vectors(pp["vecs"], g, labels, args), pp["e2e_s"])
        if tune:
            for name, kw in (("tune-labels", dict(tune=True, labels=str(labels))), ("tune-link", dict(tune=True))):
                summary, t = run_job(args, tmp, name, **kw)
                res[name] = (score_view(tmp / f"store-{name}", "user/node2vec@1", labels, args), t)
                tuned = summary["tune"]
                chosen = tuned["chosen"]
                pick = f"p={chosen['p']} q={chosen['q']} epochs={chosen.get('epochs', 1)}"
                print(f"  BlogCatalog job --{name.replace('-', ' --')}: chose {pick}, "
                      f"{res[name][0]}, {t:.1f}s ({tuned['seconds']:.1f}s searching, {tuned['walks_per_node']} "
                      f"walks per node per point), load {load()}")
                print("    grid: " + ", ".join(f"({pt['p']:g},{pt['q']:g}) {pt['score']:.4f}" for pt in tuned["points"]))
                print("    full runs: " + ", ".join(f"({pt['p']:g},{pt['q']:g}, {pt['epochs']} ep) {pt['score']:.4f}"
                                               for pt in tuned["finalists"] + tuned.get("epoch_runs", [])))
                res[name][0]["chosen"] = pick
                if name == "tune-labels":   # the reference trainer with what the search chose, same walks
                    ref = dict(p=chosen["p"], q=chosen["q"], epochs=chosen.get("epochs", 1))
                    _, t = run_job(args, tmp, "tuned-gensim", sg_trainer="gensim", **ref)
                    res["tuned-gensim"] = (score_view(tmp / "store-tuned-gensim", "user/node2vec@1", labels, args), t)
                    res["tuned-gensim"][0]["chosen"] = pick
                    print(f"  BlogCatalog job --sg-trainer gensim at the chosen {pick}: {res['tuned-gensim'][0]}, "
                          f"{t:.1f}s, load {load()}")
        for name, (s, t) in res.items():
            what = {"numba": "job (numba)", "gensim": "job --sg-trainer gensim (same walks)",
                    "pecanpy": "PecanPy (gensim)", "tune-labels": "job --tune --labels",
                    "tune-link": "job --tune (link prediction)",
                    "tuned-gensim": "job --sg-trainer gensim, tuned p, q, epochs (same walks)"}[name]
            extra = f", {s['chosen']}" if "chosen" in s else ""
            row(f"BlogCatalog: {what}", f"Macro {s['macro_f1']:.4f}, Micro {s['micro_f1']:.4f}{extra}", t)
        if "numba" in res and "gensim" in res:
            ratio("blogcatalog_macro_f1_numba_vs_gensim", res["numba"][0]["macro_f1"] / res["gensim"][0]["macro_f1"])
            ratio("blogcatalog_micro_f1_numba_vs_gensim", res["numba"][0]["micro_f1"] / res["gensim"][0]["micro_f1"])
            ratio("blogcatalog_job_time_gensim_vs_numba", res["gensim"][1] / res["numba"][1])
        if "numba" in res and "pecanpy" in res:
            ratio("blogcatalog_macro_f1_numba_vs_pecanpy", res["numba"][0]["macro_f1"] / res["pecanpy"][0]["macro_f1"])
            ratio("blogcatalog_time_pecanpy_vs_numba_job", res["pecanpy"][1] / res["numba"][1])
        if "tuned-gensim" in res:
            ratio("blogcatalog_macro_f1_tuned_numba_vs_gensim",
                  res["tune-labels"][0]["macro_f1"] / res["tuned-gensim"][0]["macro_f1"])
        if "tune-labels" in res:
            ratio("blogcatalog_macro_f1_tuned_vs_paper_0.2581", res["tune-labels"][0]["macro_f1"] / 0.2581)


def score_vectors(vecs: np.ndarray, g, labels: Path, args) -> dict[str, float]:
    import pyarrow.parquet as pq

    t = pq.read_table(labels)
    y, _ = label_matrix(g.dense(t.column("user_id").to_numpy()), t.column("label").to_numpy(), g.n_nodes)
    return node_classification(vecs, y, train_frac=0.5, splits=args.splits, seed=args.seed)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k nodes, 100k edges; planted 'small' only")
    ap.add_argument("--only", default="speed,planted,blogcatalog,tune", help="sections to run (comma separated)")
    ap.add_argument("--nodes", type=int, default=0)
    ap.add_argument("--edges", type=int, default=0)
    ap.add_argument("--p", type=float, default=0.5, help="speed section's p")
    ap.add_argument("--q", type=float, default=2.0, help="speed section's q")
    ap.add_argument("--walks", type=int, default=2, help="speed section: walks per node")
    ap.add_argument("--length", type=int, default=40, help="speed section: walk length")
    ap.add_argument("--sg-tokens", type=int, default=0,
                    help="speed section: time skip-gram on the first walks holding about this many tokens (0: all)")
    ap.add_argument("--gensim-corpus", default="memory,file",
                    help="speed section: how walks reach gensim, memory (an iterable, as PecanPy and our job's "
                         "default) and/or file (corpus_file, read in C++ without the GIL)")
    ap.add_argument("--planted", default="", help="planted graphs: small (2,000 nodes), large (10^5); "
                                                  "default both, --quick small")
    ap.add_argument("--blogcatalog", default="", help="folder with BlogCatalog's edges.parquet and labels.parquet")
    ap.add_argument("--splits", type=int, default=5, help="random 50/50 splits averaged for Macro/Micro-F1")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csrgraph-starts", type=int, default=20000)
    ap.add_argument("--ray", action="store_true", help="also time the walks as Ray tasks (jobs.embed_users)")
    ap.add_argument("--pecanpy-python", default="/tmp/pecanpy-venv/bin/python")
    ap.add_argument("--no-pecanpy", action="store_true", help="skip every PecanPy row")
    args = ap.parse_args()
    args.nodes = args.nodes or (10_000 if args.quick else 100_000)
    args.edges = args.edges or (100_000 if args.quick else 1_000_000)
    args.planted = args.planted or ("small" if args.quick else "small,large")
    args.only = set(args.only.split(","))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} load {load()}, {args.workers} threads")
    if "speed" in args.only:
        speed(args)
    if "planted" in args.only:
        planted(args)
    if args.only & {"blogcatalog", "tune"}:
        if args.blogcatalog:
            blogcatalog(args, tune="tune" in args.only)
        else:
            print("(BlogCatalog rows skipped: give --blogcatalog DIR, a folder with its edges.parquet and "
                  "labels.parquet; the public BlogCatalog graph of Tang & Liu 2009)")
    width = max(len(r[0]) for r in ROWS) if ROWS else 10
    print(f"\n| {'what':<{width}} | {'rate / quality':<36} | {'seconds':>8} |")
    print(f"|{'-' * (width + 2)}|{'-' * 38}|{'-' * 10}|")
    for a, b, c in ROWS:
        print(f"| {a:<{width}} | {b:<36} | {c:>8} |")
    print()
    for name, v in RATIOS:
        print(f"RATIO {name} {v:.3f}")
    print(f"(load at the end {load()})")


if __name__ == "__main__":
    main()
