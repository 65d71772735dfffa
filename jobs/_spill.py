"""Scratch directories for data a job spills to disk (training features, random walks).

Each is named `<prefix><pid>-<random>`, so a later run can tell the directories of killed
runs (their pid is gone) from those of runs still going, and remove only the former: a job
killed at 10^6 users otherwise leaves 3 GB of walks behind, one more copy per kill.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def remove_stale(parent: Path, prefix: str, job: str) -> list[Path]:
    """Delete `parent/<prefix><pid>-*` directories whose pid is not running; return them."""
    gone = []
    for d in Path(parent).glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.info("%s: removing %s, left by a killed run", job, d)
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def spill_dir(parent: Path, prefix: str, job: str) -> tempfile.TemporaryDirectory:
    """This run's scratch directory in `parent` (created if needed; stale ones of killed runs
    removed first), or in the system's temporary directory where `parent` is not writable."""
    pfx = f"{prefix}{os.getpid()}-"
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        remove_stale(Path(parent), prefix, job)
        return tempfile.TemporaryDirectory(prefix=pfx, dir=parent)
    except OSError as e:  # a read-only location
        log.warning("%s: cannot write scratch files in %s (%s); using %s", job, parent, e, tempfile.gettempdir())
        return tempfile.TemporaryDirectory(prefix=pfx)
