"""Config precedence (defaults < file < flags), unknown keys, bad types, exit codes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jobs._cli import ArchiveArgs, arg, resolve_config, run_job, write_json
from jobs.errors import JobError


@dataclasses.dataclass
class Cfg(ArchiveArgs):
    batch_size: int = arg(64, "images per batch")
    lr: float = arg(0.01, "learning rate")
    fast: bool = arg(False, "go fast")
    names: list[str] = arg(["a"], "names")
    backend: str = arg("auto", "backend", choices=("auto", "cpu"))
    no_images: bool = arg(False, "skip images")


def test_precedence_defaults_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 8\nlr: 0.5\nnames: [x, y]\n")
    cfg = resolve_config(Cfg, ["--config", str(f), "--lr", "0.25", "--fast"], "p", "d")
    assert (cfg.batch_size, cfg.lr, cfg.fast, cfg.names, cfg.seed) == (8, 0.25, True, ["x", "y"], 0)
    cfg = resolve_config(Cfg, ["--names", "p,q", "--no-fast"], "p", "d")
    assert cfg.names == ["p", "q"] and cfg.fast is False and cfg.no_images is False


def test_a_no_flag_turns_its_field_on():
    # A field named no_x gets --no-x (True), not BooleanOptionalAction's --no-x/--no-no-x pair.
    assert resolve_config(Cfg, ["--no-images"], "p", "d").no_images is True


def test_unknown_key_lists_valid_ones(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"batch_sise": 3}))
    with pytest.raises(JobError, match=r"unknown key\(s\) \['batch_sise'\]; valid keys: .*'batch_size'"):
        resolve_config(Cfg, ["--config", str(f)], "p", "d")


@pytest.mark.parametrize("text, match", [("batch_size: 1.5", "must be int"), ("fast: maybe", "must be bool"),
                                         ("- a\n- b", "must hold a mapping"), ("a: [", "not valid YAML"),
                                         ("backend: gpu", "must be one of")])
def test_bad_config_values(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(JobError, match=match):
        resolve_config(Cfg, ["--config", str(f)], "p", "d")


def test_yaml_is_parsed_as_data_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "c.yaml"
    f.write_text(f"out: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(JobError, match="not valid YAML"):
        resolve_config(Cfg, ["--config", str(f)], "p", "d")
    assert not marker.exists()


def test_exit_codes_and_outputs(tmp_path, capsys):
    def ok(cfg):
        return {"n": 3}

    def user_error(cfg):
        raise JobError("bad thing: fix it\nsecond line")

    assert run_job("s", Cfg, ok, ["--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "reports" / "s.summary.json").read_text())
    assert summary["n"] == 3 and "duration_s" in summary
    assert json.loads((tmp_path / "reports" / "s.config.json").read_text())["batch_size"] == 64
    assert run_job("s", Cfg, user_error, ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: s: bad thing: fix it" in err and "second line" not in err
    with pytest.raises(SystemExit) as e:
        run_job("s", Cfg, ok, ["--no-such-flag"])
    assert e.value.code == 2


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        resolve_config(Cfg, ["--help"], "python -m jobs.x", "desc")
    out = capsys.readouterr().out
    for flag in ("--batch-size", "--lr", "--fast", "--names", "--config", "--posts", "--store", "--seed"):
        assert flag in out


def test_write_json_is_strict_json_undefined_numbers_become_null(tmp_path):
    """Reports go to other tools (search indexing, jq): NaN/inf are not JSON, so they are written
    as null, nested in dicts, lists, numpy scalars and arrays alike."""
    import numpy as np

    path = tmp_path / "r.json"
    write_json(path, {"p": float("nan"), "ok": 0.5, "deep": [{"x": np.float32("inf")}, np.array([1.0, np.nan])],
                      "n": np.int64(3), "f": np.float64(-np.inf)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc == {"p": None, "ok": 0.5, "deep": [{"x": None}, [1.0, None]], "n": 3, "f": None}
