"""Every single-label model: shapes, finite outputs, gradients; the registry; VGG import; every
shipped recipe builds its model, and the GPU recipes are the CPU ones scaled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cnnrnn.config import load_config, read_toml
from cnnrnn.data.fashion_mnist import MEAN, STD
from cnnrnn.errors import CheckpointError, ConfigError
from cnnrnn.models import build_model, count_parameters, model_names
from cnnrnn.models.registry import make_args, register
from cnnrnn.models.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGArgs,
    VGGEncoder,
    load_torchvision_vgg16,
)
from cnnrnn.tasks import get_task

SINGLE = model_names("single-label")


def test_registry_lists_all_single_label_models():
    assert set(SINGLE) >= {"rnn", "lstm", "gru", "cnn", "vgg16"}


@pytest.mark.parametrize("name", SINGLE)
def test_shape_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name)
    if name == "timm":  # timm's resnets start each block's last batch norm at zero scale
        for m in model.modules():  # (zero_init_last): its branch gets no gradient at step 0
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
    x = torch.randn(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    feats = model.forward_features(x)
    assert feats.shape == (3, model.num_features)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_seed_essay_lstm_parameter_count():
    assert count_parameters(build_model("lstm")) == 162_574  # LSTM(28 -> 186) + Linear(186 -> 10)


# The parameter counts docs/results.md gives for each recipe (configs/single_label/<model>.toml).
RECIPE_PARAMETERS = {"rnn": 292_402, "lstm": 325_138, "gru": 122_398, "cnn": 870_826,
                     "vgg16": 3_686_378}


@pytest.mark.parametrize("name", sorted(RECIPE_PARAMETERS))
def test_recipe_configs_build_the_documented_models(name):
    cfg = load_config("single-label", name)
    assert count_parameters(build_model(name, cfg.model_args)) == RECIPE_PARAMETERS[name]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_options(cell):
    model = build_model(cell, {"hidden_size": 16, "num_layers": 2, "bidirectional": True,
                               "dropout": 0.1})
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 32)


def test_recurrent_reads_rows_as_time_steps():
    # Changing only the last row must change the output of a forward-only RNN; the first
    # row's influence passes through all 28 steps.
    torch.manual_seed(0)
    model = build_model("gru", {"hidden_size": 8}).eval()
    x = torch.randn(1, 1, 28, 28)
    y = x.clone()
    y[0, 0, 27] += 1.0
    assert not torch.allclose(model(x), model(y))


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'lstn'.*did you mean 'lstm'.*known "
                                          r"models: cnn, gru, lstm, rnn, timm, vgg16"):
        build_model("lstn", task="single-label")


def test_model_option_typo_and_type():
    with pytest.raises(ConfigError, match=r"unknown key 'hiden_size' in \[model\] of 'lstm' "
                                          r"\(did you mean 'hidden_size'\?\)"):
        make_args("lstm", {"hiden_size": 3})
    with pytest.raises(ConfigError, match="hidden_size must be int, got '3'"):
        make_args("lstm", {"hidden_size": "3"})
    with pytest.raises(ConfigError, match="dropout must be in"):
        make_args("gru", {"dropout": 1.5})


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register("lstm", VGGArgs, ("single-label",), "again")(lambda a, k: None)


def test_vgg_runs_on_items_and_mosaics():
    enc = VGGEncoder(width=0.125)
    assert enc.forward_feature_map(torch.randn(2, 1, 28, 28)).shape[2:] == (1, 1)
    assert enc.forward_feature_map(torch.randn(2, 1, 56, 56)).shape[2:] == (2, 2)
    assert enc.forward_features(torch.randn(2, 1, 56, 56)).shape == (2, enc.num_features)
    convs = [m for m in enc.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13


@pytest.mark.parametrize("batch_norm", [False, True])
def test_torchvision_vgg16_import_gives_the_same_features(tmp_path, batch_norm):
    torch.manual_seed(0)
    tv = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None)
    tv.eval()
    with torch.no_grad():  # non-trivial BN statistics, so the test also covers buffers
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "vgg.pt"
    torch.save(tv.state_dict(), path)
    enc = VGGEncoder(width=1.0, batch_norm=batch_norm, input_kind="imagenet").eval()
    load_torchvision_vgg16(enc, path)
    p = torch.rand(2, 1, 64, 64)  # pixels in [0, 1]; sides stay even, so ceil_mode is moot
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tv.features((p.repeat(1, 3, 1, 1) - mean) / std)
        got = enc.forward_feature_map((p - MEAN) / STD)  # the package's own input
    assert got.shape == expected.shape == (2, 512, 2, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torchvision_import_errors(tmp_path):
    tv = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg.pt"
    torch.save(tv.state_dict(), path)
    with pytest.raises(CheckpointError, match="set model.encoder_width = 1.0"):
        load_torchvision_vgg16(VGGEncoder(0.25, batch_norm=False, input_kind="imagenet"), path)
    with pytest.raises(CheckpointError, match="without batch norm .* set "
                                              "model.encoder_batch_norm = false"):
        load_torchvision_vgg16(VGGEncoder(1.0, batch_norm=True, input_kind="imagenet"), path)
    with pytest.raises(CheckpointError, match="encoder_input is 'fashion-mnist'; set "
                                              'model.encoder_input = "imagenet"'):
        load_torchvision_vgg16(VGGEncoder(width=1.0, batch_norm=False), path)
    with pytest.raises(ConfigError, match="encoder_input must be one of fashion-mnist, imagenet, "
                                          "got 'rgb'"):
        VGGEncoder(input_kind="rgb")
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a torchvision VGG-16 state_dict"):
        load_torchvision_vgg16(VGGEncoder(width=1.0), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_torchvision_vgg16(VGGEncoder(width=1.0), tmp_path / "nope.pt")


def test_grid_pooling_keeps_each_mosaic_cell_apart():
    enc = VGGEncoder(width=0.125).eval()
    x = torch.randn(2, 1, 56, 56)
    fmap = enc.forward_feature_map(x)  # (2, C, 2, 2)
    assert enc.forward_features(x).shape == (2, enc.channels)
    torch.testing.assert_close(enc.forward_features(x), fmap.amax(dim=(2, 3)))
    enc.use_pooling("max", 2)
    assert enc.num_features == 4 * enc.channels
    torch.testing.assert_close(enc.forward_features(x), fmap.flatten(1))


def test_per_cell_encoding_equals_encoding_each_item_alone():
    torch.manual_seed(0)
    enc = VGGEncoder(width=0.125).eval()
    items = torch.randn(4, 1, 28, 28)
    mosaic = torch.cat([torch.cat([items[0], items[1]], 2), torch.cat([items[2], items[3]], 2)],
                       1)[None]  # (1, 1, 56, 56), cells in row-major order
    alone = enc.forward_features(items)  # (4, C)
    enc.use_pooling("max", 2, per_cell=True)
    torch.testing.assert_close(enc.forward_features(mosaic), alone.reshape(1, -1))


CONFIGS = Path(__file__).resolve().parents[1] / "cnnrnn" / "configs"
TRAINING_CONFIGS = sorted(p for p in CONFIGS.rglob("*.toml") if p.parent.name != "mosaics")


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_builds_a_model_that_predicts(path):
    # the GPU recipes included: a typo there would otherwise surface only on a GPU machine
    cfg = load_config(read_toml(path)["task"], config_file=path, overrides={"device": "cpu"})
    task = get_task(cfg.task)
    model = task.build(cfg, None).eval()  # a bare model: no encoder run, no weights fetched
    side = 28 * (cfg.model_args.image_grid if cfg.task == "multilabel" else 1)
    with torch.no_grad():
        out = task.predict(model, torch.zeros(2, 1, side, side), cfg)
    assert all(len(v) == 2 for v in out.values())


# What a GPU recipe may change of the CPU recipe it scales: the batch and with it the learning
# rate (the linear scaling rule), the device, and the network's width.
GPU_RECIPES = {"vgg16.toml": ("single-label", "vgg16"), "cnn-rnn.toml": ("multilabel", "cnn-rnn")}
SCALED = {"batch_size", "eval_batch_size", "lr", "device", "model.width", "model.encoder_width"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.parametrize("name", sorted(GPU_RECIPES))
def test_gpu_recipes_are_the_cpu_recipes_scaled(name):
    task, model = GPU_RECIPES[name]
    cpu = _flat(load_config(task, model).to_dict())
    gpu = _flat(load_config(task, config_file=CONFIGS / "gpu" / name).to_dict())
    changed = {k for k in cpu.keys() | gpu.keys() if cpu.get(k) != gpu.get(k)}
    assert changed <= SCALED, sorted(changed - SCALED)
    assert gpu["lr"] / cpu["lr"] == pytest.approx(gpu["batch_size"] / cpu["batch_size"])
    assert gpu.get("model.width", gpu.get("model.encoder_width")) == 1.0  # full width
