"""The training criteria the tasks build: criterion(model outputs, targets) -> scalar loss.

Every model is trained through `model(...)`; what it returns goes to one of these. A loss is
computed in fp32 whatever the autocast precision of the forward pass. Cost-sensitive criteria
(soft labels, expected cost over a class-cost matrix, the hierarchical cross-entropy over
a class tree) belong here too.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnrnn.config import STEP_TARGETS, MultilabelConfig
from cnnrnn.errors import ConfigError, DataError
from cnnrnn.models.cnn_rnn import IGNORE_INDEX, SequenceOutput
from cnnrnn.models.count import CountedLogits
from cnnrnn.trees import ClassTree


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
    those already emitted have probability 0 and take no share).

    `step_target` "set" (an orderless target): at each step every true label not yet emitted
    is right, and the loss is -log of their total probability, -log sum_{l in rest} P(l);
    END once all are emitted. The inputs must be the model's own choices (order "pla", checked
    by the config): trained on a fixed order's inputs, the model learns to emit any remaining
    label first and is then fed an order it never emits (measured: a few images it fits to a
    loss of 0.009 still decode wrong). With "next", the paper's, only the next label of the
    order is right, and the true labels still to come count as wrong at this step.
    """

    def __init__(self, aux_weight: float = 0.0, label_smoothing: float = 0.0,
                 step_target: str = "next") -> None:
        super().__init__()
        if step_target not in STEP_TARGETS:
            raise ConfigError(f"step_target must be one of {', '.join(STEP_TARGETS)}, got "
                              f"{step_target!r}")
        if step_target == "set" and label_smoothing:
            raise ConfigError("label smoothing and the set target do not combine; choose one")
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing
        self.step_target = step_target

    def forward(self, out: SequenceOutput, y: Tensor) -> Tensor:
        log_probs, targets = out.log_probs.flatten(0, 1), out.targets.flatten()
        if self.step_target == "set":
            loss = set_target_nll(out.log_probs, out.targets)
        elif self.label_smoothing:
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


def set_target_nll(log_probs: Tensor, targets: Tensor) -> Tensor:
    """Mean over the scored steps of -log sum_{l in R_t} P_t(l), where R_t holds the labels
    of targets[t:] (those not yet emitted), or END at the END step.

    log_probs (B, T, K+1), targets (B, T) long (labels, END = K, then IGNORE_INDEX)."""
    end = log_probs.shape[-1] - 1
    valid = targets != IGNORE_INDEX  # (B, T)
    onehot = F.one_hot(targets.clamp(min=0), end + 1).bool() & valid[..., None]  # (B, T, K+1)
    rest = onehot.flip(1).cumsum(1).flip(1) > 0  # labels at this step or later
    rest[..., end] = targets == end  # END is right only at the END step
    nll = -torch.logsumexp(log_probs.masked_fill(~rest, float("-inf")), dim=-1)  # (B, T)
    return nll[valid].mean()


class BinaryCrossEntropy(nn.Module):
    """Binary relevance: logits (B, K), multi-hot label sets (B, K) -> BCE, mean over both."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        if y.shape != logits.shape:
            raise DataError(f"label sets must be multi-hot of shape (B, {logits.shape[-1]}), "
                            f"got {tuple(y.shape)}")
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())


class AsymmetricLoss(nn.Module):
    """ASL, Ridnik et al. (ICCV 2021), as `timm.loss.AsymmetricLossMultiLabel` computes it:
    per label, -y (1-p)^gamma_pos log p - (1-y) p_m^gamma_neg log(1 - p_m), p = sigmoid(logit),
    p_m = max(p - clip, 0) (the easy negatives' probability shifted down, then thresholded).

    Reduced as `BinaryCrossEntropy` is, a mean over batch and labels, so the two share a
    learning rate: timm's default ("batchmean") sums over the labels (K times larger) and the
    paper's code sums over the batch too. With gamma_neg = gamma_pos = clip = 0 it is BCE
    (up to timm's clamp of p at 1e-8 before the log). Computed in fp32 whatever the autocast.
    logits (B, K), multi-hot label sets (B, K) -> scalar."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05
                 ) -> None:
        super().__init__()
        from timm.loss import AsymmetricLossMultiLabel  # timm is slow to import: only when used

        # newer timm releases take a `reduction`; older ones return the sum over batch and
        # labels, which forward divides by B * K itself
        self.mean = "reduction" in inspect.signature(AsymmetricLossMultiLabel).parameters
        self.asl = AsymmetricLossMultiLabel(gamma_neg, gamma_pos, clip,
                                            **({"reduction": "mean"} if self.mean else {}))

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        if y.shape != logits.shape:
            raise DataError(f"label sets must be multi-hot of shape (B, {logits.shape[-1]}), "
                            f"got {tuple(y.shape)}")
        with torch.autocast(logits.device.type, enabled=False):
            loss = self.asl(logits.float(), y.float())
        return loss if self.mean else loss / logits.numel()


class WithCount(nn.Module):
    """A per-label loss, plus `weight` x the cross-entropy of the count head's logits against
    the number of true labels when the model has a count head (it returns `CountedLogits`)."""

    def __init__(self, per_label: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        self.per_label = per_label
        self.weight = weight

    def forward(self, out: Tensor | CountedLogits, y: Tensor) -> Tensor:
        if not isinstance(out, CountedLogits):
            return self.per_label(out, y)
        counts = (y != 0).sum(1)  # (B,) in 0 .. K
        return self.per_label(out.logits, y) + self.weight * F.cross_entropy(
            out.count_logits.float(), counts)


def label_loss(ml: MultilabelConfig) -> nn.Module:
    """The loss of the per-label heads (bce, query): `multilabel.loss`, plus the count's
    cross-entropy when the model has a count head."""
    if ml.loss == "asl":
        per_label: nn.Module = AsymmetricLoss(ml.asl_gamma_neg, ml.asl_gamma_pos, ml.asl_clip)
    else:
        per_label = BinaryCrossEntropy()
    return WithCount(per_label, ml.count_weight)


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


class HierarchicalCrossEntropy(nn.Module):
    """HXE, Bertinetto et al. (CVPR 2020), as their code (fiveai/making-better-mistakes,
    HierarchicalCrossEntropyLoss) computes it. The probability of a node is the sum of the
    softmax probabilities of the classes under it; the probability of class y factorises along
    its path y = C0, C1, ..., root, p(y) = prod_l p(C_l | C_l+1) with p(C | parent) =
    p(C) / p(parent), and the loss is

        -sum_l lambda(C_l) log p(C_l | C_l+1),   lambda(C) = exp(-alpha * depth(C)),

    depth(C) the number of edges from the root to C. The paper writes h(C), "the height of C";
    its code weighs the edge above C by exp(-alpha * len(tree position of C)), the depth, which
    is what makes a larger alpha favour the coarse decisions near the root, as the paper says
    it should. The code also divides every weight by their sum over the tree, a constant
    factor (a learning-rate scale); cnnrnn leaves it out, so alpha = 0 is exactly the
    cross-entropy (the conditionals telescope to p(y)). Computed in log space:
    log p(C) = logsumexp of the log-softmax over the classes under C.

    logits (B, K), classes (B,)."""

    def __init__(self, tree: ClassTree, alpha: float) -> None:
        super().__init__()
        paths = [tree.path(k) for k in range(len(tree.leaves[-1]))]
        L = max(len(p) for p in paths) - 1  # edges on the longest path
        root = len(tree.leaves) - 1
        child = torch.full((len(paths), L), root)
        parent = torch.full((len(paths), L), root)
        weight = torch.zeros(len(paths), L)
        for k, path in enumerate(paths):
            for step, (c, p) in enumerate(zip(path[:-1], path[1:], strict=True)):
                child[k, step], parent[k, step] = c, p
                weight[k, step] = math.exp(-alpha * tree.depth(c))
        self.register_buffer("mask", torch.from_numpy(tree.mask()))  # (N, K)
        self.register_buffer("child", child)  # (K, L) nodes, padded with the root
        self.register_buffer("parent", parent)  # (K, L)
        self.register_buffer("weight", weight)  # (K, L), 0 on the padding
        self.alpha = alpha

    def node_log_probs(self, logits: Tensor) -> Tensor:
        """(B, K) logits -> (B, N): log p(node), the log of the summed class probabilities."""
        log_p = logits.float().log_softmax(dim=1)  # (B, K)
        masked = log_p[:, None, :].masked_fill(~self.mask, float("-inf"))  # (B, N, K)
        return masked.logsumexp(dim=2)

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        log_node = self.node_log_probs(logits)  # (B, N)
        log_cond = log_node.gather(1, self.child[y]) - log_node.gather(1, self.parent[y])
        return -(self.weight[y] * log_cond).sum(dim=1).mean()
