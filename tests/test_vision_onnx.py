"""ONNX detectors: checked before use (opset, shapes, external data), then run as an 80-d feature."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.vision.heads import yolov5_max_probs, yolov8_max_probs

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


class TinyDetector(torch.nn.Module):
    """A stride-8 conv 'detector' with a YOLOv5 ([B, N, 85]) or YOLOv8 ([B, 84, N]) output."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout
        self.conv = torch.nn.Conv2d(3, 85 if layout == "yolov5" else 84, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.conv(x)).flatten(2)            # (B, C, N)
        return y.transpose(1, 2) if self.layout == "yolov5" else y


def export(module: torch.nn.Module, path, size=(64, 64), opset: int = 17, dynamic_hw: bool = False) -> None:
    axes = {"images": {0: "b", 2: "h", 3: "w"} if dynamic_hw else {0: "b"}, "out": {0: "b"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, 3, *size),), buf, input_names=["images"],
                          output_names=["out"], opset_version=opset, dynamo=False, dynamic_axes=axes)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("layout,head", [("yolov5", yolov5_max_probs), ("yolov8", yolov8_max_probs)])
def test_detector_layouts_match_torch(tmp_path, layout, head):
    from models.vision.onnx_detector import OnnxDetectorFeatures

    torch.manual_seed(0)
    m = TinyDetector(layout)
    export(m, tmp_path / "det.onnx", size=(64, 96))
    det = OnnxDetectorFeatures(tmp_path / "det.onnx")
    assert det.spec.layout == layout and det.input_size == (64, 96) and det.spec.digest.startswith("sha256:")
    x = torch.rand(3, 3, 64, 96)
    with torch.inference_mode():
        ref = head(m(x))
    got = det(x)
    assert got.shape == (3, 80)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_low_opset_refused(tmp_path):
    from models.vision.onnx_detector import check_onnx_detector

    export(TinyDetector("yolov5"), tmp_path / "d.onnx")
    model = onnx.load(str(tmp_path / "d.onnx"))
    model.opset_import[0].version = 9
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ModelError, match="opset 9 not supported"):
        check_onnx_detector(tmp_path / "old.onnx")


def test_dynamic_image_size_refused(tmp_path):
    from models.vision.onnx_detector import check_onnx_detector

    export(TinyDetector("yolov8"), tmp_path / "d.onnx", dynamic_hw=True)
    with pytest.raises(ModelError, match="fixed H, W"):
        check_onnx_detector(tmp_path / "d.onnx")


def test_non_yolo_output_refused(tmp_path):
    from models.vision.onnx_detector import check_onnx_detector

    class Classifier(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))          # (B, 3): not a YOLO layout

    export(Classifier(), tmp_path / "c.onnx")
    with pytest.raises(ModelError, match=r"\[B, N, 85\]"):
        check_onnx_detector(tmp_path / "c.onnx")


def test_not_onnx_and_missing_refused(tmp_path):
    from models.vision.onnx_detector import check_onnx_detector

    (tmp_path / "x.onnx").write_bytes(b"\xff\xfe definitely not protobuf" * 10)
    with pytest.raises(ModelError, match="could not be parsed|fails onnx.checker|inputs"):
        check_onnx_detector(tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        check_onnx_detector(tmp_path / "nope.onnx")


def _with_external_weights(tmp_path):
    sub = tmp_path / "model"
    sub.mkdir()
    export(TinyDetector("yolov5"), tmp_path / "d.onnx")
    model = onnx.load(str(tmp_path / "d.onnx"))
    onnx.save_model(model, str(sub / "d.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return sub


def test_external_data_inside_folder_accepted(tmp_path):
    from models.vision.onnx_detector import OnnxDetectorFeatures

    sub = _with_external_weights(tmp_path)
    det = OnnxDetectorFeatures(sub / "d.onnx")
    assert det(torch.rand(1, 3, 64, 64)).shape == (1, 80)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "a/../../secret.bin"])
def test_external_data_outside_folder_refused(tmp_path, location):
    from models.vision.onnx_detector import check_onnx_detector

    sub = _with_external_weights(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 100_000)
    model = onnx.load(str(sub / "d.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    (sub / "evil.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="outside the model's folder"):
        check_onnx_detector(sub / "evil.onnx")


def test_fp16_detector_input(tmp_path):
    from models.vision.onnx_detector import OnnxDetectorFeatures

    torch.manual_seed(1)
    m = TinyDetector("yolov8")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m.half(), (torch.rand(1, 3, 64, 64, dtype=torch.float16),), buf, input_names=["images"],
                          output_names=["out"], opset_version=17, dynamo=False)
    (tmp_path / "h.onnx").write_bytes(buf.getvalue())
    det = OnnxDetectorFeatures(tmp_path / "h.onnx")
    assert det.spec.fp16_input
    got = det(torch.rand(1, 3, 64, 64))
    assert got.dtype == torch.float32 and np.isfinite(got.numpy()).all()


def test_extractor_with_onnx_detector_uses_its_input_size(tmp_path):
    from models.vision.extractor import ExtractorConfig, ImageFeatureExtractor, preprocess_image

    torch.manual_seed(2)
    m = TinyDetector("yolov5")
    export(m, tmp_path / "det.onnx", size=(64, 96))
    x = ImageFeatureExtractor(ExtractorConfig(yolo_onnx=str(tmp_path / "det.onnx"), random_weights=True,
                                              backend="cpu", vgg_size=32, max_batch=2))
    assert x.yolo_size == (64, 96)
    p = x.producers()["yolo"]
    assert p["model"].startswith("onnx-yolov5") and p["weights"].startswith("sha256:") and p["input"] == "64x96"
    img = torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    v, y = preprocess_image(img, 32, x.yolo_size)
    ic, od = x(v[None], y[None])
    with torch.inference_mode():
        from models.vision.preprocess import normalize_yolo

        ref = yolov5_max_probs(m(normalize_yolo(y[None])))
    assert ic.shape == (1, 512)
    np.testing.assert_allclose(od, ref.numpy(), rtol=1e-5, atol=1e-6)
