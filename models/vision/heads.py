"""Object-detection (OD) feature heads: per COCO class, the highest box probability.

For each of the 80 classes the feature is max over all predicted boxes of
objectness x class probability (the PITF-IC-OD paper's OD vector). Boxes and NMS are not
needed: NMS only removes boxes, and the maximum survives it.
"""

from __future__ import annotations

import torch

NUM_CLASSES = 80


def yolov2_max_probs(raw: torch.Tensor, num_anchors: int = 5, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """YOLOv2 raw map (B, A*(5+C), H, W) -> (B, C).

    Per anchor the channels are (tx, ty, tw, th, to, class logits...): objectness is
    sigmoid(to) and class probabilities are a softmax over the C logits (YOLOv2, Redmon 2017).
    """
    b, ch, h, w = raw.shape
    if ch != num_anchors * (5 + num_classes):
        raise ValueError(f"expected {num_anchors * (5 + num_classes)} channels, got {ch}")
    r = raw.float().view(b, num_anchors, 5 + num_classes, h * w)          # (B, A, 85, HW)
    obj = torch.sigmoid(r[:, :, 4:5, :])                                  # (B, A, 1, HW)
    cls = torch.softmax(r[:, :, 5:, :], dim=2)                            # (B, A, C, HW)
    return (obj * cls).amax(dim=(1, 3))                                   # (B, C)


def yolov5_max_probs(out: torch.Tensor) -> torch.Tensor:
    """YOLOv5 export layout (B, N, 5+C): xywh, objectness, class probs (sigmoids applied) -> (B, C)."""
    out = out.float()
    return (out[:, :, 4:5] * out[:, :, 5:]).amax(dim=1)


def yolov8_max_probs(out: torch.Tensor) -> torch.Tensor:
    """YOLOv8 export layout (B, 4+C, N): xywh then class scores (no objectness) -> (B, C)."""
    return out.float()[:, 4:, :].amax(dim=2)


LAYOUT_HEADS = {"yolov5": yolov5_max_probs, "yolov8": yolov8_max_probs}
