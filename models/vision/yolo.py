"""Built-in YOLOv2 detector on the Darknet-19 backbone (Redmon & Farhadi 2017), 448x448 input.

`YOLOv2Features` = detector + the OD head: (B, 3, S, S) in [0, 1] -> (B, 80), S a multiple of
32 (448 as the PITF-IC-OD paper uses -> a 14x14 grid, 5 anchors x 85 channels).
Weights: a state_dict of this module (`yolo.*` keys). Darknet `.weights` files must be converted
first; note the passthrough layer here is `pixel_unshuffle` (space-to-depth), whose channel order
differs from Darknet's `reorg`, so a converter permutes the first conv after it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.errors import ModelError
from models.vision.heads import NUM_CLASSES, yolov2_max_probs

FEATURE_DIM = NUM_CLASSES
INPUT_SIZE = 448
NUM_ANCHORS = 5


def _conv(c_in: int, c_out: int, k: int) -> nn.Sequential:
    """Darknet conv: no bias, batch norm, leaky ReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


def _stage(spec: list[tuple[int, int]], c_in: int) -> tuple[nn.Sequential, int]:
    layers = []
    for c_out, k in spec:
        layers.append(_conv(c_in, c_out, k))
        c_in = c_out
    return nn.Sequential(*layers), c_in


class Darknet19(nn.Module):
    """Darknet-19 trunk: returns the stride-16 (512 ch) and stride-32 (1024 ch) maps."""

    def __init__(self) -> None:
        super().__init__()
        pool = nn.MaxPool2d(2, 2)
        s1, c = _stage([(32, 3)], 3)
        s2, c = _stage([(64, 3)], c)
        s3, c = _stage([(128, 3), (64, 1), (128, 3)], c)
        s4, c = _stage([(256, 3), (128, 1), (256, 3)], c)
        s5, c = _stage([(512, 3), (256, 1), (512, 3), (256, 1), (512, 3)], c)
        self.to16 = nn.Sequential(s1, pool, s2, pool, s3, pool, s4, pool, s5)   # -> (B, 512, S/16, S/16)
        s6, _ = _stage([(1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)], 512)
        self.to32 = nn.Sequential(pool, s6)                                     # -> (B, 1024, S/32, S/32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f16 = self.to16(x)
        return f16, self.to32(f16)


class YOLOv2(nn.Module):
    """YOLOv2 (VOC/COCO cfg): Darknet-19 + 2 convs + passthrough + 1 conv + 1x1 prediction."""

    def __init__(self, num_classes: int = NUM_CLASSES, num_anchors: int = NUM_ANCHORS) -> None:
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.backbone = Darknet19()
        self.head1, _ = _stage([(1024, 3), (1024, 3)], 1024)
        self.passthrough = _conv(512, 64, 1)               # then space-to-depth: 64 -> 256 ch
        self.head2 = _conv(1024 + 256, 1024, 3)
        self.pred = nn.Conv2d(1024, num_anchors * (5 + num_classes), 1)  # linear, with bias
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for leaky ReLU keeps activations O(1) through 23 layers, so seeded random
        # weights still give image-dependent outputs (torch's default init fades them out).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f16, f32 = self.backbone(x)
        p = nn.functional.pixel_unshuffle(self.passthrough(f16), 2)        # (B, 256, S/32, S/32)
        y = self.head2(torch.cat([p, self.head1(f32)], dim=1))             # (B, 1024, S/32, S/32)
        return self.pred(y)                                                # (B, A*(5+C), S/32, S/32)


class YOLOv2Features(nn.Module):
    """YOLOv2 + max head: (B, 3, S, S) in [0, 1] -> (B, 80) per-class max box probability."""

    feature_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.yolo = YOLOv2()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return yolov2_max_probs(self.yolo(x), self.yolo.num_anchors, self.yolo.num_classes)


def load_yolov2_state_dict(model: YOLOv2Features, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a state_dict of `YOLOv2Features` (keys `yolo.*`; a bare `YOLOv2` one is accepted too)."""
    if state and not any(k.startswith("yolo.") for k in state):
        state = {"yolo." + k: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"{source}: not a state_dict of the built-in YOLOv2 (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); for another detector export it to ONNX and "
                         "pass --yolo-onnx")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(f"{source}: '{k}' has shape {tuple(v.shape)}, the built-in YOLOv2 expects "
                             f"{tuple(own[k].shape)}")
    model.load_state_dict(dict(state), strict=True)
