"""The training criteria the tasks build: criterion(model outputs, targets) -> scalar loss.

Every model is trained through `model(...)`; what it returns goes to one of these. A loss is
computed in fp32 whatever the autocast precision of the forward pass. Cost-sensitive criteria
(soft labels, expected cost over a class-cost matrix) belong here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnrnn.errors import DataError
from cnnrnn.models.cnn_rnn import IGNORE_INDEX, SequenceOutput


class CrossEntropy(nn.Module):
    """Single-label: logits (B, K), classes (B,) -> mean cross-entropy, optionally smoothed."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)


class SequenceNLL(nn.Module):
    """CNN-RNN: cross-entropy of the next label, mean over all target steps (labels and END),
    plus `aux_weight` x the mean per-label BCE of the semantic-regularisation head when the
    model has one (Liu et al., CVPR 2017).

    `label_smoothing` e: each step's target is (1 - e) on the true next symbol and e spread
    evenly over the symbols the step may still emit (the labels not yet in the path and END;
    those already emitted have probability 0 and take no share)."""

    def __init__(self, aux_weight: float = 0.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing

    def forward(self, out: SequenceOutput, y: Tensor) -> Tensor:
        log_probs, targets = out.log_probs.flatten(0, 1), out.targets.flatten()
        if self.label_smoothing:
            scored = targets != IGNORE_INDEX
            lp = log_probs[scored]  # (N, K+1), -inf where a label was emitted already
            allowed = torch.isfinite(lp)
            nll = -lp.gather(1, targets[scored, None])[:, 0]
            uniform = -torch.where(allowed, lp, 0.0).sum(1) / allowed.sum(1)
            loss = ((1 - self.label_smoothing) * nll + self.label_smoothing * uniform).mean()
        else:
            loss = F.nll_loss(log_probs, targets, ignore_index=IGNORE_INDEX)
        if out.aux_logits is not None:
            loss = loss + self.aux_weight * F.binary_cross_entropy_with_logits(
                out.aux_logits, y.float())
        return loss


class BinaryCrossEntropy(nn.Module):
    """Binary relevance: logits (B, K), multi-hot label sets (B, K) -> BCE, mean over both."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        if y.shape != logits.shape:
            raise DataError(f"label sets must be multi-hot of shape (B, {logits.shape[-1]}), "
                            f"got {tuple(y.shape)}")
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())


class SoftLabels(nn.Module):
    """Bertinetto et al. (CVPR 2020): cross-entropy against the soft target
    softmax(-beta * C[y]) over the classes, so mild mistakes cost less than severe ones.
    costs: (K, K) class-cost matrix, rows = true class; a larger beta is closer to one-hot."""

    def __init__(self, costs: Tensor, beta: float) -> None:
        super().__init__()
        self.register_buffer("targets", (-beta * costs.float()).softmax(dim=1))  # (K, K)

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), self.targets[y])


class ExpectedCost(nn.Module):
    """Cross-entropy plus `weight` x the expected cost sum_j p_j C[y, j] of the prediction."""

    def __init__(self, costs: Tensor, weight: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("costs", costs.float())  # (K, K)
        self.weight = weight
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        expected = (logits.softmax(dim=1) * self.costs[y]).sum(dim=1).mean()
        return ce + self.weight * expected
