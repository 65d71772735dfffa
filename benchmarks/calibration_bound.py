"""Does a backfill keep its precision target on test? Block means vs lower bounds vs a calibration fold.

    python benchmarks/calibration_bound.py [--seeds 3] [--quick] [--photo-seeds 3]

Two kinds of archive, each over several seeds:

- **folksonomy** (`jobs._synth_folksonomy`, 10-core, one validation and one test post per
  user): PITF and FM trained with the per-sample SGD trainer at the pipeline's defaults
  (early stopping on validation F1@5), and user-item-popular (mix weight chosen on
  validation). The validation posts are also split in two halves by a seeded permutation,
  A and B, and each model is trained again stopping on A alone and on B alone.
- **photo** (`jobs.synth`, the archive of tests/test_cold_start.py: 8,000 posts, 1,000
  users, no images, features written), run through `jobs.prepare` and `jobs.train` with
  that test's settings; PITF, PITF-OD, PITF-IC-OD and FM-IC-OD.

Calibrations compared, each applied to the test posts' top-10 lists:

- `means`: isotonic block means on all validation posts (the map the lower bound replaces);
- `block z=1`: each block at the one-sided Wilson lower bound of its own pairs;
- `tail z=1`, `tail z=1.645`: each block at most the lower bound of the hit rate of it and
  every block above it (`models.calibration.isotonic_fit`, bound "tail");
- `rank tail z=1`, `rank tail z=1.645` (the default), `rank tail z=2.33`: one such map per
  rank (`Calibrator(per_rank=True)`);
- `fold means`, `fold tail z=1` (folksonomy): the model stopped on one half, the map fitted on
  the other (both ways round: two results per model and seed), so the posts that chose the
  epoch never fit the map.

Per calibration and target P = 0.5 / 0.7 / 0.9: precision reached over all (seed, model)
runs pooled (right tags / tags written), tags written per post (mean), misses (runs whose
verdict is "no": below P - MISS_TOLERANCE with the tags' 95% interval below P), and the
worst shortfall P - precision among runs that wrote at least 50 tags. Also the selection
bias of early stopping: a model stopped on half A is scored on A (which chose its epoch)
and on B, and one stopped on B the other way round; the mean of the two differences in
P@1 and in the top-10 hit rate cancels whatever makes one half easier than the other.
Prints `RATIO <archive>_<calibration>_tags_at_<P>_vs_means` lines (tags written per post).
`--split-gaps N` instead prints, per folksonomy seed, P@1 on validation minus P@1 on test of
the untuned frequency baselines: how far two exchangeable samples differ by chance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.calibration import train_sgd  # noqa: E402  (PITF/FM at the pipeline's defaults)
from models.calibration import (  # noqa: E402
    MIN_BLOCK,
    MISS_TOLERANCE,
    TARGETS,
    Calibrator,
    isotonic_fit,
    precision_coverage,
)
from models.metrics import hits_matrix  # noqa: E402

K = 10
BOUNDS = (("means", 0.0, "tail"), ("block z=1", 1.0, "block"), ("tail z=0.5", 0.5, "tail"), ("tail z=1", 1.0, "tail"),
          ("tail z=1.645", 1.645, "tail"), ("rank tail z=1", 1.0, "per rank"),
          ("rank tail z=1.645", 1.645, "per rank"), ("rank tail z=2.33", 2.33, "per rank"))  # "per rank": one map each
FOLDS = (("fold means", 0.0, "tail"), ("fold tail z=1", 1.0, "tail"))
PHOTO_ARCHIVE = dict(num_users=1000, num_posts=8000, num_tags=200, num_communities=5)
PHOTO_TRAIN = dict(dim=32, epochs=15, lr=0.05, reg=1e-4, batch_size=1024)
PHOTO_MODELS = ("PITF", "PITF-OD", "PITF-IC-OD", "FM-IC-OD")


def model_lists(m, d) -> tuple[np.ndarray, np.ndarray]:
    """(scores, hits) of a model's top-K on PostData d."""
    from models.recsys.evaluate import topk_scored

    top, sc = topk_scored(m, d.batch(), K)
    return sc.astype(np.float64), hits_matrix(top, d.indptr, d.indices)


def run_of(z: float, bound: str, fit: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """precision_coverage on test of an isotonic map (lower bound z of kind `bound`) fitted on `fit`."""
    s, h = fit
    if bound == "per rank":  # one tail-bounded map per rank, as `Calibrator(per_rank=True)` fits
        return precision_coverage(Calibrator("isotonic", True, z=z).fit(s, h).predict(test[0]), test[1])
    ok = np.isfinite(s)
    cal = Calibrator("isotonic", False, z=z)
    cal.maps = [isotonic_fit(s[ok], h[ok].astype(np.float64), min_weight=MIN_BLOCK, z=z, bound=bound)]
    return precision_coverage(cal.predict(test[0]), test[1])


def folksonomy_runs(seed: int, quick: bool) -> tuple[dict[str, list[dict]], list[tuple[float, float]]]:
    """Per calibration: one precision_coverage per (model[, fold]); and the selection-bias pairs."""
    from benchmarks.calibration import lists as popularity_lists
    from benchmarks.train import folksonomy_split

    with tempfile.TemporaryDirectory() as tmp:
        train, val, test, _ = folksonomy_split(Path(tmp), quick, seed)
    perm = np.random.default_rng(1000 + seed).permutation(len(val))
    half = {"A": val.subset(np.sort(perm[: len(val) // 2])), "B": val.subset(np.sort(perm[len(val) // 2:]))}
    runs: dict[str, list[dict]] = {}
    bias = []
    for fam in ("PITF", "FM"):
        full = train_sgd(fam, train, val, seed)
        on_val, on_test = model_lists(full, val), model_lists(full, test)
        for name, z, bound in BOUNDS:
            runs.setdefault(name, []).append(run_of(z, bound, on_val, on_test))
        stopped = {h: train_sgd(fam, train, half[h], seed) for h in "AB"}
        own = {}
        for h, other in (("A", "B"), ("B", "A")):
            m = stopped[h]
            mine, theirs, t = model_lists(m, half[h]), model_lists(m, half[other]), model_lists(m, test)
            own[h] = (mine[1], theirs[1])
            for name, z, bound in FOLDS:
                runs.setdefault(name, []).append(run_of(z, bound, theirs, t))
        bias.append(tuple(float(np.mean([own[h][0][:, c].mean() - own[h][1][:, c].mean() for h in "AB"]))
                          for c in (slice(0, 1), slice(0, K))))
        print(f"  seed {seed} {fam}: selection bias P@1 {bias[-1][0]:+.4f}, top-10 hit rate {bias[-1][1]:+.4f}",
              flush=True)
    sv, hv, st, ht = popularity_lists(train, val, test, seed, models=())["user-item-popular"]
    for name, z, bound in BOUNDS:
        runs[name].append(run_of(z, bound, (sv, hv), (st, ht)))
    return runs, bias


def photo_runs(seed: int, tmp: Path) -> dict[str, list[dict]]:
    """The test_cold_start archive through the jobs; per calibration one precision_coverage per model."""
    import torch

    from jobs.evaluate import _scored, load_data
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth
    from jobs.train import TrainConfig
    from jobs.train import run as train
    from models.recsys import load

    out = tmp / f"photo{seed}"
    synth(SynthConfig(out=str(out), images=False, write_features=True, seed=seed, **PHOTO_ARCHIVE))
    prepare(PrepareConfig(out=str(out), seed=seed))
    torch.set_num_threads(1)
    d, runs = load_data(out), {}
    for name in PHOTO_MODELS:
        train(TrainConfig(out=str(out), model=name, resume=False, seed=seed, **PHOTO_TRAIN))
        m = load(out / "models" / name)
        sides = []
        for posts in (d.val, d.test):
            tags, scores = _scored(m, posts, d.tags, out / "store")
            sides.append((np.where(tags >= 0, scores, np.nan), hits_matrix(tags, posts.indptr, posts.indices)))
        for cname, z, bound in BOUNDS:
            runs.setdefault(cname, []).append(run_of(z, bound, sides[0], sides[1]))
    return runs


def split_gaps(seeds: int) -> None:
    """P@1 on validation minus P@1 on test of the untuned frequency baselines, per folksonomy
    seed: how much two exchangeable samples of one post per user differ by chance."""
    from benchmarks.train import folksonomy_split
    from models.baselines import PopularityMix

    gaps: dict[str, list[float]] = {}
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            train, val, test, _ = folksonomy_split(Path(tmp), False, seed)
        post = np.repeat(np.arange(len(train)), np.diff(train.indptr))
        mix = PopularityMix(train.n_tags, int(train.user_index.max()) + 1, int(train.item_index.max()) + 1)
        mix.fit(train.user_index[post], train.indices, train.item_index[post], post_index=post)
        for name, alpha in (("item-popular", 0.0), ("mix 0.5", 0.5), ("user-popular", 1.0)):
            mix.alpha = alpha
            p1 = [hits_matrix(mix.scores_topk(d.user_index, K, d.item_index)[0], d.indptr, d.indices)[:, 0].mean()
                  for d in (val, test)]
            gaps.setdefault(name, []).append(float(p1[0] - p1[1]))
        print(f"  seed {seed}: P@1 validation - test " + ", ".join(f"{k} {v[-1]:+.3f}" for k, v in gaps.items()),
              flush=True)
    for name, v in gaps.items():
        print(f"split gap {name}: mean {np.mean(v):+.4f}, sd {np.std(v, ddof=1):.4f}, range {min(v):+.3f}..{max(v):+.3f}")


def table(title: str, runs: dict[str, list[dict]]) -> None:
    print(f"\n{title}: precision reached (pooled) / tags per post / misses / worst shortfall (runs with >= 50 tags)")
    print(f"{'calibration':<16}" + "".join(f"{'P=' + format(t, 'g'):>30}" for t in TARGETS))
    for name, rs in runs.items():
        cells = ""
        for t in TARGETS:
            r = [x[f"{t:g}"] for x in rs]
            written = sum(v["tags_written"] for v in r)
            right = sum(round(v["precision"] * v["tags_written"]) for v in r if v["tags_written"])
            prec = right / written if written else float("nan")
            miss = sum(v["target_kept"] == "no" for v in r)
            short = max([t - v["precision"] for v in r if v["tags_written"] >= 50], default=float("nan"))
            cells += f"{prec:>12.3f}{np.mean([v['tags_per_post'] for v in r]):>7.3f}{miss:>4d}{short:>+7.3f}"
        print(f"{name:<16}{cells}  ({len(rs)} runs)")
    for name in [n for n in runs if n.startswith(("tail", "block", "rank"))]:
        for t in TARGETS:
            ref = np.mean([x[f"{t:g}"]["tags_per_post"] for x in runs["means"]])
            new = np.mean([x[f"{t:g}"]["tags_per_post"] for x in runs[name]])
            tag = name.replace(" ", "_").replace("=", "")
            print(f"RATIO {title.split()[0]}_{tag}_tags_at_{t:g}_vs_means {new / ref if ref else float('nan'):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="folksonomy seeds (0..N-1)")
    ap.add_argument("--photo-seeds", type=int, default=3, help="photo archive seeds (0..N-1)")
    ap.add_argument("--quick", action="store_true", help="a smaller folksonomy")
    ap.add_argument("--split-gaps", type=int, default=0, help="only the validation - test P@1 gaps of the "
                                                               "frequency baselines over this many folksonomy seeds")
    a = ap.parse_args()
    if a.split_gaps:
        split_gaps(a.split_gaps)
        return
    print(f"miss: verdict 'no' (below P - {MISS_TOLERANCE} and the 95% interval below P)")
    photo: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.photo_seeds):
            for k, v in photo_runs(seed, Path(tmp)).items():
                photo.setdefault(k, []).extend(v)
    if photo:
        table("photo archive", photo)
    folk: dict[str, list[dict]] = {}
    bias: list[tuple[float, float]] = []
    for seed in range(a.seeds):
        runs, b = folksonomy_runs(seed, a.quick)
        bias += b
        for k, v in runs.items():
            folk.setdefault(k, []).extend(v)
    if folk:
        table("folksonomy", folk)
        print(f"selection bias of early stopping (stopping half - other half), mean over {len(bias)} models: "
              f"P@1 {np.mean([x[0] for x in bias]):+.4f} (sd {np.std([x[0] for x in bias]):.4f}), "
              f"top-10 hit rate {np.mean([x[1] for x in bias]):+.4f} (sd {np.std([x[1] for x in bias]):.4f})")


if __name__ == "__main__":
    main()
