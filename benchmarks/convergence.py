"""Trained to convergence by default? The pipeline's defaults against hand-set long training.

    python benchmarks/convergence.py [--seeds 0,1,2] [--quick]          # acceptance on a folksonomy
    python benchmarks/convergence.py --defaults-study                    # batch, row cap, dim of the torch step
    python benchmarks/convergence.py --lr-study 0.05,0.1 --seeds 0       # PITF's validation curves per lr, draws
    python benchmarks/convergence.py --negatives-study --seeds 0,1,2     # the torch step: uniform vs hard negatives

Acceptance (per seed): `jobs.pipeline --kind folksonomy` at the sizes of a public
music-tagging dataset (~1,900 users, ~17,000 items, ~12,000 tags, ~70,000 posts), 10-core on
users, tags and items, one validation and one test post per user, every other setting the
pipeline's default (no epochs given: early stopping). Beside it, on the same split:
PITF hand-set to 100 and 200 epochs without early stopping (the default kernel, and the
batched torch step), the per-sample reference (Algorithm 1 as a plain loop, compiled;
d = 64, 100 epochs, lr 0.05, reg 5e-5) and the planted ranking (the generator's own
p(t | u, i): the Bayes-optimal ceiling). Test F1@5 of each, the pipeline's
evaluation table (baselines, +SN models) and, per seed and on average, whether PITF with the
defaults reaches the hand-set long training, the reference and user-item-popular + 0.03.

Learning-rate study: validation and test F1@5 after every epoch of PITF (per-sample
kernel) for each learning rate and number of negative draws, and where the default
stopping rule stops on each curve (curves kept as JSON).

Defaults study: on the synthetic photo archive with synthetic features (200 users, 2,000
posts), PITF-IC-OD with early stopping for batch size x row cap (`--max-row-samples`) x dim,
validation and test F1@5 and epochs, so the torch step's defaults are checked once models
converge. Prints `RATIO` lines (> 1: the default is better).

Negatives study: on the same photo archive, one per seed, PITF-IC-OD (the batched torch
step) with one uniform negative per sample against the default `--sgd-negatives` (the
highest-scored of 4 uniform draws): validation and test F1@5, best epoch and epochs run,
training seconds. Prints `RATIO pitf_ic_od_hard_vs_uniform_negatives_test` (> 1: hard
negatives better).
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

SIZES = ["--num-users", "1900", "--num-items", "17000", "--num-tags", "12000", "--num-posts", "70000"]
QUICK = ["--num-users", "500", "--num-items", "4000", "--num-tags", "3000", "--num-posts", "20000"]


def _job(*argv: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def _test_data(out: Path):
    from jobs._train_data import _read, load_split
    from jobs.posts import post_data
    from models.recsys.data import IdIndex

    d = load_split(out / "split")
    test, _ = post_data(_read(out / "split", "test"), IdIndex(d.user_ids), IdIndex(d.item_ids), d.tags)
    return d, test


def _hand_set(out: Path, name: str, epochs: int, kernel: str) -> float:
    """Test F1@5 of `jobs.train --model name --epochs N --patience 0 --bpr-kernel kernel`."""
    from models.recsys import load
    from models.recsys.evaluate import evaluate

    run = out / f"hand-{name}-{epochs}-{kernel}"
    _job("jobs.train", "--out", str(run), "--split", str(out / "split"), "--model", name, "--epochs", str(epochs),
         "--patience", "0", "--bpr-kernel", kernel, "--torch-threads", "1", "--no-calibrate")
    _, test = _test_data(out)  # the same split: the model's vocabularies are the split's
    return evaluate(load(run / "models" / name), test)["f1@5"]


def _reference(out: Path, seed: int) -> float:
    """Algorithm 1, compiled: d 64, 100 epochs, lr 0.05, reg 5e-5; numpy-drawn negatives."""
    from models.recsys import get_model
    from models.recsys.bpr import sample_negatives
    from models.recsys.evaluate import evaluate
    from models.recsys.sgd import algorithm1

    d, test = _test_data(out)
    tr = d.train
    m = get_model("PITF", n_users=len(d.user_ids), n_items=len(d.item_ids), n_tags=len(d.tags), dim=64, seed=seed)
    params = {k: v.numpy() for k, v in m.params.items()}
    post, tag = tr.pairs()
    codes = np.sort(np.repeat(np.arange(len(tr)), np.diff(tr.indptr)) * tr.n_tags + tr.indices)
    for e in range(100):
        rng = np.random.default_rng([seed, e])
        order = rng.permutation(len(post))
        neg = sample_negatives(post[order], codes, tr.n_tags, rng)
        algorithm1("PITF", params, tr.user_index, tr.item_index, post[order], tag[order], neg, 0.05, 5e-5,
                   compiled=True)
    return evaluate(m, test)["f1@5"]


def _planted(out: Path, sizes: list[str], seed: int) -> float:
    """Test F1@5 of the Bayes-optimal ranking: the tags ordered by the generator's own
    p(t | u, i) for each test post (the folksonomy redrawn from the pipeline's flags)."""
    from benchmarks.folksonomy import planted_topk
    from jobs._cli import resolve_config
    from jobs._synth_folksonomy import make_folksonomy, params_from
    from jobs.synth import SynthConfig
    from models.metrics import metrics_at_k

    cfg = resolve_config(SynthConfig, ["--out", str(out), "--kind", "folksonomy", *sizes, "--seed", str(seed)],
                         "synth", "")
    d, test = _test_data(out)
    top = planted_topk(make_folksonomy(params_from(cfg)), d, test)
    return metrics_at_k(top, test.indptr, test.indices, ks=(5,))["f1@5"]


def acceptance(seeds: list[int], quick: bool, keep: str) -> None:
    rows = []
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="convergence-"))
    for seed in seeds:
        out = root / f"seed{seed}"
        t0 = time.time()
        # One torch thread (the +SN models' batched step): on a shared 2-core machine torch's
        # default threads spin against the other work; it changes speed, not what is learned.
        _job("jobs.pipeline", "--kind", "folksonomy", *(QUICK if quick else SIZES), "--p-core", "10",
             "--p-core-items", "--test-per-user", "1", "--seed", str(seed), "--out", str(out),
             "--torch-threads", "1")
        pipeline_s = time.time() - t0
        ev = json.loads((out / "evaluation.json").read_text())
        train = json.loads((out / "reports" / "train.summary.json").read_text())["models"]
        r = {"seed": seed, "test_posts": ev["split"].get("test", {}).get("posts"), "pipeline_s": round(pipeline_s),
             **{k: ev[k]["f1@5"] for k in ev if isinstance(ev[k], dict) and "f1@5" in ev[k]},
             "PITF epochs (best)": f"{train['PITF']['epochs']} ({train['PITF']['best_epoch']})"}
        for epochs in (100, 200):
            r[f"PITF hand-set {epochs} epochs"] = _hand_set(out, "PITF", epochs, "auto")
        r["PITF hand-set 100 epochs, torch batched"] = _hand_set(out, "PITF", 100, "torch")
        r["per-sample reference (Algorithm 1)"] = _reference(out, seed)
        r["planted p(t|u,i) (Bayes-optimal)"] = _planted(out, QUICK if quick else SIZES, seed)
        rows.append(r)
        print(json.dumps(r), flush=True)
    keys = [k for k in rows[0] if k not in ("seed",)]
    print(f"\nover seeds {seeds} (test F1@5 unless named)")
    for k in keys:
        vals = [row.get(k) for row in rows]
        cells = "  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in vals)
        mean = f"  mean {np.mean(vals):.4f}" if all(isinstance(v, float) for v in vals) else ""
        print(f"{k:<44} {cells}{mean}")
    p = np.array([row["PITF"] for row in rows])
    hand = np.array([max(row["PITF hand-set 100 epochs"], row["PITF hand-set 200 epochs"],
                         row["PITF hand-set 100 epochs, torch batched"]) for row in rows])
    ref = np.array([row["per-sample reference (Algorithm 1)"] for row in rows])
    mix = np.array([row["user-item-popular"] for row in rows])
    print(f"PITF (defaults) >= best hand-set long training: {list(p >= hand)}; >= reference: {list(p >= ref)}; "
          f">= user-item-popular + 0.03: {list(p >= mix + 0.03)}")
    print(f"RATIO pitf_defaults_vs_hand_set_long {p.mean() / hand.mean():.3f}")
    print(f"RATIO pitf_defaults_vs_algorithm1_reference {p.mean() / ref.mean():.3f}")
    print(f"RATIO pitf_defaults_vs_user_item_popular {p.mean() / mix.mean():.3f}")


def defaults_study(keep: str) -> None:
    out = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="defaults-"))
    out.mkdir(parents=True, exist_ok=True)
    _photo_archive(out, 0)
    res = {}
    for batch in (256, 1024, 4096):
        for cap in (8, 32, 128):
            for dim in (64, 128):
                val, test, best, run, _ = _train_photo(out, f"b{batch}-c{cap}-d{dim}", 0, "--batch-size", str(batch),
                                                       "--max-row-samples", str(cap), "--dim", str(dim))
                res[(batch, cap, dim)] = (val, test, best)
                print(f"batch {batch:5d} cap {cap:4d} dim {dim:4d}: val F1@5 {val:.4f} "
                      f"test F1@5 {test:.4f} best epoch {best} of {run}", flush=True)
    default = res[(1024, 32, 128)]
    best_k = max(res, key=lambda k: res[k][0])
    print(f"best by validation: batch {best_k[0]} cap {best_k[1]} dim {best_k[2]} val {res[best_k][0]:.4f} test "
          f"{res[best_k][1]:.4f}; defaults val {default[0]:.4f} test {default[1]:.4f}")
    print(f"RATIO pitf_ic_od_default_settings_vs_best_of_grid_test {default[1] / res[best_k][1]:.3f}")


def _photo_archive(out: Path, seed: int) -> None:
    """The defaults and negatives studies' archive: 200 users, 2,000 posts, 60 tags, synthetic features."""
    _job("jobs.synth", "--out", str(out), "--num-users", "200", "--num-posts", "2000", "--num-tags", "60",
         "--no-images", "--write-features", "--seed", str(seed))
    _job("jobs.prepare", "--out", str(out), "--seed", str(seed))


def _train_photo(out: Path, name: str, seed: int, *flags: str) -> tuple[float, float, int, int, float]:
    """PITF-IC-OD trained in `out/name` on the archive in `out` with early stopping:
    (val F1@5, test F1@5, best epoch, epochs run, training seconds)."""
    from models.recsys import load

    run = out / name
    run.mkdir()
    for sub in ("split", "store"):
        (run / sub).symlink_to(out / sub)
    t0 = time.perf_counter()
    _job("jobs.train", "--out", str(run), "--model", "PITF-IC-OD", "--torch-threads", "1", "--no-calibrate",
         "--seed", str(seed), *flags)
    secs = time.perf_counter() - t0
    _job("jobs.evaluate", "--out", str(run), "--baselines", "most-popular", "--no-plot")
    m = load(run / "models" / "PITF-IC-OD")
    stop = m.meta["training"]["early_stopping"]
    test = json.loads((run / "evaluation.json").read_text())["PITF-IC-OD"]["f1@5"]
    return m.meta["metrics"]["val"]["f1@5"], test, stop["best_epoch"], stop["epochs_run"], secs


def negatives_study(seeds: list[int], keep: str) -> None:
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="negatives-"))
    print(f"{'seed':>4} {'negatives':>22} {'val F1@5':>9} {'test F1@5':>10} {'best':>5} {'run':>5} {'train s':>8}")
    res: dict[tuple[int, int], tuple[float, float, int, int, float]] = {}
    for seed in seeds:
        out = root / f"seed{seed}"
        out.mkdir(parents=True)
        _photo_archive(out, seed)
        for k in (1, 4):
            res[(seed, k)] = r = _train_photo(out, f"k{k}", seed, "--sgd-negatives", str(k))
            what = "uniform (1 draw)" if k == 1 else "hardest of 4 (default)"
            print(f"{seed:>4} {what:>22} {r[0]:>9.4f} {r[1]:>10.4f} {r[2]:>5} {r[3]:>5} {r[4]:>8.1f}", flush=True)
    hard = np.array([res[(s, 4)][1] for s in seeds])
    uni = np.array([res[(s, 1)][1] for s in seeds])
    print(f"mean test F1@5: hardest of 4 {hard.mean():.4f}, uniform {uni.mean():.4f}; hard better on "
          f"{int((hard > uni).sum())} of {len(seeds)} seeds")
    print(f"RATIO pitf_ic_od_hard_vs_uniform_negatives_test {hard.mean() / uni.mean():.3f}")


def lr_study(seed: int, lrs: list[float], draws: list[int], epochs: int, keep: str) -> None:
    """Validation and test F1@5 after every epoch of PITF (per-sample kernel, d 128, reg 1e-4)
    for each learning rate and number of negative draws (1: uniform; K: the highest-scored of
    K), and where the default stopping rule (patience 10 or the best epoch, whichever is
    more; at most 300 epochs) stops on each curve."""
    import torch

    from benchmarks.train import folksonomy_split
    from models.recsys import get_model
    from models.recsys.bpr import BPRConfig
    from models.recsys.early_stopping import EarlyStopping
    from models.recsys.evaluate import evaluate
    from models.recsys.sgd import SGDTrainer

    torch.set_num_threads(1)
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="lr-study-"))
    root.mkdir(parents=True, exist_ok=True)
    train, val, test, sz = folksonomy_split(root, False, seed)
    print(f"seed {seed}: {len(train):,} train posts, {len(val):,} val, {len(test):,} test, {sz}")
    print(f"{'lr':>6} {'draws':>5} {'stops at':>9} {'best':>5} {'val F1@5':>9} {'test F1@5':>10} {'best of all':>12} "
          f"{'test there':>11} {'train s':>8}")
    for lr, k in ((lr, k) for lr in lrs for k in draws):
        m = get_model("PITF", n_users=sz["users"], n_items=sz["items"], n_tags=sz["tags"], dim=128, seed=seed)
        tr = SGDTrainer(m, train, BPRConfig(lr=lr, reg=1e-4, seed=seed, kernel="sgd", negatives=k))
        es, stop, curve, secs = EarlyStopping(patience=10, max_epochs=300, patience_frac=1.0), None, [], 0.0
        for e in range(epochs):
            t0 = time.perf_counter()
            tr.run_epoch(e)
            secs += time.perf_counter() - t0
            curve.append((evaluate(m, val)["f1@5"], evaluate(m, test)["f1@5"]))
            es.update(e + 1, curve[-1][0])
            if stop is None and es.should_stop():
                stop = (e + 1, es.best_epoch, secs)
        tr.close()
        stop = stop or (epochs, es.best_epoch, secs)
        top = int(np.argmax([v for v, _ in curve]))
        v, t = curve[stop[1] - 1]
        print(f"{lr:>6g} {k:>5} {stop[0]:>9} {stop[1]:>5} {v:>9.4f} {t:>10.4f} {top + 1:>12} {curve[top][1]:>11.4f} "
              f"{stop[2]:>8.0f}", flush=True)
        (root / f"curve-lr{lr:g}-k{k}.json").write_text(json.dumps(curve))
    print(f"curves (val, test per epoch): {root}/curve-lr*.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (archive and split)")
    ap.add_argument("--quick", action="store_true", help="a smaller folksonomy")
    ap.add_argument("--defaults-study", action="store_true", help="the torch step's batch, row cap and dim")
    ap.add_argument("--negatives-study", action="store_true",
                    help="the torch step on the photo archive: one uniform negative vs the hardest of 4, per --seeds")
    ap.add_argument("--lr-study", default="", metavar="LRS",
                    help="comma-separated learning rates: PITF's validation curves on the --seeds' first split")
    ap.add_argument("--lr-study-draws", default="1,4", help="negative draws per sample tried in --lr-study")
    ap.add_argument("--lr-study-epochs", type=int, default=400, help="epochs per learning rate in --lr-study")
    ap.add_argument("--keep", default="", help="folder to keep the runs in (default: a temporary one)")
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if a.defaults_study:
        defaults_study(a.keep)
    elif a.negatives_study:
        negatives_study([int(s) for s in a.seeds.split(",")], a.keep)
    elif a.lr_study:
        lr_study(int(a.seeds.split(",")[0]), [float(x) for x in a.lr_study.split(",")],
                 [int(x) for x in a.lr_study_draws.split(",")], a.lr_study_epochs, a.keep)
    else:
        acceptance([int(s) for s in a.seeds.split(",")], a.quick, a.keep)


if __name__ == "__main__":
    main()
