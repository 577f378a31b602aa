"""The count head of the per-label models (bce, query): how many labels an image holds.

A linear layer on the pooled image features scores the counts 0 .. K (cross-entropy against
the true count, added to the per-label loss by `cnnrnn.losses.WithCount`). At inference the
image gets exactly its predicted count of labels, the top-scored ones, instead of the labels
over a threshold: the set's size comes from the image, not from one global cut.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class CountedLogits(NamedTuple):
    """What a per-label model with a count head returns in training."""

    logits: Tensor  # (B, K) one logit per label
    count_logits: Tensor  # (B, K + 1) one logit per count 0 .. K


class CountHead(nn.Module):
    """(B, D) pooled image features -> (B, K + 1) logits of the number of labels 0 .. K."""

    def __init__(self, num_features: int, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_labels + 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


def top_k_sets(scores: Tensor, counts: Tensor) -> Tensor:
    """Label sets of the `counts[i]` top-scored labels of each row.

    scores (B, K) float, counts (B,) int in 0 .. K -> (B, K) uint8 with counts[i] ones in row
    i; of tied scores the lower label index goes first (a stable sort)."""
    order = scores.argsort(dim=1, descending=True, stable=True)  # (B, K)
    rank = torch.arange(scores.shape[1], device=scores.device)  # (K,)
    chosen = (rank[None, :] < counts[:, None]).to(torch.uint8)  # (B, K) in rank order
    return torch.zeros_like(chosen).scatter_(1, order, chosen)
