"""ONNX export of a feature module (the graph TensorRT engines are built from).

fp32 exports a float32 graph. fp16 exports a *strongly typed* float16 graph (weights, input
and activations in float16, output cast back to float32): TensorRT 11 dropped the FP16 builder
flag and takes precision from the graph's types, and TensorRT 10 builds the same graph with the
STRONGLY_TYPED network flag. The batch dimension is dynamic.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from models.errors import ModelError

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "features"


class _CastOut(nn.Module):
    """Run `inner` in `dtype` and return float32, so consumers never see a float16 output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).float()


def export_onnx(module: nn.Module, input_size: tuple[int, int], precision: str = "fp32",
                path: str | Path | None = None, opset: int = DEFAULT_OPSET, batch: int = 2) -> bytes:
    """Export `module` ((B, 3, H, W) -> (B, D)) to ONNX bytes (also written to `path` if given).

    Input `images` (B, 3, H, W) float32|float16, output `features` (B, D) float32, B dynamic.
    """
    if precision not in ("fp32", "fp16"):
        raise ModelError(f"ONNX export precision must be fp32 or fp16, got {precision!r}")
    import copy

    dtype = torch.float16 if precision == "fp16" else torch.float32
    m = _CastOut(copy.deepcopy(module)).eval().to(dtype=dtype)
    x = torch.rand(batch, 3, *input_size, dtype=dtype)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(   # f: a file-like object works at run time; the stub says path only
            m, (x,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],  # type: ignore[arg-type]
            opset_version=opset, dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
