"""VGG16-GAP, the built-in YOLOv2, the OD heads and preprocessing (tiny inputs, real modules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.vision import heads, preprocess
from models.vision.vgg import VGG16GAP, load_vgg16_state_dict
from models.vision.yolo import YOLOv2Features, load_yolov2_state_dict


@pytest.fixture(scope="module")
def vgg() -> VGG16GAP:
    torch.manual_seed(0)
    return VGG16GAP().eval()


def test_vgg_loads_torchvision_state_dict_and_matches_its_conv_trunk(vgg):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    # torchvision's own VGG16 trunk (its classifier is 120M params: skipped to stay fast; a
    # checkpoint's classifier.* keys are ignored, as below).
    tv_features = make_layers(cfgs["D"]).eval()
    state = {f"features.{k}": v for k, v in tv_features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    load_vgg16_state_dict(vgg, state, "tv")
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref = tv_features(x).mean(dim=(2, 3))                # (2, 512)
        got = vgg(x)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, ref)


def test_vgg_refuses_other_state_dicts(vgg):
    from torchvision.models.vgg import cfgs, make_layers

    vgg11 = {f"features.{k}": v for k, v in make_layers(cfgs["A"]).state_dict().items()}
    with pytest.raises(ModelError, match="not a VGG16"):
        load_vgg16_state_dict(vgg, vgg11, "vgg11.pt")
    with pytest.raises(ModelError, match="no 'features"):
        load_vgg16_state_dict(vgg, {"conv.weight": torch.zeros(1)}, "x.pt")
    bad = {k: v for k, v in vgg.state_dict().items()}
    bad["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ModelError, match="shape"):
        load_vgg16_state_dict(vgg, bad, "x.pt")


def test_yolov2_shapes_and_state_dict_round_trip():
    torch.manual_seed(0)
    m = YOLOv2Features().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        raw = m.yolo(x)
        y = m(x)
    assert raw.shape == (2, 5 * 85, 2, 2)      # stride 32; at 448 this is 14x14
    assert y.shape == (2, 80) and bool(((y > 0) & (y < 1)).all())
    torch.manual_seed(5)
    m2 = YOLOv2Features().eval()
    load_yolov2_state_dict(m2, m.yolo.state_dict(), "bare.pt")     # bare YOLOv2 keys accepted
    with torch.inference_mode():
        torch.testing.assert_close(m2(x), y)
    with pytest.raises(ModelError, match="--yolo-onnx"):
        load_yolov2_state_dict(m2, {"model.0.conv.weight": torch.zeros(1)}, "v5.pt")


def _yolov2_reference(raw: torch.Tensor) -> torch.Tensor:
    """Slow, obvious loop: for every box, objectness x softmax class probs; max per class."""
    b, _, h, w = raw.shape
    out = torch.zeros(b, 80)
    for n in range(b):
        for a in range(5):
            for i in range(h):
                for j in range(w):
                    v = raw[n, a * 85:(a + 1) * 85, i, j]
                    p = torch.sigmoid(v[4]) * torch.softmax(v[5:], 0)
                    out[n] = torch.maximum(out[n], p)
    return out


def test_yolov2_head_matches_reference_and_finds_planted_class():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 425, 3, 3, generator=g)
    # Plant: image 1, anchor 2, cell (1, 2): confident box of class 17.
    raw[1, 2 * 85 + 4, 1, 2] = 8.0
    raw[1, 2 * 85 + 5 + 17, 1, 2] = 12.0
    got = heads.yolov2_max_probs(raw)
    torch.testing.assert_close(got, _yolov2_reference(raw))
    assert int(got[1].argmax()) == 17 and got[1, 17] > 0.99


def test_yolov5_and_yolov8_heads_planted():
    g = torch.Generator().manual_seed(1)
    v5 = torch.rand(2, 30, 85, generator=g) * 0.5
    v5[0, 7, 4], v5[0, 7, 5 + 3] = 1.0, 0.95           # obj x cls = 0.95 for class 3
    got5 = heads.yolov5_max_probs(v5)
    ref5 = torch.stack([(v5[b, :, 4:5] * v5[b, :, 5:]).max(0).values for b in range(2)])
    torch.testing.assert_close(got5, ref5)
    assert int(got5[0].argmax()) == 3
    v8 = torch.rand(2, 84, 30, generator=g) * 0.5
    v8[1, 4 + 42, 11] = 0.97
    got8 = heads.yolov8_max_probs(v8)
    assert got8.shape == (2, 80) and int(got8[1].argmax()) == 42
    torch.testing.assert_close(got8, v8[:, 4:, :].max(2).values)


def test_letterbox_geometry_and_padding():
    img = torch.full((50, 100, 3), 200, dtype=torch.uint8)    # wide image
    out = preprocess.letterbox(img, 64)
    assert out.shape == (64, 64, 3)
    assert int(out[0, 0, 0]) == 114 and int(out[-1, -1, 0]) == 114     # pads top/bottom
    assert int(out[32, 0, 0]) == 200 and int(out[32, 63, 0]) == 200    # full width used
    rows = (out[:, 32, 0] == 200).nonzero().flatten()
    assert rows.min() == 16 and rows.max() == 47                        # 32 rows, centered
    assert preprocess.letterbox(img, (32, 96)).shape == (32, 96, 3)


def test_vgg_crop_matches_torchvision_transforms_within_rounding():
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (90, 130, 3), dtype=torch.uint8, generator=g)
    ours = preprocess.vgg_crop(img, 64)                                  # short side 73, crop 64
    tv = v2.Compose([v2.Resize(73, antialias=True), v2.CenterCrop(64)])(img.permute(2, 0, 1))
    assert ours.shape == (64, 64, 3)
    diff = (ours.permute(2, 0, 1).int() - tv.int()).abs()
    assert int(diff.max()) <= 1


def test_normalize_vgg_imagenet_stats():
    x = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    y = preprocess.normalize_vgg(x)
    assert y.shape == (1, 3, 4, 4)
    expect = (1 - np.array(preprocess.IMAGENET_MEAN)) / np.array(preprocess.IMAGENET_STD)
    np.testing.assert_allclose(y[0, :, 0, 0].numpy(), expect, rtol=1e-6)
    assert preprocess.normalize_yolo(x).max() == 1.0
