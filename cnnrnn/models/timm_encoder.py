"""Encoders by timm model name: `model.encoder = "timm:<name>"`, e.g. "timm:resnet18".

Any timm model that offers a feature map (`timm.create_model(name, features_only=True)`) can
stand in for the VGG-16-style encoder: `TimmEncoder` reads its last feature map
(`out_indices=(-1,)`) and pools it as `VGGEncoder` does (`GridEncoder`), so the CNN-RNN, BCE,
Grad-CAM and the grid cells work alike. The network reads one grey channel (`in_chans=1`),
or, with `encoder_input = "imagenet"`, the RGB image `ImageNetInput` makes of it
(`in_chans=3`, for ImageNet weights). A resnet-style net (stride 32) gives a 1x1 map for a
28x28 item and a 2x2 map for a 56x56 mosaic; a net that cannot read a 28x28 image at all (a
ViT fixed at 224x224, a ConvNeXt whose last downsampling needs a 2x2 map) is refused by name.

Nothing is ever downloaded: models are created with `pretrained=False`; weights come from
training (the single-label "timm" model here, pretrained as the vgg16 one is) or from a local
state_dict file (`TimmEncoder(..., weights=FILE)`: a timm model's, or a torchvision model's
whose keys timm shares, such as torchvision's resnet18).

`timm` is imported on first use only, so importing cnnrnn stays fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnrnn.errors import CheckpointError, ConfigError
from cnnrnn.models.encoder import EncoderClassifier, GridEncoder
from cnnrnn.models.registry import register
from cnnrnn.models.vgg import ImageNetInput, check_encoder_input
from cnnrnn.schema import suggest

VGG16 = "vgg16"  # the package's own VGG-16-style encoder (models/vgg.py)
TIMM_PREFIX = "timm:"
PROBE_SIZE = 28  # every encoder must read a single 28x28 item (and so a mosaic's cells)


def is_timm(encoder: str) -> bool:
    return encoder.startswith(TIMM_PREFIX)


def timm_name(encoder: str) -> str:
    """"timm:resnet18" -> "resnet18"."""
    return encoder[len(TIMM_PREFIX):] if is_timm(encoder) else encoder


def _timm() -> Any:
    try:
        import timm
    except ImportError:  # a declared dependency; only a broken install lacks it
        raise ConfigError("a timm encoder needs the timm package: pip install timm") from None
    return timm


def check_encoder(encoder: str) -> None:
    """`model.encoder` is "vgg16" or "timm:<name>" with a timm model that can be an encoder."""
    if encoder == VGG16:
        return
    if not is_timm(encoder) or not timm_name(encoder):
        hint = (f" (did you mean {TIMM_PREFIX + encoder!r}?)"
                if encoder and _timm().is_model(encoder) else "")
        raise ConfigError(f"model.encoder must be {VGG16!r} or 'timm:<name>' (a timm model, "
                          f"e.g. 'timm:resnet18'), got {encoder!r}{hint}")
    probe_channels(timm_name(encoder), 1)


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _create(name: str, in_chans: int, **kwargs: Any) -> nn.Module:
    """timm's feature network of `name`: (B, in_chans, H, W) -> [the last map (B, C, h, w)].

    Only for names `probe_channels` accepted: `timm.is_model` is true, so no hub or URL is
    ever consulted; `pretrained` is False unless a state_dict is passed in `kwargs`.
    """
    kwargs.setdefault("pretrained", False)
    return _timm().create_model(name, features_only=True, out_indices=(-1,),
                                in_chans=in_chans, num_classes=0, **kwargs)


@functools.lru_cache(maxsize=32)
def probe_channels(name: str, in_chans: int) -> int:
    """The channels of `name`'s last feature map, checked on the meta device (nothing is
    allocated): the name is timm's, the model offers a feature map and reads a 28x28 image.
    Each problem is one ConfigError line."""
    timm = _timm()
    if not timm.is_model(name):
        known = timm.list_models()
        raise ConfigError(f"unknown timm model {name!r}{suggest(name, known)}; "
                          "timm.list_models() lists the names (any that offers a feature map, "
                          "e.g. resnet18)")
    with torch.device("meta"):
        try:
            net = _create(name, in_chans)
        except Exception as e:
            raise ConfigError(f"timm model {name!r} cannot be an encoder: it offers no feature "
                              f"map (features_only) ({_first_line(e)}); choose another, e.g. "
                              "timm:resnet18") from None
        try:
            with torch.no_grad():
                out = net.eval()(torch.zeros(2, in_chans, PROBE_SIZE, PROBE_SIZE))
        except Exception as e:
            raise ConfigError(f"timm model {name!r} cannot read {PROBE_SIZE}x{PROBE_SIZE} "
                              f"images ({_first_line(e)}); choose a convolutional one, e.g. "
                              "timm:resnet18") from None
    fmap = out[-1] if isinstance(out, list | tuple) else out
    if not isinstance(fmap, Tensor) or fmap.dim() != 4:
        raise ConfigError(f"timm model {name!r} gives no (B, C, h, w) feature map; choose a "
                          "convolutional one, e.g. timm:resnet18")
    return int(fmap.shape[1])


class TimmFeatureMap(nn.Module):
    """timm's feature network (`body`) giving its last feature map as one tensor."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out[-1] if isinstance(out, list | tuple) else out  # (B, C, h, w)


class TimmEncoder(GridEncoder):
    """(B, 1, H, W) -> (B, C * grid * grid) features of a timm network; the same interface as
    `VGGEncoder` (`features`, `input`, `channels`, `use_pooling`, `cells`, ...).

    `encoder`: "timm:<name>" (or the bare name). `input_kind` "imagenet" puts `ImageNetInput`
    in front of a 3-channel network, for ImageNet weights; "fashion-mnist" feeds the grey
    channel as is. `weights`: a local state_dict file loaded into the network (needs
    "imagenet"); without it the network has timm's random initialisation.
    """

    def __init__(self, encoder: str = "timm:resnet18", pool: str = "max",
                 input_kind: str = "fashion-mnist", weights: str | Path | None = None):
        super().__init__()
        check_encoder_input(input_kind)
        name = timm_name(encoder)
        self.encoder_name = TIMM_PREFIX + name
        self.input_kind = input_kind
        self.input = ImageNetInput() if input_kind == "imagenet" else nn.Identity()
        in_chans = 3 if input_kind == "imagenet" else 1
        self.channels = probe_channels(name, in_chans)
        if weights is None:
            body = _create(name, in_chans)
        else:
            body = _create_from_file(name, in_chans, Path(weights), input_kind)
        self.features = TimmFeatureMap(body)
        self.use_pooling(pool, 1)


def _read_state(path: Path) -> dict[str, Tensor]:
    from cnnrnn.checkpoint import read_torch_file

    state = read_torch_file(path, "encoder weights", "pass a file saved with torch.save("
                            "timm.create_model(NAME).state_dict(), F) (or a torchvision "
                            "model's state_dict with timm's key names)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint of timm's train.py
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds {type(state).__name__ if state else 'nothing'}, "
                              "not a state_dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state_dict: {bad[0]!r} is not a named tensor")
    return state


def _classifier_keys(name: str) -> tuple[str, ...]:
    """The state_dict key prefixes of `name`'s classifier (e.g. "fc." for a resnet)."""
    cfg = _timm().models.get_pretrained_cfg(name)
    classifier = (cfg.classifier if cfg is not None else None) or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{c}." for c in names)


def _create_from_file(name: str, in_chans: int, path: Path, input_kind: str) -> nn.Module:
    """timm's feature network of `name` with the weights of a local state_dict file.

    The classifier's keys are dropped (a feature network has none); every other key must
    match the trunk, name and shape (a strict load). The file is read with
    weights_only=True; timm itself only receives the tensors.
    """
    state = _read_state(path)
    if input_kind != "imagenet":
        raise CheckpointError(f"{path} holds ImageNet-style weights, which read RGB, but the "
                              f"model's encoder_input is {input_kind!r}; set "
                              'model.encoder_input = "imagenet"')
    drop = _classifier_keys(name)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    with torch.device("meta"):  # the trunk's keys and shapes, nothing allocated
        trunk = _timm().create_model(name, pretrained=False, in_chans=in_chans, num_classes=0)
        want = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    # torch fills in a batch norm's missing num_batches_tracked (older files lack it)
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(state[k].shape) != want[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}"
                        f"{', ...' if len(unexpected) > 3 else ''})")
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} keys of another shape ({k}: {tuple(state[k].shape)} in the "
                        f"file, {want[k]} in the model)")
    if problems:
        raise CheckpointError(f"{path} does not fit timm's {name}: {'; '.join(problems)}; "
                              f"save it with torch.save(timm.create_model({name!r})"
                              ".state_dict(), F)")
    try:  # timm moves the trunk's weights into its feature network; the load is strict
        body = _create(name, in_chans, pretrained=True,
                       pretrained_cfg_overlay={"state_dict": state, "num_classes": 0})
    except Exception as e:
        raise CheckpointError(f"{path} does not fit timm's {name} ({_first_line(e)})") from None
    for cfg in (getattr(body, "pretrained_cfg", None), getattr(body, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # timm keeps a copy of the weights there
    return body


# --- the single-label model ---------------------------------------------------------------------

@dataclass(frozen=True)
class TimmArgs:
    encoder: str = "timm:resnet18"  # "timm:<name>", any timm model that offers a feature map
    dropout: float = 0.3  # before the linear head
    pool: str = "max"  # global pooling of the last feature map: "max" or "avg"

    def validate(self) -> None:
        if not is_timm(self.encoder):
            raise ConfigError(f"model.encoder of the timm model must be 'timm:<name>' (e.g. "
                              f"'timm:resnet18'), got {self.encoder!r}; the vgg16 encoder is "
                              "--model vgg16")
        check_encoder(self.encoder)
        if self.pool not in ("max", "avg"):
            raise ConfigError(f"pool must be 'max' or 'avg', got {self.pool!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class TimmClassifier(EncoderClassifier):
    """A timm network's feature map, global pooling, dropout and a linear `head`; its
    `encoder` is reusable by the CNN-RNN and BCE, as VGG16's is."""

    def __init__(self, args: TimmArgs, num_classes: int = 10):
        super().__init__(TimmEncoder(args.encoder, args.pool), args.dropout, num_classes)


register("timm", TimmArgs, ("single-label",),
         "a timm network by name (model.encoder = timm:resnet18), global pooling, linear head")(
    lambda args, num_classes: TimmClassifier(args, num_classes))
