"""The query head (after Query2Label, Liu et al. 2021): one learned query per label
cross-attends over the encoder's grid cells through a small transformer decoder, and a linear
map per label turns its query's output into one logit. No label order and no recurrence: the
queries attend to each other (self-attention) and to the cells, all at once, and nothing in
the model tells one query's position from another's, so permuting the labels (queries and
per-label weights together) permutes the logits the same way. Trained and decided as binary
relevance: a sigmoid per label, BCE or ASL, one threshold chosen on validation (or a count
head, models/count.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnrnn.models.bce import PerLabelHead
from cnnrnn.models.count import CountHead
from cnnrnn.models.encoder import GridEncoder


class QueryHead(PerLabelHead):
    """Encoder + label queries over its grid cells: (B, 1, H, W) images -> (B, K) logits."""

    def __init__(
        self,
        encoder: GridEncoder,
        num_labels: int = 10,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 1,
        dropout: float = 0.1,
        freeze_encoder: bool = False,
        count_head: bool = False,
    ) -> None:
        super().__init__()
        self.set_encoder(encoder, freeze_encoder)
        self.num_labels = num_labels
        cells = encoder.grid * encoder.grid
        self.project = nn.Linear(encoder.num_features // cells, d_model)  # cell C -> d_model
        self.cell_embed = nn.Parameter(0.02 * torch.randn(cells, d_model))  # where a cell is
        self.query_embed = nn.Parameter(0.02 * torch.randn(num_labels, d_model))  # (K, d)
        layer = nn.TransformerDecoderLayer(d_model, heads, 2 * d_model, dropout,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        # one linear map per label (Query2Label's GroupWiseLinear): (K, d) weights, (K,) biases
        self.class_weight = nn.Parameter(torch.randn(num_labels, d_model) / d_model ** 0.5)
        self.class_bias = nn.Parameter(torch.zeros(num_labels))
        self.count = CountHead(encoder.num_features, num_labels) if count_head else None

    def logits_from_features(self, features: Tensor) -> Tensor:
        """(B, D) pooled grid features -> (B, K) logits."""
        cells = self.encoder.cells(features)  # (B, G*G, C)
        memory = self.project(cells) + self.cell_embed  # (B, G*G, d)
        queries = self.query_embed.expand(len(features), -1, -1)  # (B, K, d)
        out = self.decoder(queries, memory)  # (B, K, d)
        return (out * self.class_weight).sum(-1) + self.class_bias  # (B, K)
