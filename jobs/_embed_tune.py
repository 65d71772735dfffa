"""`jobs.embed_users --tune`: the labels file and the p, q grid search around models.node2vec.tune."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from jobs._progress import Progress
from jobs.errors import InputError, JobError
from models.node2vec.classify import label_matrix
from models.node2vec.graph import Graph
from models.node2vec.skipgram import SkipGramConfig
from models.node2vec.tune import TuneResult, TuneSettings, tune, tune_plan

log = logging.getLogger("jobs")


def _label_bytes(path: str, column: str) -> bytes:
    """The labels file's bytes (a local path or a URI: `featurestore.uri`); InputError if unreadable."""
    from featurestore import uri

    try:
        return uri.read_bytes(path)
    except uri.UriError as e:
        if e.reason == "missing":
            raise InputError(f"labels file {path} does not exist (--labels: Parquet with user_id, {column})") from None
        raise InputError(f"labels file: {e}") from None


def file_digest(path: str, column: str = "label") -> str:
    """sha256 of the labels file's bytes (the labels a tuned view was chosen by)."""
    return hashlib.sha256(_label_bytes(path, column)).hexdigest()


def read_labels(path: str, column: str, graph: Graph) -> tuple[np.ndarray, dict[str, Any]]:
    """((n_nodes, L) bool label matrix over the graph's dense ids, report) from a Parquet of
    (user_id int, <column> int or string) rows; several rows per user allowed.

    Users the graph does not hold are counted and skipped; InputError when no labelled user
    is in the graph, or for a missing file, column, wrong type or null value.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = path
    data = pa.BufferReader(_label_bytes(path, column))
    try:
        schema = pq.ParquetFile(data).schema_arrow
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"{p}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for col in ("user_id", column):
        if col not in schema.names:
            hint = " (--label-column names the label column)" if col == column else ""
            raise InputError(f"{p}: no column '{col}'{hint}; it has {schema.names}")
    if not pa.types.is_integer(schema.field("user_id").type):
        raise InputError(f"{p}: column 'user_id' must be an integer, found {schema.field('user_id').type}")
    lt = schema.field(column).type
    if not (pa.types.is_integer(lt) or pa.types.is_string(lt) or pa.types.is_large_string(lt)):
        raise InputError(f"{p}: column '{column}' must be an integer or a string, found {lt}")
    table = pq.read_table(data, columns=["user_id", column])
    for col in ("user_id", column):
        nulls = table.column(col).null_count
        if nulls:
            raise InputError(f"{p}: column '{col}' has {nulls} null value(s); drop those rows")
    users = table.column("user_id").to_numpy().astype(np.int64)
    labels = table.column(column).to_numpy(zero_copy_only=False)
    dense = graph.dense(users)
    known = dense >= 0
    if not known.any():
        raise InputError(f"{p}: none of its {np.unique(users).size} labelled users is a user of the graph "
                         f"(e.g. user_id {users[0]}); labels must use the edges' user ids")
    y, values = label_matrix(dense[known], labels[known], graph.n_nodes)
    report = {"labels_file": str(p), "label_rows": int(users.size), "labelled_users": int(y.any(axis=1).sum()),
              "labels": int(values.size),
              "labelled_users_not_in_graph": int(np.unique(users[~known]).size)}
    if report["labelled_users_not_in_graph"]:
        log.warning("%s: %d labelled user(s) are not in the graph; they are skipped",
                    p, report["labelled_users_not_in_graph"])
    return y, report


def tune_settings(cfg: Any) -> TuneSettings:
    """TuneSettings from the job's flags (EmbedUsersConfig)."""
    return TuneSettings(p_grid=tuple(cfg.p_grid), q_grid=tuple(cfg.q_grid), walk_length=cfg.walk_length,
                        walks_per_node=cfg.walks_per_node, budget=cfg.tune_budget, max_nodes=cfg.tune_max_nodes,
                        finalists=cfg.tune_finalists, epochs_grid=tuple(int(e) for e in cfg.tune_epochs),
                        seed=cfg.seed, threads=cfg.sg_workers)


def check_tune_config(cfg: Any) -> None:
    """Bad grid or budget values, before anything is read."""
    from models.errors import ModelError

    if not cfg.tune_budget > 0:
        raise JobError(f"--tune-budget must be > 0 (full embeddings the search may cost), got {cfg.tune_budget}")
    if cfg.tune_max_nodes < 2:
        raise JobError(f"--tune-max-nodes must be >= 2, got {cfg.tune_max_nodes}")
    if cfg.tune_finalists < 0:
        raise JobError(f"--tune-finalists must be >= 0, got {cfg.tune_finalists}")
    try:
        tune_settings(cfg).check()
    except ModelError as e:
        raise JobError(f"--{str(e)}") from None
    if cfg.labels and not cfg.tune:
        raise JobError("--labels is only read by --tune; add --tune (or drop --labels)")


def tune_request(cfg: Any) -> dict[str, Any]:
    """What a tuned view was asked for: equal requests give the same view (a re-run is a no-op)."""
    s = tune_settings(cfg)
    req: dict[str, Any] = {"p_grid": [float(v) for v in s.p_grid], "q_grid": [float(v) for v in s.q_grid],
                           "budget": s.budget, "max_nodes": s.max_nodes, "finalists": s.finalists,
                           "epochs_grid": [int(e) for e in s.epochs_grid]}
    if cfg.labels:
        req["labels_sha256"] = file_digest(cfg.labels, cfg.label_column)
        req["label_column"] = cfg.label_column
    return req


def run_tune(cfg: Any, graph: Graph, sg: SkipGramConfig, y: np.ndarray | None) -> TuneResult:
    """The grid search (y: label matrix from read_labels, or None), a progress line per grid point."""
    settings = tune_settings(cfg)
    n = min(graph.n_nodes, settings.max_nodes)            # the nodes tuned on
    plan = tune_plan(settings, graph.n_nodes, n)
    # progress counts walks trained on, once per epoch
    prog = Progress("embed_users tune", unit="walks", total=n * plan.walk_epochs(), every_s=30.0)

    def on_point(point: dict[str, Any]) -> None:
        log.info("tune p=%g q=%g epochs=%d%s: score %.4f (%.1fs)", point["p"], point["q"], point["epochs"],
                 " (every walk)" if point.get("finalist") else "", point["score"], point["seconds"])
        walks = plan.full_walks if point.get("finalist") else plan.walks_per_node
        prog.update(n * walks * point["epochs"])

    result = tune(graph, settings, sg, y=y, on_point=on_point)
    prog.close()
    log.info("tune: chose p=%g q=%g epochs=%d (%s, %s)", result.p, result.q, result.epochs, result.scoring,
             result.sample["how"])
    return result
