"""Today's multi-label heads beside the CNN-RNN: the asymmetric loss (ASL), the count head, the
query head, the top-3 protocol and the held-out mosaic priors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnrnn.config import load_config
from cnnrnn.encoders import prepare
from cnnrnn.errors import ConfigError
from cnnrnn.evaluate import evaluate_run, load_run
from cnnrnn.losses import AsymmetricLoss, BinaryCrossEntropy, WithCount, label_loss
from cnnrnn.metrics.multilabel import multilabel_metrics, top_k_labels
from cnnrnn.models import build_model
from cnnrnn.models.count import CountedLogits, top_k_sets
from cnnrnn.train import train

FIXTURE_ENCODER = Path(__file__).resolve().parent / "fixtures" / "old_runs" / "bce"
# a tiny run on the fixture's frozen width-0.0625 encoder (as golden_runs.py's portable runs)
TINY = {"epochs": 1, "limit_train": 256, "batch_size": 64, "val_size": 500,
        "precision": "fp32", "model.encoder_width": 0.0625, "eval_batch_size": 200,
        "multilabel.val_mosaics": 200, "multilabel.test_mosaics": 200,
        "multilabel.mix_independent": 0.0, "multilabel.finetune_encoder": False,
        "multilabel.encoder_checkpoint": str(FIXTURE_ENCODER)}


def train_tiny(model: str, run: Path, data_dir: Path, **over) -> dict:
    overrides = {**TINY, **over}
    cfg = prepare(load_config("multilabel", model, overrides=overrides), explicit=overrides)
    train(cfg, run, data_dir=data_dir)
    return evaluate_run(run, "test", data_dir)  # the model rebuilt from its checkpoint


# --- ASL -------------------------------------------------------------------------------------

def _logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(32, 10, generator=g)  # |logit| < 5: log(sigmoid) loses no digits
    return logits, (torch.rand(32, 10, generator=g) < 0.3).float()


def test_asl_without_focusing_and_clipping_is_bce():
    logits, y = _logits_and_labels()
    asl = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)(logits, y)
    torch.testing.assert_close(asl, F.binary_cross_entropy_with_logits(logits, y),
                               atol=1e-6, rtol=0)


def test_asl_under_bf16_autocast_is_the_fp32_loss():
    logits, y = _logits_and_labels(1)
    loss = AsymmetricLoss()  # timm's defaults: 4, 1, 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(logits, y)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert low.item() == loss(logits, y).item()
    # and below BCE's scale only by the focusing: the same mean over batch and labels
    assert 0 < low.item() < F.binary_cross_entropy_with_logits(logits, y).item()


def test_label_loss_follows_the_config():
    asl = load_config("multilabel", "bce", overrides={"multilabel.loss": "asl",
                                                      "multilabel.asl_gamma_neg": 2})
    assert isinstance(label_loss(asl.multilabel).per_label, AsymmetricLoss)
    assert label_loss(asl.multilabel).per_label.asl.gamma_neg == 2
    with pytest.raises(ConfigError, match="multilabel.loss = 'focal' is not one of bce, asl"):
        load_config("multilabel", "bce", overrides={"multilabel.loss": "focal"})
    with pytest.raises(ConfigError, match="is for the per-label heads"):
        load_config("multilabel", "cnn-rnn", overrides={"multilabel.loss": "asl"})
    with pytest.raises(ConfigError, match="asl_clip must be in"):
        load_config("multilabel", "bce", overrides={"multilabel.asl_clip": 1.0})


def test_bce_trains_with_asl(data_dir, tmp_path):
    result = train_tiny("bce", tmp_path / "asl", data_dir, **{"multilabel.loss": "asl"})
    assert 0.0 <= result["O-F1"] <= 1.0
    config = (tmp_path / "asl" / "config.toml").read_text()
    assert 'loss = "asl"' in config


# --- the count head --------------------------------------------------------------------------

def test_top_k_sets_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.3, 0.2, 0.1], [0.5, 0.4, 0.3, 0.2]])
    sets = top_k_sets(scores, torch.tensor([2, 1, 0]))
    assert sets.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]  # a tie: lower label


@pytest.mark.parametrize("name", ["bce", "query"])
def test_count_head_emits_exactly_the_predicted_count(name):
    torch.manual_seed(0)
    model = build_model(name, {"encoder_width": 0.0625, "count_head": True}, 10, "multilabel")
    model.eval()
    x = torch.randn(16, 1, 56, 56)
    features = model.encode(x).float()
    with torch.no_grad():  # spread the counts: an untrained head predicts one count for all
        linear = model.count.linear
        linear.weight.normal_(0, 10 / features.std().item())
        linear.bias.copy_(-linear(features).mean(0) + linear.bias)
    sets, scores = model.predict(x)
    k = model.count(features).argmax(1)  # (B,) the predicted counts
    assert len(set(k.tolist())) > 1
    assert sets.sum(1).tolist() == k.tolist()
    for row, s, n in zip(sets, scores, k.tolist(), strict=True):  # the top-scored labels
        assert set(row.nonzero().flatten().tolist()) == set(s.argsort(descending=True)[:n]
                                                           .tolist())
    out = model.train()(x)
    assert out.logits.shape == (16, 10) and out.count_logits.shape == (16, 11)


def test_count_loss_adds_the_count_cross_entropy():
    logits, y = _logits_and_labels(2)
    count_logits = torch.randn(32, 11)
    loss = WithCount(BinaryCrossEntropy(), weight=0.5)
    want = (F.binary_cross_entropy_with_logits(logits, y)
            + 0.5 * F.cross_entropy(count_logits, y.sum(1).long()))
    torch.testing.assert_close(loss(CountedLogits(logits, count_logits), y), want)
    torch.testing.assert_close(loss(logits, y), F.binary_cross_entropy_with_logits(logits, y))


@pytest.mark.parametrize("name", ["bce", "query"])
def test_count_head_trains_end_to_end(name, data_dir, tmp_path):
    run = tmp_path / name
    result = train_tiny(name, run, data_dir, **{"model.count_head": True})
    assert 0.0 <= result["O-F1"] <= 1.0
    _, _, model, _ = load_run(run)
    assert model.count is not None
    x = torch.randn(8, 1, 56, 56)
    sets, _ = model.predict(x)
    assert sets.sum(1).tolist() == model.count(model.encode(x).float()).argmax(1).tolist()


# --- the query head --------------------------------------------------------------------------

def tiny_query(**over) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("query", {"encoder_width": 0.0625, "d_model": 16, "heads": 4, **over},
                       10, "multilabel")


@pytest.mark.parametrize("count_head", [False, True])
def test_query_shape_finite_and_every_parameter_gets_a_gradient(count_head):
    model = tiny_query(count_head=count_head, layers=2).train()
    model.set_encoder(model.encoder, freeze=False)  # the registry's default is frozen
    model.encoder.requires_grad_(True)
    out = model(torch.randn(3, 1, 56, 56))
    logits = out.logits if count_head else out
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    loss = logits.square().mean() + (out.count_logits.square().mean() if count_head else 0)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_query_head_has_no_label_order():
    model = tiny_query().eval()
    x = torch.randn(4, 1, 56, 56)
    with torch.no_grad():
        before = model(x)
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
        for p in (model.query_embed, model.class_weight, model.class_bias):
            p.copy_(p[perm])  # the label-indexed parameters, permuted together
        after = model(x)
    torch.testing.assert_close(after, before[:, perm], atol=1e-5, rtol=1e-5)


def test_query_options_are_checked():
    with pytest.raises(ConfigError, match=r"d_model \(30\) must be a multiple of heads \(4\)"):
        load_config("multilabel", "query", overrides={"model.d_model": 30})


def test_query_trains_end_to_end_with_a_threshold(data_dir, tmp_path):
    run = tmp_path / "query"
    result = train_tiny("query", run, data_dir, **{"model.d_model": 32})
    assert 0.0 <= result["O-F1"] <= 1.0 and result["mAP"] is not None
    _, _, model, _ = load_run(run)
    t = model.threshold  # (10,), one value: the global threshold chosen on validation
    assert t.shape == (10,) and (t == t[0]).all() and 0.0 < float(t[0]) < 1.0
    assert float(t[0]) != 0.5


def test_cnnrnn_models_lists_the_query_head():
    from typer.testing import CliRunner

    from cnnrnn.cli import app

    result = CliRunner().invoke(app, ["models"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "recipe configs/multilabel/query.toml" in result.stdout


# --- the top-3 protocol ----------------------------------------------------------------------

def test_top3_protocol_by_hand():
    y_true = [[1, 0, 0, 0], [0, 1, 1, 1]]
    scores = [[0.9, 0.8, 0.1, 0.7], [0.2, 0.3, 0.4, 0.5]]
    y_pred = [[1, 0, 0, 0], [0, 0, 0, 0]]  # the decided sets play no part in top3_
    m = multilabel_metrics(y_true, y_pred, scores)
    # top-3 sets {0, 1, 3} and {1, 2, 3}: TP = (1, 1, 1, 1), FP = (0, 1, 0, 1), FN = 0
    assert m["top3_O-P"] == pytest.approx(4 / 6) and m["top3_O-R"] == 1.0
    assert m["top3_O-F1"] == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))
    c_p = (1 + 1 / 2 + 1 + 1 / 2) / 4
    assert m["top3_C-P"] == pytest.approx(c_p) and m["top3_C-R"] == 1.0
    assert m["top3_C-F1"] == pytest.approx(2 * c_p / (c_p + 1))
    assert m["O-R"] == pytest.approx(1 / 4)  # the decided sets' numbers are unchanged
    # ties go to the lower label; with fewer than 3 labels every label is taken
    assert top_k_labels(np.array([[0.5, 0.5, 0.5, 0.5]])).tolist() == [[True] * 3 + [False]]
    assert top_k_labels(np.array([[0.1, 0.2]])).all()


# --- held-out priors -------------------------------------------------------------------------

HELD_OUT = ("street", "inverted")
CONFIGS = Path(__file__).resolve().parents[1] / "cnnrnn" / "configs"


@pytest.mark.parametrize("name", HELD_OUT)
def test_held_out_prior_is_drawn_and_differs_from_outfits(name, data_dir, tmp_path):
    from typer.testing import CliRunner

    from cnnrnn.cli import app
    from cnnrnn.data.fashion_mnist import CLASSES
    from cnnrnn.data.priors import load_prior

    out = tmp_path / f"{name}.npz"
    result = CliRunner().invoke(app, ["data", "mosaics", "--out", str(out), "--n", "2000",
                                      "--prior", name, "--data-dir", str(data_dir)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    labels = torch.from_numpy(np.load(out)["labels"]).float()  # (N, 10)
    assert labels.shape == (2000, 10) and labels.sum(1).min() >= 1 and labels.sum(1).max() <= 4
    want, outfits = load_prior(name).label_frequencies(), load_prior("outfits").label_frequencies()
    assert (labels.mean(0) - want).abs().max() < 0.05  # drawn from its own prior
    # other class frequencies: the rarest label under outfits is among the most common here
    sneaker, shirt = CLASSES.index("Sneaker"), CLASSES.index("Shirt")
    assert outfits.argmin() == sneaker and want[sneaker] > 4 * outfits[sneaker]
    assert (want - outfits).abs().max() > 0.15
    # other co-occurrence: Shirt and Sneaker, never together under outfits, meet here
    assert (labels[:, shirt] * labels[:, sneaker]).mean() > 0.05


def test_no_recipe_names_a_held_out_prior():
    from cnnrnn.config import read_toml

    recipes = [p for p in CONFIGS.rglob("*.toml") if p.parent.name != "mosaics"]
    assert recipes
    for path in recipes:
        prior = read_toml(path).get("multilabel", {}).get("prior", "outfits")
        assert prior not in HELD_OUT, path
        assert not any(f'"{name}"' in path.read_text() for name in HELD_OUT), path
    for name in HELD_OUT:
        assert (CONFIGS / "mosaics" / f"{name}.toml").is_file()


# --- per-label thresholds --------------------------------------------------------------------

def test_per_label_thresholds_maximise_each_labels_f1():
    from cnnrnn.models.bce import choose_label_thresholds, choose_threshold

    g = torch.Generator().manual_seed(4)
    y = (torch.rand(300, 4, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.0])).float()
    scores = (0.3 * y + torch.rand(300, 4, generator=g) * torch.tensor([1.0, 0.6, 1.5, 1.0]))
    chosen = choose_label_thresholds(scores, y)
    assert chosen.shape == (4,) and len(set(chosen.tolist())) > 1

    def f1(k: int, t: float) -> float:
        p, truth = scores[:, k] >= t, y[:, k] != 0
        tp = float((p & truth).sum())
        return 2 * tp / max(float(p.sum() + truth.sum()), 1.0)

    for k in range(3):  # brute force over every cut of the label's own scores
        best = max(f1(k, float(t)) for t in scores[:, k])
        assert f1(k, float(chosen[k])) == pytest.approx(best)
        assert float(chosen[k]) == choose_threshold(scores[:, k], y[:, k])
    assert float(chosen[3]) > float(scores[:, 3].max())  # no positive: never predicted


def test_per_label_thresholds_are_stored_and_predict_can_override_them(data_dir, tmp_path):
    run = tmp_path / "bce-per-label"
    result = train_tiny("bce", run, data_dir, **{"multilabel.thresholds": "per-label"})
    _, _, model, _ = load_run(run)
    t = model.threshold
    assert t.shape == (10,) and len(set(t.tolist())) > 1  # each label its own
    from cnnrnn.evaluate import evaluate_samples, predict_run

    _, samples = evaluate_samples(run, "test", data_dir, save=False)
    assert np.array_equal(samples["y_pred"], (samples["scores"] >= t.numpy()).astype(np.uint8))
    assert result["O-F1"] == pytest.approx(
        multilabel_metrics(samples["y_true"], samples["y_pred"], samples["scores"])["O-F1"])
    x = np.zeros((4, 56, 56), np.uint8)
    x[:, 2:26, 2:26] = 200
    own = predict_run(run, x)
    assert own["thresholds"] == pytest.approx(t.tolist(), abs=1e-6)
    high = predict_run(run, x, options={"threshold": 0.999})
    assert high["thresholds"] == [0.999] * 10
    for sets, row in zip(high["label_sets"], high["scores"], strict=True):
        assert sets == [k for k, score in enumerate(row) if score >= 0.999]
    for sets, row in zip(own["label_sets"], own["scores"], strict=True):
        assert sets == [k for k, score in enumerate(row) if score >= t[k]]


def test_a_checkpoint_with_one_scalar_threshold_still_loads():
    _, _, model, state = load_run(FIXTURE_ENCODER)  # written before per-label thresholds
    assert state["model"]["threshold"].ndim == 0
    assert model.threshold.shape == (10,)
    assert torch.allclose(model.threshold, state["model"]["threshold"].expand(10))


def test_threshold_options_are_checked(user_error, tmp_path):
    with pytest.raises(ConfigError, match="multilabel.thresholds"):
        load_config("multilabel", "bce", overrides={"multilabel.thresholds": "perlabel"})
    with pytest.raises(ConfigError, match=r"multilabel.threshold must be in \[0, 1\)"):
        load_config("multilabel", "bce", overrides={"multilabel.threshold": 1.5})
    line = user_error("evaluate", Path(__file__).parent / "fixtures" / "old_runs" / "gru",
                      "--threshold", "0.4")
    assert "--threshold applies to multilabel runs" in line
    from cnnrnn.errors import CnnrnnError
    from cnnrnn.tasks import get_task

    counted = load_config("multilabel", "bce", overrides={"model.count_head": True})
    with pytest.raises(CnnrnnError, match="does not apply to a run with a count head"):
        get_task("multilabel").with_options(counted, {"threshold": 0.5})
