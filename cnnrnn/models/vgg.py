"""A VGG-16-style CNN (configuration D) for one grey channel, split into encoder and head.

Thirteen 3x3 convolutions in blocks of 2, 2, 3, 3, 3 with max-pooling between blocks, as in
Simonyan & Zisserman (2015). Two changes let the same weights read 28x28 items and 56x56 mosaics:
pooling uses ceil_mode (28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of vanishing), and a global pooling
replaces the fixed-size classifier. `encoder.features` keeps torchvision's layer indices, so a
torchvision `vgg16` / `vgg16_bn` state_dict loads into it (see `load_torchvision_vgg16`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnrnn.errors import CheckpointError, ConfigError
from cnnrnn.models.registry import register

# Configuration D: output channels of each 3x3 convolution, "M" = 2x2 max-pooling.
CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@dataclass(frozen=True)
class VGGArgs:
    width: float = 0.25  # channel multiplier: 1.0 = 64..512 channels (torchvision's size)
    batch_norm: bool = True
    dropout: float = 0.3  # before the linear head
    pool: str = "max"  # global pooling of the last feature map: "max" or "avg"

    def validate(self) -> None:
        if not 0.0 < self.width <= 4.0:
            raise ConfigError(f"width must be in (0, 4], got {self.width}")
        if self.pool not in ("max", "avg"):
            raise ConfigError(f"pool must be 'max' or 'avg', got {self.pool!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class VGGEncoder(nn.Module):
    """(B, 1, H, W) -> (B, C) image features; C = 512 * width."""

    def __init__(self, width: float = 0.25, batch_norm: bool = True, pool: str = "max"):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for v in CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            c_out = max(1, round(int(v) * width))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.channels = c_in
        self.use_pooling(pool, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def use_pooling(self, pool: str, grid: int = 1, per_cell: bool = False) -> None:
        """Pool the last feature map to a `grid` x `grid` map and flatten it.

        grid 1 is global pooling (one C-vector, as for single items); a mosaic's 2x2 map kept
        as grid 2 gives each cell its own C features. With `per_cell`, the image is cut into
        grid x grid cells first and each cell is encoded alone, exactly as a single item is:
        on mosaics this removes the mixing of neighbouring cells at the encoder's pooling
        steps (a 56x56 mosaic's cell border falls inside a pooling window at 1/8 scale).
        """
        self.pool, self.grid, self.per_cell = pool, grid, per_cell
        self.num_features = self.channels * grid * grid

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, ceil(H/32), ceil(W/32))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_cell and self.grid > 1:
            b, c, h, w = x.shape
            g = self.grid
            cells = x.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5)
            cells = cells.reshape(b * g * g, c, h // g, w // g)  # row-major cells
            fmap = self.features(cells)  # (B*g*g, C, h', w')
            pool = F.adaptive_max_pool2d if self.pool == "max" else F.adaptive_avg_pool2d
            return pool(fmap, 1).reshape(b, -1)  # (B, g*g*C), cell by cell
        fmap = self.features(x)  # (B, C, h, w)
        pool = F.adaptive_max_pool2d if self.pool == "max" else F.adaptive_avg_pool2d
        return pool(fmap, self.grid).flatten(1)  # (B, C * grid * grid)


class VGG16(nn.Module):
    """VGG-16-style classifier: `encoder` (reusable by the CNN-RNN) and a linear `head`."""

    def __init__(self, args: VGGArgs, num_classes: int = 10):
        super().__init__()
        self.encoder = VGGEncoder(args.width, args.batch_norm, args.pool)
        self.num_features = self.encoder.num_features
        self.head = nn.Sequential(nn.Dropout(args.dropout),
                                  nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register("vgg16", VGGArgs, ("single-label",),
         "VGG-16 layout (13 convs, blocks 2-2-3-3-3), width multiplier, global pooling")(
    lambda args, num_classes: VGG16(args, num_classes))


def fold_torchvision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision vgg16(_bn) state_dict -> `VGGEncoder.features` state_dict for grey input.

    The first convolution's RGB filters are summed over their input channels: on a grey image
    repeated over RGB, sum_c W_c * g = (sum_c W_c) * g, so the features are unchanged.
    """
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if "0.weight" not in feats or feats["0.weight"].dim() != 4:
        raise CheckpointError("not a torchvision VGG-16 state_dict (no features.0.weight); save "
                              "one with torch.save(torchvision.models.vgg16().state_dict(), F)")
    # (64, 3, 3, 3) -> (64, 1, 3, 3)
    feats["0.weight"] = feats["0.weight"].sum(dim=1, keepdim=True)
    return feats


def load_torchvision_vgg16(encoder: VGGEncoder, path: str | Path) -> None:
    """Load a torchvision `vgg16` / `vgg16_bn` state_dict file into a width-1.0 encoder."""
    from cnnrnn.checkpoint import read_torch_file

    path = Path(path)
    state = read_torch_file(path, "encoder weights", "pass a file saved with torch.save("
                            "torchvision.models.vgg16(weights=...).state_dict(), F)")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    feats = fold_torchvision_state(state)
    has_bn = any(k.endswith("running_mean") for k in feats)
    own_bn = any(isinstance(m, nn.BatchNorm2d) for m in encoder.features)
    if has_bn != own_bn:
        raise CheckpointError(f"{path} is a VGG-16 {'with' if has_bn else 'without'} batch norm "
                              f"but the model has batch_norm={own_bn}; set model.batch_norm = "
                              f"{str(has_bn).lower()}")
    if feats["0.weight"].shape[0] != encoder.features[0].out_channels:
        raise CheckpointError(f"{path} has width 1.0 (64 channels first) but the model has "
                              f"{encoder.features[0].out_channels}; set model.width = 1.0")
    try:
        encoder.features.load_state_dict(feats, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the VGG-16 encoder: {first}") from None
