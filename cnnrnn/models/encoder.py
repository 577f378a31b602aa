"""What the multilabel heads share: an image encoder that may be frozen."""

from __future__ import annotations

import torch
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
