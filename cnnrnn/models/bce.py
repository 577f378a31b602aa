"""Binary relevance, the baseline the CNN-RNN is measured against: the same encoder, one linear
layer with K outputs, and an independent sigmoid per label trained with binary cross-entropy.
It ignores label co-occurrence by construction; a single decision threshold, chosen on
validation data to maximise O-F1 (micro F1), turns its scores into label sets (or one per label,
`multilabel.thresholds = "per-label"`, each maximising its label's F1); with a count head
(models/count.py) each image gets its predicted number of top-scored labels instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnrnn.errors import DataError
from cnnrnn.models.count import CountedLogits, CountHead, top_k_sets
from cnnrnn.models.encoder import HasEncoder


class PerLabelHead(HasEncoder):
    """Base of the models with one independent logit per label (bce, query): forward,
    prediction by threshold or count head. Subclasses set `count` (a `CountHead` or None) and
    define `logits_from_features`, (B, D) pooled features -> (B, K) logits."""

    count: CountHead | None
    threshold: Tensor  # (K,) the decision thresholds chosen on validation (a buffer)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints before per-label thresholds hold one scalar threshold for every label
        key = prefix + "threshold"
        if key in state_dict and state_dict[key].ndim == 0 and hasattr(self, "threshold"):
            state_dict[key] = state_dict[key].expand_as(self.threshold).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def logits_from_features(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor | CountedLogits:
        """(B, 1, H, W) -> (B, K) logits, with the count head `CountedLogits` (the logits and
        (B, K+1) count logits); the encoder under the caller's autocast, the heads in fp32.
        `targets` is accepted (and unused) so every multilabel model is called alike;
        `cnnrnn.losses.label_loss` turns the output into the loss."""
        features = self.encode(x).float()  # (B, D)
        with torch.autocast(x.device.type, enabled=False):
            logits = self.logits_from_features(features)
            if self.count is None:
                return logits
            return CountedLogits(logits, self.count(features))

    @torch.no_grad()
    def predict_from_features(
        self, features: Tensor, threshold: float | Tensor = 0.5
    ) -> tuple[Tensor, Tensor]:
        """(B, D) -> label sets (B, K) uint8 and sigmoid scores (B, K). A set holds the labels
        of score >= threshold (one for all, or (K,) one per label), or with the count head the
        predicted count's top-scored ones."""
        scores = torch.sigmoid(self.logits_from_features(features).float())
        if self.count is not None:
            return top_k_sets(scores, self.count(features).argmax(1)), scores
        return (scores >= threshold).to(torch.uint8), scores

    @torch.no_grad()
    def predict(self, x: Tensor, threshold: float | Tensor = 0.5) -> tuple[Tensor, Tensor]:
        """(B, 1, H, W) images -> label sets (B, K) uint8 and scores (B, K); call eval() first."""
        features = self.encode(x).float()  # (B, D)
        with torch.autocast(x.device.type, enabled=False):
            return self.predict_from_features(features, threshold)


class BCEHead(PerLabelHead):
    """Encoder + linear head: (B, 1, H, W) images -> (B, K) logits, one sigmoid per label."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int = 10,
        dropout: float = 0.0,
        freeze_encoder: bool = False,
        count_head: bool = False,
    ) -> None:
        super().__init__()
        self.set_encoder(encoder, freeze_encoder)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.num_features, num_labels)
        self.count = CountHead(encoder.num_features, num_labels) if count_head else None

    def logits_from_features(self, features: Tensor) -> Tensor:
        """(B, D) -> (B, K) logits."""
        return self.head(self.dropout(features))


def choose_label_thresholds(scores: Tensor, y_true: Tensor) -> Tensor:
    """(K,) a threshold per label: choose_threshold on each label's column of the (N, K)
    validation scores, so each maximises its own label's F1."""
    return torch.tensor([choose_threshold(scores[:, k], y_true[:, k])
                         for k in range(scores.shape[1])])


def choose_threshold(scores: Tensor, y_true: Tensor) -> float:
    """The one global threshold that maximises O-F1 (micro F1) of `scores >= threshold`.

    scores, y_true: (N, K). Every distinct score is tried as the lowest one predicted positive,
    and so is predicting nothing; ties go to the higher threshold (fewer positives). The result
    lies halfway between the chosen score and the next lower one, so the validation predictions
    are exactly those of the best cut and small shifts in test scores matter less.
    """
    s = scores.detach().flatten().float()
    positive = (y_true.flatten() != 0).double()
    if s.numel() == 0:
        raise DataError("cannot choose a threshold from an empty set of scores")
    s, order = s.sort(descending=True)
    tp = positive[order].cumsum(0)  # true positives when the top i+1 scores are predicted
    # A cut may only fall between two different scores: the last of each run of equal ones.
    last_of_run = torch.ones_like(s, dtype=torch.bool)
    last_of_run[:-1] = s[:-1] != s[1:]
    cut = last_of_run.nonzero().flatten()  # (C,) index of the lowest score predicted positive
    # micro F1 = 2 TP / (predicted positives + true positives); predicting nothing scores 0
    f1 = 2 * tp[cut] / (cut + 1 + positive.sum())
    best = int(f1.argmax())  # argmax takes the first maximum: the highest threshold
    if f1[best] <= 0:  # no true labels at all: predict nothing
        return float(torch.nextafter(s[0], torch.tensor(float("inf"))))
    i = int(cut[best])
    if i + 1 == len(s):
        return float(s[i])  # every score is predicted positive
    middle = (s[i] + s[i + 1]) / 2
    # in float32 the middle of two neighbouring values may round onto the lower one
    return float(middle if middle > s[i + 1] else s[i])
