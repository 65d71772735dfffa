"""Weights are loaded without running code from the file."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from models.errors import ModelError
from models.vision.weights import file_digest, load_state_dict, module_digest, save_state_dict


class _Evil:
    """A pickle payload: unpickling it calls open(target, 'w') -> creates a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_evil_pickle(path, target) -> None:
    """A .pt file whose unpickling would create `target` (plain pickle and torch zip format)."""
    torch.save({"features.0.weight": torch.zeros(1), "payload": _Evil(str(target))}, str(path))


def test_pickle_with_reduce_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    write_evil_pickle(evil, target)
    with pytest.raises(ModelError, match="refused.*pickled code.*safetensors"):
        load_state_dict(evil, "--vgg-weights")
    assert not target.exists()
    # The legacy (non-zip) pickle format too.
    legacy = tmp_path / "evil_legacy.pt"
    legacy.write_bytes(pickle.dumps(_Evil(str(target))))
    with pytest.raises(ModelError, match="refused"):
        load_state_dict(legacy)
    assert not target.exists()
    # Sanity: the payload is real — unpickling without the guard does create the file.
    pickle.loads(legacy.read_bytes()).close()
    assert target.exists()


def test_state_dict_round_trips_torch_and_safetensors(tmp_path):
    sd = {"a.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.ones(2, dtype=torch.float16)}
    pt = tmp_path / "w.pt"
    torch.save(sd, pt)
    got, digest = load_state_dict(pt)
    assert digest == file_digest(pt) and digest.startswith("sha256:")
    torch.testing.assert_close(got["a.weight"], sd["a.weight"])
    st = tmp_path / "w.safetensors"
    save_state_dict(sd, st)
    got2, _ = load_state_dict(st)
    assert set(got2) == set(sd) and got2["a.bias"].dtype == torch.float16
    # Checkpoint wrappers are unwrapped.
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(load_state_dict(tmp_path / "ckpt.pt")[0]) == set(sd)


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\x00\x01garbage bytes", "not a torch.save|refused"),
])
def test_bad_weight_files(tmp_path, content, match):
    p = tmp_path / "w.pt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load_state_dict(p)


def test_non_tensor_contents_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="not a state_dict"):
        load_state_dict(tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "int.pt")
    with pytest.raises(ModelError, match="not tensors"):
        load_state_dict(tmp_path / "int.pt")


def test_corrupt_safetensors_refused(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_state_dict(p)


def test_module_digest_tracks_weights():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    d = module_digest(a)
    assert d == module_digest(a)
    with torch.no_grad():
        a.weight[0, 0] += 1
    assert module_digest(a) != d
    assert os.sep not in d
