"""Preprocessing shared by the CPU and GPU paths: one decoded image -> both models' inputs.

Everything here works on uint8 tensors (H, W, 3) on any device, so the CPU decode tasks and the
GPU actor produce the same inputs; the float conversion and normalisation happen in the model
actor (`normalize_*`), which keeps the bytes sent through Ray's object store small.

- VGG16 (torchvision's IMAGENET1K weights): resize the short side to 256 (bilinear, antialias),
  center-crop 224, scale to [0, 1], normalise with ImageNet mean/std.
- YOLO: letterbox to S x S (448 for the built-in YOLOv2, the ONNX input size otherwise): resize
  the long side to S keeping the aspect ratio, pad evenly with gray 114, scale to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LETTERBOX_FILL = 114


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear with antialias (as torchvision/PIL resize)."""
    x = img.permute(2, 0, 1).unsqueeze(0).float()                       # (1, 3, H, W)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)


def vgg_crop(img: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: short side to size*256/224, center crop."""
    h, w = int(img.shape[0]), int(img.shape[1])
    short = round(size * 256 / 224)
    if h <= w:
        nh, nw = short, max(size, round(w * short / h))
    else:
        nh, nw = max(size, round(h * short / w)), short
    r = _resize(img, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return r[top:top + size, left:left + size].contiguous()


def letterbox(img: torch.Tensor, size: int | tuple[int, int] = 448, fill: int = LETTERBOX_FILL) -> torch.Tensor:
    """(H, W, 3) uint8 -> (SH, SW, 3) uint8: scaled to fit keeping aspect, centered, gray padding."""
    sh, sw = (size, size) if isinstance(size, int) else size
    h, w = int(img.shape[0]), int(img.shape[1])
    scale = min(sh / h, sw / w)
    nh, nw = min(sh, max(1, round(h * scale))), min(sw, max(1, round(w * scale)))
    out = torch.full((sh, sw, 3), fill, dtype=torch.uint8, device=img.device)
    top, left = (sh - nh) // 2, (sw - nw) // 2
    out[top:top + nh, left:left + nw] = _resize(img, nh, nw)
    return out


def normalize_vgg(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 ImageNet-normalised (channels_last memory)."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def normalize_yolo(batch: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1] (channels_last memory)."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def describe(vgg_size: int, yolo_size: tuple[int, int]) -> dict[str, str]:
    """Preprocessing as recorded in the store's producer metadata."""
    return {
        "vgg16": f"resize short side {round(vgg_size * 256 / 224)} bilinear antialias, center crop {vgg_size}, "
                 f"/255, ImageNet mean {IMAGENET_MEAN} std {IMAGENET_STD}",
        "yolo": f"letterbox {yolo_size[0]}x{yolo_size[1]} bilinear antialias, pad {LETTERBOX_FILL}, /255",
    }
