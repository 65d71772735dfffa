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
