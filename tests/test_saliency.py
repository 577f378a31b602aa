"""Saliency of emitted labels: maps of the mosaic's shape, a localisation score that is right on
hand-made cases, mosaics written with their cells, and `cnnrnn analyze saliency` end to end."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnrnn.analysis import saliency
from cnnrnn.analysis.saliency import (
    ATTENTION,
    METHODS,
    attention_maps,
    bce_saliency,
    cell_saliency,
    cnn_rnn_saliency,
    emitted_path,
    feature_map,
    gradcam,
    hirescam,
    localisation,
    step_scores,
)
from cnnrnn.cli import app
from cnnrnn.data.loader import to_input
from cnnrnn.data.mosaics import (
    CELL,
    check_cells,
    load_mosaic_cells,
    load_mosaics,
    make_split_mosaics,
    make_split_mosaics_with_cells,
)
from cnnrnn.errors import CnnrnnError, DataError
from cnnrnn.evaluate import load_run
from cnnrnn.models.bce import BCEHead
from cnnrnn.models.cnn_rnn import CNNRNN
from cnnrnn.models.vgg import VGGEncoder

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def encoder(grid: int = 2, per_cell: bool = False, input_kind: str = "fashion-mnist"
            ) -> VGGEncoder:
    torch.manual_seed(0)
    enc = VGGEncoder(width=0.0625, input_kind=input_kind)
    enc.use_pooling("max", grid, per_cell)
    return enc.eval()


def tiny_cnn_rnn() -> CNNRNN:
    enc = encoder()
    torch.manual_seed(1)
    return CNNRNN(enc, num_labels=10, embed_dim=16, hidden_size=8).eval()


def mosaics(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return to_input(torch.randint(0, 256, (n, 56, 56), generator=g, dtype=torch.uint8))


# ---- the maps --------------------------------------------------------------------------------

@pytest.mark.parametrize(("grid", "per_cell", "input_kind"), [
    (2, False, "fashion-mnist"), (1, False, "fashion-mnist"), (2, True, "fashion-mnist"),
    (2, False, "imagenet")])
def test_feature_map_gives_the_encoders_own_features(grid, per_cell, input_kind):
    enc, x = encoder(grid, per_cell, input_kind), mosaics(3)
    with torch.no_grad():
        fmap, features = feature_map(enc, x)
        assert torch.allclose(features, enc.forward_features(x), atol=1e-6)
    assert fmap.shape == (3, enc.channels, 2, 2)  # one map cell per mosaic cell
    torch.manual_seed(3)
    model = BCEHead(enc, 10).eval()
    model.register_buffer("threshold", torch.tensor(0.0))  # every label predicted
    sal = bce_saliency(model, x)
    assert sal.labels.shape == (3, 10) and sal.maps["gradcam"].shape == (3, 10, 56, 56)


def test_gradcam_and_hirescam_by_hand():
    fmap = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
    grad = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -4.0]]]])
    # alpha = (1, -1): map = relu(A_0 - A_1) = relu([[1, -3], [-1, 2]])
    cam = gradcam(fmap, grad, 56)
    assert cam.shape == (1, 56, 56)
    assert cell_saliency(cam, 2)[0].tolist() == [784.0, 0.0, 0.0, 2 * 784.0]
    # per position: relu([[4 * 1, 0], [0, 2 * 0 + 1 * -4]]) = [[4, 0], [0, 0]]
    assert cell_saliency(hirescam(fmap, grad, 56), 2)[0].tolist() == [4 * 784.0, 0, 0, 0]


def test_cnn_rnn_maps_have_the_mosaics_shape_and_follow_the_decoded_path():
    model, x = tiny_cnn_rnn(), mosaics(4)
    sal = cnn_rnn_saliency(model, x, beam_width=1)
    B, T = sal.labels.shape
    decoded = model.decode(model.encode(x), 1).paths[:, 0]
    assert (sal.labels >= 0).any(), "the test needs a model that emits something"
    for b in range(B):
        n = int((sal.labels[b] >= 0).sum())
        assert sal.labels[b, :n].tolist() == decoded[b, :n].tolist()
        assert decoded[b, n] == model.END
    for method in METHODS:
        maps = sal.maps[method]
        assert maps.shape == (B, T, 56, 56) and bool((maps >= 0).all())
        assert bool((maps[sal.labels < 0] == 0).all())  # nothing in the empty slots
        assert maps[sal.labels >= 0].flatten(1).amax(1).gt(0).any()


def test_teacher_forced_rerun_gives_the_beam_paths_probability():
    model, x = tiny_cnn_rnn(), mosaics(6)
    with torch.no_grad():
        features = model.encode(x)
        decoded = model.decode(features, 3)
        labels, inputs = emitted_path(model, features, 3)
        # one step more, so the END after the last label is scored too
        ends = torch.where(labels < 0, model.END, labels)
        lp = model.sequence_log_probs(features, torch.cat([inputs, ends[:, -1:]], 1))
        target = torch.cat([labels, torch.full_like(labels[:, :1], -1)], 1)
        n = (labels >= 0).sum(1)
        target[torch.arange(len(n)), n] = model.END  # END right after the last label
        picked = lp.gather(2, target.clamp(min=0)[..., None])[..., 0]
        total = torch.where(target >= 0, picked, 0.0).sum(1)
    assert torch.allclose(total, decoded.log_probs[:, 0], atol=1e-5)


def test_step_scores_are_the_log_probabilities_before_the_softmax():
    model, x = tiny_cnn_rnn(), mosaics(3)
    with torch.no_grad():
        features = model.encode(x)
        _, inputs = emitted_path(model, features, 3)
        s = step_scores(model, features, inputs)
        emitted = torch.nn.functional.one_hot(inputs, 12)[..., :10].cumsum(1) > 0
        assert torch.allclose(model._masked_log_softmax(s, emitted),
                              model.sequence_log_probs(features, inputs), atol=1e-6)
    log_prob = cnn_rnn_saliency(model, x, 3, target="log-prob")
    assert log_prob.maps["gradcam"].shape[-2:] == (56, 56)


def test_a_batch_gives_each_mosaic_its_own_maps():
    model, x = tiny_cnn_rnn(), mosaics(3)
    together = cnn_rnn_saliency(model, x, 1)
    alone = cnn_rnn_saliency(model, x[1:2], 1)
    n = alone.labels.shape[1]
    assert torch.equal(together.labels[1, :n], alone.labels[0])
    for method in METHODS:
        assert torch.allclose(together.maps[method][1, :n], alone.maps[method][0], atol=1e-5)


def test_bce_maps_are_one_per_predicted_label():
    enc = encoder()
    torch.manual_seed(2)
    model = BCEHead(enc, 10).eval()
    model.register_buffer("threshold", torch.tensor(0.5))
    x = mosaics(3)
    sal = bce_saliency(model, x)
    with torch.no_grad():
        predicted = model.predict(x, 0.5)[0].bool()
    for b in range(3):
        assert set(sal.labels[b][sal.labels[b] >= 0].tolist()) == set(
            predicted[b].nonzero().flatten().tolist())
    for method in METHODS:
        assert sal.maps[method].shape[2:] == (56, 56) and bool((sal.maps[method] >= 0).all())


# ---- the localisation score ------------------------------------------------------------------

def peaked_map(cell: int, value: float = 1.0) -> torch.Tensor:
    """A (56, 56) map that is `value` in one cell (row-major) and 0.1 elsewhere."""
    m = torch.full((56, 56), 0.1)
    r, c = divmod(cell, 2)
    m[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = value
    return m


def test_a_peak_in_a_cell_of_the_class_scores_one_else_zero():
    cells = torch.tensor([[-1, 3, -1, 5]])
    maps = peaked_map(1)[None]  # peak top-right, which holds class 3
    assert localisation(maps, torch.tensor([3]), cells)["localisation"] == 1.0
    assert localisation(maps, torch.tensor([5]), cells)["localisation"] == 0.0
    both = localisation(torch.stack([peaked_map(1), peaked_map(3)]), torch.tensor([5, 5]),
                        cells.expand(2, 4))
    assert both["localisation"] == 0.5 and both["scored"] == 2


def test_wrong_labels_are_not_scored_and_cell_scores_work_alike():
    cells = torch.tensor([[-1, 3, -1, 5], [7, 7, 7, 7]])
    scores = torch.tensor([[0.0, 9.0, 1.0, 2.0], [1.0, 0.0, 0.0, 0.0]])  # (M, 4) cell scores
    r = localisation(scores, torch.tensor([4, 7]), cells)  # 4 is not in the first mosaic
    assert r["scored"] == 1 and r["localisation"] == 1.0 and r["chance"] == 1.0
    r = localisation(scores, torch.tensor([4, -1]), cells)
    assert r["scored"] == 0 and r["localisation"] is None and r["chance"] is None


def test_chance_is_the_share_of_cells_holding_the_class():
    cells = torch.tensor([[3, 3, -1, 5], [3, 3, -1, 5], [1, -1, -1, -1]])
    r = localisation(torch.rand(3, 4), torch.tensor([3, 5, 1]), cells)
    assert r["chance"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    assert r["occupied_share"] == pytest.approx((3 / 4 + 3 / 4 + 1 / 4) / 3)


def test_nonempty_cell_chance_counts_only_the_cells_holding_items():
    cells = torch.tensor([[3, 3, -1, 5],    # class 3 in 2 of 3 items: 2/3 (all cells: 2/4)
                          [3, -1, -1, 5],   # class 5 in 1 of 2 items: 1/2 (1/4)
                          [1, -1, -1, -1],  # the only item: 1 (1/4)
                          [2, 4, 6, 8]])    # the label (7) is not there: not scored
    r = localisation(torch.rand(4, 4), torch.tensor([3, 5, 1, 7]), cells)
    assert r["scored"] == 3
    assert r["nonempty_chance"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert r["chance"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    # a map that peaks on a random item scores the non-empty-cell chance on average
    items = [cells[i][cells[i] >= 0] for i in range(3)]
    expected = sum(float((row == label).float().mean())
                   for row, label in zip(items, [3, 5, 1], strict=True)) / 3
    assert r["nonempty_chance"] == pytest.approx(expected)


def test_tied_peaks_share_the_credit_and_a_flat_map_scores_chance():
    cells = torch.tensor([[3, 3, -1, 5]])
    tie = torch.tensor([[2.0, 0.0, 2.0, 1.0]])  # cells 0 (class 3) and 2 (empty) tie
    r = localisation(tie, torch.tensor([3]), cells)
    assert r["localisation"] == 0.5 and r["peak_on_item"] == 0.5
    flat = localisation(torch.zeros(1, 56, 56), torch.tensor([3]), cells)
    assert flat["localisation"] == flat["chance"] == 0.5 and flat["flat"] == 1


def test_localisation_refuses_mismatched_shapes():
    with pytest.raises(DataError, match="do not match"):
        localisation(torch.zeros(2, 4), torch.tensor([1]), torch.zeros(2, 4, dtype=torch.long))


# ---- mosaics written with their cells --------------------------------------------------------

def test_with_cells_writes_the_same_mosaics_and_cells_that_fit_them(tmp_path, fmnist,
                                                                    data_dir):
    d = ["--data-dir", str(data_dir)]
    invoke("data", "mosaics", "--split", "test", "--n", "200", "--out", str(tmp_path / "a.npz"),
           *d)
    invoke("data", "mosaics", "--split", "test", "--n", "200", "--out", str(tmp_path / "b.npz"),
           "--with-cells", *d)
    images, labels = load_mosaics(tmp_path / "a.npz")
    with_images, with_labels = load_mosaics(tmp_path / "b.npz")
    assert torch.equal(images, with_images) and torch.equal(labels, with_labels)
    assert "cells" not in np.load(tmp_path / "a.npz").files
    cells, items = load_mosaic_cells(tmp_path / "b.npz")
    assert cells.shape == items.shape == (200, 4)
    tiles = images.view(200, 2, CELL, 2, CELL).permute(0, 1, 3, 2, 4).reshape(200, 4, CELL, CELL)
    empty = cells < 0
    assert bool((items[empty] == -1).all()) and not tiles[empty].any()
    assert torch.equal(tiles[~empty], fmnist.test_images[items[~empty]])
    assert torch.equal(cells[~empty], fmnist.test_labels[items[~empty]])
    for i in range(200):
        assert set(cells[i][cells[i] >= 0].tolist()) == set(labels[i].nonzero().flatten().tolist())


def test_cells_of_the_train_split_index_the_training_images(fmnist):
    images, labels, cells, items = make_split_mosaics_with_cells(fmnist, "val", 50, "outfits", 3)
    plain = make_split_mosaics(fmnist, "val", 50, "outfits", 3)
    assert torch.equal(images, plain[0]) and torch.equal(labels, plain[1])
    check_cells(images, labels, cells, items, "val", pool=fmnist.train_images)


def test_cells_that_disagree_are_refused(fmnist):
    images, labels, cells, items = make_split_mosaics_with_cells(fmnist, "test", 20, "outfits", 0)
    filled = int((cells[0] >= 0).nonzero()[0])
    wrong = cells.clone()
    wrong[0, filled] = (wrong[0, filled] + 1) % 10
    with pytest.raises(DataError, match="label set"):
        check_cells(images, labels, wrong, items, "x")
    emptied = cells.clone()
    emptied[0, filled] = -1
    with pytest.raises(DataError, match="-1 exactly where"):
        check_cells(images, labels, emptied, items, "x")
    other = items.clone()
    other[0, filled] = (other[0, filled] + 1) % len(fmnist.test_images)
    with pytest.raises(DataError, match="differs from the item"):
        check_cells(images, labels, cells, other, "x", pool=fmnist.test_images)


def test_a_file_without_cells_says_how_to_write_one(tmp_path, data_dir):
    invoke("data", "mosaics", "--split", "test", "--n", "5", "--out", str(tmp_path / "a.npz"),
           "--data-dir", str(data_dir))
    with pytest.raises(DataError, match="--with-cells"):
        load_mosaic_cells(tmp_path / "a.npz")


# ---- `cnnrnn analyze saliency` end to end ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, data_dir):
    """An encoder run, then a tiny CNN-RNN and a tiny BCE run on its encoder."""
    root = tmp_path_factory.mktemp("saliency")
    d = ["--data-dir", str(data_dir)]
    invoke("train", "--model", "vgg16", "--epochs", "1", "--limit-train", "256", "--set",
           "val_size=200", "--set", "model.width=0.0625", "--out", str(root / "enc"),
           "--quiet", *d)
    tiny = ["--epochs", "1", "--limit-train", "128", "--batch-size", "64", "--set",
            "val_size=200", "--set", "multilabel.val_mosaics=100", "--set",
            "multilabel.test_mosaics=100", "--encoder-checkpoint", str(root / "enc"), "--quiet",
            *d]
    # lr 0.03: at the recipe's 1e-3 two steps leave END the likeliest first symbol, and a run
    # that emits nothing has no label to explain
    invoke("train", "--task", "multilabel", "--out", str(root / "cnn-rnn"), *tiny,
           "--set", "model.decoder=paper", "--set", "multilabel.label_smoothing=0",
           "--set", "model.hidden_size=16", "--lr", "0.03")
    invoke("train", "--task", "multilabel", "--model", "bce", "--out", str(root / "bce"), *tiny)
    invoke("train", "--task", "multilabel", "--out", str(root / "attention"), *tiny,
           "--set", "model.hidden_size=16", "--lr", "0.03", "--set", "model.decoder=attention")
    return root


def in_unit(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0 and not math.isnan(value)


@pytest.mark.parametrize("model", ["cnn-rnn", "bce", "attention"])
def test_analyze_saliency_writes_the_figure_and_the_scores(tiny_runs, data_dir, model):
    run = tiny_runs / model
    result = json.loads(invoke("analyze", "saliency", str(run), "--n", "100", "--json",
                               "--data-dir", str(data_dir)))
    out = run / "analysis" / "saliency"
    assert (out / "saliency_gradcam.png").stat().st_size > 10_000
    assert json.loads((out / "saliency.json").read_text()) == result
    assert result["mosaics"] == 100 and result["scored"] > 0
    assert in_unit(result["chance"]) and in_unit(result["occupied_share"])
    assert result["items_per_mosaic_over_cells"] == pytest.approx(result["items_per_mosaic"] / 4)
    assert set(result["methods"]) == set(METHODS) | ({ATTENTION} if model == "attention" else set())
    for scores in result["methods"].values():
        assert in_unit(scores["localisation"]) and in_unit(scores["peak_on_item"])
        assert scores["chance"] == result["chance"]
        assert set(scores["by_items"]) <= {"1", "2", "3", "4"}
        assert sum(r["scored"] for r in scores["by_items"].values()) == result["scored"]
        for row in scores["by_items"].values():
            assert row["scored"] == 0 or in_unit(row["localisation"]) and in_unit(row["chance"])
    assert ("by_step" in result["methods"]["gradcam"]) == (model != "bce")


def test_attention_maps_fill_each_cell_with_its_weight_and_score_the_most_attended_cell():
    weights = torch.tensor([[[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]]])  # (1, T=2, G=4)
    maps = attention_maps(weights, 56)
    assert maps.shape == (1, 2, 56, 56)
    assert torch.allclose(maps[0, 0, 28:, :28], torch.tensor(0.6))  # cell 2: row 1, column 0
    per_cell = cell_saliency(maps[0], 2)
    assert torch.allclose(per_cell / 28**2, weights[0])
    cells = torch.tensor([[-1, 3, 5, 3], [-1, 3, 5, 3]])  # class 5 in cell 2
    result = localisation(per_cell, torch.tensor([5, 5]), cells)
    assert result["localisation"] == 0.5  # step 1 attends cell 2 (a hit), step 2 cell 0


def test_attention_saliency_follows_the_decoded_steps(tiny_runs):
    model = load_run(tiny_runs / "attention")[2]
    x = mosaics(3)
    sal = cnn_rnn_saliency(model, x, beam_width=1)
    labels, inputs = emitted_path(model, model.encode(x), 1)
    w = model.attention_weights(model.encode(x), inputs)
    expected = cell_saliency(sal.maps[ATTENTION].flatten(0, 1), 2).view(*labels.shape, 4)
    valid = labels >= 0
    assert torch.allclose(expected[valid] / 28**2, w[valid], atol=1e-6)
    assert (sal.maps[ATTENTION][~valid] == 0).all()


def test_analyze_saliency_table_other_method_and_attention(tiny_runs, data_dir, tmp_path):
    run, d = tiny_runs / "cnn-rnn", ["--data-dir", str(data_dir)]
    table = invoke("analyze", "saliency", str(run), "--n", "20", "--n-figure", "2", "--method",
                   "input-gradients", "--out", str(tmp_path), *d)
    assert "| chance |" in table and "| input-gradients |" in table
    assert (tmp_path / "saliency_input-gradients.png").is_file()
    with pytest.raises(CnnrnnError, match="no attention"):
        invoke("analyze", "saliency", str(run), "--method", "attention", *d)
    invoke("analyze", "saliency", str(tiny_runs / "attention"), "--n", "20", "--n-figure", "2",
           "--method", "attention", "--out", str(tmp_path), *d)
    assert (tmp_path / "saliency_attention.png").is_file()
    with pytest.raises(CnnrnnError, match="multilabel"):
        invoke("analyze", "saliency", str(tiny_runs / "enc"), *d)


# ---- chance levels a reviewer cannot break ---------------------------------------------------

@pytest.fixture(scope="module")
def cell_classifier(tmp_path_factory, data_dir) -> BCEHead:
    """A binary-relevance model that localises by construction of its head, not of its maps:
    a single-label vgg16 trained on items (6,000 images, 3 epochs: about 78 % validation
    accuracy, some 20 s on one core), whose encoder reads each mosaic cell alone, and whose
    logit for a label is the sum over the cells of the classifier's own logit (the trained head
    repeated for each cell). Its Grad-CAM map for a label is that label's evidence per cell."""
    root = tmp_path_factory.mktemp("cell-classifier")
    invoke("train", "--model", "vgg16", "--epochs", "3", "--limit-train", "6000", "--set",
           "val_size=200", "--set", "model.width=0.0625", "--out", str(root / "enc"),
           "--quiet", "--data-dir", str(data_dir))
    classifier = load_run(root / "enc")[2].eval()
    enc = copy.deepcopy(classifier.encoder)
    enc.use_pooling("max", 2, per_cell=True)  # features cell-major: (cell, C) flattened
    torch.manual_seed(0)
    model = BCEHead(enc, 10).eval()
    linear = classifier.head[1]
    with torch.no_grad():
        model.head.weight.copy_(linear.weight.repeat(1, 4))  # (10, 4 C): each cell's logit
        model.head.bias.copy_(linear.bias)
    model.register_buffer("threshold", torch.tensor(0.5))
    return model


def test_baselines_score_at_chance_and_a_model_that_localises_far_above(
        tiny_runs, cell_classifier, fmnist, monkeypatch, tmp_path):
    """On the tiny bce run's 100 real test mosaics (153 scored labels), measured with this
    fixture: Grad-CAM scores 0.99 against a non-empty-cell chance of 0.59 (all cells: 0.33);
    the label-agnostic map (the mean of a mosaic's maps, the same for each label) 0.64; the
    randomised-weights copy 0.32, at the all-cell chance rather than the non-empty one: random
    maps often peak on an empty cell. Tolerance 0.1, about 2.5 standard errors of a share over
    150 labels. Were the label-agnostic map each label's own map, it would score like the
    trained maps (0.99; checked: the test then fails)."""
    cfg, task, _, extra = load_run(tiny_runs / "bce")  # the run whose test mosaics are scored
    monkeypatch.setattr(saliency, "load_run",
                        lambda run, device: (cfg, task, cell_classifier, extra))
    result = saliency.analyze_saliency(tiny_runs / "bce", fmnist, tmp_path, n=100, n_figure=0)
    g = result["methods"]["gradcam"]
    chance = result["nonempty_chance"]
    assert g["scored"] >= 100 and g["nonempty_chance"] == chance
    assert g["localisation"] >= chance + 0.3
    assert g["multi_item"]["localisation"] >= g["multi_item"]["nonempty_chance"] + 0.3
    assert abs(g["label_agnostic"] - chance) <= 0.1
    assert g["randomised_weights"] <= chance + 0.1
    assert g["randomised_weights"] <= g["localisation"] - 0.3
    # the chance of a map that peaks on an item is above the all-cell chance, and one-item
    # mosaics, where it is 1, are a stated share of the scored labels
    assert chance > result["chance"] and result["nonempty_chance_by_items"]["1"] == 1.0
    ones = g["by_items"]["1"]["scored"] if "1" in g["by_items"] else 0
    assert result["one_item_share"] == pytest.approx(ones / g["scored"])
    assert g["multi_item"]["scored"] == g["scored"] - ones == result["multi_item_scored"]


def test_randomised_weights_change_every_weight_and_keep_the_rest(tiny_runs):
    model = load_run(tiny_runs / "attention")[2]
    random = saliency.randomised(model, seed=0)
    for (name, p), q in zip(model.named_parameters(), random.parameters(), strict=True):
        assert not torch.equal(p, q), f"{name} kept its trained value"
    assert torch.equal(random.label_rank, model.label_rank)
    again = saliency.randomised(model, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(random.parameters(), again.parameters(),
                                                  strict=True))
    x = mosaics(3)
    sal = cnn_rnn_saliency(model, x, 1)
    other = cnn_rnn_saliency(random, x, 1, labels=sal.labels)  # the trained model's steps
    assert torch.equal(other.labels, sal.labels)
    assert set(other.maps) == set(sal.maps)
