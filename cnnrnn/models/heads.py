"""Registry entries of the multilabel models: the CNN-RNN, the binary-relevance baseline and
the query head (label queries over the grid cells, trained as binary relevance).

All wrap an image encoder: the VGG-16-style one (`model.encoder = "vgg16"`, the default;
`encoder_width` and `encoder_batch_norm` shape it and apply to it only) or a timm network by
name (`model.encoder = "timm:resnet18"`; see timm_encoder.py). Built from the registry the
encoder is freshly initialised: that is what loading a checkpoint needs (its state_dict brings
every weight, the label order and the BCE threshold). Training builds them through
`cnnrnn.multilabel`, which brings a pretrained encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnrnn.errors import ConfigError
from cnnrnn.models.bce import BCEHead
from cnnrnn.models.cnn_rnn import CNNRNN, DECODERS
from cnnrnn.models.encoder import GridEncoder
from cnnrnn.models.query import QueryHead
from cnnrnn.models.registry import register
from cnnrnn.models.timm_encoder import TimmEncoder, check_encoder, is_timm
from cnnrnn.models.vgg import VGGEncoder, check_encoder_input, load_torchvision_vgg16

MULTI = ("multilabel",)


@dataclass(frozen=True)
class CNNRNNArgs:
    # "vgg16" (the VGG-16-style encoder, models/vgg.py) or "timm:<name>", a timm network that
    # offers a feature map (models/timm_encoder.py), e.g. "timm:resnet18"
    encoder: str = "vgg16"
    encoder_width: float = 0.25  # vgg16 only: its width; 1.0 for torchvision weights
    encoder_batch_norm: bool = True  # vgg16 only
    # what the encoder reads: "fashion-mnist" (as is) or "imagenet" (torchvision weights: the
    # grey input shown as ImageNet-normalised RGB by a fixed input layer; see vgg.py)
    encoder_input: str = "fashion-mnist"
    image_grid: int = 2  # encoder map pooled to grid x grid and flattened; 1 = global (paper)
    per_cell: bool = False  # encode each grid cell alone (uses the mosaic layout; see vgg.py)
    embed_dim: int = 64  # label embedding size E (>= K+1, so scores are not rank-limited)
    hidden_size: int = 256  # LSTM units
    dropout: float = 0.1
    aux_bce: float = 0.0  # weight of a per-label BCE loss on I (semantic regularisation); 0 = paper
    # "paper": eq. 4's image term the same at every step; "attention": each step attends over
    # the encoder's image_grid x image_grid cells (Show-Attend-Tell style; see cnn_rnn.py)
    decoder: str = "paper"
    attention_dim: int = 64  # A, the size of the attention's hidden layer
    label_dropout: float = 0.0  # training: drop each previous-label input with this probability

    def validate(self) -> None:
        check_encoder(self.encoder)
        check_encoder_input(self.encoder_input)
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got "
                              f"{self.decoder!r}")
        if self.decoder == "attention" and self.image_grid < 2:
            raise ConfigError("the attention decoder attends over grid cells: set "
                              "model.image_grid to 2 or more")
        if self.attention_dim < 1:
            raise ConfigError(f"attention_dim must be >= 1, got {self.attention_dim}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.image_grid < 1:
            raise ConfigError(f"image_grid must be >= 1, got {self.image_grid}")
        if self.embed_dim < 1 or self.hidden_size < 1:
            raise ConfigError("embed_dim and hidden_size must be >= 1")
        if self.aux_bce < 0:
            raise ConfigError(f"aux_bce is a loss weight >= 0, got {self.aux_bce}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class BCEArgs:
    encoder: str = "vgg16"  # as for the CNN-RNN
    encoder_width: float = 0.25  # vgg16 only
    encoder_batch_norm: bool = True  # vgg16 only
    encoder_input: str = "fashion-mnist"  # as for the CNN-RNN
    image_grid: int = 2  # as for the CNN-RNN: both read the same image features
    per_cell: bool = False
    dropout: float = 0.1
    # a linear head on the pooled features predicts the number of labels 0..K; the image then
    # gets that many top-scored labels instead of those over the threshold (models/count.py)
    count_head: bool = False

    def validate(self) -> None:
        check_encoder(self.encoder)
        check_encoder_input(self.encoder_input)
        if self.image_grid < 1:
            raise ConfigError(f"image_grid must be >= 1, got {self.image_grid}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class QueryArgs:
    encoder: str = "vgg16"  # as for the CNN-RNN
    encoder_width: float = 0.25  # vgg16 only
    encoder_batch_norm: bool = True  # vgg16 only
    encoder_input: str = "fashion-mnist"  # as for the CNN-RNN
    image_grid: int = 2  # the queries attend over image_grid x image_grid cells
    per_cell: bool = False
    d_model: int = 64  # width of the queries and of the transformer decoder
    heads: int = 4  # attention heads; d_model must be a multiple
    layers: int = 1  # transformer decoder layers
    dropout: float = 0.1  # inside the decoder
    count_head: bool = False  # as for bce

    def validate(self) -> None:
        check_encoder(self.encoder)
        check_encoder_input(self.encoder_input)
        if self.image_grid < 1:
            raise ConfigError(f"image_grid must be >= 1, got {self.image_grid}")
        if self.layers < 1 or self.heads < 1 or self.d_model < 1:
            raise ConfigError("d_model, heads and layers must be >= 1")
        if self.d_model % self.heads:
            raise ConfigError(f"d_model ({self.d_model}) must be a multiple of heads "
                              f"({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def build_encoder(args: CNNRNNArgs | BCEArgs | QueryArgs, weights: str | None = None
                  ) -> GridEncoder:
    """The encoder a multilabel model's args describe (`model.encoder`), freshly initialised,
    or with the weights of a local state_dict file: torchvision's VGG-16 for "vgg16"
    (`load_torchvision_vgg16`), a timm (or torchvision) model's for "timm:<name>"."""
    if is_timm(args.encoder):
        return TimmEncoder(args.encoder, input_kind=args.encoder_input, weights=weights)
    encoder = VGGEncoder(args.encoder_width, args.encoder_batch_norm,
                         input_kind=args.encoder_input)
    if weights is not None:
        load_torchvision_vgg16(encoder, weights)  # needs encoder_input "imagenet"
    return encoder


def build_cnn_rnn(args: CNNRNNArgs, num_classes: int, encoder: nn.Module | None = None,
                  label_priority: list[int] | None = None, order: str = "fixed",
                  freeze_encoder: bool = True) -> CNNRNN:
    encoder = encoder if encoder is not None else build_encoder(args)
    encoder.use_pooling("max", args.image_grid, args.per_cell)
    return CNNRNN(encoder, num_classes, args.embed_dim, args.hidden_size, label_priority,
                  order, args.dropout, freeze_encoder, args.aux_bce,  # type: ignore[arg-type]
                  args.decoder, args.attention_dim, args.label_dropout)  # type: ignore[arg-type]


def build_bce(args: BCEArgs, num_classes: int, encoder: nn.Module | None = None,
              freeze_encoder: bool = True, **_: object) -> BCEHead:
    encoder = encoder if encoder is not None else build_encoder(args)
    encoder.use_pooling("max", args.image_grid, args.per_cell)
    model = BCEHead(encoder, num_classes, args.dropout, freeze_encoder, args.count_head)
    # The decision thresholds (one per label) are chosen on validation data; a buffer, so
    # checkpoints carry them.
    model.register_buffer("threshold", torch.full((num_classes,), 0.5))
    return model


def build_query(args: QueryArgs, num_classes: int, encoder: nn.Module | None = None,
                freeze_encoder: bool = True, **_: object) -> QueryHead:
    encoder = encoder if encoder is not None else build_encoder(args)
    encoder.use_pooling("max", args.image_grid, args.per_cell)
    model = QueryHead(encoder, num_classes, args.d_model, args.heads,  # type: ignore[arg-type]
                      args.layers, args.dropout, freeze_encoder, args.count_head)
    model.register_buffer("threshold", torch.full((num_classes,), 0.5))  # as bce's
    return model


register("cnn-rnn", CNNRNNArgs, MULTI,
         "CNN-RNN (Wang et al. 2016): encoder + LSTM over label embeddings, beam search")(
    build_cnn_rnn)
register("bce", BCEArgs, MULTI, "binary relevance: encoder + linear + sigmoid per label")(
    build_bce)
register("query", QueryArgs, MULTI,
         "query head (after Query2Label): label queries cross-attend over the grid cells, "
         "a sigmoid per label")(build_query)
