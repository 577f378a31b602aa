"""Output for people: `cnnrnn predict`'s table, photos framed as Fashion-MNIST items
(--fit) and the light-border warning, `cnnrnn data export`, and evaluations saved in the run
folder that evaluate and compare read back while the checkpoint is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnrnn.cli import app
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.images import ITEM_LEVEL, LIGHT_BORDER, read_inputs
from cnnrnn.report import prediction_rows

runner = CliRunner()
TINY = ["--model", "gru", "--epochs", "1", "--limit-train", "256", "--batch-size", "64",
        "--set", "val_size=500", "--set", "model.hidden_size=16", "--quiet"]


def invoke(*args: str | Path):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def cli(*args: str | Path) -> str:
    return invoke(*args).stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "gru"
    cli("train", "--out", out, "--data-dir", data_dir, *TINY)
    return out


# ---- predict: a table for people, JSON for programs -----------------------------------------

def test_predict_prints_a_table_of_the_top_3_or_json(run, fmnist, tmp_path):
    np.save(tmp_path / "x.npy", fmnist.test_images[:4].numpy())
    as_json = json.loads(cli("predict", run, tmp_path / "x.npy"))  # not a terminal: JSON
    assert as_json == json.loads(cli("predict", run, tmp_path / "x.npy", "--json"))
    table = cli("predict", run, tmp_path / "x.npy", "--table")
    for i, (label, probs) in enumerate(zip(as_json["labels"], as_json["probs"], strict=True)):
        row = next(line for line in table.splitlines() if f"x.npy[{i}]" in line)
        top = np.argsort(probs)[::-1][:3]
        cells = [f"{CLASSES[k]} {100 * probs[k]:.1f} %" for k in top]
        assert all(cell in row for cell in cells), (row, cells)
        assert row.index(cells[0]) < row.index(cells[1]) < row.index(cells[2])
        assert CLASSES[label] in row
    # --out keeps writing the JSON, and prints nothing on stdout unless --table asks
    assert cli("predict", run, tmp_path / "x.npy", "--out", tmp_path / "p.json") == ""
    assert json.loads((tmp_path / "p.json").read_text()) == as_json


def test_a_terminal_gets_the_table_unless_json_or_out(run, fmnist, tmp_path, monkeypatch):
    import cnnrnn.cli

    np.save(tmp_path / "x.npy", fmnist.test_images[:2].numpy())
    monkeypatch.setattr(cnnrnn.cli, "_is_terminal", lambda: True)
    table = cli("predict", run, tmp_path / "x.npy")
    assert "x.npy[0]" in table and "x.npy[1]" in table and " %" in table
    assert json.loads(cli("predict", run, tmp_path / "x.npy", "--json"))["names"] == [
        "x.npy[0]", "x.npy[1]"]
    assert cli("predict", run, tmp_path / "x.npy", "--out", tmp_path / "p.json") == ""


def test_multilabel_rows_give_the_set_with_scores():
    scores = [0.1] * 10
    scores[7], scores[8], scores[3] = 0.9, 0.6, 0.4
    result = {"classes": list(CLASSES), "names": ["m.png"], "label_sets": [[8, 7]],
              "scores": [scores]}
    header, rows = prediction_rows(result)
    assert header[0] == "image"
    assert rows == [["m.png", "Sneaker 0.90, Bag 0.60", "Dress 0.40, T-shirt/top 0.10"]]


# ---- photos: the light-border warning and --fit -------------------------------------------

def photo(tmp_path: Path, name: str = "photo.png") -> Path:
    """A dark 20x10 item off-centre (top left) on a light 100x80 background."""
    pixels = np.full((80, 100), 235, np.uint8)
    pixels[5:15, 10:30] = 20
    Image.fromarray(pixels).save(tmp_path / name)
    return tmp_path / name


def test_a_light_border_warns_that_it_likely_needs_invert(tmp_path):
    heard: list[str] = []
    read_inputs(photo(tmp_path), 28, say=heard.append)
    assert len(heard) == 1 and "photo.png" in heard[0] and "need --invert" in heard[0]
    assert f"above {LIGHT_BORDER}" in heard[0]
    heard.clear()
    read_inputs(tmp_path / "photo.png", 28, invert=True, say=heard.append)
    assert heard == []


def test_fit_trims_centres_and_fills_the_frame(tmp_path):
    images, _ = read_inputs(photo(tmp_path), 28, invert=True, fit=True)
    item = images[0].numpy() > ITEM_LEVEL
    rows, cols = np.flatnonzero(item.any(1)), np.flatnonzero(item.any(0))
    # the longer side (20 px wide) fills all 28 columns; the 2:1 item is 14 rows, centred
    assert (cols[0], cols[-1]) == (0, 27)
    assert 13 <= len(rows) <= 15 and abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1
    assert images[0].max() == 255  # contrast stretched
    plain, _ = read_inputs(tmp_path / "photo.png", 28, invert=True)
    plain_cols = np.flatnonzero((plain[0].numpy() > ITEM_LEVEL).any(0))
    assert plain_cols[-1] < 14  # without --fit the item stays small, in the corner


def test_predict_fit_on_a_photo_and_its_warning(run, tmp_path):
    result = invoke("predict", run, photo(tmp_path), "--json")
    assert "need --invert" in result.stderr
    fitted = invoke("predict", run, tmp_path / "photo.png", "--invert", "--fit", "--json")
    assert fitted.stderr == "" and json.loads(fitted.stdout)["names"] == ["photo.png"]


# ---- data export -----------------------------------------------------------------------------

def test_export_as_array_and_pngs_predicts_the_same(run, fmnist, data_dir, tmp_path):
    cli("data", "export", "--n", "16", "--out", tmp_path / "x.npy", "--data-dir", data_dir)
    cli("data", "export", "--n", "16", "--out", tmp_path / "pngs", "--data-dir", data_dir)
    exported = np.load(tmp_path / "x.npy", allow_pickle=False)
    assert exported.dtype == np.uint8 and exported.shape == (16, 28, 28)
    assert np.array_equal(exported, fmnist.test_images[:16].numpy())
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    truth = fmnist.test_labels[:16].tolist()
    short = [CLASSES[c].split("/")[0].replace(" ", "_") for c in truth]  # Ankle_boot
    assert names == [f"{i:04d}-{name}.png" for i, name in enumerate(short)]
    from_array = json.loads(cli("predict", run, tmp_path / "x.npy", "--json"))
    from_pngs = json.loads(cli("predict", run, tmp_path / "pngs", "--json"))
    assert from_pngs["names"] == names
    assert from_array["labels"] == from_pngs["labels"]
    assert np.allclose(from_array["probs"], from_pngs["probs"], atol=1e-6)


def test_export_mosaics_with_their_label_sets(data_dir, tmp_path):
    cli("data", "export", "--mosaics", "--prior", "independent", "--n", "5", "--out",
        tmp_path / "m.npz", "--data-dir", data_dir)
    cli("data", "export", "--mosaics", "--prior", "independent", "--n", "5", "--out",
        tmp_path / "m", "--data-dir", data_dir)
    cli("data", "mosaics", "--split", "test", "--prior", "independent", "--n", "5", "--out",
        tmp_path / "same.npz", "--data-dir", data_dir)
    with np.load(tmp_path / "m.npz") as z, np.load(tmp_path / "same.npz") as same:
        images, labels = z["images"], z["labels"]
        assert np.array_equal(images, same["images"]) and np.array_equal(labels, same["labels"])
    files = sorted((tmp_path / "m").iterdir())
    assert len(files) == 5 and images.shape == (5, 56, 56)
    for i, path in enumerate(files):
        assert np.array_equal(np.array(Image.open(path)), images[i])
        named = path.stem.split("-", 1)[1].split("+")
        assert named == [CLASSES[k].split("/")[0].replace(" ", "_")
                         for k in np.flatnonzero(labels[i])]


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "{tmp}/x.png"], "give a .npy file .* not .png"),
    (["--out", "{tmp}/x.npy", "--n", "0"], "--n must be at least 1, got 0"),
    (["--out", "{tmp}/x.npy", "--split", "val", "--n", "5001"],
     "--n 5001 is out of range: the val split has 5,000 items"),
    (["--out", "{tmp}/x.npy", "--split", "tset"], "unknown split 'tset'"),
    (["--out", "{tmp}/x.npy", "--prior", "street"], "add --mosaics"),
    (["--out", "{tmp}/none/x.npy"], "does not exist"),
])
def test_export_mistakes_are_one_line(user_error, data_dir, tmp_path, args, message):
    import re

    line = user_error("data", "export", *[a.format(tmp=tmp_path) for a in args],
                      "--data-dir", data_dir)
    assert re.search(message, line), line


# ---- saved evaluations: evaluate, compare -------------------------------------------------

def test_evaluate_saves_and_compare_reuses_until_best_pt_changes(run, data_dir, monkeypatch):
    import cnnrnn.evaluate as ev
    from cnnrnn.run_dir import RunDir

    first = json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir))
    assert sorted(p.suffix for p in run.glob("eval_test_best_*")) == [".json", ".npz"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model ran although a saved evaluation matched")

    monkeypatch.setattr(ev, "predict_images", must_not_run)
    assert json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir)) == first
    table = invoke("evaluate", run, "--data-dir", data_dir)
    assert "read the saved evaluation" in table.stderr
    assert f"{100 * first['accuracy']:.2f} %" in table.stdout
    row = ev.compare_runs([run], data_dir)[0]
    assert row["test"] == first["accuracy"]
    # a changed checkpoint (as resuming further writes one) is evaluated again
    state = RunDir(run).load("best")
    state["model"] = {k: v + 0.05 if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    RunDir(run).save(state, "best")
    with pytest.raises(AssertionError, match="the model ran"):
        ev.compare_runs([run], data_dir)
    monkeypatch.undo()
    row = ev.compare_runs([run], data_dir)[0]
    fresh = json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir))
    assert row["test"] == fresh["accuracy"] != first["accuracy"]
    assert len(list(run.glob("eval_test_best_*.json"))) == 2
