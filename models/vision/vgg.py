"""VGG16 image-classification (IC) features: torchvision's conv layers + global average pooling.

The module keeps torchvision's `features` layout, so a torchvision-format VGG16 state_dict
(`features.N.weight`, `features.N.bias`, ...) loads as is; its `classifier.*` entries (the FC
layers, dropped here) are ignored. Output: (batch, 512) — the mean of the last conv block's
ReLU activations (after the final max pool) over space.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.errors import ModelError

# torchvision's configuration "D" (VGG16): channel counts, "M" = 2x2 max pool.
_CFG_D: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                           512, 512, 512, "M"]

FEATURE_DIM = 512
INPUT_SIZE = 224
# Conv-only multiply-adds x2 at 224x224 (what the GPU compute bound in the benchmark uses).
GFLOP_PER_IMAGE_224 = 30.7


def _make_features(cfg: list[int | str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = int(v)
    return nn.Sequential(*layers)


class VGG16GAP(nn.Module):
    """VGG16 conv trunk + global average pool: (B, 3, H, W) normalised -> (B, 512)."""

    feature_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.features = _make_features(_CFG_D)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG init, so seeded random weights give well-scaled activations.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)          # (B, 512, H/32, W/32)
        return x.mean(dim=(2, 3))     # (B, 512)


def load_vgg16_state_dict(model: VGG16GAP, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load the `features.*` part of a torchvision VGG16 state_dict; refuse a mismatch by name."""
    feats = {k: v for k, v in state.items() if k.startswith("features.")}
    extra = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
    if not feats:
        raise ModelError(f"{source}: no 'features.*' tensors; expected a torchvision VGG16 state_dict "
                         f"(keys like 'features.0.weight'), got keys {sorted(state)[:5]}")
    if extra:
        raise ModelError(f"{source}: unexpected keys {extra[:5]} for a torchvision VGG16 state_dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(feats))
    unexpected = sorted(set(feats) - set(own))
    if missing or unexpected:
        raise ModelError(f"{source}: not a VGG16 state_dict (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "VGG11/13/19 or BN variants are not VGG16")
    for k, v in feats.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(f"{source}: '{k}' has shape {tuple(v.shape)}, VGG16 expects {tuple(own[k].shape)}")
    model.load_state_dict(feats, strict=True)
