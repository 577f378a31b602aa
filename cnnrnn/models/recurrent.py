"""RNN, LSTM and GRU classifiers that read an image as 28 time steps of 28 pixels.

Row t of the image is the input at step t; the last hidden state goes through a linear head.
The default hidden size, 186, is the seed essay's floor(2 * input * output / 3) = floor(2*28*10/3):
a 1-layer LSTM(28 -> 186) plus Linear(186 -> 10) has 162,574 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnrnn.errors import ConfigError
from cnnrnn.models.registry import register

SINGLE = ("single-label",)


@dataclass(frozen=True)
class RecurrentArgs:
    hidden_size: int = 186  # units per direction and layer
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between stacked layers and before the head
    nonlinearity: str = "tanh"  # rnn only: "tanh" or "relu"

    def validate(self) -> None:
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ConfigError("hidden_size and num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}")


class RecurrentClassifier(nn.Module):
    """Reads rows as time steps; `forward_features` is the encoder, `forward_head` the head."""

    def __init__(self, cell: str, args: RecurrentArgs, num_classes: int = 10, input_size: int = 28):
        super().__init__()
        kwargs = dict(input_size=input_size, hidden_size=args.hidden_size,
                      num_layers=args.num_layers, batch_first=True,
                      bidirectional=args.bidirectional,
                      dropout=args.dropout if args.num_layers > 1 else 0.0)
        if cell == "rnn":
            self.rnn = nn.RNN(nonlinearity=args.nonlinearity, **kwargs)
        else:
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](**kwargs)
        self.num_directions = 2 if args.bidirectional else 1
        self.num_features = args.hidden_size * self.num_directions
        self.head = nn.Sequential(nn.Dropout(args.dropout),
                                  nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, T, D) image, rows as time steps -> last hidden state (B, H * directions)."""
        seq = x.flatten(1, 2) if x.dim() == 4 else x  # (B, T, D)
        _, h = self.rnn(seq)
        h_n = h[0] if isinstance(h, tuple) else h  # LSTM returns (h_n, c_n)
        # h_n: (layers * directions, B, H); keep the last layer, both directions.
        return h_n[-self.num_directions:].transpose(0, 1).flatten(1)  # (B, H * directions)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)  # (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


for _cell in ("rnn", "lstm", "gru"):
    register(_cell, RecurrentArgs, SINGLE,
             f"{_cell.upper()} over the 28 rows of the image, last hidden state -> linear")(
        lambda args, num_classes, cell=_cell: RecurrentClassifier(cell, args, num_classes))
