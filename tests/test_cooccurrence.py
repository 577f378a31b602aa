"""The co-occurrence protocol (cnnrnn.metrics.cooccurrence) on hand-made cases with known
answers, the priors' exact pair frequencies against drawn mosaics, and both reports end to end
through the CLI on a tiny CNN-RNN (`evaluate --protocol cooccurrence`, `analyze priors`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnrnn.cli import app
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.data.mosaics import make_split_mosaics
from cnnrnn.data.priors import load_prior, mix_priors
from cnnrnn.metrics.cooccurrence import (
    conditional_false_positives,
    cooccurrence_protocol,
    most_frequent_partner,
    pair_overlap,
    split_scores,
    usual_partners,
)

# P(i and j) of three labels: P(0) = .5, P(1) = .4, P(2) = .2; P(0, 1) = .3, P(0, 2) = .05,
# P(1, 2) = .1
PAIRS = np.array([[0.5, 0.3, 0.05],
                  [0.3, 0.4, 0.1],
                  [0.05, 0.1, 0.2]])


def test_usual_partners_need_the_rate_and_more_than_chance():
    partners = usual_partners(PAIRS)
    # P(1 | 0) = .6 > P(1); P(2 | 0) = .1 < .2; P(0 | 2) = .25 >= .2 but below P(0) = .5;
    # P(2 | 1) = .25 > P(2) = .2; P(1 | 2) = .5 > P(1)
    assert partners.tolist() == [[False, True, False],
                                 [True, False, True],
                                 [False, True, False]]
    assert usual_partners(PAIRS, min_rate=0.3).tolist() == [[False, True, False],
                                                            [True, False, False],
                                                            [False, True, False]]
    assert most_frequent_partner(PAIRS).tolist() == [1, 0, 1]
    lonely = np.diag([0.5, 0.5])
    assert most_frequent_partner(lonely).tolist() == [-1, -1]
    assert not usual_partners(lonely).any()


# six mosaics of three labels: truth, decisions and the scores of label 0
Y_TRUE = np.array([[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
Y_PRED = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
SCORES = np.array([[0.9, 0.1, 0.1], [0.2, 0.1, 0.8], [0.8, 0.9, 0.1], [0.7, 0.2, 0.1],
                   [0.6, 0.9, 0.1], [0.1, 0.1, 0.9]])


def test_exclusive_and_co_occur_splits_by_hand():
    rows = split_scores(Y_TRUE, Y_PRED, SCORES, usual_partners(PAIRS), min_count=1)
    ex, co = rows[0]["exclusive"], rows[0]["co-occur"]
    # label 0 without its partner 1: mosaics 0 and 1 (label 2 is no partner of 0), one found;
    # with it: mosaics 2 and 3, both found; the negatives of both, mosaics 4 and 5, one FP
    assert (ex["positives"], ex["negatives"], co["positives"]) == (2, 2, 2)
    assert ex["recall"] == 0.5 and ex["f1"] == pytest.approx(2 / (2 + 1 + 1))
    assert co["recall"] == 1.0 and co["f1"] == pytest.approx(4 / (4 + 1))
    # AP: exclusive ranks 0 (pos) .9, 4 (neg) .6, 1 (pos) .2, 5 .1 -> (1 + 2/3) / 2;
    # co-occur ranks 2, 3 (both pos) above 4 and 5 -> 1
    assert ex["ap"] == pytest.approx((1 + 2 / 3) / 2) and co["ap"] == 1.0
    assert rows[0]["gap"]["f1"] == pytest.approx(0.8 - 0.5)
    assert rows[0]["gap"]["ap"] == pytest.approx(1 - 5 / 6)
    # label 2 never appears with its partner 1: the co-occur split is empty, its numbers None
    assert rows[2]["co-occur"]["positives"] == 0 and rows[2]["co-occur"]["f1"] is None
    assert rows[2]["gap"] == {"f1": None, "ap": None}
    # below min_count positives a number is None, the count stays
    few = split_scores(Y_TRUE, Y_PRED, SCORES, usual_partners(PAIRS), min_count=3)[0]
    assert few["exclusive"]["f1"] is None and few["exclusive"]["positives"] == 2


def test_conditional_false_positive_rate_by_hand():
    rows = conditional_false_positives(Y_TRUE, Y_PRED, most_frequent_partner(PAIRS),
                                       min_count=1)
    # label 0 absent and its partner 1 present: mosaic 4 only, where 0 is emitted
    assert rows[0] == {"partner": 1, "n": 1, "rate": 1.0, "n_absent": 2, "base_rate": 0.5}
    # label 1 absent with 0 present: mosaics 0 and 1, never emitted
    assert rows[1]["n"] == 2 and rows[1]["rate"] == 0.0
    assert conditional_false_positives(Y_TRUE, Y_PRED, most_frequent_partner(PAIRS),
                                       min_count=2)[0]["rate"] is None


def test_pair_overlap_by_hand():
    # pairs (0,1), (0,2), (1,2): train .3, .05, .1 -> 6/9, 1/9, 2/9; test .1, .1, .2 -> 1/4,
    # 1/4, 1/2: sum of minima 1/4 + 1/9 + 2/9
    test = np.array([[0.4, 0.1, 0.1], [0.1, 0.5, 0.2], [0.1, 0.2, 0.4]])
    assert pair_overlap(PAIRS, test) == pytest.approx(1 / 4 + 1 / 9 + 2 / 9)
    assert pair_overlap(PAIRS, PAIRS) == pytest.approx(1.0)
    disjoint = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.2], [0.0, 0.2, 0.4]])
    only_01 = np.array([[0.5, 0.2, 0.0], [0.2, 0.5, 0.0], [0.0, 0.0, 0.4]])
    assert pair_overlap(only_01, disjoint) == 0.0


def test_protocol_names_partners_and_averages_defined_classes():
    out = cooccurrence_protocol(Y_TRUE, Y_PRED, SCORES, PAIRS, ["a", "b", "c"], min_count=1)
    a, c = out["classes"][0], out["classes"][2]
    assert a["partners"] == ["b"] and a["partner_rates"] == {"b": pytest.approx(0.6)}
    assert a["false_positive"]["partner"] == "b"
    assert c["co-occur"]["f1"] is None
    gaps = [r["gap"]["f1"] for r in out["classes"] if r["gap"]["f1"] is not None]
    assert out["summary"]["gap_f1"] == pytest.approx(np.mean(gaps))


@pytest.mark.parametrize("name", ["outfits", "street", "inverted"])
def test_pair_frequencies_are_those_of_the_drawn_mosaics(name, fmnist):
    prior = load_prior(name)
    exact = prior.pair_frequencies().numpy()
    assert np.allclose(exact, exact.T)
    assert np.allclose(np.diag(exact), prior.label_frequencies().numpy())
    _, labels = make_split_mosaics(fmnist, "test", 20000, prior, 0)
    y = labels.numpy().astype(np.float64)  # (N, K)
    drawn = y.T @ y / len(y)  # (K, K) share of mosaics holding both
    assert np.abs(drawn - exact).max() < 0.012
    # the mixture a run trains under: its pairs are the mixture of both priors' pairs
    mixed = mix_priors(load_prior("outfits"), load_prior("independent"), 0.2)
    assert np.allclose(mixed.pair_frequencies().numpy(),
                       0.8 * load_prior("outfits").pair_frequencies().numpy()
                       + 0.2 * load_prior("independent").pair_frequencies().numpy())


def test_outfits_partners_are_outfit_partners():
    """Under the default recipe's training prior (outfits, a fifth independent) T-shirts go with
    sandals and dresses, and never with a coat; under independent no class has a partner."""
    mixed = mix_priors(load_prior("outfits"), load_prior("independent"), 0.2)
    partners = usual_partners(mixed.pair_frequencies().numpy())
    tshirt = {CLASSES[j] for j in np.flatnonzero(partners[CLASSES.index("T-shirt/top")])}
    assert {"Sandal", "Dress"} <= tshirt and "Coat" not in tshirt
    assert not usual_partners(load_prior("independent").pair_frequencies().numpy()).any()
    assert pair_overlap(mixed.pair_frequencies(), load_prior("outfits").pair_frequencies()) \
        > pair_overlap(mixed.pair_frequencies(), load_prior("street").pair_frequencies()) + 0.2


# --- end to end ------------------------------------------------------------------------------

runner = CliRunner()
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "old_runs"


@pytest.fixture(scope="module")
def tiny_cnn_rnn(tmp_path_factory, data_dir) -> Path:
    """A tiny CNN-RNN on the fixture's frozen encoder, trained under the default recipe's mix
    (outfits with a fifth of independent mosaics)."""
    from test_peers import train_tiny

    run = tmp_path_factory.mktemp("cooc") / "cnn-rnn"
    train_tiny("cnn-rnn", run, data_dir, **{"model.hidden_size": 32, "model.embed_dim": 16,
                                           "multilabel.beam_width": 1,
                                           "multilabel.mix_independent": 0.2})
    return run


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_evaluate_protocol_cooccurrence_writes_the_report(tiny_cnn_rnn, data_dir):
    out = cli("evaluate", tiny_cnn_rnn, "--protocol", "cooccurrence", "--json",
              "--data-dir", data_dir)
    report = json.loads(out)
    assert report == json.loads((tiny_cnn_rnn / "cooccurrence.json").read_text()) | \
        {"file": str(tiny_cnn_rnn / "cooccurrence.json")}
    assert report["training_prior"] == "outfits+0.2 independent"
    assert report["test_prior"] == "outfits" and report["n"] == 200
    assert [c["class"] for c in report["classes"]] == list(CLASSES)
    # the splits partition each class's test mosaics, as the saved per-sample truth says
    saved = sorted(tiny_cnn_rnn.glob("eval_test_best_*.npz"))
    assert len(saved) == 1
    y = np.load(saved[0], allow_pickle=False)["y_true"]
    for k, c in enumerate(report["classes"]):
        assert c["exclusive"]["positives"] + c["co-occur"]["positives"] == y[:, k].sum()
        assert c["exclusive"]["negatives"] == (y[:, k] == 0).sum()
        for split in ("exclusive", "co-occur"):
            f1 = c[split]["f1"]
            assert (f1 is None) == (c[split]["positives"] < report["min_count"])
            assert f1 is None or 0.0 <= f1 <= 1.0
    table = cli("evaluate", tiny_cnn_rnn, "--protocol", "cooccurrence", "--data-dir", data_dir)
    assert "| T-shirt/top |" in table and "Mean over classes" in table
    # a held-out prior with other item counts (the run mixes in independent): its own file
    cli("evaluate", tiny_cnn_rnn, "--protocol", "cooccurrence", "--prior", "inverted",
        "--json", "--data-dir", data_dir)
    inverted = json.loads((tiny_cnn_rnn / "cooccurrence_inverted.json").read_text())
    assert inverted["test_prior"] == "inverted"
    assert inverted["pair_overlap"] < report["pair_overlap"]


def test_cooccurrence_mistakes_are_one_line(tiny_cnn_rnn, user_error):
    assert "multilabel" in user_error("evaluate", FIXTURES / "gru", "--protocol",
                                      "cooccurrence")
    assert "unknown protocol" in user_error("evaluate", tiny_cnn_rnn, "--protocol", "context")
    assert "--beam-width" in user_error("evaluate", tiny_cnn_rnn, "--protocol",
                                        "cooccurrence", "--beam-width", "2")
    assert "unknown prior 'streets'" in user_error("evaluate", tiny_cnn_rnn, "--protocol",
                                                   "cooccurrence", "--prior", "streets")
    assert "unknown prior 'streets'" in user_error("analyze", "priors", tiny_cnn_rnn,
                                                   "--priors", "outfits,streets")
    assert "multilabel" in user_error("analyze", "priors", FIXTURES / "gru")


def test_analyze_priors_table_and_figure(tiny_cnn_rnn, data_dir, tmp_path):
    fig = tmp_path / "figs" / "priors.png"
    rows = json.loads(cli("analyze", "priors", tiny_cnn_rnn, "--priors",
                          "outfits,street,inverted", "--plot", fig, "--json", "--label", "tiny",
                          "--data-dir", data_dir))
    assert [r["prior"] for r in rows] == ["outfits", "street", "inverted"]
    assert {r["label"] for r in rows} == {"tiny"}
    overlaps = [r["pair_overlap"] for r in rows]
    assert overlaps[0] > overlaps[1] and overlaps[0] > overlaps[2]
    # the outfits row is the run's own evaluation, read back from the saved samples
    own = json.loads((tiny_cnn_rnn / "cooccurrence.json").read_text())
    assert rows[0]["O-F1"] == pytest.approx(own["O-F1"])
    assert fig.stat().st_size > 10_000
