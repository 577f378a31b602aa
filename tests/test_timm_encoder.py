"""Encoders by timm model name (`model.encoder = "timm:<name>"`): they build for the CNN-RNN, BCE
and the single-label "timm" model, give 1x1 maps for items and 2x2 for mosaics, train, round-trip
through checkpoints and the CLI, are pretrained as the vgg16 encoder is, and load local
timm/torchvision weights files. Nothing is downloaded: every network starts from timm's random
initialisation or from a file written here. resnet10t keeps the trainings fast; the weights
files are resnet18's, the network timm and torchvision share key names for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from cnnrnn.analysis.saliency import feature_map
from cnnrnn.cli import app
from cnnrnn.config import config_from_dict, load_config
from cnnrnn.data.fashion_mnist import MEAN, STD
from cnnrnn.data.loader import to_input
from cnnrnn.encoders import prepare, pretraining_key
from cnnrnn.errors import CheckpointError, ConfigError
from cnnrnn.evaluate import load_run, parameter_count
from cnnrnn.models import build_model
from cnnrnn.models.timm_encoder import TimmArgs, TimmClassifier, TimmEncoder, probe_channels
from cnnrnn.models.vgg import IMAGENET_MEAN, IMAGENET_STD
from cnnrnn.tasks import get_task
from cnnrnn.tasks.multilabel import EncoderArchitecture, _encoder

SMALL = "timm:resnet10t"
runner = CliRunner()


def invoke(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def tiny_ml(model: str) -> dict:
    sizes = {"model.hidden_size": 8, "model.embed_dim": 16} if model == "cnn-rnn" else {}
    return {"model.encoder": SMALL, **sizes}


# ---- building -------------------------------------------------------------------------------

def test_feature_maps_of_items_and_mosaics():
    torch.manual_seed(0)
    enc = TimmEncoder(SMALL).eval()
    assert enc.channels == 512 and enc.encoder_name == SMALL
    with torch.no_grad():
        assert enc.forward_feature_map(torch.randn(2, 1, 28, 28)).shape == (2, 512, 1, 1)
        assert enc.forward_feature_map(torch.randn(2, 1, 56, 56)).shape == (2, 512, 2, 2)
        x = torch.randn(2, 1, 56, 56)
        assert enc.forward_features(x).shape == (2, 512) == (2, enc.num_features)
        for per_cell in (False, True):
            enc.use_pooling("avg", 2, per_cell)
            feats = enc.forward_features(x)
            assert feats.shape == (2, 4 * 512) == (2, enc.num_features)
            assert enc.cells(feats).shape == (2, 4, 512)
        # per_cell: each 28x28 cell is encoded alone, as a single item is
        enc.use_pooling("max", 2, per_cell=True)
        cells = enc.cells(enc.forward_features(x))
        enc.use_pooling("max", 1)
        torch.testing.assert_close(cells[:, 3], enc.forward_features(x[:, :, 28:, 28:]))


@pytest.mark.parametrize("model", ["cnn-rnn", "bce"])
def test_multilabel_models_build_on_a_timm_encoder(model):
    task = get_task("multilabel")
    cfg = load_config("multilabel", model, overrides=tiny_ml(model))
    assert cfg.model_args.encoder == SMALL
    torch.manual_seed(0)
    net = task.build(cfg, None).eval()
    assert isinstance(net.encoder, TimmEncoder) and net.encoder.num_features == 4 * 512
    assert parameter_count(task, cfg) == sum(p.numel() for p in net.parameters())  # meta device
    x = torch.randn(2, 1, 56, 56)
    sets, scores = task.predict(net, x, cfg).values()
    assert sets.shape == scores.shape == (2, 10)
    # Grad-CAM reads the encoder's own attributes: its I is forward_features' I
    for per_cell in (False, True):
        net.encoder.use_pooling("max", 2, per_cell)
        fmap, feats = feature_map(net.encoder, x)
        assert fmap.shape == (2, 512, 2, 2)
        torch.testing.assert_close(feats, net.encoder.forward_features(x))


def test_single_label_timm_model_trains_a_step():
    torch.manual_seed(0)
    model = build_model("timm", {"encoder": SMALL, "dropout": 0.0})
    assert isinstance(model, TimmClassifier) and model.num_features == 512
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, y).backward()
    opt.step()
    after = model.state_dict()
    assert not torch.equal(after["encoder.features.body.conv1.0.weight"],
                           before["encoder.features.body.conv1.0.weight"])
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])


# ---- names and configs ----------------------------------------------------------------------

def test_encoder_names_are_checked(user_error, monkeypatch):
    base = ["train", "--task", "multilabel", "--print-config", "--set"]
    assert "unknown timm model 'resnet181' (did you mean 'resnet18'?); timm.list_models()" in \
        user_error(*base, "model.encoder=timm:resnet181")
    assert "did you mean 'timm:resnet18'?" in user_error(*base, "model.encoder=resnet18")
    assert "cannot read 28x28 images" in user_error(*base,
                                                   "model.encoder=timm:vit_tiny_patch16_224")
    assert "unknown timm model 'hf-hub:timm/resnet18'" in user_error(
        *base, "model.encoder=timm:hf-hub:timm/resnet18")  # never a hub look-up
    with pytest.raises(ConfigError, match="the vgg16 encoder is --model vgg16"):
        load_config("single-label", "timm", overrides={"model.encoder": "vgg16"})

    def no_features(*args, **kwargs):
        raise RuntimeError("features_only not implemented for Foo models.")

    monkeypatch.setattr(timm, "create_model", no_features)
    with pytest.raises(ConfigError, match=r"timm model 'resnet10t' cannot be an encoder: it "
                                          r"offers no feature map \(features_only\)"):
        probe_channels.__wrapped__("resnet10t", 1)


def test_old_configs_mean_the_vgg16_encoder():
    cfg = load_config("multilabel", "bce")
    assert cfg.model_args.encoder == "vgg16"
    d = cfg.to_dict()
    del d["model"]["encoder"]  # written before timm encoders
    old = config_from_dict(d)
    assert old == cfg
    arch = EncoderArchitecture.of_model_args(old.model_args)
    assert arch == EncoderArchitecture(0.25, True, "fashion-mnist")  # today's constructor calls
    # the cache of automatically pretrained vgg16 encoders keeps its names
    assert pretraining_key(cfg) == "vgg16-w0.25-bn1-e6-n0-s0-v5000"
    timm_cfg = load_config("multilabel", "bce", overrides={"model.encoder": SMALL})
    assert pretraining_key(timm_cfg) == "timm-resnet10t-e6-n0-s0-v5000"


# ---- local weights files --------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """kind -> (a random resnet18 of timm or torchvision in eval mode, its saved state_dict)."""
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for kind in ("timm", "torchvision"):
        torch.manual_seed(0)
        net = timm.create_model("resnet18") if kind == "timm" else torchvision.models.resnet18()
        with torch.no_grad():  # non-trivial BN statistics and scales, so every tensor matters
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
        path = folder / f"{kind}_resnet18.pt"
        torch.save(net.state_dict(), path)
        out[kind] = (net.eval(), path)
    return out


def imagenet_rgb(x: torch.Tensor) -> torch.Tensor:
    """The package's input (B, 1, H, W) as the ImageNet-normalised RGB image (B, 3, H, W)."""
    p = (x * STD + MEAN).repeat(1, 3, 1, 1)
    return (p - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("kind", ["timm", "torchvision"])
def test_local_weights_give_the_network_s_own_features(resnet18_files, kind):
    net, path = resnet18_files[kind]
    over = {"model.encoder": "timm:resnet18", "multilabel.encoder_weights": str(path)}
    cfg = prepare(load_config("multilabel", "bce", overrides=over), explicit=over)
    assert cfg.model_args.encoder_input == "imagenet"  # the weights read RGB
    enc = _encoder(cfg).eval()  # what training starts from
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        rgb = imagenet_rgb(x)
        if kind == "timm":
            want = net.forward_features(rgb)
        else:
            want = net.layer4(net.layer3(net.layer2(net.layer1(
                net.maxpool(net.relu(net.bn1(net.conv1(rgb))))))))
        got = enc.forward_feature_map(x)
    assert got.shape == want.shape == (2, 512, 2, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_weights_files_are_one_line_errors(resnet18_files, tmp_path):
    def error(path, input_kind="imagenet") -> str:
        with pytest.raises(CheckpointError) as info:
            TimmEncoder("timm:resnet18", input_kind=input_kind, weights=path)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "not found" in error(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_text("junk")
    assert "cannot read encoder weights" in error(tmp_path / "junk.pt")
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "other.pt")
    assert ("does not fit timm's resnet18: 53 missing keys (conv1.weight, layer1.1.conv1.weight, "
            "layer1.1.bn1.weight, ...); 28 unexpected keys (conv1.0.weight, conv1.1.weight, "
            "conv1.1.bias, ...)") in error(tmp_path / "other.pt")
    torch.save(timm.create_model("resnet18", in_chans=1).state_dict(), tmp_path / "grey.pt")
    assert ("1 keys of another shape (conv1.weight: (64, 1, 7, 7) in the file, (64, 3, 7, 7) "
            "in the model)") in error(tmp_path / "grey.pt")
    assert 'set model.encoder_input = "imagenet"' in error(resnet18_files["timm"][1],
                                                          "fashion-mnist")


# ---- runs -----------------------------------------------------------------------------------

TINY = ["--epochs", "1", "--batch-size", "32", "--precision", "fp32", "--set", "threads=1",
        "--set", "val_size=100", "--quiet"]
TINY_ML = [*TINY, "--task", "multilabel", "--limit-train", "64", "--set",
           "multilabel.val_mosaics=32", "--set", "multilabel.test_mosaics=32"]


def test_runs_round_trip_through_their_checkpoints(data_dir, tmp_path, fmnist, user_error):
    d = ["--data-dir", str(data_dir)]
    single = tmp_path / "single"
    invoke("train", "--model", "timm", "--set", f"model.encoder={SMALL}", "--limit-train", "128",
           *TINY, "--out", single, *d)
    # evaluating the checkpoint repeats the validation accuracy recorded in training
    val = json.loads((single / "val_metrics.json").read_text())
    again = json.loads(invoke("evaluate", single, "--split", "val", "--json", *d))
    assert again["accuracy"] == val["accuracy"]
    # `cnnrnn predict` equals the model rebuilt by hand from best.pt
    images = fmnist.test_images[:8].numpy()
    np.save(tmp_path / "items.npy", images)
    pred = json.loads(invoke("predict", single, tmp_path / "items.npy"))
    state = torch.load(single / "best.pt", weights_only=True)
    args = {k: v for k, v in state["config"]["model"].items() if k != "name"}
    assert args["encoder"] == SMALL
    model = TimmClassifier(TimmArgs(**args)).eval()
    model.load_state_dict(state["model"], strict=True)
    with torch.no_grad():
        probs = model(to_input(torch.from_numpy(images))).softmax(1)
    assert pred["labels"] == probs.argmax(1).tolist()
    np.testing.assert_allclose(pred["probs"], probs.numpy(), rtol=1e-4, atol=1e-6)

    # a multilabel run takes that encoder over, frozen, and passes it on through its checkpoint
    ml = tmp_path / "ml"
    invoke("train", *TINY_ML, "--encoder-checkpoint", single, "--freeze-encoder", "--set",
           "model.hidden_size=8", "--set", "model.embed_dim=16", "--out", ml, *d)
    assert 'encoder = "timm:resnet10t"' in (ml / "config.toml").read_text()
    cfg, task, net, _ = load_run(ml)
    assert isinstance(net.encoder, TimmEncoder)
    encoder_state = {k[len("encoder."):]: v for k, v in state["model"].items()
                     if k.startswith("encoder.")}
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, encoder_state[k]), k
    invoke("data", "mosaics", "--split", "test", "--n", "6", "--out", tmp_path / "m.npz", *d)
    with np.load(tmp_path / "m.npz") as f:
        mosaics = f["images"]
    pred = json.loads(invoke("predict", ml, tmp_path / "m.npz"))
    with torch.no_grad():
        want = task.predict(net, to_input(torch.from_numpy(mosaics)), cfg)
    assert pred["label_sets"] == [r.nonzero().flatten().tolist() for r in want["label_sets"]]
    np.testing.assert_allclose(pred["scores"], want["scores"].numpy(), rtol=1e-4, atol=1e-6)
    result = json.loads(invoke("evaluate", ml, "--json", *d))
    assert 0.0 <= result["O-F1"] <= 1.0
    # a multilabel run can pass the encoder on again; another encoder name is one clear error
    assert "has encoder = timm:resnet10t" in user_error(
        "train", *TINY_ML, "--model", "bce", "--encoder-checkpoint", ml, "--set",
        "model.encoder=timm:resnet18", "--out", tmp_path / "x", *d)


def test_pretraining_a_timm_encoder(data_dir, tmp_path, monkeypatch, listening_reporter):
    monkeypatch.setenv("CNNRNN_CACHE", str(tmp_path / "cache"))
    over = {"model.encoder": SMALL, "model.hidden_size": 8, "model.embed_dim": 16,
            "val_size": 100, "precision": "fp32", "threads": 1,
            "multilabel.encoder_epochs": 1, "multilabel.encoder_limit_train": 64}
    cfg = prepare(load_config("multilabel", overrides=over), explicit=over, data_dir=data_dir,
                  reporter=listening_reporter)
    assert "pretraining a timm:resnet10t encoder" in listening_reporter.said[0]
    run = tmp_path / "cache" / "encoders" / "timm-resnet10t-e1-n64-s0-v100"
    assert cfg.multilabel.encoder_checkpoint == str(run) and (run / "best.pt").is_file()
    src, _, model, _ = load_run(run)
    assert (src.task, src.model, src.model_args.encoder) == ("single-label", "timm", SMALL)
    assert cfg.model_args.encoder == SMALL
