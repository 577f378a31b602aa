"""The edges a user meets: nothing lost (locks, SIGTERM, mid-epoch checkpoints, interrupted
pretraining, full disks) and nothing cryptic (one line for every mistake), mostly through the
public CLI as the user meets them."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnrnn.checkpoint import load_checkpoint, save_checkpoint
from cnnrnn.cli import app
from cnnrnn.config import load_config
from cnnrnn.errors import CnnrnnError
from cnnrnn.files import atomic_write
from cnnrnn.progress import Reporter
from cnnrnn.train import train

REPO = Path(__file__).resolve().parents[1]
OLD_BCE = REPO / "tests" / "fixtures" / "old_runs" / "bce"
TINY = ["--model", "gru", "--limit-train", "256", "--batch-size", "64", "--set", "val_size=500",
        "--set", "model.hidden_size=16", "--quiet"]
runner = CliRunner()


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def cnnrnn(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnrnn", *map(str, args)], capture_output=True,
                          text=True, **kwargs)


def one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture
def user_error(user_error):
    """The conftest fixture, checking that the one line names `pattern`."""

    def check(pattern: str, *args) -> None:
        line = user_error(*args)
        assert pattern in line, line

    return check

@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("edges") / "gru"
    cli("train", "--epochs", "1", "--out", out, "--data-dir", data_dir, *TINY)
    return out


# ---- nothing lost --------------------------------------------------------------------------

def test_a_second_training_into_the_same_folder_is_refused(tmp_path, data_dir):
    out = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cnnrnn.run_dir import RunDir\n"
        f"with RunDir({str(out)!r}).lock():\n"
        "    print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cnnrnn("train", "--epochs", "1", "--out", out, "--data-dir", data_dir, *TINY)
        one_line_error(proc, f"another training (pid {holder.pid} on ")
    finally:
        holder.kill()  # a dead holder leaves a stale lock file behind
        holder.wait()
    assert (out / ".lock").exists()
    cli("train", "--epochs", "1", "--out", out, "--data-dir", data_dir, *TINY)
    assert (out / "best.pt").is_file()


def test_sigterm_saves_and_the_run_resumes(tmp_path, data_dir):
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "cnnrnn", "train", "--epochs", "200",
                             "--out", str(out), "--data-dir", str(data_dir), *TINY[:-1]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted by SIGTERM: checkpoint saved" in err
    done = load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done < 200
    cli("train", "--resume", out, "--epochs", done + 1, "--data-dir", data_dir, "--quiet")
    assert load_checkpoint(out / "last.pt")["epoch"] == done + 1
    sessions = json.loads((out / "environment.json").read_text())
    assert [s["resumed"] for s in sessions] == [False, True]
    assert sessions[0]["command"][1:3] == ["train", "--epochs"]  # the command line as typed


class AfterSteps(Reporter):
    """Does `act()` after `n` training steps: a crash no handler sees, or a real Ctrl-C."""

    def __init__(self, n: int, act):
        super().__init__(enabled=False)
        self.n, self.act = n, act

    def step(self, loss: float, accuracy: float | None) -> None:
        self.n -= 1
        if self.n == 0:
            self.act()


def power_cut() -> None:
    raise RuntimeError("power cut")


def ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


def test_mid_epoch_checkpoints_lose_at_most_their_interval(tmp_path, data_dir):
    over = {"limit_train": 512, "val_size": 500, "batch_size": 64, "model.hidden_size": 16,
            "model.dropout": 0.2, "model.num_layers": 2, "epochs": 2}
    train(load_config("single-label", "gru", overrides=over), tmp_path / "straight",
          data_dir=data_dir)
    cfg = load_config("single-label", "gru", overrides={**over, "checkpoint_minutes": 1e-9})
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, tmp_path / "cut", data_dir=data_dir, reporter=AfterSteps(11, power_cut))
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # saved after step 10 of 16
    cli("train", "--resume", tmp_path / "cut", "--data-dir", data_dir, "--quiet")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the crash cost nothing but time


def test_ctrl_c_during_encoder_pretraining_stops_the_command(tmp_path, data_dir, monkeypatch):
    from cnnrnn.encoders import Interrupted, prepare

    monkeypatch.setenv("CNNRNN_CACHE", str(tmp_path / "cache"))
    cfg = load_config("multilabel", overrides={
        "val_size": 200, "model.encoder_width": 0.0625, "multilabel.encoder_epochs": 1,
        "multilabel.encoder_limit_train": 512})
    with pytest.raises(Interrupted, match="interrupted while pretraining the encoder; run the "
                                          "same command again"):
        prepare(cfg, data_dir=data_dir, reporter=AfterSteps(2, ctrl_c))
    ready = prepare(cfg, data_dir=data_dir)  # the next run resumes the pretraining
    assert Path(ready.multilabel.encoder_checkpoint, "best.pt").is_file()


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "last.pt"

    def full_disk(f) -> None:
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CnnrnnError, match=r"no space left on the device of .*; free some "
                                          r"space and run again \(last.pt was not written\)"):
        atomic_write(target, full_disk)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, b"ok")
    assert target.read_bytes() == b"ok" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("full", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1360"),
    OSError(errno.ENOSPC, "No space left on device")], ids=["torch", "oserror"])
def test_a_disk_that_fills_during_a_checkpoint_is_one_line_and_resumes(
        full, run, tmp_path, data_dir, user_error, monkeypatch):
    copy = tmp_path / "full"
    shutil.copytree(run, copy)
    before = (copy / "last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs) -> None:
        f.write(b"part of a checkpoint")
        raise full

    monkeypatch.setattr(torch, "save", disk_full)
    user_error(f"the disk of run folder {copy} is full: best.pt was not written and the "
               f"last.pt saved before is kept; free some space, then continue with `cnnrnn "
               f"train --resume {copy}`", "train", "--resume", copy, "--epochs", "2",
               "--data-dir", data_dir, "--quiet")
    assert (copy / "last.pt").read_bytes() == before
    assert not [p.name for p in copy.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(torch, "save", real_save)
    cli("train", "--resume", copy, "--epochs", "2", "--data-dir", data_dir, "--quiet")
    assert load_checkpoint(copy / "last.pt")["epoch"] == 2


def test_a_disk_full_before_the_first_checkpoint_says_to_start_again(tmp_path, monkeypatch):
    from cnnrnn.run_dir import RunDir

    def disk_full(obj, f, *args, **kwargs) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CnnrnnError, match=r"is full: last.pt was not written and it has no "
                                          r"checkpoint yet; free some space, then start it "
                                          r"again with `cnnrnn train --overwrite --out "):
        RunDir(tmp_path).save({"epoch": 0}, "last")
    assert list(tmp_path.iterdir()) == []


# ---- nothing cryptic -----------------------------------------------------------------------

def test_resume_with_fewer_epochs_than_done(run, tmp_path, data_dir, user_error):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cli("train", "--resume", copy, "--epochs", "2", "--data-dir", data_dir, "--quiet")
    user_error("has done 2 epochs; --epochs must be at least 2", "train", "--resume", copy,
               "--epochs", "1")


def test_resume_of_a_run_killed_before_its_first_checkpoint(run, tmp_path, user_error):
    copy = tmp_path / "early"
    shutil.copytree(run, copy)
    for name in ("last.pt", "best.pt", "val_metrics.json"):  # as a kill in epoch 1 leaves it
        (copy / name).unlink()
    user_error(f"{copy} stopped before its first checkpoint (it has no last.pt), so there is "
               f"nothing to resume; start it again with `cnnrnn train --overwrite --out {copy}` "
               "and the same options, or choose a new --out", "train", "--resume", copy)


def test_resume_of_a_finished_run_says_so_and_trains_nothing(run, tmp_path):
    copy = tmp_path / "done"
    shutil.copytree(run, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    result = runner.invoke(app, ["train", "--resume", str(copy)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        f"{copy} is finished (1 of 1 epochs done), so nothing was trained; to train it "
        f"further, give it more epochs: cnnrnn train --resume {copy} --epochs M, with M above 1")
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_an_optimizer_state_that_does_not_fit_the_model_is_one_line(run, tmp_path,
                                                                     user_error):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    state = torch.load(copy / "last.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    group["params"] = group["params"][:2]  # as if fewer parameters had been trainable
    torch.save(state, copy / "last.pt")
    before = {name: (copy / name).read_bytes() for name in ("config.toml", "environment.json")}
    user_error("its optimizer state does not fit the model's trainable parameters", "train",
               "--resume", copy, "--epochs", "2")
    # a refused resume leaves the run as it was: no epochs = 2, no session that never trained
    assert {name: (copy / name).read_bytes() for name in before} == before


def test_ctrl_c_outside_a_training_loop_is_one_line_and_status_130(monkeypatch, capsys):
    import cnnrnn.cli as cli_module

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "app", interrupted)
    with pytest.raises(SystemExit) as stop:
        cli_module.main()
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_best_pt_is_saved_before_last_pt(tmp_path, data_dir, monkeypatch):
    # a kill between the two saves then leaves last.pt an epoch behind (a resume replays it),
    # never last.pt naming as best an epoch that best.pt does not hold
    from cnnrnn.run_dir import RunDir

    saved, real = [], RunDir.save
    monkeypatch.setattr(RunDir, "save", lambda self, state, which: (
        saved.append((which, state["epoch"])), real(self, state, which))[1])
    cli("train", "--epochs", "1", "--out", tmp_path / "run", "--data-dir", data_dir, *TINY)
    assert saved == [("best", 1), ("last", 1)]


def test_bad_paths_and_devices_are_one_line(run, tmp_path, data_dir, user_error):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    user_error("is a file; give a folder for the run", "train", "--epochs", "1", "--out",
               a_file, "--data-dir", data_dir, *TINY)
    user_error("cannot write to the run folder", "train", "--epochs", "1", "--out",
               a_file / "run", "--data-dir", data_dir, *TINY)
    user_error("unknown device 'tpu'", "evaluate", run, "--device", "tpu")
    user_error("device = 'tpu' is not one of", "train", "--device", "tpu")
    user_error("grad_clip must be >= 0", "train", "--set", "grad_clip=-1")
    user_error("[multilabel] options apply to --task multilabel", "train", "--set",
               "multilabel.beam_width=2")
    user_error("compare runs of one task at a time", "compare", run, OLD_BCE)
    user_error("--n must be at least 1", "data", "mosaics", "--n", "0", "--out",
               tmp_path / "m.npz")
    user_error("GiB of memory and this machine has", "data", "mosaics", "--n", "10000000000",
               "--out", tmp_path / "m.npz")
    # and the installed command says the same, as a user runs it
    one_line_error(cnnrnn("train", "--set", "grad_clip=-1"), "grad_clip must be >= 0")


def test_an_edited_config_toml_is_named(run, tmp_path, data_dir):
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    text = (copy / "config.toml").read_text().replace("lr = 0.002", "lr = 0.5")
    (copy / "config.toml").write_text(text)
    proc = cnnrnn("evaluate", copy, "--json", "--data-dir", data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "config.toml differs from the config stored in best.pt (lr); using the checkpoint's" \
        in proc.stderr
    assert json.loads(proc.stdout)["accuracy"] > 0


def test_predict_warns_about_an_edited_config_toml(run, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    text = (copy / "config.toml").read_text()
    text = text.replace("lr = 0.002", "lr = 0.5").replace("seed = 0", "seed = 7")
    (copy / "config.toml").write_text(text)
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    result = runner.invoke(app, ["predict", str(copy), str(tmp_path / "x.npy")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {copy / 'config.toml'} differs from the config stored in best.pt (lr, seed); "
        "using the checkpoint's"]
    assert len(json.loads(result.stdout)["names"]) == 2


def test_a_misspelt_built_in_cost_name_gets_a_suggestion(run, tmp_path, data_dir, user_error):
    from cnnrnn.run_dir import RunDir

    out = tmp_path / "soft"
    user_error("unknown costs 'hierachy': no such file, and not a built-in name; did you mean "
               "hierarchy?", "train", "--loss", "soft-labels", "--costs", "hierachy", "--epochs",
               "1", "--out", out, "--data-dir", data_dir, *TINY)
    assert not RunDir(out).holds_run()  # refused before config.toml: the same --out works next
    user_error("did you mean hierarchy?", "evaluate", run, "--costs", "Hierarchy", "--data-dir",
               data_dir)
    user_error("cost file elsewhere.csv not found", "evaluate", run, "--costs", "elsewhere.csv",
               "--data-dir", data_dir)


def test_figures_go_into_a_folder_that_does_not_exist_yet(run, tmp_path, data_dir):
    # as `analyze costs --out` makes its folder, so does every figure
    plot = tmp_path / "missing" / "deeper" / "x.png"
    cli("compare", run, "--plot", plot, "--data-dir", data_dir)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_data_show_draws_a_npy_of_mosaic_images(tmp_path, user_error):
    images = np.random.default_rng(0).integers(0, 256, (4, 56, 56), dtype=np.uint8)
    np.save(tmp_path / "m.npy", images)
    out = tmp_path / "show.png"
    cli("data", "show", "--mosaics", tmp_path / "m.npy", "--n", "3", "--out", out)
    assert out.read_bytes().startswith(b"\x89PNG")
    np.save(tmp_path / "f.npy", images.astype(np.float32))
    user_error("images must be a (N, S, S) uint8 array", "data", "show", "--mosaics",
               tmp_path / "f.npy", "--out", out)
    from cnnrnn.data.mosaics import load_mosaics

    with pytest.raises(CnnrnnError, match=r"m.npy holds images without labels \(a .npy array\); "
                                          r"pass the .npz that `cnnrnn data mosaics` writes"):
        load_mosaics(tmp_path / "m.npy")  # where labels are needed, as in training


def test_an_absurd_stored_model_is_refused_before_allocation(run, tmp_path, user_error):
    copy = tmp_path / "absurd"
    shutil.copytree(run, copy)
    state = load_checkpoint(copy / "best.pt")
    state["config"]["model"]["hidden_size"] = 10**7
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, copy / "best.pt")
    toml = (copy / "config.toml").read_text().replace("hidden_size = 16", "hidden_size = 10000000")
    (copy / "config.toml").write_text(toml)
    user_error("describes a gru of 300,001,000,000,010 parameters", "evaluate", copy)


def test_download_failure_is_one_line_and_has_a_timeout(tmp_path, monkeypatch):
    import socket

    import torchvision.datasets

    from cnnrnn.data.fashion_mnist import DOWNLOAD_TIMEOUT, download
    from cnnrnn.errors import DataError

    seen = []

    def hangs(*args, **kwargs):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("The read operation timed out")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", hangs)
    with pytest.raises(DataError, match=r"download failed \(TimeoutError: The read operation "
                                        r"timed out\); check the internet connection"):
        download(tmp_path)
    assert seen == [DOWNLOAD_TIMEOUT] and socket.getdefaulttimeout() is None


def test_version_models_and_print_config(tmp_path):
    from cnnrnn.version import __version__

    assert cli("--version").strip() == f"cnnrnn {__version__}"
    out = cli("models")
    assert "lstm" in out and "325,138 parameters" in out and "configs/multilabel/bce.toml" in out
    printed = cli("train", "--model", "gru", "--set", "model.hidden_size=8", "--print-config",
                  "--out", tmp_path / "never")
    assert "hidden_size = 8" in printed and not (tmp_path / "never").exists()
    ml = cli("train", "--task", "multilabel", "--encoder-checkpoint", OLD_BCE, "--print-config")
    assert "encoder_width = 0.0625" in ml  # read from the encoder's checkpoint


def test_commands_and_their_help_run(tmp_path):
    for args in (["--help"], ["train", "--help"], ["analyze", "errors", "--help"],
                 ["data", "mosaics", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a folder whose permission root ignores")
def test_oserror_reaching_the_cli_is_one_line(run, tmp_path, monkeypatch):
    # a folder given where a file is expected: the .npy reader is handed a folder
    one_line_error(cnnrnn("predict", run, tmp_path), str(tmp_path))


# ---- what a research CLI records and shows -------------------------------------------------

def test_progress_without_a_terminal_is_plain_lines(tmp_path, data_dir):
    import io

    from rich.console import Console

    buf = io.StringIO()
    reporter = Reporter(console=Console(file=buf, soft_wrap=True), plain_every=0.0)
    cfg = load_config("single-label", "gru", overrides={
        "limit_train": 512, "val_size": 500, "batch_size": 64, "model.hidden_size": 16,
        "epochs": 1})
    train(cfg, tmp_path / "run", data_dir=data_dir, reporter=reporter)
    lines = buf.getvalue().splitlines()
    steps = [x for x in lines if x.startswith("epoch 1 step ")]
    assert steps and steps[0].startswith("epoch 1 step 1/8 loss ")
    assert "steps/s, " in steps[0] and steps[0].endswith(" left")
    assert any("val acc" in x for x in lines)  # the epoch table names its metric
    assert all(len(x) <= 80 for x in lines if "run folder" not in x), lines


def test_the_run_folder_records_its_environment(run):
    import platform

    from cnnrnn.version import __version__

    sessions = json.loads((run / "environment.json").read_text())
    assert len(sessions) == 1 and sessions[0]["resumed"] is False
    env = sessions[0]
    assert env["cnnrnn"] == __version__ and env["torch"] == torch.__version__
    assert env["python"] == platform.python_version() and env["threads"] >= 1
    assert env["cpu"] and isinstance(env["command"], list) and env["command"]
    assert env["git_commit"] is None or len(env["git_commit"].split("+")[0]) == 40


def test_evaluate_under_another_label_prior(run, data_dir, user_error, tmp_path, monkeypatch):
    import cnnrnn.evaluate as ev

    bce = tmp_path / "bce"  # evaluate saves its result in the run folder: not in the fixture
    shutil.copytree(OLD_BCE, bce)
    own = json.loads(cli("evaluate", bce, "--json", "--data-dir", data_dir))
    shifted = json.loads(cli("evaluate", bce, "--json", "--prior", "independent",
                             "--data-dir", data_dir))
    assert (own["prior"], shifted["prior"]) == ("outfits", "independent")
    assert own["n"] == shifted["n"] and own["per_label"] != shifted["per_label"]
    # analyze errors reads the predictions evaluate saved under the same prior: no model run
    monkeypatch.setattr(ev, "predict_images", lambda *a, **k: pytest.fail("the model ran"))
    rows = json.loads(cli("analyze", "errors", bce, "--prior", "independent", "--json",
                          "--data-dir", data_dir))
    monkeypatch.undo()
    assert rows[0]["exact"] == pytest.approx(shifted["exact_match"])
    user_error("--prior applies to multilabel runs", "evaluate", run, "--prior", "independent")


def test_auto_threads_leave_the_busy_cpus_alone(monkeypatch, tmp_path, data_dir):
    import cnnrnn.threads as threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for busy, want in ((0, 2), (1, 1), (5, 1)):
        monkeypatch.setattr(threads, "busy_cpus", lambda b=busy: b)
        assert threads.auto_threads() == want
    # torchrun's ranks on one machine share its CPUs
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    for ranks, busy, want in ((2, 0, 4), (2, 6, 2), (3, 0, 2), (16, 0, 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
        monkeypatch.setattr(threads, "busy_cpus", lambda b=busy: b)
        assert threads.auto_threads() == want
    assert threads.auto_threads(shared=False) == 8  # rank 0 alone, the others waiting
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "busy_cpus", lambda: 1)
    cfg = load_config("single-label", "gru", overrides={
        "limit_train": 256, "val_size": 500, "batch_size": 64, "model.hidden_size": 8,
        "epochs": 1, "threads": -1})
    train(cfg, tmp_path / "auto", data_dir=data_dir)
    env = json.loads((tmp_path / "auto" / "environment.json").read_text())[0]
    assert env["threads"] == 1  # recorded as used
