"""The CNN-RNN of Wang et al., "CNN-RNN: A Unified Framework for Multi-label Image
Classification" (CVPR 2016), with the predicted-label alignment order (PLA) of Yazici et al.,
"Orderless Recurrent Models for Multi-label Classification" (CVPR 2020) as a training option.

A multi-label prediction is a prediction path: distinct labels, one per step, then END. The model
gives a path the probability P(l_1, ..., l_n, END | I) = prod_t P(l_t | I, l_1..l_{t-1}), and beam
search looks for a probable path. Symbols follow the paper (Sec. 3.2):

    w_k          = U_l e_k                      label embedding: row k of U_l        (eq. 2)
    o(t), r(t)   = LSTM(w_k(t), r(t-1))         recurrent output and state            (eq. 3)
    x_t          = h(U_o^x o(t) + U_I^x I)      joint image-label embedding, h = ReLU (eq. 4)
    s_t          = U_l^T x_t                    one score per label and for END       (eq. 5)
    P(. | I, l_<t) = softmax(s_t), labels already in the path masked out

`decoder="attention"` (after Xu et al., "Show, Attend and Tell", ICML 2015) replaces eq. 4's
image term, the same at every step, by one that each step chooses: the encoder's G grid cells
c_1..c_G (C features each) are weighed by additive attention on the recurrent output,

    a_t          = softmax_i(v^T tanh(W_o o(t) + W_c c_i))        (G weights, summing to 1)
    x_t          = h(U_o^x o(t) + U_I^x sum_i a_t,i c_i)

so a step that names a label reads mostly the cell it attends to, and `a_t` says which one.
The attention sits after the LSTM, so teacher forcing still runs every step in one pass.
`label_dropout` p drops each previous-label input w_k(t) (not START) to zero with probability
p while training: the step must then find the next label in the image more often than in the
labels before it, which is what a shift of the label prior punishes.

paper_notes.md maps these to the code and gives every choice the paper leaves open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnrnn.errors import ConfigError, DataError
from cnnrnn.models.encoder import HasEncoder

IGNORE_INDEX = -100  # target padding after END; F.nll_loss skips it
Order = Literal["fixed", "pla"]


Decoder = Literal["paper", "attention"]
DECODERS: tuple[str, ...] = ("paper", "attention")


class Encoder(Protocol):
    """What the CNN-RNN needs from an image encoder (the VGG-16-style encoder satisfies it)."""

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) float images -> (B, num_features) image representation I."""
        ...

    def cells(self, features: Tensor) -> Tensor:
        """(B, num_features) -> (B, G, C): I as its grid cells, row-major (attention only)."""
        ...


class SequenceOutput(NamedTuple):
    """What a teacher-forced training pass returns (a tuple, so DDP and torch.compile see its
    tensors)."""

    log_probs: Tensor  # (B, T, K+1): log P(next label | I, previous labels) at every step
    targets: Tensor  # (B, T) long: the label scored at each step, then END, then IGNORE_INDEX
    aux_logits: Tensor | None  # (B, K) per-label logits of the aux_bce head, or None


@dataclass(frozen=True)
class Decoded:
    """Beam-search result for a batch: the N best completed paths per image, best first."""

    paths: Tensor  # (B, N, K+1) long: labels in emission order, then END (= K), then -1
    log_probs: Tensor  # (B, N) float: log P(path | I); -inf where fewer than N paths completed
    label_sets: Tensor  # (B, K) uint8: the labels of the best path
    label_probs: Tensor  # (B, K) float: per label, max over the best path's steps of its P
    scores: Tensor  # (B, K) float in [0, 1]: ranking score for mAP, > 0.5 exactly when emitted


class CNNRNN(HasEncoder):
    """Image encoder + LSTM over label embeddings; predicts a label set as a label sequence.

    Label ids: 0..K-1 the labels, K = END, K+1 = START (the rows of U_l).
    order="fixed": teacher forcing on the true labels sorted by `label_priority` (the paper's
    choice is training-set frequency, most frequent first). order="pla": the targets follow the
    model's own ranking (see `pla_target_sequences`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int = 10,
        embed_dim: int = 64,
        hidden_size: int = 256,
        label_priority: Sequence[int] | None = None,
        order: Order = "fixed",
        dropout: float = 0.0,
        freeze_encoder: bool = False,
        aux_bce: float = 0.0,
        decoder: Decoder = "paper",
        attention_dim: int = 64,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        K = num_labels
        priority = list(range(K)) if label_priority is None else [int(k) for k in label_priority]
        if sorted(priority) != list(range(K)):
            raise ConfigError(
                f"label_priority must list each label 0..{K - 1} exactly once, got {priority}"
            )
        if aux_bce < 0:
            raise ConfigError(f"aux_bce is a loss weight >= 0, got {aux_bce}")
        if order not in ("fixed", "pla"):
            raise ConfigError(f"unknown label order {order!r}; use 'fixed' or 'pla'")
        if decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {decoder!r}; use {' or '.join(DECODERS)}")
        if not 0.0 <= label_dropout < 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.set_encoder(encoder, freeze_encoder)
        self.num_labels, self.END, self.START = K, K, K + 1
        self.order: Order = order
        self.label_priority = priority

        # U_l embeds the input labels (eq. 2) and scores the outputs (eq. 5): one matrix for both.
        self.U_l = nn.Parameter(torch.randn(K + 2, embed_dim) * embed_dim**-0.5)  # (K+2, E)
        self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True)
        self.U_o_x = nn.Linear(hidden_size, embed_dim, bias=False)
        self.decoder: Decoder = decoder
        self.label_dropout = label_dropout
        if decoder == "attention":
            if not hasattr(encoder, "cells"):
                raise ConfigError(f"the attention decoder needs an encoder with grid cells; "
                                  f"a {type(encoder).__name__} has none")
            cell_features = encoder.cells(torch.zeros(1, encoder.num_features)).shape[-1]
            self.U_I_x = nn.Linear(cell_features, embed_dim)  # applied to the attended cells
            self.att_cells = nn.Linear(cell_features, attention_dim, bias=False)  # W_c
            self.att_query = nn.Linear(hidden_size, attention_dim)  # W_o, with the bias
            self.att_v = nn.Linear(attention_dim, 1, bias=False)  # v
        else:
            self.U_I_x = nn.Linear(encoder.num_features, embed_dim)  # its bias: eq. 4's only one
        self.dropout = nn.Dropout(dropout)
        # Semantic regularisation (Liu et al., CVPR 2017): per-label logits from I, trained with
        # BCE beside the sequence loss, so the encoder gets a direct signal for every label.
        # Training only; decoding does not read them.
        self.aux_bce = aux_bce
        self.aux_head = nn.Linear(encoder.num_features, K) if aux_bce > 0 else None
        # label_rank[k] = position of label k in the fixed order; a buffer, so checkpoints keep it
        rank = torch.empty(K, dtype=torch.long)
        rank[torch.tensor(priority)] = torch.arange(K)
        self.register_buffer("label_rank", rank)

    # ---- parts ---------------------------------------------------------------------------

    def image_context(self, features: Tensor) -> tuple[Tensor, ...]:
        """What every step reads of the image, computed once per image: (B, D) ->
        paper: (U_I^x I (B, 1, E),); attention: (U_I^x c_i (B, G, E), W_c c_i (B, G, A)).

        Rows may be repeated (beam search) with `repeat_context`."""
        if self.decoder == "paper":
            return (self.U_I_x(self.dropout(features))[:, None],)  # the same at every step
        cells = self.dropout(self.encoder.cells(features))  # (B, G, C)
        # U_I^x (sum_i a_i c_i) = sum_i a_i U_I^x c_i (the a_i sum to 1): project once
        return self.U_I_x(cells), self.att_cells(cells)

    def attend(self, o: Tensor, context: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        """Eq. 4's image term for LSTM outputs o (B, T, H) -> (B, T, E), and the attention
        weights a_t (B, T, G) (None for the paper's decoder)."""
        if self.decoder == "paper":
            return context[0], None
        projected, keys = context  # (B, G, E), (B, G, A)
        energy = self.att_v(torch.tanh(self.att_query(o)[:, :, None] + keys[:, None]))
        weights = energy[..., 0].softmax(dim=-1)  # (B, T, G)
        return weights @ projected, weights

    def _scores(self, o: Tensor, context: tuple[Tensor, ...]) -> Tensor:
        """s_t for LSTM outputs o (B, T, H) and an image context -> (B, T, K+1)."""
        image, _ = self.attend(o, context)
        x_t = torch.relu(self.U_o_x(self.dropout(o)) + image)  # eq. 4, (B, T, E)
        return x_t @ self.U_l[: self.START].T  # eq. 5; START is never a target

    def image_embedding(self, features: Tensor) -> Tensor:
        """The image in label-embedding space: U_I^x I (B, E); for the attention decoder
        U_I^x applied to the mean of the cells (uniform attention)."""
        if self.decoder == "paper":
            return self.U_I_x(features)
        return self.U_I_x(self.encoder.cells(features)).mean(1)

    def _embed_inputs(self, inputs: Tensor) -> Tensor:
        """w_k(t) for inputs (B, T) -> (B, T, E); in training, label_dropout zeroes each
        previous-label input (never START) with its probability."""
        w = self.U_l[inputs]
        if self.training and self.label_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.label_dropout
            w = w.masked_fill((drop & (inputs != self.START))[..., None], 0.0)
        return w

    def _masked_log_softmax(self, s: Tensor, emitted: Tensor) -> Tensor:
        """log softmax over the labels not yet `emitted` (..., K) and END; s (..., K+1)."""
        K = self.num_labels
        s = s.float()  # the softmax and the beam's sums stay in fp32 under autocast
        s = torch.cat([s[..., :K].masked_fill(emitted, float("-inf")), s[..., K:]], dim=-1)
        return s.log_softmax(dim=-1)

    def _check_labels(self, y: Tensor) -> Tensor:
        if y.dim() != 2 or y.shape[1] != self.num_labels:
            raise DataError(
                f"label sets must be multi-hot of shape (B, {self.num_labels}), "
                f"got {tuple(y.shape)}"
            )
        return y != 0  # (B, K) bool

    # ---- training ------------------------------------------------------------------------

    def target_sequences(self, y: Tensor) -> Tensor:
        """Fixed-order targets: (B, K) multi-hot -> (B, T) long.

        Row b: the labels of y[b] in label_priority order, then END, then IGNORE_INDEX;
        T = 1 + the largest label count in the batch.
        """
        y = self._check_labels(y)
        K = self.num_labels
        n = y.sum(1, keepdim=True)  # (B, 1) labels per image
        key = torch.where(y, self.label_rank, K + self.label_rank)  # absent labels sort last
        ordered = key.argsort(dim=1)  # (B, K) label ids
        ordered = torch.cat([ordered, ordered[:, :1]], dim=1)  # (B, K+1), last column a filler
        pos = torch.arange(K + 1, device=y.device)
        end_or_pad = torch.where(pos == n, self.END, IGNORE_INDEX)
        targets = torch.where(pos < n, ordered, end_or_pad)
        return targets[:, : int(n.max()) + 1]

    @torch.no_grad()
    def pla_target_sequences(self, features: Tensor, y: Tensor) -> Tensor:
        """Predicted-label-alignment targets (Yazici et al. 2020): (B, D), (B, K) -> (B, T) long.

        At each step the target is the true label not yet emitted that the model currently
        scores highest, then END once all are emitted; that label is also the next input. The
        choice carries no gradient: the loss is then plain teacher forcing on these targets.
        """
        y = self._check_labels(y)
        B, K = y.shape
        n = y.sum(1)  # (B,)
        T = int(n.max()) + 1
        remaining = y.clone()  # (B, K) true labels not emitted yet
        targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=y.device)
        context = self.image_context(features)
        prev = torch.full((B,), self.START, dtype=torch.long, device=y.device)
        state = None
        for t in range(T):
            o, state = self.lstm(self.U_l[prev][:, None], state)  # (B, 1, H)
            s = self._scores(o, context)[:, 0, :K]  # (B, K)
            best = s.masked_fill(~remaining, float("-inf")).argmax(1)  # (B,)
            end_or_pad = torch.where(n == t, self.END, IGNORE_INDEX)
            targets[:, t] = torch.where(remaining.any(1), best, end_or_pad)
            remaining[torch.arange(B, device=y.device), best] = False
            prev = targets[:, t].clamp(min=0)  # padding rows feed label 0; they are ignored
        return targets

    def sequence_log_probs(self, features: Tensor, inputs: Tensor) -> Tensor:
        """Teacher-forced log P(next label | I, inputs[:, :t+1]) at every step t.

        features (B, D); inputs (B, T) long starting with START -> (B, T, K+1). Labels already
        among the inputs get probability 0 (the softmax is renormalised over the rest).
        """
        K = self.num_labels
        w = self._embed_inputs(inputs)  # (B, T, E): w_k(t) = U_l e_k, eq. 2
        o, _ = self.lstm(w)  # (B, T, H): o(t), eq. 3
        s = self._scores(o, self.image_context(features))  # (B, T, K+1)
        emitted = F.one_hot(inputs, K + 2)[..., :K].cumsum(dim=1) > 0  # (B, T, K)
        return self._masked_log_softmax(s, emitted)

    def attention_weights(self, features: Tensor, inputs: Tensor) -> Tensor:
        """Teacher-forced attention weights a_t (B, T, G) for inputs (B, T) starting with START:
        where the step after inputs[:, t] looks, cells row-major. Attention decoder only."""
        if self.decoder != "attention":
            raise ConfigError("this CNN-RNN has the paper's decoder, which has no attention")
        o, _ = self.lstm(self._embed_inputs(inputs))
        _, weights = self.attend(o, self.image_context(features))
        assert weights is not None
        return weights

    def teacher_forcing(self, features: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D), (B, K) -> log-probs (B, T, K+1) and the targets (B, T) they are scored on."""
        if self.order == "pla":
            targets = self.pla_target_sequences(features, y)
        else:
            targets = self.target_sequences(y)
        prev = targets[:, :-1].masked_fill(targets[:, :-1] == IGNORE_INDEX, self.END)
        start = torch.full_like(targets[:, :1], self.START)
        inputs = torch.cat([start, prev], dim=1)  # (B, T): START, then the targets shifted
        return self.sequence_log_probs(features, inputs), targets

    def forward(self, x: Tensor, targets: Tensor) -> SequenceOutput:
        """Teacher-forced training pass: images x (B, 1, H, W), multi-hot label sets (B, K).

        The encoder runs under the caller's autocast; the decoder always in fp32 (its softmax
        and the beam's sums need it). `cnnrnn.losses.SequenceNLL` turns the output into the
        loss.
        """
        features = self.encode(x).float()  # (B, D)
        with torch.autocast(x.device.type, enabled=False):
            log_probs, seq_targets = self.teacher_forcing(features, targets)
            aux = None
            if self.aux_head is not None:
                aux = self.aux_head(self.dropout(features)).float()  # (B, K)
        return SequenceOutput(log_probs, seq_targets, aux)

    # ---- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, features: Tensor, beam_width: int = 1) -> Decoded:
        """Beam search (paper Sec. 3.3) for features (B, D); width 1 is greedy decoding.

        Each step extends the open paths of an image by every label not yet in them and by END,
        and keeps the `beam_width` most probable extensions; those ending in END join the
        image's completed set (the N best kept). An image stops once its best open path is less
        probable than its N-th completed one; log-probs only fall, so no open path could still
        enter the set. Every path ends by step K+1, when only END is left. All images and beams
        run through the LSTM together, B*N rows per step.
        """
        if beam_width < 1:
            raise ConfigError(f"beam width must be at least 1, got {beam_width}")
        B, N, K = features.shape[0], beam_width, self.num_labels
        dev, inf = features.device, float("inf")
        rows = torch.arange(B, device=dev)[:, None]  # (B, 1), for per-image gathers
        context = tuple(c.repeat_interleave(N, dim=0) for c in self.image_context(features))

        logp = torch.full((B, N), -inf, device=dev)  # open paths; one live path at the start
        logp[:, 0] = 0.0
        prev = torch.full((B, N), self.START, dtype=torch.long, device=dev)
        emitted = torch.zeros(B, N, K, dtype=torch.bool, device=dev)
        paths = torch.full((B, N, K + 1), -1, dtype=torch.long, device=dev)
        probs = torch.zeros(B, N, K, device=dev)  # max over steps of each label's P
        done_logp = torch.full((B, N), -inf, device=dev)  # completed paths, best first
        done_paths, done_probs = paths.clone(), probs.clone()
        state = None
        for t in range(K + 1):
            o, state = self.lstm(self.U_l[prev.flatten()][:, None], state)  # (B*N, 1, H)
            s = self._scores(o, context).view(B, N, K + 1)
            lp = self._masked_log_softmax(s, emitted)  # (B, N, K+1)
            probs = torch.maximum(probs, lp[..., :K].exp())
            top, idx = (logp[..., None] + lp).view(B, N * (K + 1)).topk(N, dim=1)  # (B, N)
            parent, label = idx // (K + 1), idx % (K + 1)
            emitted, paths, probs = emitted[rows, parent], paths[rows, parent], probs[rows, parent]
            state = tuple(h[:, (rows * N + parent).flatten()] for h in state)
            paths[..., t] = label
            ended = label == self.END
            done_logp, keep = torch.cat([done_logp, top.masked_fill(~ended, -inf)], 1).topk(N)
            done_paths = torch.cat([done_paths, paths], 1)[rows, keep]
            done_probs = torch.cat([done_probs, probs], 1)[rows, keep]
            logp = top.masked_fill(ended, -inf)
            emitted = emitted | F.one_hot(label, K + 1)[..., :K].bool()
            prev = label
            finished = logp.max(1).values < done_logp[:, -1]  # the paper's stopping rule
            logp = logp.masked_fill(finished[:, None], -inf)
            if torch.isneginf(logp).all():
                break

        best = done_paths[:, 0]  # (B, K+1)
        is_label = (best >= 0) & (best < K)
        label_sets = (F.one_hot(best.clamp(min=0), K + 1)[..., :K] * is_label[..., None]).amax(1)
        label_probs = done_probs[:, 0]
        scores = 0.5 * (label_sets + label_probs)  # emitted labels above all others
        return Decoded(done_paths, done_logp, label_sets.to(torch.uint8), label_probs, scores)

    @torch.no_grad()
    def predict_from_features(self, features: Tensor, beam_width: int = 1) -> tuple[Tensor, Tensor]:
        """(B, D) -> label sets (B, K) uint8 multi-hot and per-label scores (B, K) in [0, 1]."""
        decoded = self.decode(features, beam_width)
        return decoded.label_sets, decoded.scores

    @torch.no_grad()
    def predict(self, x: Tensor, beam_width: int = 1) -> tuple[Tensor, Tensor]:
        """(B, 1, H, W) images -> label sets (B, K) uint8 and scores (B, K); call eval() first.

        The encoder runs under the caller's autocast, the beam search in fp32."""
        features = self.encode(x).float()  # (B, D)
        with torch.autocast(x.device.type, enabled=False):
            return self.predict_from_features(features, beam_width)
