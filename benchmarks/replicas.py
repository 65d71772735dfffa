"""Does the mean of a few independently seeded replicas beat one training run? Quality and time.

    python benchmarks/replicas.py [--seeds 0,1,2] [--replicas 5] [--models PITF,FM] [--photos 0,1] [--quick]

`jobs.train --replicas N` trains a factorization model N times from seeds --seed .. --seed+N-1
(each with early stopping) and saves the mean of their scores as one model
(`models.recsys.factorization.average`). This measures what that buys, per split:

* on a generated folksonomy (`--seeds`: `jobs._synth_folksonomy` at a public music-tagging
  dataset's sizes, 10-core, one validation and one test post per user: `benchmarks/train.py`'s
  `folksonomy_split`), where many users tag the same items;
* on the synthetic photo archive (`--photos`: `jobs.synth`, 200 users, 2,000 posts, one item
  per photo), where PITF's and FM's item factors have nothing to learn.

Each model is trained `--replicas` times by `jobs.train` itself (defaults but `--replicas 1
--seed r`), then test F1@5 is reported for one run (the mean over the single runs, and its
spread), for the mean of the first 2, 3, ... runs, and for one run of the same total dimension
(3 × --dim: does the gain come from averaging or from size?), beside user-item-popular (its
mix weight chosen on validation) and the seconds each run took. Prints
`RATIO <split>_<model>_replicas3_minus_one` (test F1@5 of the mean of 3 minus the mean single
run) and, on the folksonomy, `RATIO <split>_<model>_replicas3_minus_mix`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train import folksonomy_split, user_item_popular  # noqa: E402
from models.metrics import metrics_at_k  # noqa: E402

AVERAGED = 3  # the replicas `jobs.train` trains by default on the per-sample kernel


def f1_at_5(model, data) -> float:
    scores = model.post_vectors(data.batch()) @ model.tag_matrix().T
    return metrics_at_k(np.argsort(-scores, 1, kind="stable")[:, :5], data.indptr, data.indices, ks=(5,))["f1@5"]


def photo_split(tmp: Path, seed: int):
    """train/val/test PostData of the synthetic photo archive (jobs.synth without images, jobs.prepare)."""
    from jobs._train_data import _read, load_split
    from jobs.posts import post_data
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth
    from models.recsys.data import IdIndex

    synth(SynthConfig(out=str(tmp), num_users=200, num_posts=2000, images=False, seed=seed))
    prepare(PrepareConfig(out=str(tmp), seed=seed))
    d = load_split(tmp / "split")
    test, _ = post_data(_read(tmp / "split", "test"), IdIndex(d.user_ids), IdIndex(d.item_ids), d.tags)
    return d.train, d.val, test, {"users": len(d.user_ids), "items": len(d.item_ids), "tags": len(d.tags)}


def mix_f1(train, val, test, sizes: dict) -> float:
    """user-item-popular on test, its weight chosen on validation (what jobs.evaluate reports)."""
    mix = user_item_popular(train, val, sizes["users"], sizes["items"])
    top = mix.recommend(test.user_index, 5, test.item_index)
    return metrics_at_k(top, test.indptr, test.indices, ks=(5,))["f1@5"]


def train_runs(out: Path, name: str, n: int, dim: int) -> tuple[list, list[float], object, float]:
    """n single runs of `name` by jobs.train (seeds 0..n-1), their seconds, and one run at AVERAGED × dim."""
    from jobs import train as jt
    from models.recsys import load

    runs, secs = [], []
    for seed in range(n):
        t0 = time.perf_counter()
        jt.run(jt.TrainConfig(out=str(out), model=name, replicas=1, seed=seed, torch_threads=1, calibrate=False))
        secs.append(time.perf_counter() - t0)
        runs.append(load(out / "models" / name))
    wide = out / "wide"
    (wide / "split").mkdir(parents=True, exist_ok=True)
    for f in (out / "split").iterdir():
        (wide / "split" / f.name).write_bytes(f.read_bytes())
    t0 = time.perf_counter()
    jt.run(jt.TrainConfig(out=str(wide), model=name, replicas=1, dim=AVERAGED * dim, torch_threads=1,
                          calibrate=False))
    return runs, secs, load(wide / "models" / name), time.perf_counter() - t0


def measure(label: str, tmp: Path, splits: tuple, models: list[str], n: int) -> list[dict]:
    from jobs.train import TrainConfig
    from models.recsys.factorization import average

    train, val, test, sizes = splits
    mix = mix_f1(train, val, test, sizes)
    rows = []
    for name in models:
        runs, secs, wide, wide_s = train_runs(tmp, name, n, TrainConfig().dim)
        single = [f1_at_5(m, test) for m in runs]
        means = {k: f1_at_5(average(runs[:k]), test) for k in range(2, n + 1)}
        rows.append({"split": label, "model": name, "single": float(np.mean(single)), "spread": float(np.std(single)),
                     "means": means, "wide": f1_at_5(wide, test), "mix": mix, "seconds": float(np.mean(secs)),
                     "wide_seconds": wide_s, "test_posts": len(test)})
        r = rows[-1]
        print(f"{label} {name}: one run {r['single']:.4f} ± {r['spread']:.4f}, "
              + ", ".join(f"mean of {k} {v:.4f}" for k, v in means.items())
              + f", one run at dim ×{AVERAGED} {r['wide']:.4f}, user-item-popular {mix:.4f} "
              f"({r['seconds']:.1f} s per run)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="folksonomy splits (generator and split seeds)")
    ap.add_argument("--photos", default="0,1", help="photo-archive splits ('' for none)")
    ap.add_argument("--replicas", type=int, default=5, help="single runs per model and split (>= 3)")
    ap.add_argument("--models", default="PITF,FM")
    ap.add_argument("--quick", action="store_true", help="a smaller folksonomy, one split of each, PITF, 3 runs")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s]
    photos = [int(s) for s in a.photos.split(",") if s]
    models, n = a.models.split(","), max(AVERAGED, a.replicas)
    if a.quick:
        seeds, photos, models, n = seeds[:1], photos[:1], ["PITF"], AVERAGED
    rows = []
    for s in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(f"folksonomy{s}", Path(tmp), folksonomy_split(Path(tmp), a.quick, s), models, n)
    for s in photos:
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure(f"photos{s}", Path(tmp), photo_split(Path(tmp), s), models, n)
    ks = list(range(2, n + 1))
    print("\n| split | model | test posts | one run (± sd) | " + " | ".join(f"mean of {k}" for k in ks)
          + f" | one run, dim ×{AVERAGED} | user-item-popular | s per run |")
    print("|---|---|---:|---:|" + "---:|" * len(ks) + "---:|---:|---:|")
    for r in rows:
        print(f"| {r['split']} | {r['model']} | {r['test_posts']} | {r['single']:.4f} ± {r['spread']:.4f} | "
              + " | ".join(f"{r['means'][k]:.4f}" for k in ks)
              + f" | {r['wide']:.4f} | {r['mix']:.4f} | {r['seconds']:.1f} |")
    for group in ("folksonomy", "photos"):
        for name in models:
            sel = [r for r in rows if r["split"].startswith(group) and r["model"] == name]
            if sel:
                print(f"| {group} mean | {name} | | {np.mean([r['single'] for r in sel]):.4f} | "
                      + " | ".join(f"{np.mean([r['means'][k] for r in sel]):.4f}" for k in ks)
                      + f" | {np.mean([r['wide'] for r in sel]):.4f} | {np.mean([r['mix'] for r in sel]):.4f} | |")
    print()
    for r in rows:
        tag = f"{r['split']}_{r['model']}"
        print(f"RATIO {tag}_replicas{AVERAGED}_minus_one {r['means'][AVERAGED] - r['single']:+.4f}")
        if r["split"].startswith("folksonomy"):
            print(f"RATIO {tag}_replicas{AVERAGED}_minus_mix {r['means'][AVERAGED] - r['mix']:+.4f}")


if __name__ == "__main__":
    main()
