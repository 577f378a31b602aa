"""What the encoders and the heads share: an image encoder read through its last feature map
(`GridEncoder`), a multilabel head whose encoder may be frozen (`HasEncoder`), and the
single-label classifier on an encoder (`EncoderClassifier`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HasEncoder(nn.Module):
    """Base of the heads that read images through `self.encoder.forward_features`.

    A frozen encoder gets no gradients, runs under no_grad and stays in eval mode, so its
    batch-norm statistics stay frozen too (the paper keeps its CNN fixed).
    """

    def set_encoder(self, encoder: nn.Module, freeze: bool) -> None:
        self.encoder = encoder
        self.freeze_encoder = freeze
        if freeze:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> HasEncoder:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def encode(self, x: Tensor) -> Tensor:
        """Image representation I: (B, 1, H, W) float -> (B, D)."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder.forward_features(x)
        return self.encoder.forward_features(x)


class GridEncoder(nn.Module):
    """An image encoder read through its last feature map: `input`, then `features`, then an
    adaptive pooling of the map to `grid` x `grid` cells, flattened.

    Subclasses (`VGGEncoder`, `TimmEncoder`) set `input` (nn.Identity, or the fixed
    `ImageNetInput` layer for ImageNet weights), `features` ((B, c, H, W) -> the last feature
    map (B, C, h, w)) and `channels` (C), then call `use_pooling`. Grad-CAM
    (`cnnrnn.analysis.saliency.feature_map`) reads the same attributes.
    """

    input: nn.Module
    features: nn.Module
    channels: int

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

    def cells(self, features: Tensor) -> Tensor:
        """`forward_features`' (B, C * grid * grid) -> (B, grid * grid, C), one row per grid
        cell, row-major (cell i*grid + j is row i, column j of the pooled map)."""
        b, g2 = features.shape[0], self.grid * self.grid
        if self.per_cell:
            return features.reshape(b, g2, -1)  # encoded cell by cell
        return features.reshape(b, -1, g2).transpose(1, 2)  # channel-major after flatten

    def forward_feature_map(self, x: Tensor) -> Tensor:
        return self.features(self.input(x))  # (B, C, h, w); 1x1 for 28x28, 2x2 for 56x56

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.input(x)  # (B, 3, H, W) for "imagenet", else unchanged
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


class EncoderClassifier(nn.Module):
    """A single-label classifier: `encoder` (reusable by the CNN-RNN and BCE), then dropout and
    a linear `head` on its globally pooled features."""

    def __init__(self, encoder: GridEncoder, dropout: float, num_classes: int = 10):
        super().__init__()
        self.encoder = encoder
        self.num_features = encoder.num_features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encoder.forward_features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
