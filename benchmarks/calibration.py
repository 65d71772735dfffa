"""Which calibration lets a backfill hit its precision target? Validation -> test.

    python benchmarks/calibration.py [--seeds 3] [--quick]

On a generated folksonomy (`jobs._synth_folksonomy`, 10-core, one validation and one test
post per user) PITF and FM are trained with the per-sample SGD trainer at the pipeline's
defaults (early stopping on validation F1@5), one run each (the pipeline averages 3 replicas:
`jobs.train --replicas`), and user-item-popular is fitted (its mix
weight chosen on validation). For each, every calibrator of `models.calibration` (isotonic
or Platt, one map or one per rank; isotonic per rank also at the one-map lower bound z = 1)
is fitted on the validation posts' top-10 (score, hit) pairs and applied to the test posts.
Reported per method: the precision reached on test at targets 0.5 / 0.7 / 0.9 (right tags /
tags written; NaN where no tag met the target), tags written per post, expected calibration
error (ECE), and misses: (seed, target) pairs whose reached precision fell more than
`MISS_TOLERANCE` below the target beyond what the number of tags written explains
(`precision_coverage`'s verdict "no"). The method to prefer keeps every target and writes
the most tags. Prints `RATIO <model>_default_vs_<method>_tags_at_<P>` lines: tags written per post
by the default (isotonic per rank) over the other method's, at the highest target P where
both write any (> 1: the default writes more; read it beside the misses).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train import folksonomy_split, user_item_popular  # noqa: E402
from models.calibration import TARGETS, Calibrator, calibration_error, precision_coverage  # noqa: E402
from models.metrics import hits_matrix  # noqa: E402

K = 10
# (label, method, per_rank, z): z None is the calibrator's default (PER_RANK_Z per rank, else LOWER_BOUND_Z)
METHODS = (("isotonic per rank", "isotonic", True, None), ("isotonic per rank z=1", "isotonic", True, 1.0),
           ("isotonic", "isotonic", False, None), ("platt", "platt", False, None),
           ("platt per rank", "platt", True, None))
DEFAULT = "isotonic per rank"  # models.calibration.DEFAULT_METHOD with its default z


def scored(model, data) -> tuple[np.ndarray, np.ndarray]:
    """(top-K tags, their scores) of a recommender on PostData."""
    tags = model.tag_matrix()
    scores = model.post_vectors(data.batch()) @ tags.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return top, np.take_along_axis(scores, top, 1)


def train_sgd(name: str, train, val, seed: int):
    """PITF or FM by per-sample SGD with the pipeline's defaults (`jobs.train.TrainConfig`: dim,
    lr, reg, negative draws, early stopping on `val`'s F1@5 with its patience and epoch cap)."""
    from jobs.train import TrainConfig
    from models.recsys import get_model
    from models.recsys.bpr import BPRConfig
    from models.recsys.early_stopping import EarlyStopping
    from models.recsys.evaluate import evaluate
    from models.recsys.sgd import SGDTrainer

    d = TrainConfig()
    m = get_model(name, n_users=int(train.user_index.max()) + 1, n_items=int(train.item_index.max()) + 1,
                  n_tags=train.n_tags, dim=d.dim, seed=seed)
    tr = SGDTrainer(m, train, BPRConfig(lr=d.lr, reg=d.reg, seed=seed, kernel="sgd", negatives=d.sgd_negatives))
    es = EarlyStopping(patience=d.patience, patience_frac=d.patience_frac, max_epochs=d.epochs)
    best = None
    while not es.should_stop():
        tr.run_epoch(es.last_epoch)
        if es.update(es.last_epoch + 1, evaluate(m, val)["f1@5"]):
            best = {k: v.clone() for k, v in m.params.items()}
    tr.close()
    m.params = best  # type: ignore[assignment]
    return m


def lists(train, val, test, seed: int, models: tuple[str, ...] = ("PITF", "FM")) -> dict[str, tuple]:
    """name -> (val scores, val hits, test scores, test hits) of `models` and user-item-popular."""
    out = {}
    for name in models:
        m = train_sgd(name, train, val, seed)
        (tv, sv), (tt, st) = scored(m, val), scored(m, test)
        out[name] = (sv, hits_matrix(tv, val.indptr, val.indices), st, hits_matrix(tt, test.indptr, test.indices))
    mix = user_item_popular(train, val)
    (tv, sv), (tt, st) = (mix.scores_topk(d.user_index, K, d.item_index) for d in (val, test))
    out["user-item-popular"] = (sv, hits_matrix(tv, val.indptr, val.indices), st,
                                hits_matrix(tt, test.indptr, test.indices))
    return out


def _nanmean(v: list[float]) -> float:
    v = [x for x in v if x == x]
    return float(np.mean(v)) if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smaller folksonomy")
    a = ap.parse_args()
    rows: dict[tuple[str, str], list[dict]] = {}
    for seed in range(a.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            train, val, test, _ = folksonomy_split(Path(tmp), a.quick, seed)
        for model, (sv, hv, st, ht) in lists(train, val, test, seed).items():
            for label, method, per_rank, z in METHODS:
                cal = Calibrator(method, per_rank, z=z).fit(sv, hv)
                p = cal.predict(st)
                rep = precision_coverage(p, ht)
                misses = sum(rep[f"{t:g}"]["target_kept"] == "no" for t in TARGETS)
                key = (model, label)
                rows.setdefault(key, []).append({"rep": rep, "ece": calibration_error(p, ht), "misses": misses})
    print(f"calibration fitted on validation, measured on test; mean over {a.seeds} seeds")
    head = "".join(f"{'P@' + format(t, 'g'):>9}{'tags':>7}" for t in TARGETS)
    print(f"{'model':<18}{'method':<20}{head}{'ECE':>8}{'misses':>8}")
    for (model, method), rs in rows.items():
        cells = ""
        for t in TARGETS:
            prec = _nanmean([r["rep"][f"{t:g}"]["precision"] for r in rs])
            tags = np.mean([r["rep"][f"{t:g}"]["tags_per_post"] for r in rs])
            cells += f"{prec:>9.3f}{tags:>7.2f}"
        print(f"{model:<18}{method:<20}{cells}{np.mean([r['ece'] for r in rs]):>8.4f}"
              f"{sum(r['misses'] for r in rs):>8d}")
    def tags(model: str, method: str) -> dict[float, float]:
        """Mean tags written per post at each target, over the seeds."""
        return {t: float(np.mean([r["rep"][f"{t:g}"]["tags_per_post"] for r in rows[(model, method)]]))
                for t in TARGETS}

    for model in dict.fromkeys(m for m, _ in rows):
        ours = tags(model, DEFAULT)
        for other in [k[1] for k in rows if k[0] == model and k[1] != DEFAULT]:
            theirs = tags(model, other)
            # at the highest target where both write tags (a ratio to zero says nothing)
            both = [t for t in TARGETS if ours[t] > 0 and theirs[t] > 0]
            if not both:
                continue
            t = max(both)
            tag = other.replace(" ", "_").replace("=", "")
            print(f"RATIO {model.lower().replace('-', '_')}_default_vs_{tag}_tags_at_{t:g} {ours[t] / theirs[t]:.3f}")


if __name__ == "__main__":
    main()
