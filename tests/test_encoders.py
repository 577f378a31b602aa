"""The automatic encoder pretraining is announced with its estimated time and how to bound it."""

from __future__ import annotations

import itertools
import time

from cnnrnn import encoders
from cnnrnn.config import load_config


def _pretraining(**overrides: object):
    cfg = load_config("multilabel", None, None, {"model.encoder_width": 0.0625, **overrides})
    return encoders.pretraining_config(cfg)


def test_estimate_is_timed_steps_times_the_runs_steps(monkeypatch):
    # 3 epochs of ceil(1280 / 128) = 10 steps, plus validation costed at a third of a step per
    # batch of 500 / 128 -> 4 batches; each timed step takes 1 s by the patched clock
    enc = _pretraining(**{"multilabel.encoder_epochs": 3, "multilabel.encoder_limit_train": 1280,
                          "val_size": 500})
    clock = itertools.chain([0.0, 3.0], itertools.repeat(3.0))
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    assert abs(encoders.estimate_minutes(enc) - 3 * (10 + 4 / 3) / 60) < 1e-9


def test_estimate_runs_a_real_model():
    one = _pretraining(**{"multilabel.encoder_epochs": 1, "multilabel.encoder_limit_train": 256})
    assert encoders.estimate_minutes(one) > 0


def test_announcement_names_time_and_bounds(monkeypatch, tmp_path):
    said: list[str] = []

    class Stop(Exception):
        pass

    class Reporter:
        def say(self, text: str) -> None:
            said.append(text)

    def no_training(*args, **kwargs):
        raise Stop

    monkeypatch.setenv("CNNRNN_CACHE", str(tmp_path))
    monkeypatch.setattr(encoders, "estimate_minutes", lambda cfg: 7.4)
    monkeypatch.setattr(encoders, "train", no_training)
    cfg = load_config("multilabel", None, None, {"multilabel.encoder_limit_train": 2000})
    try:
        encoders.pretrained_encoder_run(cfg, None, Reporter())
    except Stop:
        pass
    assert len(said) == 1
    assert "about 7 min" in said[0] and "2,000 images" in said[0]
    assert "multilabel.encoder_epochs" in said[0] and "multilabel.encoder_limit_train" in said[0]
