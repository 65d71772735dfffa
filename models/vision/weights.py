"""Loading weight files without running code from them, and their digests.

Accepted: `.safetensors` files, and `torch.save` files that `torch.load(weights_only=True)`
reads (tensors and plain containers only). A pickle that needs any other global — a model
object, a class with `__reduce__` — is refused before anything from it runs.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from models.errors import ModelError

_SAFETENSORS_SUFFIXES = (".safetensors",)


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """`sha256:<hex>` of a file's bytes (recorded in the store's producer metadata)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{algo}:{h.hexdigest()}"


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS_SUFFIXES:
        return True
    # A safetensors file starts with an 8-byte little-endian header length then '{'.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_state_dict(path: str | Path, what: str = "weights") -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict on CPU, digest) of a safetensors or weights-only torch file.

    Raises ModelError naming the file and the fix for a missing file, a file that would need
    pickled code to load, or one that holds no mapping of name -> tensor.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what} file {p} does not exist; pass an existing state_dict file "
                         "(.pt/.pth saved with torch.save(model.state_dict()) or .safetensors)")
    if p.stat().st_size == 0:
        raise ModelError(f"{what} file {p} is empty")
    digest = file_digest(p)
    state: object = _load_safetensors(p, what) if _is_safetensors(p) else _load_weights_only(p, what)
    return _as_state_dict(state, p, what), digest


def _load_safetensors(p: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{what} file {p} is not a valid safetensors file: {str(e).splitlines()[0]}") from None


def _load_weights_only(p: Path, what: str) -> object:
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        # torch's weights-only unpickler refuses any global outside its allowlist *before*
        # calling it, so nothing from the file has run.
        raise ModelError(
            f"{what} file {p} refused: it is not a plain tensor state_dict and loading it would run "
            f"pickled code ({_why(e)}); re-save it with torch.save(model.state_dict(), ...) or "
            "as .safetensors") from None
    except (EOFError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{what} file {p} is not a torch.save or safetensors file ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _why(e: BaseException) -> str:
    """The informative line of torch's weights-only refusal (e.g. 'Unsupported global: ...')."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    for line in text.splitlines():
        if "Unsupported" in line or "WeightsUnpickler error" in line:
            return line.split("WeightsUnpickler error:")[-1].split(" was not an allowed")[0].strip()[:160]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]


def _as_state_dict(obj: object, p: Path, what: str) -> dict[str, torch.Tensor]:
    # Training checkpoints often wrap the weights: {"state_dict": {...}} or {"model": {...}}.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"{what} file {p} holds {type(obj).__name__}, not a state_dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{what} file {p}: entries {bad[:3]} are not tensors; expected a state_dict")
    return {k: v for k, v in obj.items()}


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> str:
    """Write a state_dict as safetensors (no pickle to read back); returns its digest."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    return file_digest(path)


def module_digest(module: torch.nn.Module) -> str:
    """`sha256:<hex>` of a module's class and state_dict (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"sha256:{h.hexdigest()}"
