"""`--encoder-weights FILE`: torchvision's VGG-16 weights see what torchvision's model sees.

The package feeds its models Fashion-MNIST-normalised grey input; torchvision's weights expect
an ImageNet-normalised RGB image. An encoder with `encoder_input = "imagenet"` turns the one
into the other with a fixed input layer, so on real Fashion-MNIST mosaics shown as grey RGB its
features are torchvision's own. The weights here are random (weights=None): nothing is fetched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cnnrnn.config import config_from_dict, load_config
from cnnrnn.data.loader import to_input
from cnnrnn.data.mosaics import make_split_mosaics
from cnnrnn.encoders import prepare
from cnnrnn.errors import CheckpointError, ConfigError
from cnnrnn.evaluate import load_run
from cnnrnn.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGGEncoder, load_torchvision_vgg16
from cnnrnn.tasks import get_task
from cnnrnn.tasks.multilabel import encoder_from_run
from cnnrnn.train import train


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[bool, tuple[nn.Module, Path]]:
    """batch_norm -> (torchvision vgg16 / vgg16_bn in eval mode, its saved state_dict)."""
    folder = tmp_path_factory.mktemp("torchvision")
    out = {}
    for batch_norm in (False, True):
        torch.manual_seed(0)
        make = torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16
        tv = make(weights=None).eval()
        with torch.no_grad():  # non-trivial BN statistics, so the buffers matter too
            for m in tv.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        path = folder / f"vgg16{'_bn' if batch_norm else ''}.pt"
        torch.save(tv.state_dict(), path)
        out[batch_norm] = (tv, path)
    return out


@pytest.fixture(scope="module")
def mosaics(fmnist) -> torch.Tensor:
    """Four real 56x56 test mosaics, (4, 56, 56) uint8 (empty cells and borders included)."""
    return make_split_mosaics(fmnist, "test", 4, "outfits", seed=0)[0]


def torchvision_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> the grey image shown as RGB, ImageNet-normalised: (B, 3, H, W)."""
    p = images.float().div(255.0).unsqueeze(1).repeat(1, 3, 1, 1)  # all three channels = p
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (p - mean) / std


def after_third_pooling(features: nn.Sequential) -> nn.Sequential:
    """The layers up to the third max-pooling and the ReLU next to it: 56 -> 28 -> 14 -> 7 in
    ceil and floor mode alike (the package pools with ceil_mode, torchvision without, so later
    maps differ in size). torchvision's ReLU comes before the pooling, the package's after it
    (`pool_then_relu`: the same numbers)."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    relu_after = isinstance(features[pools[2] + 1], nn.ReLU)
    return features[:pools[2] + 1 + relu_after]


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def summed_rgb_encoder(tv: nn.Module, batch_norm: bool) -> VGGEncoder:
    """The old import: a one-channel encoder reading the package's input as is, the first
    convolution's RGB filters summed (exact only for an input torchvision would see as is)."""
    feats = {k[len("features."):]: v for k, v in tv.state_dict().items()
             if k.startswith("features.")}
    feats["0.weight"] = feats["0.weight"].sum(dim=1, keepdim=True)
    old = VGGEncoder(1.0, batch_norm).eval()
    old.features.load_state_dict(feats)
    return old


@pytest.mark.parametrize("batch_norm", [False, True])
def test_imagenet_input_gives_torchvision_features_on_real_mosaics(weights, mosaics, batch_norm):
    tv, path = weights[batch_norm]
    enc = VGGEncoder(1.0, batch_norm, input_kind="imagenet").eval()
    load_torchvision_vgg16(enc, path)
    assert not list(enc.input.parameters())  # a fixed layer: nothing to train
    x = to_input(mosaics)  # (4, 1, 56, 56), what the package feeds its models
    with torch.no_grad():
        want_first = tv.features[0](torchvision_input(mosaics))  # (4, 64, 56, 56)
        want = after_third_pooling(tv.features)(torchvision_input(mosaics))  # (4, 256, 7, 7)
        got_first = enc.features[0](enc.input(x))
        got = after_third_pooling(enc.features)(enc.input(x))
        old = summed_rgb_encoder(tv, batch_norm)
        old_first = old.features[0](x)
        old_map = after_third_pooling(old.features)(x)
    assert got.shape == want.shape == (4, 256, 7, 7)
    torch.testing.assert_close(got_first, want_first, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # Without the ImageNet input layer (the old import) the maps are far off (about 0.5).
    assert relative_difference(old_first, want_first) > 0.3
    assert relative_difference(old_map, want) > 0.3


def test_encoder_input_is_validated():
    with pytest.raises(ConfigError, match="encoder_input must be one of fashion-mnist, imagenet, "
                                          "got 'rgb'"):
        load_config("multilabel", "bce", overrides={"model.encoder_input": "rgb"})


def test_encoder_weights_mean_width_one_and_imagenet_input(weights):
    path = str(weights[True][1])
    cfg = prepare(load_config("multilabel", "bce", overrides={
        "multilabel.encoder_weights": path}))
    assert cfg.model_args.encoder_width == 1.0
    assert cfg.model_args.encoder_input == "imagenet"
    over = {"multilabel.encoder_weights": path, "model.encoder_input": "fashion-mnist"}
    with pytest.raises(ConfigError, match="model.encoder_input = fashion-mnist was given, but "
                                          "the encoder .* has encoder_input = imagenet"):
        prepare(load_config("multilabel", "bce", overrides=over), explicit=over)


def test_imagenet_model_round_trips_through_its_config(tmp_path, mosaics):
    torch.manual_seed(0)
    cfg = load_config("multilabel", "cnn-rnn", overrides={
        "model.encoder_width": 1.0, "model.encoder_batch_norm": False,
        "model.encoder_input": "imagenet", "model.hidden_size": 8, "model.embed_dim": 16})
    task = get_task("multilabel")
    model = task.build(cfg, None).eval()
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    state = torch.load(path, weights_only=True)
    again = task.build(config_from_dict(state["config"]), None).eval()
    again.load_state_dict(state["model"], strict=True)
    x = to_input(mosaics)
    with torch.no_grad():
        torch.testing.assert_close(again.encoder.forward_features(x),
                                   model.encoder.forward_features(x), rtol=0, atol=0)
    # The config is what says the encoder reads RGB: without it the state_dict does not fit.
    grey = load_config("multilabel", "cnn-rnn", overrides={
        "model.encoder_width": 1.0, "model.encoder_batch_norm": False,
        "model.hidden_size": 8, "model.embed_dim": 16})
    with pytest.raises(RuntimeError, match="features.0.weight"):
        task.build(grey, None).load_state_dict(state["model"], strict=True)


def test_training_on_torchvision_weights_and_passing_them_on(weights, data_dir, tmp_path,
                                                             mosaics):
    tv, path = weights[True]
    over = {"multilabel.encoder_weights": str(path), "multilabel.finetune_encoder": False,
            "precision": "fp32", "epochs": 1, "limit_train": 8, "batch_size": 4,
            "eval_batch_size": 8, "multilabel.val_mosaics": 8, "multilabel.test_mosaics": 8}
    cfg = prepare(load_config("multilabel", "bce", overrides=over), explicit=over)
    run = tmp_path / "bce"
    train(cfg, run, data_dir=data_dir)
    written = (run / "config.toml").read_text()
    assert 'encoder_input = "imagenet"' in written and "encoder_width = 1.0" in written
    # the run rebuilds from its checkpoint alone, torchvision's (frozen) encoder included
    _, _, model, _ = load_run(run)
    assert model.encoder.input_kind == "imagenet"
    assert torch.equal(model.encoder.features[0].weight, tv.state_dict()["features.0.weight"])
    # a multilabel run used as --encoder-checkpoint passes its encoder input on
    over2 = {"multilabel.encoder_checkpoint": str(run), "model.hidden_size": 8,
             "model.embed_dim": 16}
    cfg2 = prepare(load_config("multilabel", "cnn-rnn", overrides=over2), explicit=over2)
    assert cfg2.model_args.encoder_input == "imagenet" and cfg2.model_args.encoder_width == 1.0
    enc = encoder_from_run(run, cfg2).eval()
    with torch.no_grad():
        got = after_third_pooling(enc.features)(enc.input(to_input(mosaics)))
        want = after_third_pooling(tv.features)(torchvision_input(mosaics))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    grey = cfg2.to_dict()
    grey["model"] = {**grey["model"], "encoder_input": "fashion-mnist"}
    with pytest.raises(CheckpointError, match="set .*model.encoder_input=imagenet"):
        encoder_from_run(run, config_from_dict(grey))
