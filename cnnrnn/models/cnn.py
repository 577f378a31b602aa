"""A small CNN in the spirit of the seed essay's: two convolution blocks and a dense head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnrnn.errors import ConfigError
from cnnrnn.models.conv import pool_then_relu
from cnnrnn.models.registry import register


@dataclass(frozen=True)
class CNNArgs:
    channels: int = 32  # first block; the second block has twice as many
    hidden: int = 256  # units of the dense layer
    dropout: float = 0.25  # after each block; twice this before the output layer
    batch_norm: bool = True

    def validate(self) -> None:
        if self.channels < 1 or self.hidden < 1:
            raise ConfigError("channels and hidden must be >= 1")
        if not 0.0 <= self.dropout < 0.5:
            raise ConfigError(f"dropout must be in [0, 0.5), got {self.dropout}")


def conv_bn_relu(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)] if batch_norm else [
        conv, nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Two blocks of (conv, conv, max-pool): 28 -> 14 -> 7, then a dense head."""

    def __init__(self, args: CNNArgs, num_classes: int = 10):
        super().__init__()
        c, bn = args.channels, args.batch_norm
        # each block pools before its last ReLU: the same numbers, a quarter of the ReLU's
        # work (conv.pool_then_relu)
        block1 = [*conv_bn_relu(1, c, bn), *conv_bn_relu(c, c, bn)]
        block2 = [*conv_bn_relu(c, 2 * c, bn), *conv_bn_relu(2 * c, 2 * c, bn)]
        self.features = nn.Sequential(
            *block1[:-1], *pool_then_relu(nn.MaxPool2d(2), block1[-1]), nn.Dropout(args.dropout),
            *block2[:-1], *pool_then_relu(nn.MaxPool2d(2), block2[-1]), nn.Dropout(args.dropout),
            nn.Flatten(),
            nn.Linear(2 * c * 7 * 7, args.hidden), nn.ReLU(inplace=True),
        )
        self.num_features = args.hidden
        self.head = nn.Sequential(nn.Dropout(2 * args.dropout), nn.Linear(args.hidden, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) -> (B, hidden)."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register("cnn", CNNArgs, ("single-label",), "two conv blocks (32, 64 channels) + dense head")(
    lambda args, num_classes: SmallCNN(args, num_classes))
