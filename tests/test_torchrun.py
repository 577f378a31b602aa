"""`cnnrnn train` under torchrun: 2 processes on the CPU (gloo) against one process with the same
global batch, two "nodes" with a rendezvous endpoint, shards that do not overlap, only rank 0
writing, a stop on every rank (a signal to
all of them, a Ctrl-C or a NaN loss on one of them: tests/rank_fault.py), resume, and an encoder
pretrained once for all ranks.

Tolerances: with the same global batch, a 2-process step averages two half-batch gradients
where one process takes the mean of the whole batch. For a per-sample loss (cross-entropy, BCE)
the two are equal up to rounding: the losses agree to 1e-5 (relative) after two epochs. The
CNN-RNN's loss is a mean over target steps (labels and END), and two shards of one batch hold
different numbers of steps, so DDP's equal weighting of the shards moves the gradient a little:
1e-3 there. Models whose batch norm is in training mode keep per-rank statistics on the CPU
(SyncBatchNorm needs a GPU), so the multilabel check freezes the encoder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from golden_runs import strip

from cnnrnn.distributed import ShardedBatches

REPO = Path(__file__).resolve().parents[1]
OLD_BCE = REPO / "tests" / "fixtures" / "old_runs" / "bce"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")
SINGLE = ["--model", "gru", "--epochs", "2", "--limit-train", "512", "--batch-size", "64",
          "--set", "val_size=500", "--set", "model.hidden_size=16", "--set",
          "model.dropout=0.0", "--set", "threads=1", "--precision", "fp32", "--quiet"]
MULTI = ["--task", "multilabel", "--model", "cnn-rnn", "--epochs", "2", "--limit-train", "256",
         "--batch-size", "64", "--set", "val_size=500", "--set", "model.hidden_size=16",
         "--set", "model.embed_dim=16", "--set", "model.dropout=0.0", "--set",
         "multilabel.val_mosaics=100", "--set", "multilabel.test_mosaics=100", "--set",
         "threads=1", "--precision", "fp32", "--freeze-encoder", "--encoder-checkpoint",
         str(OLD_BCE), "--quiet"]


def env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CNNRNN_DATA": str(data_dir), "OMP_NUM_THREADS": "1", **extra}


def torchrun(args: list[str], data_dir: Path, nproc: int = 2, fault: str = "",
             env_extra: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """`cnnrnn train ARGS` on `nproc` ranks; with `fault`, one rank's fault (rank_fault.py)."""
    main = ["tests/rank_fault.py"] if fault else ["-m", "cnnrnn"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *main, "train", *args]
    extra = {**({"CNNRNN_TEST_FAULT": fault} if fault else {}), **(env_extra or {})}
    def run() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=env(data_dir, **extra),
                              timeout=300, cwd=REPO, **kw)

    proc = run()
    if ABORT in proc.stderr and not fault and "--resume" not in args and "--out" in args:
        # Once in a full test run here, a rank of a run that had trained to its end aborted as
        # it exited (in gloo's teardown; the cause is not found, and no run here reproduced it
        # alone). Such a fresh run is run once more, from an empty folder; any other failure,
        # and a second abort, stand.
        shutil.rmtree(args[args.index("--out") + 1], ignore_errors=True)
        proc = run()
    return proc


ABORT = "terminate called without an active exception"


def single(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnrnn", "train", *args], capture_output=True,
                          text=True, env=env(data_dir), timeout=300)


def history(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(a: Path, b: Path, rel: float) -> None:
    ha, hb = history(a), history(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=rel)
        val = "val_loss" if ra["val_loss"] is not None else "val_O-F1"
        assert ra[val] == pytest.approx(rb[val], rel=rel, abs=1e-7)


@pytest.mark.parametrize("kind", ["single-label", "multilabel"])
def test_two_processes_match_one_with_the_same_global_batch(kind, tmp_path, data_dir):
    args = SINGLE if kind == "single-label" else MULTI
    two, one = tmp_path / "two", tmp_path / "one"
    proc = torchrun([*args, "--out", str(two)], data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = single([*args, "--out", str(one)], data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_losses(two, one, rel=1e-5 if kind == "single-label" else 1e-3)
    # only rank 0 wrote: one environment entry, one row per epoch, the files of one run
    sessions = json.loads((two / "environment.json").read_text())
    assert len(sessions) == 1 and len(history(two)) == 2
    assert sessions[0]["processes"] == 2  # the numbers depend on it
    assert json.loads((one / "environment.json").read_text())[0]["processes"] == 1
    assert {p.name for p in two.iterdir()} == {p.name for p in one.iterdir()}


def test_two_nodes_with_a_rendezvous_endpoint_train_as_one_two_process_run(tmp_path,
                                                                           data_dir):
    # multi-node torchrun, played on one machine: two launchers of one process each meet at a
    # c10d rendezvous endpoint; global ranks and local ranks (0 on both) then differ
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = tmp_path / "nodes"
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         f"--node_rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
         "--rdzv-id=cnnrnn-test", "-m", "cnnrnn", "train", *SINGLE, "--out", str(nodes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(data_dir))
        for node in (0, 1)]
    for launcher in launchers:
        _, err = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, err[-3000:]
    standalone = tmp_path / "standalone"
    done = torchrun([*SINGLE, "--out", str(standalone)], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_losses(nodes, standalone, rel=1e-6)
    assert (nodes / "best.pt").is_file()


def test_train_gpu_sh_runs_any_training_command_on_n_processes(tmp_path, data_dir):
    # on a CPU the same script runs torchrun with gloo; paths are read from the caller's folder
    script = REPO / "scripts" / "train_gpu.sh"
    proc = subprocess.run(["bash", str(script), "2", "cnnrnn", "train", *SINGLE, "--out", "gsh"],
                          capture_output=True, text=True, env=env(data_dir, PYTHON=sys.executable),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(history(tmp_path / "gsh")) == 2
    assert len(json.loads((tmp_path / "gsh" / "environment.json").read_text())) == 1


def test_an_error_every_rank_meets_is_printed_once(tmp_path, data_dir):
    proc = torchrun([*SINGLE, "--out", str(tmp_path / "three")], data_dir, nproc=3)
    assert proc.returncode != 0
    line = "error: a batch of 64 does not split into 3 equal shards"
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    # a typo in the command line: every rank reads it before they meet
    proc = torchrun([*SINGLE, "--set", "modle.hidden_size=8", "--out", str(tmp_path / "typo")],
                    data_dir)
    assert proc.returncode != 0
    assert proc.stderr.count("error: unknown key 'modle'") == 1, proc.stderr[-3000:]


def test_ctrl_c_during_the_encoders_pretraining_stops_every_rank_as_interrupted(tmp_path,
                                                                              data_dir):
    # rank 0 pretrains the encoder while rank 1 waits; a Ctrl-C there (its 2nd step) ends the
    # command on both ranks as an interruption (status 130), said once, not as an error
    args = [a for a in MULTI if a not in ("--encoder-checkpoint", str(OLD_BCE))]
    args += ["--set", "model.encoder_width=0.0625", "--set", "multilabel.encoder_epochs=1",
             "--set", "multilabel.encoder_limit_train=512", "--out", str(tmp_path / "ml")]
    proc = torchrun(args, data_dir, fault="signal:0:2",
                    env_extra={"CNNRNN_CACHE": str(tmp_path / "cache")})
    said = proc.stdout + proc.stderr
    # a rank ends with 130 (torchrun then stops the other with SIGTERM, whichever is first);
    # none errs (2) or aborts inside the process group (-6: "terminate called without...")
    assert "exitcode  : 130" in said, said[-3000:]
    assert "exitcode  : 2 (" not in said and "exitcode  : -6" not in said, said[-3000:]
    assert "terminate called" not in said, said[-3000:]
    assert said.count("interrupted: interrupted while pretraining the encoder") == 1, said[-3000:]


def test_ranks_that_fail_alike_say_it_once_and_ranks_that_fail_apart_each_say_theirs(
        monkeypatch):
    from cnnrnn.distributed import World
    from cnnrnn.errors import CheckpointError, CnnrnnError, ConfigError

    rank1 = World(rank=1, world_size=2, local_rank=1)  # no process group: gather is faked
    alike = [(ConfigError, "bad"), (ConfigError, "bad")]
    monkeypatch.setattr(World, "gather", lambda self, obj: alike)
    with pytest.raises(ConfigError) as got:
        rank1.on_every_rank(lambda: (_ for _ in ()).throw(ConfigError("bad")))
    assert got.value.every_rank  # rank 0 prints it
    apart = [None, (CheckpointError, "rank 1's own")]
    monkeypatch.setattr(World, "gather", lambda self, obj: apart)
    with pytest.raises(CheckpointError) as got:
        rank1.on_every_rank(lambda: (_ for _ in ()).throw(CheckpointError("rank 1's own")))
    assert got.value.every_rank  # rank 0 had none and raises rank 1's: rank 0 says it
    monkeypatch.setattr(World, "gather", lambda self, obj: [(ConfigError, "a"), (
        CheckpointError, "b")])
    with pytest.raises(CnnrnnError) as got:
        rank1.on_every_rank(lambda: (_ for _ in ()).throw(CheckpointError("b")))
    assert str(got.value) == "b" and not got.value.every_rank


def test_the_shards_of_a_batch_do_not_overlap():
    class Batches:
        def __len__(self) -> int:
            return 3

        def epoch(self, epoch: int, start: int = 0):
            for i in range(start, 3):
                ids = torch.arange(8) + 8 * i + 100 * epoch
                yield ids[:, None].float(), ids

    shards = [list(ShardedBatches(Batches(), r, 2).epoch(1)) for r in range(2)]
    for (_, y0), (_, y1) in zip(*shards, strict=True):
        assert len(y0) == len(y1) == 4
        assert not set(y0.tolist()) & set(y1.tolist())
        assert sorted(y0.tolist() + y1.tolist()) == sorted(set(y0.tolist() + y1.tolist()))
    whole = [y for _, y in Batches().epoch(1)]
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][i][1], shards[1][i][1]]), batch)
    with pytest.raises(Exception, match="does not split into 3 equal shards"):
        next(ShardedBatches(Batches(), 0, 3).epoch(0))


def test_sigterm_stops_every_rank_and_resume_works_under_torchrun(tmp_path, data_dir):
    out = tmp_path / "run"
    args = [*SINGLE[:SINGLE.index("--epochs")], "--epochs", "400",
            *SINGLE[SINGLE.index("--epochs") + 2:], "--out", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cnnrnn", "train", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(data_dir))
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    proc.communicate(timeout=120)
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 400
    more = torchrun(["--resume", str(out), "--epochs", str(done + 1), "--quiet"], data_dir)
    assert more.returncode == 0, more.stderr[-3000:]
    assert [r["epoch"] for r in history(out)][-1] == done + 1


def test_a_nan_loss_on_one_rank_stops_every_rank_at_that_step(tmp_path, data_dir):
    # 512 training images in global batches of 64: 8 steps an epoch, so step 10 is in epoch 2.
    # A rank that went on would wait at its next all-reduce until the subprocess timed out.
    out = tmp_path / "run"
    proc = torchrun([*SINGLE, "--epochs", "3", "--out", str(out)], data_dir, fault="nan:1:10")
    assert proc.returncode != 0
    # rank 0 names the rank whose loss it was (its own loss is finite)
    line = ("error: loss became nan on rank 1 at epoch 2, step 10; the last good checkpoint "
            f"{out / 'last.pt'} is kept")
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]  # rank 0 says it, once
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 8)
    assert [r["epoch"] for r in history(out)] == [1]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_ctrl_c_on_one_rank_stops_every_rank_and_resumes_to_the_straight_run(tmp_path, data_dir):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    # with dropout, so each rank's own random stream must come back at the resume too
    dropout = [*SINGLE, "--set", "model.num_layers=2", "--set", "model.dropout=0.3"]
    done = torchrun([*dropout, "--out", str(straight)], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    loud = [a for a in dropout if a != "--quiet"]  # rank 0 says why it stopped
    proc = torchrun([*loud, "--out", str(cut)], data_dir, fault="signal:1:10")
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "interrupted by a signal to another rank: checkpoint saved" in said, said[-3000:]
    state = torch.load(cut / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["step_in_epoch"]) == (1, 10, 2)
    more = torchrun(["--resume", str(cut), "--quiet"], data_dir)
    assert more.returncode == 0, more.stderr[-3000:]
    # the same numbers, train metrics of the resumed epoch included (every rank's samples
    # counted once), all but the times (golden_runs.strip drops them)
    assert [strip(r) for r in history(cut)] == [strip(r) for r in history(straight)]


def test_encoder_pretraining_happens_once_for_all_ranks(tmp_path, data_dir):
    cache = tmp_path / "cache"
    out = tmp_path / "ml"
    args = [a for a in MULTI if a not in ("--encoder-checkpoint", str(OLD_BCE))]
    args += ["--set", "model.encoder_width=0.0625", "--set", "multilabel.encoder_epochs=1",
             "--set", "multilabel.encoder_limit_train=256", "--out", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cnnrnn", "train", *[a for a in args if a != "--quiet"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=env(data_dir, CNNRNN_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("pretraining a vgg16 encoder") == 1  # rank 0 only, once
    runs = list((cache / "encoders").iterdir())
    assert len(runs) == 1 and len(json.loads((runs[0] / "environment.json").read_text())) == 1
    saved = (out / "config.toml").read_text()
    assert f'encoder_checkpoint = "{runs[0]}"' in saved
