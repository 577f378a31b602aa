"""The multilabel task end to end: encoder sources, label orders, BCE threshold, resume, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnrnn.checkpoint import load_checkpoint
from cnnrnn.cli import app
from cnnrnn.config import load_config, read_toml
from cnnrnn.encoders import prepare
from cnnrnn.errors import CheckpointError, CnnrnnError, ConfigError
from cnnrnn.evaluate import load_run
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks.multilabel import Multilabel, label_priority
from cnnrnn.train import train

runner = CliRunner()
EVAL = {"multilabel.val_mosaics": 200, "multilabel.test_mosaics": 200}
TINY_ML = {"epochs": 2, "limit_train": 256, "batch_size": 64, "model.encoder_width": 0.125,
           "model.hidden_size": 32, "model.embed_dim": 16, "eval_batch_size": 200,
           "multilabel.beam_width": 2, **EVAL}


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory, data_dir) -> Path:
    """A tiny single-label vgg16 run whose encoder the multilabel models start from."""
    run = tmp_path_factory.mktemp("enc") / "vgg"
    cfg = load_config("single-label", "vgg16", overrides={
        "epochs": 1, "limit_train": 512, "val_size": 200, "model.width": 0.125,
        "batch_size": 64})
    train(cfg, run, data_dir=data_dir)
    return run


def ml_config(model: str, encoder_run: Path, **over) -> object:
    tiny = {k: v for k, v in TINY_ML.items()
            if model == "cnn-rnn" or k not in ("model.hidden_size", "model.embed_dim")}
    overrides = {**tiny, "multilabel.encoder_checkpoint": str(encoder_run), **over}
    return prepare(load_config("multilabel", model, overrides=overrides), explicit=overrides)


def test_label_orders():
    cfg = load_config("multilabel")
    freq = torch.tensor([0.1, 0.5, 0.3, 0.05, 0.2, 0.15, 0.25, 0.4, 0.35, 0.45])
    most = label_priority(cfg, freq)
    assert most == freq.argsort(descending=True).tolist() and most[0] == 1
    rare = label_priority(load_config("multilabel", overrides={"multilabel.order": "rare-first"}),
                          freq)
    assert rare == most[::-1]
    rnd = load_config("multilabel", overrides={"multilabel.order": "random"})
    assert label_priority(rnd, freq) == label_priority(rnd, freq)  # one fixed order
    assert sorted(label_priority(rnd, freq)) == list(range(10))


def test_cnn_rnn_uses_the_single_label_encoder(encoder_run, data_dir, tmp_path):
    run = tmp_path / "ml"
    assert load_config("multilabel").multilabel.finetune_encoder  # the recipe's default
    train(ml_config("cnn-rnn", encoder_run, **{"multilabel.finetune_encoder": False}), run,
          data_dir=data_dir)
    enc = load_checkpoint(encoder_run / "best.pt")["model"]
    ml = load_checkpoint(run / "best.pt")["model"]
    # Frozen (--freeze-encoder): the encoder weights and batch-norm statistics are unchanged.
    for k, v in enc.items():
        if k.startswith("encoder."):
            assert torch.equal(ml[k], v), k
    state = load_checkpoint(run / "best.pt")
    freq = torch.tensor(state["extra"]["label_frequencies"])
    rank = ml["label_rank"]  # label_rank[k] = position of label k in the order
    assert rank.argsort().tolist() == freq.argsort(descending=True, stable=True).tolist()


def test_finetune_changes_the_encoder(encoder_run, data_dir, tmp_path):
    run = tmp_path / "ft"
    train(ml_config("cnn-rnn", encoder_run, **{"multilabel.finetune_encoder": True,
                                              "epochs": 1}), run, data_dir=data_dir)
    enc = load_checkpoint(encoder_run / "best.pt")["model"]
    ml = load_checkpoint(run / "best.pt")["model"]
    assert not torch.equal(ml["encoder.features.0.weight"], enc["encoder.features.0.weight"])


def test_encoder_from_a_fine_tuned_multilabel_run(encoder_run, data_dir, tmp_path):
    # two stages: fine-tune the encoder with BCE, then train a CNN-RNN on it, frozen
    bce = tmp_path / "bce"
    train(ml_config("bce", encoder_run, **{"multilabel.finetune_encoder": True, "epochs": 1}),
          bce, data_dir=data_dir)
    run = tmp_path / "rnn"
    train(ml_config("cnn-rnn", bce, **{"multilabel.finetune_encoder": False, "epochs": 1}),
          run, data_dir=data_dir)
    tuned = load_checkpoint(bce / "best.pt")["model"]
    ml = load_checkpoint(run / "best.pt")["model"]
    enc_keys = [k for k in tuned if k.startswith("encoder.")]
    assert enc_keys and all(torch.equal(ml[k], tuned[k]) for k in enc_keys)
    single = load_checkpoint(encoder_run / "best.pt")["model"]
    assert not torch.equal(ml["encoder.features.0.weight"], single["encoder.features.0.weight"])
    # or fine-tuned further: the multilabel run's encoder comes back trainable (it came back
    # frozen, as its heads' default, whatever finetune_encoder said)
    ft = tmp_path / "rnn-ft"
    train(ml_config("cnn-rnn", bce, **{"multilabel.finetune_encoder": True, "epochs": 1}),
          ft, data_dir=data_dir)
    further = load_checkpoint(ft / "best.pt")["model"]
    assert not torch.equal(further["encoder.features.0.weight"],
                           tuned["encoder.features.0.weight"])


def test_bce_threshold_is_chosen_on_validation_and_saved(encoder_run, data_dir, tmp_path):
    run = tmp_path / "bce"
    train(ml_config("bce", encoder_run), run, data_dir=data_dir)
    thresholds = load_checkpoint(run / "best.pt")["model"]["threshold"]
    assert thresholds.shape == (10,) and (thresholds == thresholds[0]).all()  # one for all
    threshold = float(thresholds[0])
    assert 0.0 < threshold < 1.0 and threshold != 0.5
    _, _, model, _ = load_run(run)
    assert torch.equal(model.threshold, thresholds)
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["val_loss"]) for r in history)  # the BCE on validation mosaics
    # `cnnrnn analyze errors` on this run: its shares add up and agree with evaluate
    from cnnrnn.analysis.errors import breakdown
    from cnnrnn.data.fashion_mnist import load_fashion_mnist

    row = breakdown(run, load_fashion_mnist(data_dir))
    assert row["exact"] + row["wrong count"] + row["swap at right count"] == pytest.approx(1.0)
    assert row["too few"] + row["too many"] == pytest.approx(row["wrong count"])
    test = json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir))
    assert row["exact"] == pytest.approx(test["exact_match"])
    rows = json.loads(cli("analyze", "errors", run, "--json", "--data-dir", data_dir))
    assert rows == [row]
    table = cli("analyze", "errors", run, "--data-dir", data_dir)
    assert table.splitlines()[0].startswith("| run | exact |")


def test_encoder_from_another_model_is_refused(data_dir, tmp_path, encoder_run):
    lstm = tmp_path / "lstm"
    train(load_config("single-label", "lstm", overrides={
        "epochs": 1, "limit_train": 128, "val_size": 100, "model.hidden_size": 8}), lstm,
        data_dir=data_dir)
    with pytest.raises(CheckpointError, match="is a single-label 'lstm' run; the encoder must "
                                              "come from a single-label vgg16 or timm run, or "
                                              "a multilabel run"):
        ml_config("cnn-rnn", lstm)
    # an explicit width that contradicts the checkpoint says which is which
    with pytest.raises(ConfigError, match=r"model.encoder_width = 0.25 was given, but the "
                                          r"encoder .*vgg has encoder_width = 0.125"):
        ml_config("cnn-rnn", encoder_run, **{"model.encoder_width": 0.25})
    # train() without a prepared encoder is a clear error, never a silent pretraining
    cfg = load_config("multilabel", overrides={"model.encoder_width": 0.125})
    with pytest.raises(CnnrnnError, match="needs a pretrained encoder"):
        train(cfg, tmp_path / "z", data_dir=data_dir)


def test_encoder_architecture_comes_from_the_checkpoint(encoder_run):
    # The recipe says width 0.25; the encoder run is width 0.125: its own width is taken over
    # and recorded in the config (and so in the new run's config.toml).
    over = {k: v for k, v in TINY_ML.items() if k != "model.encoder_width"}
    recipe = load_config("multilabel", overrides={
        **over, "multilabel.encoder_checkpoint": str(encoder_run)})
    assert recipe.model_args.encoder_width == 0.25
    cfg = prepare(recipe)
    assert cfg.model_args.encoder_width == 0.125
    assert cfg.multilabel.encoder_checkpoint == str(encoder_run)
    single = load_config("single-label", "lstm")
    assert prepare(single) is single  # a task without a pretrained encoder is left alone


def test_automatic_encoder_pretraining_is_cached(data_dir, tmp_path, monkeypatch,
                                                  listening_reporter):
    monkeypatch.setenv("CNNRNN_CACHE", str(tmp_path / "cache"))
    said = listening_reporter.said
    over = {**TINY_ML, "epochs": 1, "val_size": 200, "multilabel.encoder_epochs": 1,
            "multilabel.encoder_limit_train": 256}
    cfg = prepare(load_config("multilabel", overrides=over), explicit=over, data_dir=data_dir,
                  reporter=listening_reporter)
    assert "pretraining a vgg16 encoder" in said[0]
    cached = list((tmp_path / "cache" / "encoders").iterdir())
    assert len(cached) == 1 and (cached[0] / "best.pt").is_file()
    assert cfg.multilabel.encoder_checkpoint == str(cached[0])  # recorded in the config
    train(cfg, tmp_path / "a", data_dir=data_dir)
    assert f'encoder_checkpoint = "{cached[0]}"' in (tmp_path / "a" / "config.toml").read_text()
    again = prepare(load_config("multilabel", overrides=over), explicit=over, data_dir=data_dir,
                    reporter=listening_reporter)
    assert "using the cached pretrained encoder" in said[1] and again == cfg


def test_cnn_rnn_logs_and_draws_its_validation_loss(encoder_run, data_dir, fmnist, tmp_path):
    """metrics.jsonl holds the training criterion on the validation mosaics, teacher-forced
    as in training (recomputed here from last.pt in one batch), and the learning curve draws
    it next to the training loss on integer epochs."""
    from cnnrnn import plots
    from cnnrnn.data.loader import to_input

    run = tmp_path / "cnn-rnn"
    train(ml_config("cnn-rnn", encoder_run, precision="fp32", **{"multilabel.order": "pla"}),
          run, data_dir=data_dir)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["val_loss"]) for r in rows)
    cfg, task, model, _ = load_run(run, "last")
    data = task.prepare(cfg, fmnist)
    x, y = to_input(data.val_images), data.val_targets  # 200 mosaics: one batch, as in training
    with torch.no_grad():
        loss = task.criterion(cfg)(model.eval()(x, y), y)
    assert rows[-1]["val_loss"] == pytest.approx(float(loss), rel=1e-4)
    fig = plots.learning_curve_figure(rows, task.primary)
    ax_loss = fig.axes[0]
    assert [line.get_label() for line in ax_loss.lines] == ["train", "validation"]
    assert list(ax_loss.lines[1].get_ydata()) == [r["val_loss"] for r in rows]
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [1, 2]


def test_multilabel_resume_equals_straight(encoder_run, data_dir, tmp_path):
    over = {"schedule": "constant", "multilabel.order": "pla"}
    train(ml_config("cnn-rnn", encoder_run, **over), tmp_path / "s", data_dir=data_dir)
    train(ml_config("cnn-rnn", encoder_run, **over, epochs=1), tmp_path / "r",
          data_dir=data_dir)
    train(RunDir(tmp_path / "r").resume_config(epochs=2), tmp_path / "r", resume=True,
          data_dir=data_dir)
    rows = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("s", "r")]
    strip = [[{k: v for k, v in json.loads(x).items() if k not in ("ms_per_step",
                                                                    "train_seconds")}
              for x in r.splitlines()] for r in rows]
    assert strip[0] == strip[1]


def test_cli_mosaics_train_evaluate_predict(encoder_run, data_dir, tmp_path):
    npz = tmp_path / "m.npz"
    cli("data", "mosaics", "--split", "test", "--n", "12", "--prior", "outfits", "--seed", "3",
        "--out", npz, "--data-dir", data_dir)
    with np.load(npz, allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (12, 56, 56) and images.dtype == np.uint8
    assert labels.shape == (12, 10) and labels.dtype == np.uint8
    assert ((labels.sum(1) >= 1) & (labels.sum(1) <= 4)).all()
    cli("data", "show", "--mosaics", npz, "--out", tmp_path / "m.png")
    assert (tmp_path / "m.png").is_file()

    run = tmp_path / "run"
    cli("train", "--task", "multilabel", "--epochs", "1", "--limit-train", "256",
        "--batch-size", "64", "--encoder-checkpoint", encoder_run, "--beam-width", "2",
        "--set", "model.hidden_size=32",
        "--set", "multilabel.val_mosaics=200", "--set", "multilabel.test_mosaics=200",
        "--out", run, "--data-dir", data_dir, "--quiet")
    assert {"config.toml", "metrics.jsonl", "best.pt", "last.pt", "learning_curve.png"} <= {
        p.name for p in run.iterdir()}
    # the recipe's encoder width (0.25) gave way to the checkpoint's own (0.125), recorded
    saved = read_toml(run / "config.toml")
    assert saved["model"]["encoder_width"] == 0.125
    assert saved["multilabel"]["encoder_checkpoint"] == str(encoder_run)
    result = json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir))
    for key in ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "macro-F1", "mAP", "exact_match",
                "hamming_loss"):
        assert 0.0 <= result[key] <= 1.0, key
    assert set(result["per_label"]["Trouser"]) >= {"precision", "recall", "ap"}

    np.save(tmp_path / "m.npy", images)
    pred = json.loads(cli("predict", run, tmp_path / "m.npy"))
    assert len(pred["label_sets"]) == 12 and np.array(pred["scores"]).shape == (12, 10)
    assert all(len(s) == len(set(s)) and all(0 <= k < 10 for k in s) for s in pred["label_sets"])

    np.save(tmp_path / "bad.npy", images[:, :28, :28])
    proc = subprocess.run([sys.executable, "-m", "cnnrnn", "predict", str(run),
                           str(tmp_path / "bad.npy")], capture_output=True, text=True,
                          env=os.environ.copy())
    assert proc.returncode == 2
    assert r"has shape (12, 28, 28); expected (N, 56, 56)" in proc.stderr


def test_decoder_overfits_a_few_real_mosaics(fmnist):
    from cnnrnn.data.loader import to_input
    from cnnrnn.data.mosaics import make_split_mosaics
    from cnnrnn.losses import SequenceNLL
    from cnnrnn.models.heads import CNNRNNArgs, build_cnn_rnn

    images, labels = make_split_mosaics(fmnist, "train", 8, "outfits", seed=5)
    torch.manual_seed(0)
    model = build_cnn_rnn(CNNRNNArgs(encoder_width=0.125, hidden_size=64, embed_dim=16,
                                     dropout=0.0), 10, freeze_encoder=False)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    x = to_input(images)
    criterion = SequenceNLL()
    for _ in range(150):
        opt.zero_grad()
        criterion(model(x, labels), labels).backward()
        opt.step()
    model.eval()
    sets, _ = model.predict(x, beam_width=1)
    assert torch.equal(sets, labels)


def test_mix_independent_draws_training_mosaics_from_the_mixture_only(fmnist):
    over = {"multilabel.mix_independent": 0.5, "multilabel.val_mosaics": 50,
            "multilabel.test_mosaics": 50}
    mixed = Multilabel().prepare(load_config("multilabel", overrides=over), fmnist)
    plain = Multilabel().prepare(load_config("multilabel", overrides={
        **over, "multilabel.mix_independent": 0.0}), fmnist)
    assert mixed.train.generator.prior.name == "outfits+0.5 independent"
    assert plain.train.generator.prior.name == "outfits"
    # validation and test mosaics follow `prior` alone, as without the mix
    assert torch.equal(mixed.val_images, plain.val_images)
    assert torch.equal(mixed.test_targets, plain.test_targets)
    with pytest.raises(ConfigError, match=r"multilabel.mix_independent must be in \[0, 1\)"):
        load_config("multilabel", overrides={"multilabel.mix_independent": 1.0})
    with pytest.raises(ConfigError, match="multilabel.label_smoothing"):
        load_config("multilabel", overrides={"multilabel.label_smoothing": -0.1})
    with pytest.raises(ConfigError, match="needs multilabel.order = 'pla'"):
        load_config("multilabel", overrides={"multilabel.step_target": "set"})
    with pytest.raises(ConfigError, match="do not combine"):  # the recipe smooths
        load_config("multilabel", overrides={"multilabel.step_target": "set",
                                             "multilabel.order": "pla"})
    assert load_config("multilabel", overrides={"multilabel.step_target": "set",
                                                "multilabel.order": "pla",
                                                "multilabel.label_smoothing": 0.0})
