"""Training checkpoints: a saved model per completed epoch, so a killed run resumes.

    <dir>/epoch-NNNN/         the model after epoch NNNN (`models.recsys.save`), plus
                              optimizer.safetensors when the optimizer has state (momentum)
    <dir>/latest.json         {"epoch", "dir", "fingerprint", "history"}

Both are written atomically and the older epochs removed after. A checkpoint is resumed only
when its fingerprint (the caller's digest of every setting a resumed run must share) matches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from models.recsys import io as recsys_io

log = logging.getLogger("jobs")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


class Checkpoints:
    """`<dir>/epoch-NNNN/` (a saved model, plus `optimizer.safetensors` when the optimizer has
    state) + `latest.json`, both written atomically."""

    OPTIMIZER = "optimizer.safetensors"

    def __init__(self, directory: Path, fingerprint: str, tags: list[str]) -> None:
        self.dir, self.fingerprint, self.tags = directory, fingerprint, tags

    def save(self, model: Any, epoch: int, history: list[dict], optimizer: dict[str, Any] | None = None) -> None:
        """optimizer: tensors of the optimizer's state (momentum buffers), saved beside the weights."""
        from safetensors.torch import save_file

        name = f"epoch-{epoch:04d}"
        tmp = self.dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        recsys_io.save(model, tmp, {"tags": self.tags})
        if optimizer:
            save_file({k: v.contiguous() for k, v in optimizer.items()}, str(tmp / self.OPTIMIZER))
        shutil.rmtree(self.dir / name, ignore_errors=True)
        os.replace(tmp, self.dir / name)
        _write_json(self.dir / "latest.json", {"epoch": epoch, "dir": name, "fingerprint": self.fingerprint,
                                               "history": history})
        for old in self.dir.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, model: Any) -> tuple[int, list[dict], dict[str, Any]]:
        """(epochs done, history, optimizer state) after loading the latest weights into model;
        (0, [], {}) if none fits."""
        from safetensors.torch import load_file

        path = self.dir / "latest.json"
        if not path.is_file():
            return 0, [], {}
        doc = json.loads(path.read_text())
        if doc.get("fingerprint") != self.fingerprint:
            log.info("train: checkpoint in %s was written with other settings; starting over", self.dir)
            return 0, [], {}
        saved = recsys_io.load(self.dir / doc["dir"])
        model.load_state_dict(saved.state_dict())
        opt = self.dir / doc["dir"] / self.OPTIMIZER
        log.info("train: resuming %s from epoch %d", model.name, doc["epoch"])
        return int(doc["epoch"]), list(doc["history"]), (load_file(str(opt)) if opt.is_file() else {})
