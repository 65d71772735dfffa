"""Saved recommenders: `weights.safetensors` + `model.json`, never pickle.

    <dir>/weights.safetensors   every parameter, plus int64 `user_ids` / `item_ids`
                                (the training vocabularies: row r of the user table is user_ids[r])
    <dir>/model.json            format, name, kind, hyperparameters, tags (the vocabulary, in
                                tag-matrix row order), views (store views and versions read),
                                metrics, weights_sha256, and any extra keys the caller passes

Writes are atomic per file and model.json goes last, carrying the weights' digest, so a
reader never pairs new metadata with old weights. Loading accepts only this format: a
folder holding pickle-based weights (.pt, .pth, .pkl, .bin, .ckpt) is refused with a
message saying how to re-save.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import ModelError

FORMAT = "tagrec.recsys/1"
WEIGHTS, META = "weights.safetensors", "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")
VOCAB = ("user_ids", "item_ids")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: Any, directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write `model` to `directory`; meta needs "tags" (list of T strings), may hold
    "user_ids"/"item_ids" (int64 arrays, default 0..n-1), "views", "metrics" and more keys.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    tags = [str(t) for t in meta.pop("tags", [])]
    if len(tags) != model.n_tags:
        raise ModelError(f"{model.name}: meta['tags'] has {len(tags)} tags, the model scores {model.n_tags}")
    tensors = dict(model.state_dict())
    sizes = {"user_ids": getattr(model, "n_users", 0), "item_ids": getattr(model, "n_items", 0)}
    for key in VOCAB:
        ids = meta.pop(key, None)
        ids = np.arange(sizes[key], dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(ids))
    tmp = d / (WEIGHTS + ".tmp")
    # One metadata key only: safetensors writes its metadata map in hash order, so two keys
    # could give equal weights a different file digest, hence a new model id and a rescore.
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, d / WEIGHTS)
    doc = {"format": FORMAT, "name": model.name, "kind": model.kind,
           "hyperparameters": model.hyperparameters, "tags": tags,
           "views": meta.pop("views", {}), "metrics": meta.pop("metrics", {}),
           "weights": WEIGHTS, "weights_sha256": _sha256(d / WEIGHTS), **meta}
    tmp = d / (META + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, d / META)
    return d


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_meta(directory: str | Path) -> dict[str, Any]:
    """model.json of a saved model, checked for format; ModelError otherwise."""
    d = Path(directory)
    _refuse_pickle(d)
    path = d / META
    if not path.is_file():
        raise ModelError(f"{d} holds no {META}; train it with `python -m jobs.train --model NAME`")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); re-run jobs.train") from None
    if doc.get("format") != FORMAT:
        raise ModelError(f"{path}: format {doc.get('format')!r} is not {FORMAT!r}; re-save with models.recsys.save")
    if not str(doc.get("weights", "")).endswith(".safetensors"):
        raise ModelError(f"{path}: weights {doc.get('weights')!r} are not a .safetensors file; "
                         "only safetensors + JSON models are loaded (no pickle)")
    return doc


def _refuse_pickle(d: Path) -> None:
    if not d.is_dir():
        raise ModelError(f"model folder {d} does not exist; train it with `python -m jobs.train`")
    bad = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if bad and not (d / WEIGHTS).is_file():
        raise ModelError(f"{d}: refusing to load {bad[0]}: pickle-based weights are never loaded; "
                         "re-save the model with models.recsys.save (safetensors + JSON)")


def load(directory: str | Path, device: str = "cpu") -> Any:
    """The saved model, with `.meta` (model.json), `.tags`, `.user_ids`, `.item_ids` attached."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from models.recsys import get_model

    d = Path(directory)
    doc = read_meta(d)
    wpath = d / doc["weights"]
    if not wpath.is_file():
        raise ModelError(f"{d}: {doc['weights']} is missing; re-run jobs.train for {doc.get('name')}")
    if doc.get("weights_sha256") and _sha256(wpath) != doc["weights_sha256"]:
        raise ModelError(f"{wpath}: digest differs from model.json (half-written or replaced); re-run jobs.train")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{wpath} is not a readable safetensors file: {e}") from None
    model = get_model(doc["name"], device=device, **doc["hyperparameters"])
    model.load_state_dict(tensors)
    model.meta = doc
    model.tags = list(doc["tags"])
    model.user_ids = tensors["user_ids"].numpy() if "user_ids" in tensors else np.zeros(0, np.int64)
    model.item_ids = tensors["item_ids"].numpy() if "item_ids" in tensors else np.zeros(0, np.int64)
    return model
