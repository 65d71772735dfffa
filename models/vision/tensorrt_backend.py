"""TensorRT backend: an engine built from the ONNX export of the same module, cached on disk.

`tensorrt` is imported only inside this module's functions (`pip install '.[tensorrt]'`);
importing this file, listing backends and computing cache keys never need it, nor a GPU.

API: TensorRT 10 (`build_serialized_network`, `set_memory_pool_limit`, named I/O tensors with
`set_input_shape` / `set_tensor_address` / `execute_async_v3`). Precision (`plan_precision`):
TensorRT 11 removed the FP16 builder flag, and TensorRT 10 already builds *strongly typed*
networks, so wherever `NetworkDefinitionCreationFlag.STRONGLY_TYPED` exists the precision comes
from the ONNX graph's types (fp16 -> the fp16 export) and no precision flag is set; only an
older TensorRT without that flag gets the fp32 graph plus `BuilderFlag.FP16`.

Engines are cached as `<cache>/<key>.engine` (+ `.json`), the key a hash of model digest, GPU
name and compute capability, TensorRT version, precision, batch profile and input shape: any of
them changing means a rebuild, nothing else does. Writes are atomic (temp file + rename).

Not verified on a GPU in this repository's CI: TensorRT is not installable on its machines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from models.errors import ModelError
from models.vision.backends import Backend, Runner, register_backend

INSTALL_HINT = "install TensorRT with: pip install '.[tensorrt]' (needs an NVIDIA GPU)"
DEFAULT_CACHE = Path(os.environ.get("TAGREC_ENGINE_CACHE", Path.home() / ".cache" / "tagrec" / "tensorrt"))


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimization profile for the batch dimension."""

    min: int
    opt: int
    max: int

    @classmethod
    def for_batch(cls, max_batch: int) -> BatchProfile:
        return cls(1, max_batch, max_batch)


def engine_cache_key(model_digest: str, gpu: str, trt_version: str, precision: str,
                     profile: BatchProfile, input_shape: tuple[int, ...]) -> str:
    """Stable hex key of everything an engine depends on."""
    parts = {"model": model_digest, "gpu": gpu, "tensorrt": trt_version, "precision": precision,
             "profile": asdict(profile), "input": list(input_shape)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def engine_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.engine"


def gpu_identity() -> str:
    """GPU name and compute capability (engines are not portable across either)."""
    if not torch.cuda.is_available():
        return "no-gpu"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} sm_{major}{minor}"


def plan_precision(trt_version: str, has_strongly_typed: bool, precision: str) -> dict[str, object]:
    """How to get `precision` out of this TensorRT: which ONNX graph, which flags.

    >>> plan_precision("11.0.0", True, "fp16")
    {'strongly_typed': True, 'onnx_precision': 'fp16', 'fp16_flag': False}
    """
    if precision not in ("fp16", "fp32"):
        raise ModelError(f"tensorrt precision must be fp16 or fp32, got {precision!r}")
    major = int(trt_version.split(".")[0] or 0)
    if has_strongly_typed:
        return {"strongly_typed": True, "onnx_precision": precision, "fp16_flag": False}
    if major >= 11:
        raise ModelError(f"TensorRT {trt_version} without STRONGLY_TYPED networks is not supported")
    return {"strongly_typed": False, "onnx_precision": "fp32", "fp16_flag": precision == "fp16"}


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ModelError(f"the tensorrt backend needs the tensorrt package; {INSTALL_HINT}") from None
    return trt


def build_engine(onnx_bytes: bytes, input_name: str, input_shape: tuple[int, int, int], precision: str,
                 profile: BatchProfile, workspace_bytes: int = 4 << 30) -> bytes:
    """Parse ONNX and build a serialized engine (TensorRT 10/11 API)."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag_enum = trt.NetworkDefinitionCreationFlag
    plan = plan_precision(trt.__version__, hasattr(flag_enum, "STRONGLY_TYPED"), precision)
    flags = 0
    if plan["strongly_typed"]:
        flags |= 1 << int(flag_enum.STRONGLY_TYPED)
    elif hasattr(flag_enum, "EXPLICIT_BATCH"):        # TensorRT 8/9; implicit in 10+
        flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse the ONNX model: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if plan["fp16_flag"]:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, (profile.min, *input_shape), (profile.opt, *input_shape), (profile.max, *input_shape))
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(serialized)


class _TrtRunner:
    """Runs an engine on torch CUDA tensors; returns the first output as float32 on CPU."""

    def __init__(self, engine_bytes: bytes, max_batch: int) -> None:
        trt = _import_trt()
        self.trt, self.max_batch = trt, max_batch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelError("TensorRT could not deserialize the cached engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input))
        self.out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output))
        self.stream = torch.cuda.Stream()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._run(x[i:i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
        return torch.cat(outs).float().cpu()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cuda", dtype=self.in_dtype, non_blocking=True).contiguous()   # (b, 3, H, W) NCHW
        self.context.set_input_shape(self.input, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype, device="cuda")
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())    # x was written on the current stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ModelError("TensorRT execution failed")
        self.stream.synchronize()
        return y


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise ModelError(f"TensorRT tensor type {dt} not supported here")
    return table[dt]


@register_backend
class TensorRTBackend(Backend):
    """Engines from the ONNX export (fp16 default), cached on disk by `engine_cache_key`."""

    name = "tensorrt"
    device = "cuda"
    precisions = ("fp16", "fp32")
    install_hint = INSTALL_HINT

    def __init__(self, cache_dir: str | Path | None = None, workspace_gb: float = 4.0) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        self.workspace = int(workspace_gb * (1 << 30))

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()

    def prepare(self, module: nn.Module, input_size: tuple[int, int], precision: str | None = None,
                max_batch: int = 64, model_digest: str = "") -> Runner:
        from models.vision.export import INPUT_NAME, export_onnx
        from models.vision.weights import module_digest

        p = self.check_precision(precision)
        digest = model_digest or module_digest(module)

        def onnx_bytes(onnx_precision: str) -> bytes:  # exported only on a cache miss
            return export_onnx(module, input_size, onnx_precision)

        return self.prepare_onnx(onnx_bytes, digest, INPUT_NAME, input_size, p, max_batch)

    def prepare_onnx(self, onnx_bytes: Callable[[str], bytes] | bytes, model_digest: str, input_name: str,
                     input_size: tuple[int, int], precision: str | None = None, max_batch: int = 64) -> Runner:
        """Engine for an ONNX graph (`onnx_bytes(precision)` is called only on a cache miss)."""
        trt = _import_trt()
        p = self.check_precision(precision)
        profile = BatchProfile.for_batch(max_batch)
        shape = (3, *input_size)
        key = engine_cache_key(model_digest, gpu_identity(), trt.__version__, p, profile, shape)
        path = engine_path(self.cache_dir, key)
        if path.is_file():
            return _TrtRunner(path.read_bytes(), max_batch)
        plan = plan_precision(trt.__version__, hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"), p)
        graph = onnx_bytes if isinstance(onnx_bytes, bytes) else onnx_bytes(str(plan["onnx_precision"]))
        engine = build_engine(graph, input_name, shape, p, profile, self.workspace)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(engine)
        tmp.replace(path)
        meta = {"model": model_digest, "gpu": gpu_identity(), "tensorrt": trt.__version__, "precision": p,
                "profile": asdict(profile), "input": list(shape)}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        return _TrtRunner(engine, max_batch)
