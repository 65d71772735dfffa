"""A user-supplied ONNX detector (YOLOv5 [B, N, 85] or YOLOv8 [B, 84, N]) as an 80-d OD feature.

The file is untrusted, so before anything runs it is checked: parsed without
resolving external data, every external-data location must stay inside the model's folder,
the default-domain opset must be one we support, the graph must pass `onnx.checker`, it must
take one (B, 3, H, W) image input with fixed H, W and give a first output in a YOLO layout with
80 classes. The checked bytes (external data inlined) are what onnxruntime/TensorRT receive,
so neither resolves a path from the file itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.errors import ModelError
from models.vision.heads import LAYOUT_HEADS, NUM_CLASSES

MIN_OPSET = 11


@dataclass(frozen=True)
class DetectorSpec:
    """What a checked ONNX detector looks like."""

    path: str
    digest: str            # sha256 of the model bytes with external data inlined
    layout: str            # "yolov5" | "yolov8"
    input_name: str
    input_size: tuple[int, int]   # (H, W)
    output_name: str
    opset: int
    fp16_input: bool


def _dims(value_info) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _check_external_data(model, folder: Path, path: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    root = folder.resolve()
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (root / loc).resolve()
        if not loc or os.path.isabs(loc) or (root != target and root not in target.parents):
            raise ModelError(f"ONNX model {path}: tensor '{t.name}' refers to external data {loc!r} outside "
                             f"the model's folder {root}; keep external data files beside the model")
        if not target.is_file():
            raise ModelError(f"ONNX model {path}: external data file {loc!r} for '{t.name}' is missing")


def _layout_of(dims: list[int | str | None], path: Path) -> str:
    if len(dims) != 3:
        raise ModelError(f"ONNX model {path}: first output has shape {dims}; expected a YOLO layout "
                         f"[B, N, {5 + NUM_CLASSES}] (YOLOv5) or [B, {4 + NUM_CLASSES}, N] (YOLOv8)")
    if dims[2] == 5 + NUM_CLASSES:
        return "yolov5"
    if dims[1] == 4 + NUM_CLASSES:
        return "yolov8"
    raise ModelError(f"ONNX model {path}: first output has shape {dims}; expected [B, N, 85] (YOLOv5) or "
                     "[B, 84, N] (YOLOv8) for the 80 COCO classes")


def _concrete(dims: list[int | str | None]) -> bool:
    return len(dims) == 3 and all(isinstance(d, int) and d > 0 for d in dims[1:])


def _output_dims(model, data: bytes, input_name: str, idims: list, elem: int) -> list[int | str | None]:
    """The first output's dims: declared, else by shape inference, else by one probe run.

    Exporters often leave non-batch output dims symbolic (e.g. 'Transposeout_dim_1').
    """
    import onnx

    dims = _dims(model.graph.output[0])
    if _concrete(dims):
        return dims
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    try:
        inferred = _dims(onnx.shape_inference.infer_shapes(m, data_prop=True).graph.output[0])
        if _concrete(inferred):
            return inferred
    except Exception:  # noqa: BLE001 — fall through to the probe run
        pass
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = np.zeros((1, 3, int(idims[2]), int(idims[3])),
                     np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32)
        return list(sess.run([model.graph.output[0].name], {input_name: x})[0].shape)
    except Exception:  # noqa: BLE001
        return dims


def check_onnx_detector(path: str | Path) -> tuple[DetectorSpec, bytes]:
    """Validate an ONNX detector file; returns its spec and the checked model bytes."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ONNX model {p} does not exist; pass an exported YOLOv5/YOLOv8 .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 — protobuf raises DecodeError and others
        raise ModelError(f"ONNX model {p} could not be parsed: {type(e).__name__}: {str(e)[:120]}") from None
    _check_external_data(model, p.parent, p)
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"ONNX model {p}: external data could not be read: {str(e)[:120]}") from None

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise ModelError(f"ONNX model {p}: opset {opset} not supported; export with opset "
                         f"{MIN_OPSET}..{max_opset} (e.g. torch.onnx.export(..., opset_version=17))")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"ONNX model {p} fails onnx.checker: {str(e).splitlines()[0][:160]}") from None

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"ONNX model {p} has {len(inputs)} inputs {[i.name for i in inputs]}; "
                         "expected one image input [B, 3, H, W]")
    idims = _dims(inputs[0])
    h, w = idims[2:4] if len(idims) == 4 else (None, None)
    if len(idims) != 4 or idims[1] != 3 or not (isinstance(h, int) and isinstance(w, int) and min(h, w) >= 32):
        raise ModelError(f"ONNX model {p}: input '{inputs[0].name}' has shape {idims}; expected [B, 3, H, W] "
                         "with fixed H, W >= 32 (re-export with a fixed image size)")
    elem = inputs[0].type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        raise ModelError(f"ONNX model {p}: input type {onnx.TensorProto.DataType.Name(elem)}; expected float/float16")
    if not model.graph.output:
        raise ModelError(f"ONNX model {p} has no outputs")
    out = model.graph.output[0]
    data = model.SerializeToString()
    odims = _output_dims(model, data, inputs[0].name, idims, elem)
    layout = _layout_of(odims, p)
    spec = DetectorSpec(
        path=str(p), digest="sha256:" + hashlib.sha256(data).hexdigest(), layout=layout,
        input_name=inputs[0].name, input_size=(h, w), output_name=out.name,
        opset=int(opset), fp16_input=elem == onnx.TensorProto.FLOAT16)
    return spec, data


class OnnxDetectorFeatures:
    """A checked ONNX detector run by onnxruntime: (B, 3, H, W) float in [0, 1] -> (B, 80) float32."""

    feature_dim = NUM_CLASSES

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        self.spec, self._bytes = check_onnx_detector(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("--yolo-onnx needs onnxruntime: pip install '.[onnx]'") from None
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError("onnxruntime has no CUDA provider here; pip install onnxruntime-gpu "
                                 "or use --backend tensorrt / cpu for --yolo-onnx")
            providers.insert(0, "CUDAExecutionProvider")
        so = ort.SessionOptions()
        if threads > 0:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(self._bytes, sess_options=so, providers=providers)
        self._head = LAYOUT_HEADS[self.spec.layout]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    def onnx_bytes(self) -> bytes:
        """The checked model (for building a TensorRT engine from exactly what was validated)."""
        return self._bytes

    def raw(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 in [0, 1] -> the detector's first output."""
        x = x.astype(np.float16 if self.spec.fp16_input else np.float32, copy=False)
        return self.session.run([self.spec.output_name], {self.spec.input_name: x})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw(np.ascontiguousarray(x.detach().float().cpu().numpy()))
        return self._head(torch.from_numpy(raw))
