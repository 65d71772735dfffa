"""The whole pipeline end to end on a tiny synthetic archive, in process, with a real local Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from featurestore import Store
from jobs._cli import run_job
from jobs.pipeline import PipelineConfig, run

TINY = ["--num-users", "12", "--num-posts", "48", "--vgg-size", "32", "--yolo-size", "64", "--no-all",
        "--model", "PITF-IC-OD+SN", "--train-epochs", "3"]


def test_pipeline_runs_every_stage_and_resumes(tmp_path, ray_local, capsys):
    out = tmp_path / "run"
    assert run_job("pipeline", PipelineConfig, run, ["--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert "SEEDED RANDOM WEIGHTS" in err
    summary = json.loads((out / "reports" / "pipeline.summary.json").read_text())
    assert summary["stages_run"] == ["synth", "prepare", "extract", "embed_users", "train", "score", "evaluate",
                                     "social_influence"]
    assert summary["stages_missing"] == []
    store = Store.open(str(out / "store"), readonly=True)
    views = set(store.list_views())
    assert {"image/vgg16@1", "image/yolo@1", "user/node2vec@1"} <= views
    assert any(v.startswith("post/topk@PITF-IC-OD+SN") for v in views)
    assert "random weights" in json.dumps(store.describe("image/vgg16@1").producer)
    ev = json.loads((out / "evaluation.json").read_text())
    assert {"PITF-IC-OD+SN", "most-popular", "user-popular"} <= set(ev)
    parts = sorted((out / "topk").rglob("*.parquet"))
    assert parts and pq.read_table(parts[0]).num_rows > 0
    for stage in summary["stages_run"]:
        assert (out / "reports" / f"{stage}.summary.json").exists()

    # A re-run resumes: nothing is recomputed in the store, and the results are the same.
    before = {v: store.describe(v).count for v in views}
    topk_before = pq.read_table(parts[0]).sort_by("post_id")
    assert run_job("pipeline", PipelineConfig, run, ["--out", str(out), *TINY]) == 0
    store = Store.open(str(out / "store"), readonly=True)
    assert {v: store.describe(v).count for v in store.list_views()} == before
    extract = json.loads((out / "reports" / "extract.summary.json").read_text())
    assert extract.get("processed", 0) == 0
    topk_after = pq.read_table(sorted((out / "topk").rglob("*.parquet"))[0]).sort_by("post_id")
    assert np.array_equal(topk_before.column("post_id").to_numpy(), topk_after.column("post_id").to_numpy())


def test_pipeline_rejects_unknown_stage(tmp_path, capsys):
    assert run_job("pipeline", PipelineConfig, run, ["--out", str(tmp_path), "--stages", "synth,bogus"]) == 2
    assert "unknown stage(s) ['bogus']" in capsys.readouterr().err


FOLK = ["--kind", "folksonomy", "--num-users", "60", "--num-posts", "1500", "--num-tags", "200", "--num-items",
        "300", "--num-genres", "5", "--p-core", "3", "--p-core-items", "--train-epochs", "15", "--train-dim", "16"]


def test_tag_only_archive_runs_end_to_end(tmp_path, ray_local, capsys):
    """No image exists: extract is skipped, train trains what needs no pixels and says what it
    skips, score takes the best trained model by validation F1@5, evaluate compares them all."""
    out = tmp_path / "folk"
    assert run_job("pipeline", PipelineConfig, run, ["--out", str(out), *FOLK]) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "reports" / "pipeline.summary.json").read_text())
    assert "extract" not in summary["stages_run"] and "pipeline: extract: skipped: none of the first" in err
    assert summary["stages_run"][-3:] == ["score", "evaluate", "social_influence"]
    trained = json.loads((out / "reports" / "train.summary.json").read_text())
    assert {"PITF", "FM", "PITF+SN", "FM+SN"} <= set(trained["models"])
    for name in ("PITF-IC-OD", "FM-IC", "social-multilabel", "visual-multilabel"):
        assert name in trained["skipped"] and f"pipeline: train: skipped {name}: " in err
    best = max(sorted(trained["models"]), key=lambda n: trained["models"][n]["val_f1@5"])  # ties: first by name
    assert f"pipeline: score: scoring with {best}, the trained model with the best validation F1@5" in err
    score = json.loads((out / "reports" / "score.summary.json").read_text())
    assert score["model"] == best and score["scored_posts"] > 0
    part = pq.read_table(sorted((out / "topk" / best).glob("part-*.parquet"))[0])
    assert part.column("probabilities").null_count == 0   # calibrated by train
    ev = json.loads((out / "evaluation.json").read_text())
    assert set(trained["models"]) | {"most-popular", "user-popular", "item-popular", "user-item-popular",
                                     "friends-popular"} <= set(ev)
    assert 0 <= ev["baselines"]["user-item-popular"]["alpha"] <= 1
    assert set(ev["backfill"][best]["targets"]) == {"0.5", "0.7", "0.9"}
    # many users tag the same items: the item's own tags beat the global list
    assert ev["item-popular"]["f1@5"] > ev["most-popular"]["f1@5"] + 0.05
    assert (out / "f1_at_k.png").is_file() and (out / "precision_coverage.png").is_file()


def test_no_all_needs_a_model_and_says_so_before_any_stage_runs(tmp_path, capsys):
    assert run_job("pipeline", PipelineConfig, run, ["--out", str(tmp_path), "--no-all"]) == 2
    assert "--no-all trains only --model" in capsys.readouterr().err
    assert not (tmp_path / "archive").exists(), "synth ran before the bad flags were refused"
