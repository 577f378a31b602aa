"""The `cnnrnn` command line. Each command is thin: it parses options and calls a plain function.

User mistakes (CnnrnnError) print one line, `error: ...`, and exit with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cnnrnn.errors import CnnrnnError

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Recurrent and convolutional networks reading Fashion-MNIST images and labels.")
data_app = typer.Typer(no_args_is_help=True, help="Find, verify, download and draw the data.")
app.add_typer(data_app, name="data")
analyze_app = typer.Typer(no_args_is_help=True, help="Analyses of trained runs.")
app.add_typer(analyze_app, name="analyze")

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="Folder with the four Fashion-MNIST files (else $CNNRNN_DATA, "
    "data/fashion-mnist, /usr/share/datasets/fashion-mnist)")]


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=1))


@app.command()
def train(
    task: Annotated[str, typer.Option(help="single-label or multilabel")] = "single-label",
    model: Annotated[str | None, typer.Option(
        help="rnn, lstm, gru, cnn, vgg16 (single-label); cnn-rnn, bce (multilabel)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="TOML config (default: configs/<task>/<model>.toml)")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, adamw, sgd, rmsprop")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant, cosine, step")] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16, fp16")] = None,
    limit_train: Annotated[int | None, typer.Option(
        help="Train on N images (single-label) or N mosaics per epoch (multilabel)")] = None,
    prior: Annotated[str | None, typer.Option(help="multilabel: mosaic label prior")] = None,
    order: Annotated[str | None, typer.Option(
        help="multilabel: frequency, rare-first, random, pla")] = None,
    beam_width: Annotated[int | None, typer.Option(help="multilabel: beam width")] = None,
    encoder_checkpoint: Annotated[Path | None, typer.Option(
        help="multilabel: take the encoder from this run folder (single-label vgg16, "
             "or a multilabel run)")] = None,
    encoder_weights: Annotated[Path | None, typer.Option(
        help="multilabel: a torchvision vgg16/vgg16_bn state_dict file")] = None,
    finetune_encoder: Annotated[bool | None, typer.Option(
        "--finetune-encoder/--freeze-encoder",
        help="multilabel: train the encoder with the decoder (the recipes' default) "
             "or keep it fixed")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any config key, e.g. --set model.hidden_size=256 (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<model>-<time>)")
                   ] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run in this folder where it stopped")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Start afresh in an --out folder that already holds a run (its files are "
             "replaced)")] = False,
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option(help="No progress output")] = False,
) -> None:
    """Train a model; writes config.toml, metrics.jsonl, last.pt, best.pt and plots."""
    from cnnrnn.config import key_of, load_config, parse_set
    from cnnrnn.encoders import Interrupted, prepare
    from cnnrnn.progress import Reporter
    from cnnrnn.run_dir import RESUMABLE, RunDir
    from cnnrnn.train import train as run_training

    reporter = Reporter(enabled=not quiet)
    flags = {name: value for name, value in locals().items() if name in CONFIG_FLAGS}
    overrides = {key_of(name): str(v) if isinstance(v, Path) else v
                 for name, v in flags.items() if v is not None}
    overrides.update(parse_set(set_ or []))
    if resume is not None:
        fixed = [k for k in overrides if k not in RESUMABLE]
        fixed += [name for name, v in (("model", model), ("config", config), ("out", out),
                                       ("overwrite", overwrite)) if v]
        if fixed:
            raise CnnrnnError(f"--resume continues with the run's own config; drop "
                              f"{', '.join(fixed)} (only {', '.join(RESUMABLE)} may change)")
        cfg = RunDir(resume).resume_config(**{k: overrides.get(k) for k in RESUMABLE})
        out = resume
    else:
        cfg = load_config(task, model, config, overrides)
        out = out or Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        RunDir(out).check_free(overwrite)  # refuse a taken folder before any pretraining
        try:
            cfg = prepare(cfg, explicit=set(overrides), data_dir=data_dir, reporter=reporter)
        except Interrupted as e:
            typer.echo(f"interrupted: {e}", err=True)
            raise typer.Exit(130) from None
    summary = run_training(cfg, out, resume=resume is not None, overwrite=overwrite,
                           data_dir=data_dir, reporter=reporter)
    if summary["stop"] == "interrupted":
        raise typer.Exit(130)


# `cnnrnn train`'s named flags that set a config option; each is looked up in the config schema
# (`cnnrnn.config.key_of`), so `--beam-width` sets `multilabel.beam_width`.
CONFIG_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "seed",
                "device", "precision", "limit_train", "prior", "order", "beam_width",
                "encoder_checkpoint", "encoder_weights", "finetune_encoder")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder")],
    split: Annotated[str, typer.Option(help="test or val")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    beam_width: Annotated[int | None, typer.Option(
        help="cnn-rnn runs: decode with this beam width instead of the run's")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="single-label runs: also read the mirrored image (default: "
        "the run's tta_flip)")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    data_dir: DataDir = None,
) -> None:
    """Metrics of a trained run on the test (or validation) split."""
    from cnnrnn.evaluate import evaluate_run

    result = evaluate_run(run, split, data_dir, checkpoint, device,
                          {"beam_width": beam_width, "tta_flip": tta})
    if as_json:
        _echo_json(result)
        return
    from cnnrnn.report import print_evaluation

    print_evaluation(result, run)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder")],
    images: Annotated[Path, typer.Argument(help=".npy uint8 array (N, 28, 28) or (N, 56, 56)")],
    out: Annotated[Path | None, typer.Option(help="Write the JSON here instead of stdout")
                   ] = None,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Predict the classes (or label sets) of raw uint8 images."""
    from cnnrnn.evaluate import predict_run

    result = predict_run(run, images, device)
    if out:
        out.write_text(json.dumps(result))
        typer.echo(f"wrote {out}", err=True)
    else:
        typer.echo(json.dumps(result))


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders")],
    plot: Annotated[Path, typer.Option(help="Validation curves of all runs")] = Path(
        "compare.png"),
    data_dir: DataDir = None,
) -> None:
    """The comparison table (Markdown) of several runs, and one plot of their curves."""
    from cnnrnn.evaluate import compare_runs, markdown_table
    from cnnrnn.plots import plot_compare
    from cnnrnn.run_dir import RunDir

    rows = compare_runs(runs, data_dir)
    typer.echo(markdown_table(rows), nl=False)
    metric = rows[0]["metric"]
    plot_compare({Path(r).name: RunDir(r).read_history() for r in runs}, plot, metric)
    typer.echo(f"wrote {plot}", err=True)


@data_app.command("check")
def data_check(data_dir: DataDir = None) -> None:
    """Find and verify Fashion-MNIST; print where it is and what it holds."""
    from cnnrnn.data.fashion_mnist import FILES, load_fashion_mnist, locate

    paths = locate(data_dir)
    data = load_fashion_mnist(data_dir)
    typer.echo(f"Fashion-MNIST found in {data.source}")
    for key, idx in FILES.items():
        typer.echo(f"  {paths[key].name:28s} {tuple(getattr(data, key).shape)!s:18s} "
                   f"SHA-256 of content OK ({idx.sha256[:12]}...)")
    counts = data.train_labels.bincount(minlength=10).tolist()
    typer.echo(f"  train images per class: {counts}")


@data_app.command("download")
def data_download(
    root: Annotated[Path, typer.Option(help="Folder to download into")] = Path(
        "data/fashion-mnist"),
) -> None:
    """Download Fashion-MNIST with torchvision (needs internet) and verify it."""
    from cnnrnn.data.fashion_mnist import download

    where = download(root)
    typer.echo(f"downloaded and verified: {where}")


@data_app.command("show")
def data_show(
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("samples.png"),
    mosaics: Annotated[Path | None, typer.Option(help="Draw mosaics from this .npz instead")
                       ] = None,
    n: Annotated[int, typer.Option(help="How many images")] = 30,
    seed: Annotated[int, typer.Option()] = 0,
    data_dir: DataDir = None,
) -> None:
    """Draw a grid of training samples of the ten classes (or of mosaics) with their names."""
    from cnnrnn.report import show_mosaics, show_samples

    if mosaics is not None:
        show_mosaics(mosaics, out, n, seed)
    else:
        show_samples(out, n, seed, data_dir)
    typer.echo(f"wrote {out}")


@data_app.command("mosaics")
def data_mosaics(
    out: Annotated[Path, typer.Option(help=".npz file to write")],
    split: Annotated[str, typer.Option(help="train, val or test")] = "train",
    n: Annotated[int, typer.Option(help="How many mosaics")] = 1000,
    prior: Annotated[str, typer.Option(help="independent, outfits or a TOML file")] = "outfits",
    seed: Annotated[int, typer.Option()] = 0,
    data_dir: DataDir = None,
) -> None:
    """Write synthetic multi-item mosaics: images (N, 56, 56) uint8, labels (N, 10) uint8."""
    from cnnrnn.report import write_mosaics

    write_mosaics(out, split, n, prior, seed, data_dir)
    typer.echo(f"wrote {n} {split} mosaics ({prior}) to {out}")


@analyze_app.command("errors")
def analyze_errors(
    runs: Annotated[list[Path], typer.Argument(help="Multilabel run folders")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows")] = False,
    data_dir: DataDir = None,
) -> None:
    """Where multilabel runs go wrong on their test mosaics (one Markdown table).

    Exact match by label count and by how common the true set is; wrong counts against swaps.
    """
    from cnnrnn.analysis.errors import breakdown, markdown_table
    from cnnrnn.data.fashion_mnist import load_fashion_mnist

    fmnist = load_fashion_mnist(data_dir)
    rows = [breakdown(run, fmnist) for run in runs]
    if as_json:
        _echo_json(rows)
    else:
        typer.echo(markdown_table(rows), nl=False)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2."""
    try:
        app()  # standalone: click reports usage errors itself and exits with status 2
    except CnnrnnError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
