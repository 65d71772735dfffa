"""Typed job configs and the one `main()` every stage shares.

A stage declares a dataclass whose fields carry their help text; this module turns
it into an argparse parser and resolves the config with the precedence
defaults < `--config FILE` (YAML or JSON, parsed as data) < command-line flags.
Unknown keys in a config file are an error that lists the valid ones.

`run_job` is the stage's `main()`: it parses, writes the resolved config beside the
outputs, calls `run(cfg)`, writes the JSON summary it returns and maps failures to
exit codes: 0 success (partial success with counted failures included), 2 a problem
the user can fix (one line on stderr), 1 a bug (traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from featurestore import uri
from featurestore.errors import StoreError
from featurestore.uri import UriError
from jobs.errors import JobError
from models.errors import ModelError

USER_ERRORS: tuple[type[BaseException], ...] = (JobError, StoreError, ModelError, UriError, FileNotFoundError)

C = TypeVar("C")

log = logging.getLogger("jobs")


def arg(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (shown by `--help`; the field's comment)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class ArchiveArgs:
    """The command-line contract every job keeps: where inputs and outputs live."""

    posts: str = arg("", "posts.parquet of the archive (post_id, user_id, image, tags[, item_id]): a path or "
                         "a URI (s3://bucket/key, gs://, file://); empty: <out>/archive/posts.parquet")
    edges: str = arg("", "edges.parquet of the social graph (src, dst[, weight]): a path or a URI; "
                         "empty: <out>/archive/edges.parquet")
    store: str = arg("", "feature store folder (LMDB): always a local path, on the store's node (no URIs); "
                         "empty: <out>/store")
    out: str = arg("runs/demo", "output folder: models, evaluation, reports")
    seed: int = arg(0, "random seed; every stage is deterministic given it")

    def posts_path(self) -> Path:
        return Path(self.posts) if self.posts else Path(self.out) / "archive" / "posts.parquet"

    def edges_path(self) -> Path:
        return Path(self.edges) if self.edges else Path(self.out) / "archive" / "edges.parquet"

    def posts_uri(self) -> str:
        """--posts as given (a local path or a URI: `featurestore.uri`), or the demo archive's."""
        return self.posts or str(Path(self.out) / "archive" / "posts.parquet")

    def edges_uri(self) -> str:
        """--edges as given (a local path or a URI), or the demo archive's."""
        return self.edges or str(Path(self.out) / "archive" / "edges.parquet")

    def store_path(self) -> Path:
        return Path(self.store) if self.store else Path(self.out) / "store"

    def reports_dir(self) -> Path:
        return Path(self.out) / "reports"


@dataclasses.dataclass
class SplitArgs:
    """Preprocessing and split flags, shared by the stages that read the split."""

    p_core: int = arg(0, "p-core filter: keep users and tags that occur in >= p posts (0: off)")
    p_core_items: bool = arg(False, "apply the p-core to items too (data where many users tag one item)")
    test_per_user: int = arg(1, "posts per user held out for test (leave-posts-out split)")


@dataclasses.dataclass
class RayArgs:
    """Where Ray runs: a local cluster by default, or the one `ray job submit` set up."""

    ray_address: str = arg("", "Ray cluster to join (host:port, ray://host:port, or 'auto' for one started "
                                "with `ray start` on this machine); empty: RAY_ADDRESS if set (ray job submit "
                                "sets it), else a private local Ray started for this job")
    num_cpus: int = arg(0, "CPUs for a local Ray (0: all of this machine's)")


# --------------------------------------------------------------------------- parsing


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of an annotation such as `int`, `str | None`, `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any, source: str) -> Any:
    """Check/convert one value from a config file or flag to the field's type."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise JobError(f"{source}: '{name}' may not be null")
    origin = typing.get_origin(base)
    try:
        if origin is list:
            (inner,) = typing.get_args(base) or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            if not isinstance(value, list):
                raise TypeError
            return [_coerce(name, inner, v, source) for v in value]
        if origin is dict or base is dict:
            if isinstance(value, str):          # from the command line: JSON (or YAML) text
                import yaml

                value = yaml.safe_load(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        raise JobError(f"{source}: '{name}' must be {getattr(base, '__name__', base)}, got {value!r}") from None
    return value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """One `--flag` per field of `cls`, plus `--config FILE`."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of config keys (defaults < file < flags)")
    for name, f in _fields(cls).items():
        flag = "--" + name.replace("_", "-")
        base, _ = _base_type(f.type)
        help_ = f.metadata.get("help", "")
        default = _default_of(f)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": f"{help_} (default: {default!r})"}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if base is bool and name.startswith("no_"):
            # BooleanOptionalAction would make --no-x and --no-no-x, both meaning False.
            p.add_argument(flag, action="store_const", const=True, **kw)
        elif base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            kw["metavar"] = name.upper()
            p.add_argument(flag, **kw)
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """Parse a config file as data only: YAML safe loader (JSON is YAML)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise JobError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise JobError(f"config file {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise JobError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def resolve_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str) -> C:
    """defaults < --config FILE < flags; unknown keys and bad types are errors."""
    parser = build_parser(cls, prog, description)
    ns = vars(parser.parse_args(argv))
    config_file = ns.pop("config", None)
    fields = _fields(cls)
    values = {name: _default_of(f) for name, f in fields.items()}
    if config_file:
        data = read_config_file(config_file)
        unknown = sorted(k for k in data if k.replace("-", "_") not in fields)
        if unknown:
            raise JobError(f"config file {config_file}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        for k, v in data.items():
            k = k.replace("-", "_")
            values[k] = _coerce(k, fields[k].type, v, f"config file {config_file}")
    for k, v in ns.items():
        values[k] = _coerce(k, fields[k].type, v, f"--{k.replace('_', '-')}")
    for name, f in fields.items():
        choices = f.metadata.get("choices")
        if choices is not None and values[name] not in choices:
            raise JobError(f"'{name}' must be one of {list(choices)}, got {values[name]!r}")
    return cls(**values)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- outputs


def write_json(path: Path | str, obj: Any) -> None:
    """Write JSON atomically (temp file + rename, or a whole object on an object store: a URI),
    so a killed job leaves no half file. Strict JSON: an undefined number (NaN, ±inf, e.g. the
    precision of zero tags written) is written as null, which every JSON reader accepts."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"
    if uri.is_remote(path):
        uri.write_bytes(path, text.encode())
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _finite(o: Any) -> Any:
    """`o` with every non-finite float (Python or numpy) replaced by None, containers copied."""
    import math

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if type(o).__module__ == "numpy" and hasattr(o, "tolist"):   # arrays and scalars
        return _finite(o.tolist())
    return o


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stderr)


def execute(stage: str, cfg: C, run: Callable[[C], dict[str, Any]]) -> dict[str, Any]:
    """Run one stage on a resolved config, writing its config and summary under <out>/reports."""
    reports = Path(getattr(cfg, "out", ".")) / "reports"
    write_json(reports / f"{stage}.config.json", dataclasses.asdict(cfg))  # type: ignore[call-overload]
    t0 = time.time()
    summary = run(cfg) or {}
    summary = {"stage": stage, **summary, "duration_s": round(time.time() - t0, 3)}
    write_json(reports / f"{stage}.summary.json", summary)
    log.info("%s done in %.1fs; summary: %s", stage, summary["duration_s"], reports / f"{stage}.summary.json")
    return summary


def run_job(
    stage: str,
    cls: type[C],
    run: Callable[[C], dict[str, Any]],
    argv: Sequence[str] | None = None,
    description: str = "",
) -> int:
    """Parse, run and report one stage; returns the process exit code.

    `run(cfg)` returns a JSON-able summary (counts, failures by reason, throughput);
    it is written to `<out>/reports/<stage>.summary.json` with the duration added,
    and the resolved config to `<out>/reports/<stage>.config.json` before work starts.
    """
    configure_logging()
    try:
        cfg = resolve_config(cls, argv, prog=f"python -m jobs.{stage}", description=description)
        execute(stage, cfg, run)
        return 0
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {stage}: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {stage}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def main_for(stage: str, cls: type[C], run: Callable[[C], dict[str, Any]], description: str) -> None:
    """`if __name__ == "__main__": main_for(...)` — exits with run_job's code."""
    sys.exit(run_job(stage, cls, run, sys.argv[1:], description))
