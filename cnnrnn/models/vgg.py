"""A VGG-16-style CNN (configuration D) for one grey channel, split into encoder and head.

Thirteen 3x3 convolutions in blocks of 2, 2, 3, 3, 3 with max-pooling between blocks, as in
Simonyan & Zisserman (2015). Two changes let the same weights read 28x28 items and 56x56 mosaics:
pooling uses ceil_mode (28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of vanishing), and a global pooling
replaces the fixed-size classifier. `encoder.features` keeps torchvision's layer indices, so a
torchvision `vgg16` / `vgg16_bn` state_dict loads into it (see `load_torchvision_vgg16`); such an
encoder reads its input through `ImageNetInput`, a fixed layer in front of the convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnrnn.data.fashion_mnist import MEAN, STD
from cnnrnn.errors import CheckpointError, ConfigError
from cnnrnn.models.conv import Conv2d, pool_then_relu
from cnnrnn.models.encoder import EncoderClassifier, GridEncoder
from cnnrnn.models.registry import register

# Configuration D: output channels of each 3x3 convolution, "M" = 2x2 max-pooling.
CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# What the encoder's first convolution reads: the package's own input (one grey channel,
# normalised with Fashion-MNIST's statistics), or the RGB input torchvision's ImageNet weights
# were trained on, made from the same grey image by `ImageNetInput`.
ENCODER_INPUTS = ("fashion-mnist", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per RGB channel, pixels on a 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_encoder_input(value: str) -> None:
    if value not in ENCODER_INPUTS:
        raise ConfigError(f"encoder_input must be one of {', '.join(ENCODER_INPUTS)}, "
                          f"got {value!r}")


class ImageNetInput(nn.Module):
    """(B, 1, H, W) Fashion-MNIST-normalised grey -> (B, 3, H, W) ImageNet-normalised RGB.

    The grey image shown as RGB (all three channels = the pixel p in [0, 1]), normalised per
    channel as torchvision's ImageNet weights expect: (p - m_c) / s_c. Done here, in front of
    an unchanged 3-channel first convolution, rather than folded into that convolution: the
    folded mean would also be added at the zero padding, so features at the image borders
    would differ (and folding only the scales into a one-channel weight would still need three
    different means at the padding). The first convolution keeps torchvision's weights as
    they are. No parameters; the constants are non-persistent buffers (they follow
    `.to(device)`; the config, not the state_dict, says the layer is there).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x * STD + MEAN  # (B, 1, H, W), back to pixels in [0, 1]
        return (p - self.mean) / self.std  # (B, 3, H, W)


@dataclass(frozen=True)
class VGGArgs:
    width: float = 0.25  # channel multiplier: 1.0 = 64..512 channels (torchvision's size)
    batch_norm: bool = True
    dropout: float = 0.3  # before the linear head
    pool: str = "max"  # global pooling of the last feature map: "max" or "avg"

    def validate(self) -> None:
        if not 0.0 < self.width <= 4.0:
            raise ConfigError(f"width must be in (0, 4], got {self.width}")
        if self.pool not in ("max", "avg"):
            raise ConfigError(f"pool must be 'max' or 'avg', got {self.pool!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class VGGEncoder(GridEncoder):
    """(B, 1, H, W) -> (B, C) image features; C = 512 * width.

    `input_kind` "imagenet" puts `ImageNetInput` in front of the convolutions (the first one
    then reads 3 channels), for torchvision's weights; "fashion-mnist" reads the input as is.
    """

    def __init__(self, width: float = 0.25, batch_norm: bool = True, pool: str = "max",
                 input_kind: str = "fashion-mnist"):
        super().__init__()
        check_encoder_input(input_kind)
        self.input_kind = input_kind
        self.input = ImageNetInput() if input_kind == "imagenet" else nn.Identity()
        layers: list[nn.Module] = []
        c_in = 3 if input_kind == "imagenet" else 1
        for v in CFG_D:
            if v == "M":
                # Pool before the block's last ReLU rather than after it (`pool_then_relu`)
                layers[-1:] = pool_then_relu(nn.MaxPool2d(2, 2, ceil_mode=True), layers[-1])
                continue
            c_out = max(1, round(int(v) * width))
            layers.append(Conv2d(c_in, c_out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.channels = c_in
        self.use_pooling(pool, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class VGG16(EncoderClassifier):
    """VGG-16-style classifier: `encoder` (reusable by the CNN-RNN) and a linear `head`."""

    def __init__(self, args: VGGArgs, num_classes: int = 10):
        super().__init__(VGGEncoder(args.width, args.batch_norm, args.pool), args.dropout,
                         num_classes)


register("vgg16", VGGArgs, ("single-label",),
         "VGG-16 layout (13 convs, blocks 2-2-3-3-3), width multiplier, global pooling")(
    lambda args, num_classes: VGG16(args, num_classes))


def torchvision_features_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision vgg16(_bn) state_dict -> `VGGEncoder.features` state_dict, unchanged.

    The first convolution keeps its 3 input channels: an "imagenet" encoder feeds it RGB.
    """
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if "0.weight" not in feats or feats["0.weight"].dim() != 4:
        raise CheckpointError("not a torchvision VGG-16 state_dict (no features.0.weight); save "
                              "one with torch.save(torchvision.models.vgg16().state_dict(), F)")
    return feats


def load_torchvision_vgg16(encoder: VGGEncoder, path: str | Path) -> None:
    """Load a torchvision `vgg16` / `vgg16_bn` state_dict file into a width-1.0 encoder.

    The encoder must read "imagenet" input, so that its features are torchvision's own on the
    grey image shown as RGB. The errors name the multilabel models' keys: they are the only
    models built on torchvision's weights.
    """
    from cnnrnn.checkpoint import read_torch_file

    path = Path(path)
    state = read_torch_file(path, "encoder weights", "pass a file saved with torch.save("
                            "torchvision.models.vgg16(weights=...).state_dict(), F)")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    feats = torchvision_features_state(state)
    has_bn = any(k.endswith("running_mean") for k in feats)
    own_bn = any(isinstance(m, nn.BatchNorm2d) for m in encoder.features)
    if has_bn != own_bn:
        raise CheckpointError(f"{path} is a VGG-16 {'with' if has_bn else 'without'} batch norm "
                              f"but the model has batch_norm={own_bn}; set "
                              f"model.encoder_batch_norm = {str(has_bn).lower()}")
    if feats["0.weight"].shape[0] != encoder.features[0].out_channels:
        raise CheckpointError(f"{path} has width 1.0 (64 channels first) but the model has "
                              f"{encoder.features[0].out_channels}; set model.encoder_width = 1.0")
    if encoder.input_kind != "imagenet":
        raise CheckpointError(f"{path} holds torchvision weights, which read ImageNet-normalised "
                              f"RGB, but the model's encoder_input is {encoder.input_kind!r}; "
                              'set model.encoder_input = "imagenet"')
    try:
        encoder.features.load_state_dict(feats, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the VGG-16 encoder: {first}") from None
