"""Inference backends: one registry, one contract.

A backend turns a feature module ((B, 3, H, W) float -> (B, D)) into a `Runner`: a callable
taking a float32 batch (on CPU or on the backend's device) and returning (B, D) float32 on CPU.

    cpu       torch on CPU, fp32, batch norm folded, channels_last, inference_mode
    cuda      torch on one GPU, fp16 | bf16 | fp32, channels_last, torch.compile (compile_mode
              "max-autotune" tunes longer; "reduce-overhead" adds CUDA graphs)
    tensorrt  an engine built from the ONNX export of the same module (tensorrt_backend.py)
    auto      the first available of tensorrt > cuda > cpu

`get_backend(name)` raises ModelError listing the valid names for an unknown one, and the
install hint for one that is not available here. `select_backend("auto", probes=...)` takes
injectable availability probes so the choice can be tested on any machine.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import ClassVar, Protocol

import torch
from torch import nn

from models.errors import ModelError

AUTO_ORDER = ("tensorrt", "cuda", "cpu")
# Contract-test tolerance per precision, relative to the output's scale: |y - ref| <= rtol * max|ref|.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


class Runner(Protocol):
    """A prepared model: (B, 3, H, W) float32 -> (B, D) float32 on CPU."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class Backend:
    """Base class: subclasses set the class attributes and implement `prepare`."""

    name: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    install_hint: ClassVar[str] = ""

    @classmethod
    def available(cls) -> bool:
        """Whether this backend can run on this machine (cheap probe, no engine builds)."""
        return True

    @classmethod
    def check_precision(cls, precision: str | None) -> str:
        """The precision to run at: `precision`, or the backend's default (its first) when empty."""
        p = precision or cls.precisions[0]
        if p not in cls.precisions:
            raise ModelError(f"backend '{cls.name}' supports precision {list(cls.precisions)}, got {p!r}")
        return p

    def prepare(self, module: nn.Module, input_size: tuple[int, int], precision: str | None = None,
                max_batch: int = 64, model_digest: str = "") -> Runner:
        raise NotImplementedError


_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to the registry under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def list_backends() -> list[str]:
    """Registered backend names (not all need be available here), plus 'auto'."""
    _ensure_registered()
    return [*sorted(_REGISTRY), "auto"]


def available_backends() -> list[str]:
    """Registered backends whose probe passes on this machine."""
    _ensure_registered()
    return [n for n in sorted(_REGISTRY) if _REGISTRY[n].available()]


def select_backend(name: str = "auto", probes: Mapping[str, Callable[[], bool]] | None = None) -> str:
    """Resolve a backend name: 'auto' -> first available of tensorrt > cuda > cpu.

    `probes` maps a backend name to an availability check; by default each backend's own
    `available()`. An explicit name that is not available raises ModelError with the fix.
    """
    _ensure_registered()
    probe = {n: c.available for n, c in _REGISTRY.items()}
    probe.update(probes or {})
    if name == "auto":
        for n in AUTO_ORDER:
            if n in probe and probe[n]():
                return n
        raise ModelError("no inference backend is available (not even cpu)")
    if name not in _REGISTRY:
        raise ModelError(f"unknown backend {name!r}; valid: {list_backends()}")
    if not probe[name]():
        hint = _REGISTRY[name].install_hint
        raise ModelError(f"backend {name!r} is not available on this machine{'; ' + hint if hint else ''}; "
                         f"available: {[n for n in sorted(_REGISTRY) if probe[n]()]}")
    return name


def get_backend(name: str = "auto", **options) -> Backend:
    """A backend instance by name ('auto' resolved); options go to its constructor."""
    return _REGISTRY[select_backend(name)](**options)


def backend_class(name: str) -> type[Backend]:
    """The registered class for `name` (no availability check: for metadata on a CPU driver)."""
    _ensure_registered()
    if name not in _REGISTRY:
        raise ModelError(f"unknown backend {name!r}; valid: {list_backends()}")
    return _REGISTRY[name]


# ------------------------------------------------------------------ helpers


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Copy of `module` (eval) with every Conv2d -> BatchNorm2d pair in a Sequential fused."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(module).eval()
    for seq in [s for s in m.modules() if isinstance(s, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return m


class _TorchRunner:
    """Runs a torch module under inference_mode on one device and dtype."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.module, self.device, self.dtype = module, device, dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, dtype=self.dtype, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)   # (B, 3, H, W), NHWC in memory
            if self.device.type == "cuda":
                with torch.autocast("cuda", enabled=False):
                    y = self.module(x)
            else:
                y = self.module(x)
            return y.float().cpu()


# ------------------------------------------------------------------ backends


@register_backend
class CpuBackend(Backend):
    """torch on CPU (fp32): the reference path and the laptop path."""

    name = "cpu"
    device = "cpu"
    precisions = ("fp32", "bf16")

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def prepare(self, module: nn.Module, input_size: tuple[int, int], precision: str | None = None,
                max_batch: int = 64, model_digest: str = "") -> Runner:
        p = self.check_precision(precision)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        dtype = torch.bfloat16 if p == "bf16" else torch.float32
        m = fold_batchnorm(module).to(dtype=dtype).to(memory_format=torch.channels_last)
        return _TorchRunner(m, torch.device("cpu"), dtype)


@register_backend
class CudaBackend(Backend):
    """torch on one CUDA GPU: fp16 (default) / bf16 / fp32, channels_last, torch.compile."""

    name = "cuda"
    device = "cuda"
    precisions = ("fp16", "bf16", "fp32")
    install_hint = "needs a CUDA GPU and a CUDA build of torch"

    def __init__(self, compile: bool = True, compile_mode: str = "default", device: str = "cuda") -> None:
        self.compile, self.compile_mode, self.device_name = compile, compile_mode, device

    @classmethod
    def available(cls) -> bool:
        return torch.cuda.is_available()

    def prepare(self, module: nn.Module, input_size: tuple[int, int], precision: str | None = None,
                max_batch: int = 64, model_digest: str = "") -> Runner:
        p = self.check_precision(precision)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[p]
        dev = torch.device(self.device_name)
        torch.backends.cudnn.benchmark = True            # fixed input sizes: let cuDNN pick kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        m = fold_batchnorm(module).to(dev, dtype=dtype).to(memory_format=torch.channels_last)
        if self.compile:
            # dynamic=False: one graph per batch size (the job's batch size, plus a ragged tail).
            m = torch.compile(m, mode=self.compile_mode, dynamic=False)  # type: ignore[assignment]  # an nn.Module at run time
        return _TorchRunner(m, dev, dtype)


def _ensure_registered() -> None:
    # The TensorRT backend registers itself on import; importing it never imports tensorrt.
    if "tensorrt" not in _REGISTRY:
        from models.vision import tensorrt_backend  # noqa: F401
