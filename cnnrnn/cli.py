"""The `cnnrnn` command line. Each command is thin: it parses options and calls a plain function.

User mistakes (CnnrnnError) print one line, `error: ...`, and exit with status 2.
"""

from __future__ import annotations

import json
import os
import sys
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


def _run_labels(label: list[str] | None, runs: list[Path]) -> list[str]:
    """One name per run: the --label values in order, else the run folders' names."""
    labels = label or [Path(r).resolve().name for r in runs]
    if len(labels) != len(runs):
        raise CnnrnnError(f"{len(labels)} --label for {len(runs)} runs; give one --label per "
                          "run, in order")
    return labels


def _note(message: str) -> None:
    typer.echo(message, err=True)


def _is_terminal() -> bool:
    """Whether stdout is a terminal (a person reads it), not a pipe or a file."""
    return sys.stdout.isatty()


def _version(value: bool) -> None:
    if value:
        from cnnrnn.version import __version__

        typer.echo(f"cnnrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit")
        ] = False) -> None:
    """Recurrent and convolutional networks reading Fashion-MNIST images and labels."""


@app.command()
def models() -> None:
    """The models by task: name, parameters with their recipe, and what each is."""
    from cnnrnn.config import TASKS, load_config
    from cnnrnn.evaluate import parameter_count
    from cnnrnn.models import get_entry, model_names
    from cnnrnn.tasks import get_task

    for task in TASKS:
        typer.echo(f"{task}:")
        for name in model_names(task):
            n = parameter_count(get_task(task), load_config(task, name))
            typer.echo(f"  {name:8s} {n:>11,} parameters  recipe configs/"
                       f"{task.replace('-', '_')}/{name}.toml")
            typer.echo(f"           {get_entry(name).doc}")


@app.command()
def train(
    task: Annotated[str, typer.Option(help="single-label or multilabel")] = "single-label",
    model: Annotated[str | None, typer.Option(
        help="rnn, lstm, gru, cnn, vgg16, timm (single-label); cnn-rnn, bce (multilabel)")
    ] = None,
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
        help="multilabel: take the encoder from this run folder (single-label vgg16 or "
             "timm, or a multilabel run)")] = None,
    encoder_weights: Annotated[Path | None, typer.Option(
        help="multilabel: a torchvision vgg16/vgg16_bn state_dict file, or with "
             "model.encoder=timm:<name> a timm (or torchvision) state_dict of that network"
    )] = None,
    loss: Annotated[str | None, typer.Option(
        help="single-label: cross-entropy, soft-labels, expected-cost or hxe (these three "
        "need --costs; hxe's tree is the hierarchy, a hierarchy file's tree or the clustering "
        "of a cost matrix); "
        "multilabel bce and query: bce or asl")] = None,
    costs: Annotated[str | None, typer.Option(
        help="A class-cost matrix, 'hierarchy', a CSV/JSON file (`cnnrnn analyze costs`) or "
        "your own hierarchy file (JSON/TOML groups, parent,child CSV): "
        "for the severity-aware losses, the CRM decision and the severity metrics")] = None,
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
    print_config: Annotated[bool, typer.Option(
        help="Print the resolved config (TOML) and exit; nothing is trained")] = False,
) -> None:
    """Train a model; writes config.toml, metrics.jsonl, last.pt, best.pt and plots."""
    from cnnrnn.config import key_of, load_config, parse_set
    from cnnrnn.launch import alike_on_every_rank, launch
    from cnnrnn.run_dir import RESUMABLE, RunDir

    flags = {name: value for name, value in locals().items() if name in CONFIG_FLAGS}
    cfg = None
    with alike_on_every_rank():  # the same command line and files: every rank fails alike
        overrides = {key_of(name, task): str(v) if isinstance(v, Path) else v
                     for name, v in flags.items() if v is not None}
        overrides.update(parse_set(set_ or []))
        if resume is not None:
            fixed = [k for k in overrides if k not in RESUMABLE]
            fixed += [name for name, v in (("model", model), ("config", config), ("out", out),
                                           ("overwrite", overwrite)) if v]
            if fixed:
                raise CnnrnnError(f"--resume continues with the run's own config; drop "
                                  f"{', '.join(fixed)} (only {', '.join(RESUMABLE)} may "
                                  "change)")
            if print_config:
                _print_config(RunDir(resume).resume_config(**overrides), set())
                return
        else:
            cfg = load_config(task, model, config, overrides)
            if print_config:
                _print_config(cfg, set(overrides))
                return
    summary = launch(cfg, out, resume=resume, changes=overrides if resume else None,
                     overwrite=overwrite, data_dir=data_dir, quiet=quiet, explicit=set(overrides))
    if summary["stop"] == "interrupted":
        raise typer.Exit(130)


def _print_config(cfg: object, explicit: set[str]) -> None:
    """The resolved config as TOML; a named encoder's architecture is read from it, but no
    encoder is pretrained for this."""
    import tomli_w

    from cnnrnn.encoders import prepare, will_pretrain

    if will_pretrain(cfg):
        typer.echo("# no encoder given: `cnnrnn train` would pretrain one first", err=True)
    else:
        cfg = prepare(cfg, explicit=explicit)
    typer.echo(tomli_w.dumps(cfg.to_dict()), nl=False)


# `cnnrnn train`'s named flags that set a config option; each is looked up in the config schema
# (`cnnrnn.config.key_of`), so `--beam-width` sets `multilabel.beam_width`.
CONFIG_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "seed",
                "device", "precision", "limit_train", "prior", "order", "beam_width",
                "encoder_checkpoint", "encoder_weights", "finetune_encoder", "loss", "costs")


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
    costs: Annotated[str | None, typer.Option(
        help="A class-cost matrix (CSV/JSON file, a hierarchy file, or 'hierarchy'): adds "
        "mistake severity and hdist@1/3/5 (single-label) or the set severity (multilabel)")] = None,
    prior: Annotated[str | None, typer.Option(
        help="multilabel runs: draw the validation/test mosaics under this label prior "
        "instead of the run's (e.g. independent for a run trained under outfits)")] = None,
    decision: Annotated[str | None, typer.Option(
        help="single-label runs: argmax, or crm (the class of least expected cost under "
        "--costs, else the run's own costs)")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="bce and query runs: one threshold for every label instead of the ones chosen "
        "on validation")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    plots: Annotated[bool, typer.Option(
        help="Also write the task's figures (single-label: the confusion matrix) into the run "
        "folder")] = False,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Format of the --plots figures: png, pdf or svg (default png)")] = None,
    save: Annotated[bool, typer.Option(
        "--save/--no-save", "--save-samples", help="Keep the result (eval_*.json) and the "
        "per-sample outputs (eval_*.npz) in the run folder, keyed by the checkpoint's bytes "
        "and the options: evaluate, compare and analyze errors read them back while they "
        "match instead of running the model again")] = True,
    protocol: Annotated[str | None, typer.Option(
        help="multilabel runs: cooccurrence, the co-occurrence protocol (docs/metrics.md): "
        "per class F1 and AP on test mosaics with and without its usual partners under the "
        "training prior, the gap, and the false-positive rate given its most frequent "
        "partner; writes RUN/cooccurrence.json (cooccurrence_<prior>.json with --prior)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Metrics of a trained run on the test (or validation) split."""
    from cnnrnn.plots import check_format

    if protocol is not None:
        _cooccurrence(run, protocol, prior, checkpoint, device, as_json, data_dir,
                      {"--split": split if split != "test" else None, "--beam-width": beam_width,
                       "--tta": tta, "--costs": costs, "--decision": decision,
                       "--threshold": threshold,
                       "--plots": plots or None, "--format": fmt})
        return
    if fmt is not None and not plots:
        raise CnnrnnError(f"--format {fmt} is the format of the figures; add --plots to write "
                          "them")
    fmt = check_format(fmt or "png")
    from cnnrnn.evaluate import evaluate_samples

    options = {"beam_width": beam_width, "tta_flip": tta, "costs": costs, "decision": decision,
               "prior": prior, "threshold": threshold}
    result = evaluate_samples(run, split, data_dir, checkpoint, device, options, _note,
                              save=save)[0]
    if result.pop("reused", False) and not as_json:  # --json: the same JSON, nothing else
        _note(f"note: read the saved evaluation of {run} (same checkpoint and options; "
              "--no-save evaluates again)")
    if as_json:
        _echo_json(result)
        if plots:
            from cnnrnn.run_dir import RunDir
            from cnnrnn.tasks import get_task

            for path in get_task(result["task"]).plot_evaluation(result, RunDir(run), fmt):
                typer.echo(f"figure: {path}", err=True)
        return
    from cnnrnn.report import print_evaluation

    print_evaluation(result, run, plots, fmt)


PROTOCOLS = ("cooccurrence",)


def _cooccurrence(run: Path, protocol: str, prior: str | None, checkpoint: str, device: str,
                  as_json: bool, data_dir: Path | None, other: dict[str, object]) -> None:
    """evaluate --protocol cooccurrence: the report, printed and written into the run."""
    if protocol not in PROTOCOLS:
        raise CnnrnnError(f"unknown protocol {protocol!r}; choose {', '.join(PROTOCOLS)}")
    given = [flag for flag, v in other.items() if v is not None]
    if given:
        raise CnnrnnError(f"{given[0]} does not apply to --protocol {protocol}, which scores "
                          "the test mosaics with the run's own decisions (--prior, "
                          "--checkpoint and --device do apply)")
    from cnnrnn.analysis.cooccurrence import cooccurrence_report, markdown

    report = cooccurrence_report(run, prior, data_dir, checkpoint, device, say=_note)
    if as_json:
        _echo_json(report)
    else:
        typer.echo(markdown(report), nl=False)
    typer.echo(f"wrote {report['file']}", err=True)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder")],
    inputs: Annotated[Path, typer.Argument(
        metavar="INPUT", help="A .npy uint8 array (N, S, S) of raw pixels 0-255, an .npz with "
        "such an `images` array (as `cnnrnn data mosaics` writes), a PNG or JPEG file, or a "
        "folder of them (by name). S is 28 for single-label runs, 56 for multilabel ones; "
        "image files of any size and colour are made grey and resized")],
    invert: Annotated[bool, typer.Option(
        "--invert", help="Use 255 - x: photos of dark items on a light background become light on "
             "black, like Fashion-MNIST")] = False,
    fit: Annotated[bool, typer.Option(
        "--fit", help="Frame each image as Fashion-MNIST framed its items: stretch the "
        "contrast, trim to the item, fit its longer side to the frame and centre it (after "
        "--invert: the item must be light on dark). For photos of one item")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here instead of stdout")
                   ] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the JSON (the default when stdout is not a terminal)")] = False,
    table: Annotated[bool, typer.Option(
        "--table", help="Print a table (the default on a terminal without --out): per image "
        "the top 3 classes in %, or the predicted label set with scores")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "cpu",
    decision: Annotated[str | None, typer.Option(
        help="single-label runs: argmax, or crm (least expected cost under --costs, else the "
        "run's own costs)")] = None,
    costs: Annotated[str | None, typer.Option(
        help="The class-cost matrix of --decision crm (a file or 'hierarchy')")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="bce and query runs: one threshold for every label instead of the ones chosen "
        "on validation (the JSON gives the thresholds used)")] = None,
) -> None:
    """Predict the classes (or label sets) of images: a table on a terminal, else JSON that
    names each image (--json, --out)."""
    from cnnrnn.config import CHOICES
    from cnnrnn.evaluate import predict_run
    from cnnrnn.files import atomic_write

    if device not in CHOICES["device"]:
        raise CnnrnnError(f"--device {device!r} is not one of {', '.join(CHOICES['device'])}")
    if out is not None and out.is_dir():
        raise CnnrnnError(f"--out {out} is a folder; give a file, e.g. {out / 'preds.json'}")
    if out is not None and not out.parent.is_dir():
        raise CnnrnnError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if as_json and table:
        raise CnnrnnError("choose one of --json and --table")
    result = predict_run(run, inputs, device, invert,
                         options={"decision": decision, "costs": costs,
                                  "threshold": threshold},
                         say=_note, fit=fit)
    if out:
        atomic_write(out, json.dumps(result))
        typer.echo(f"wrote {out}", err=True)
    if table or (not as_json and out is None and _is_terminal()):
        from cnnrnn.report import print_predictions

        print_predictions(result)
    elif out is None:
        typer.echo(json.dumps(result))


@app.command()
def compare(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run folders")] = None,
    plot: Annotated[Path, typer.Option(
        help="Validation curves of all runs; the extension (.png, .pdf, .svg) sets the format"
    )] = Path("compare.png"),
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="The name of a run in the table and the legend; one per run, in order "
        "(default: the run folders' names)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the rows as CSV")] = False,
    stats: Annotated[bool, typer.Option(
        "--stats", help="Compare variants over seeds instead: per group mean ± sd [95 % "
        "t-interval]; per group against the first, the paired bootstrap difference, McNemar "
        "p per seed pair and the verdict. Runs whose config.toml differ only in seed form a "
        "group (or name them with --group)")] = False,
    group: Annotated[list[str] | None, typer.Option(
        "--group", help="--stats: a group by hand, NAME=RUN,RUN,RUN (repeat per group; the "
        "first is the reference)")] = None,
    allow_few_seeds: Annotated[bool, typer.Option(
        "--allow-few-seeds", help="--stats: compare groups of fewer than 3 seeds (the "
        "output says so)")] = False,
    resamples: Annotated[int, typer.Option(help="--stats: bootstrap resamples")] = 2000,
    bootstrap_seed: Annotated[int, typer.Option(help="--stats: seed of the resampling")] = 0,
    split: Annotated[str, typer.Option(help="--stats: test or val")] = "test",
    checkpoint: Annotated[str, typer.Option(help="--stats: best or last")] = "best",
    costs: Annotated[str | None, typer.Option(
        help="--stats: a class-cost matrix (file or 'hierarchy'): adds mistake severity and "
        "hdist@1/3 (single-label) or swap cost (multilabel)")] = None,
    decision: Annotated[str | None, typer.Option(
        help="--stats, single-label runs: argmax or crm")] = None,
    prior: Annotated[str | None, typer.Option(
        help="--stats, multilabel runs: test mosaics under this label prior")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="--stats, single-label runs: also read the mirrored image")
    ] = None,
    beam_width: Annotated[int | None, typer.Option(
        help="--stats, cnn-rnn runs: decode with this beam width")] = None,
    data_dir: DataDir = None,
) -> None:
    """The comparison table (Markdown, or --json / --csv) of several runs, and one plot of
    their curves; with --stats, the statistics of variants trained under several seeds.

    \b
    cnnrnn compare --stats runs/ce-s0 runs/ce-s1 runs/ce-s2 runs/soft-s0 runs/soft-s1 runs/soft-s2
    cnnrnn compare --stats --group ce=runs/ce-s0,runs/ce-s1,runs/ce-s2 --group soft=...
    """
    if stats:
        from cnnrnn.analysis.seeds import compare_seeds, group_runs, markdown, parse_groups

        if as_csv or label:
            raise CnnrnnError("--csv and --label are for the plain table; --stats prints "
                              "Markdown or --json")
        if group and runs:
            raise CnnrnnError("give the runs either as arguments or with --group, not both")
        if not group and not runs:
            raise CnnrnnError("give the run folders (or --group NAME=RUN,RUN,RUN)")
        groups = parse_groups(group) if group else group_runs(runs)
        result = compare_seeds(groups, split, data_dir, checkpoint,
                               {"beam_width": beam_width, "tta_flip": tta, "costs": costs,
                                "decision": decision, "prior": prior}, resamples,
                               bootstrap_seed, allow_few_seeds, say=_note)
        if as_json:
            _echo_json(result)
        else:
            typer.echo(markdown(result), nl=False)
        return
    stats_only = {"--group": group, "--allow-few-seeds": allow_few_seeds or None,
                  "--costs": costs, "--decision": decision, "--prior": prior, "--tta": tta,
                  "--beam-width": beam_width}
    given = [flag for flag, v in stats_only.items() if v is not None]
    if given:
        raise CnnrnnError(f"{given[0]} is an option of compare --stats; add --stats")
    if not runs:
        raise CnnrnnError("give the run folders to compare")
    from cnnrnn.plots import figure_path, plot_compare

    if as_json and as_csv:
        raise CnnrnnError("choose one of --json and --csv")
    figure_path(plot)  # a wrong extension fails before the runs are evaluated
    labels = _run_labels(label, runs)
    twice = sorted({name for name in labels if labels.count(name) > 1})
    if twice:
        raise CnnrnnError(f"two runs are both named {twice[0]!r}; tell them apart with one "
                          "--label per run")
    from cnnrnn.evaluate import compare_runs, markdown_table
    from cnnrnn.run_dir import RunDir

    rows = compare_runs(runs, data_dir, say=_note)
    for row, name in zip(rows, labels, strict=True):
        row["run"] = name
    if as_json:
        _echo_json(rows)
    elif as_csv:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
    else:
        typer.echo(markdown_table(rows), nl=False)
    plot_compare({name: RunDir(r).read_history() for name, r in zip(labels, runs, strict=True)},
                 plot, rows[0]["metric"])
    typer.echo(f"wrote {plot}", err=True)


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated: rnn,lstm,gru,cnn,vgg16,cnn-rnn (default all)")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Timed steps per measurement (default 20; 2 with --tiny)")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads; 0 = torch's default")] = 0,
    tiny: Annotated[bool, typer.Option(
        help="A few steps at batch 16 on 256 images: seconds, for tests, not for numbers")
                    ] = False,
    time_to_accuracy: Annotated[bool, typer.Option(
        "--time-to-accuracy", help="Instead: wall time to a validation accuracy (lstm, one "
        "direction: 90 %; vgg16: 93 %), cnnrnn's recipe against the plain way (Adam 1e-3, "
        "fp32); default models lstm,vgg16")] = False,
    max_minutes: Annotated[float, typer.Option(
        help="--time-to-accuracy: stop each side after this long")] = 60.0,
    max_epochs: Annotated[int, typer.Option(
        help="--time-to-accuracy: stop each side after this many epochs (0: the recipe's)")
                          ] = 0,
    target: Annotated[float | None, typer.Option(
        help="--time-to-accuracy: this validation accuracy for every model, e.g. 0.9")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="A config key of every benchmarked model's recipe, e.g. --set "
        "model.width=1.0 (repeatable; not with --time-to-accuracy)")] = None,
    data_dir: DataDir = None,
) -> None:
    """CPU training speed of each model, cnnrnn's way against the plain PyTorch way.

    Run it on an idle machine: a benchmark beside another job measures both.
    """
    from cnnrnn.bench import bench_size, format_report, parse_models, run_bench
    from cnnrnn.config import parse_set

    overrides = parse_set(set_ or [])
    if time_to_accuracy and overrides:
        raise CnnrnnError("--set changes the benchmarked recipes; --time-to-accuracy races "
                          "the shipped ones: drop one of them")
    if time_to_accuracy:
        from cnnrnn.time_to_accuracy import TARGETS, format_time_to_accuracy, run_time_to_accuracy

        result = run_time_to_accuracy(
            parse_models(models, TARGETS), data_dir, max_minutes,
            max_epochs or (2 if tiny else 0), target, limit=1024 if tiny else 0,
            threads=threads, say=_note)
        if as_json:
            _echo_json(result)
        else:
            typer.echo(format_time_to_accuracy(result), nl=False)
        return
    names = parse_models(models)
    result = run_bench(names, bench_size(tiny, steps), data_dir, threads, say=_note,
                       overrides=overrides)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(format_report(result), nl=False)


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
    out: Annotated[Path, typer.Option(
        help="Figure to write; the extension (.png, .pdf, .svg) sets the format")] = Path(
        "samples.png"),
    mosaics: Annotated[Path | None, typer.Option(
        help="Draw mosaics from this .npz (of `cnnrnn data mosaics`) instead, or from a .npy "
             "of images (N, 56, 56) uint8, drawn without names")] = None,
    n: Annotated[int, typer.Option(help="How many images (at least 1)")] = 30,
    seed: Annotated[int, typer.Option(help="Which images are drawn")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Draw a grid of training samples of the ten classes (or of mosaics) with their names."""
    from cnnrnn.plots import figure_path

    if n < 1:
        raise CnnrnnError(f"--n must be at least 1, got {n}")
    figure_path(out)  # mistakes fail before torch and the data are loaded
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
    prior: Annotated[str, typer.Option(
        help="outfits, independent, the held-out street or inverted, or a TOML file")
    ] = "outfits",
    seed: Annotated[int, typer.Option()] = 0,
    with_cells: Annotated[bool, typer.Option(
        "--with-cells", help="Also write cells (N, 4): the class in each cell, row-major, -1 "
        "if empty, and items (N, 4): each cell's index into the split's Fashion-MNIST file "
        "(train images for train and val, test images for test), -1 if empty. The images "
        "are the same as without it")] = False,
    data_dir: DataDir = None,
) -> None:
    """Write synthetic multi-item mosaics: images (N, 56, 56) uint8, labels (N, 10) uint8."""
    from cnnrnn.report import check_mosaic_count, write_mosaics

    check_mosaic_count(n)
    if with_cells:
        from cnnrnn.data.fashion_mnist import load_fashion_mnist
        from cnnrnn.data.mosaics import write_mosaics_with_cells

        write_mosaics_with_cells(out, load_fashion_mnist(data_dir), split, n, prior, seed)
    else:
        write_mosaics(out, split, n, prior, seed, data_dir)
    typer.echo(f"wrote {n} {split} mosaics ({prior}){' with cells' if with_cells else ''} "
               f"to {out}")


@data_app.command("export")
def data_export(
    out: Annotated[Path, typer.Option(
        help="x.npy (the images), x.npz (images and labels) or a folder (no suffix) of PNG "
        "files named NNNN-LABEL.png")],
    split: Annotated[str, typer.Option(help="test, val or train")] = "test",
    n: Annotated[int, typer.Option(help="How many: the split's first n items, or n mosaics")
                 ] = 16,
    mosaics: Annotated[bool, typer.Option(
        "--mosaics", help="Mosaics (56x56) of the split instead of its items, drawn as `cnnrnn "
        "data mosaics` draws them")] = False,
    prior: Annotated[str | None, typer.Option(
        help="--mosaics: outfits (default), independent, street, inverted or a TOML file")
    ] = None,
    seed: Annotated[int, typer.Option(help="--mosaics: which mosaics are drawn")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Write test items (or mosaics) as files to look at and to give `cnnrnn predict`."""
    from cnnrnn.data.export import check_split, export_items, export_kind, write_export
    from cnnrnn.report import check_mosaic_count

    check_split(split)
    if prior is not None and not mosaics:
        raise CnnrnnError(f"--prior {prior} is the label prior of mosaics; add --mosaics")
    if mosaics:
        check_mosaic_count(n)
    elif n < 1:
        raise CnnrnnError(f"--n must be at least 1, got {n}")
    export_kind(out)  # a wrong --out fails before the data is read
    from cnnrnn.data.fashion_mnist import load_fashion_mnist

    images, labels = export_items(load_fashion_mnist(data_dir), split, n,
                                  (prior or "outfits") if mosaics else None, seed)
    paths = write_export(out, images, labels)
    what = f"{split} mosaics ({prior or 'outfits'})" if mosaics else f"{split} items"
    typer.echo(f"wrote {len(images)} {what} to {out}"
               f"{f' ({paths[0].name} ... {paths[-1].name})' if len(paths) > 1 else ''}")


@analyze_app.command("errors")
def analyze_errors(
    runs: Annotated[list[Path], typer.Argument(help="Multilabel run folders")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows")] = False,
    prior: Annotated[str | None, typer.Option(
        help="Test mosaics under this label prior instead of each run's")] = None,
    data_dir: DataDir = None,
) -> None:
    """Where multilabel runs go wrong on their test mosaics (one Markdown table).

    Exact match by label count and by how common the true set is; wrong counts against swaps.
    """
    from cnnrnn.analysis.errors import breakdown, markdown_table

    rows = [breakdown(run, data_dir, {"prior": prior}, say=_note) for run in runs]
    if as_json:
        _echo_json(rows)
    else:
        typer.echo(markdown_table(rows), nl=False)


@analyze_app.command("priors")
def analyze_priors(
    runs: Annotated[list[Path], typer.Argument(help="Multilabel run folders")],
    priors: Annotated[str, typer.Option(
        help="Test priors, comma-separated: names under configs/mosaics or .toml files")
    ] = "outfits,independent,street,inverted",
    plot: Annotated[Path | None, typer.Option(
        help="Also draw O-F1 and exact match against the pair overlap with each run's "
        "training prior, one line per run (.png, .pdf, .svg)")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="A run's name in the table and legend; one per run, in order")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows")] = False,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    data_dir: DataDir = None,
) -> None:
    """Each run on each prior's test mosaics: O-F1, exact match, mAP and top-3 O-F1 against
    the share of label pairs the prior has in common with the run's training prior (pair
    overlap, docs/metrics.md). Each run keeps its own decisions: nothing is chosen on a test
    prior."""
    from cnnrnn.analysis.cooccurrence import (
        parse_priors,
        prior_shift,
        prior_shift_markdown,
        prior_shift_series,
    )

    names = parse_priors(priors)
    labels = _run_labels(label, runs)
    if plot is not None:
        from cnnrnn.plots import figure_path

        figure_path(plot)  # a wrong extension fails before the runs are evaluated
    rows = prior_shift(runs, names, labels, data_dir, checkpoint, say=_note)
    if as_json:
        _echo_json(rows)
    else:
        typer.echo(prior_shift_markdown(rows), nl=False)
    if plot is not None:
        from cnnrnn.plots import plot_prior_shift

        plot_prior_shift(prior_shift_series(rows), plot, "test priors against the training "
                         "prior's label pairs")
        typer.echo(f"wrote {plot}", err=True)


@analyze_app.command("saliency")
def analyze_saliency(
    run: Annotated[Path, typer.Argument(help="A multilabel run (cnn-rnn or bce)")],
    n: Annotated[int, typer.Option(help="Test mosaics scored: the first N of the run's own")
                 ] = 1000,
    n_figure: Annotated[int, typer.Option(help="Mosaics in the figure, one row each")] = 4,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default RUN/analysis/saliency)")] = None,
    method: Annotated[str, typer.Option(
        help="The maps the figure shows: gradcam, input-gradients, hirescam, or attention "
        "(CNN-RNNs with model.decoder=attention: the steps' attention weights); the JSON "
        "scores every method the run has")] = "gradcam",
    target: Annotated[str, typer.Option(
        help="cnn-rnn runs: explain each step's score of its label, s_t of eq. 5 (score), or "
        "its log-probability (log-prob)")] = "score",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON")] = False,
    data_dir: DataDir = None,
) -> None:
    """Saliency maps of each emitted label (Grad-CAM, input gradients) and how often their peak
    cell holds that class, against chance (a random item's cell), the same map for every label
    and a randomised-weights copy of the model; a figure and saliency.json."""
    from cnnrnn.analysis.saliency import analyze_saliency as analyze
    from cnnrnn.analysis.saliency import markdown
    from cnnrnn.data.fashion_mnist import load_fashion_mnist

    result = analyze(run, load_fashion_mnist(data_dir), out, n, n_figure, method, target, device)
    if as_json:
        _echo_json(result)
        return
    typer.echo(markdown(result), nl=False)
    for path in result["files"]:
        typer.echo(f"wrote {path}")


@analyze_app.command("embeddings")
def analyze_embeddings(
    run: Annotated[Path, typer.Argument(help="A cnn-rnn run, or any run with a linear head")],
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default RUN/analysis/embeddings)")] = None,
    seed: Annotated[int, typer.Option(help="UMAP seed: the same seed gives the same map")] = 0,
    n: Annotated[int, typer.Option(help="Test images (or mosaics) per UMAP map")] = 2000,
    data_dir: DataDir = None,
) -> None:
    """Label embeddings: distances (CSV, JSON), clustered heatmaps, dendrogram, UMAP maps."""
    if n < 10:
        raise CnnrnnError(f"--n must be at least 10 (a map of fewer points says little), got {n}")
    from cnnrnn.analysis.embeddings import analyze_embeddings as analyze
    from cnnrnn.data.fashion_mnist import load_fashion_mnist

    result = analyze(run, load_fashion_mnist(data_dir), out, seed, n)
    for path in result["files"]:
        typer.echo(f"wrote {path}")
    typer.echo(f"clustered order: {', '.join(result['cluster_order'])}")


@analyze_app.command("costs")
def analyze_costs(
    source: Annotated[str, typer.Argument(help="hierarchy, embeddings or confusion")],
    run: Annotated[Path | None, typer.Argument(
        help="The run whose embeddings or validation confusion give the costs")] = None,
    out: Annotated[Path, typer.Option(help="Cost file to write (.csv; a .json beside it)")
                   ] = Path("costs.csv"),
    metric: Annotated[str, typer.Option(help="embeddings: cosine or euclidean")] = "cosine",
    hierarchy: Annotated[Path | None, typer.Option(
        help="hierarchy: your own hierarchy file instead of the clothing hierarchy (JSON or "
        "TOML nested groups, or a CSV of parent,child rows; any --costs takes it too)")] = None,
) -> None:
    """Make a (10, 10) class-cost matrix: zero diagonal, symmetric, maximum 1."""
    from cnnrnn.analysis.costs import costs_from
    from cnnrnn.costs import write_costs

    matrix, where = costs_from(source, run, metric, hierarchy)
    for path in write_costs(out, matrix, where):
        typer.echo(f"wrote {path}")


@analyze_app.command("severity")
def analyze_severity(
    runs: Annotated[list[Path], typer.Argument(help="Single-label run folders")],
    costs: Annotated[str, typer.Option(help="The cost matrix (file or 'hierarchy')")],
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="One name per run for the legend; runs given the same name are one "
        "variant's seeds (default: runs whose configs differ only in seed are)")] = None,
    decision: Annotated[str | None, typer.Option(help="argmax or crm")] = None,
    out: Annotated[Path, typer.Option(help="The figure (.png, .pdf, .svg)")] = Path(
        "severity.png"),
    data_dir: DataDir = None,
) -> None:
    """Per-class mistake severity and number of mistakes of several runs under one cost matrix,
    as grouped bars; a variant with several seeds gets its mean and error bars (one standard
    deviation), and the classes whose every mistake costs the same are hatched."""
    import numpy as np

    from cnnrnn.costs import load_costs
    from cnnrnn.data.fashion_mnist import CLASSES
    from cnnrnn.evaluate import evaluate_run
    from cnnrnn.plots import figure_path, plot_per_class_severity

    figure_path(out)
    matrix = load_costs(costs)  # a bad cost file fails before any run is evaluated
    if label:
        _run_labels(label, runs)  # one --label per run
        groups: dict[str, list[Path]] = {}
        for name, run in zip(label, runs, strict=True):
            groups.setdefault(name, []).append(run)
    else:
        from cnnrnn.analysis.seeds import group_runs

        groups = group_runs(runs)
    variants: dict[str, list[dict]] = {}
    for name, members in groups.items():
        for run in members:
            result = evaluate_run(run, "test", data_dir, options={"costs": costs,
                                                                    "decision": decision})
            if "per_class_severity" not in result:
                raise CnnrnnError(f"{run} is a {result['task']} run; analyze severity compares "
                                  "single-label runs (a multilabel run: evaluate --costs)")
            cm = np.array(result["confusion_matrix"])  # (K, K), rows: true class
            variants.setdefault(name, []).append({
                "per_class_severity": result["per_class_severity"],
                "mistakes": (cm.sum(1) - np.diag(cm)).tolist()})
            who = name if len(members) == 1 else f"{name} ({Path(run).name})"
            typer.echo(f"{who}: accuracy {100 * result['accuracy']:.2f} %, mistake severity "
                       f"{result['mistake_severity']:.4f}, hdist@1 {result['hdist@1']:.4f}")
    where = Path(costs).stem if Path(costs).suffix else costs
    plot_per_class_severity(variants, CLASSES, out, f"mistake severity per class under the "
                            f"{where} costs (test set)", matrix)
    typer.echo(f"wrote {out}")


@analyze_app.command("compare-costs")
def analyze_compare_costs(
    files: Annotated[list[Path], typer.Argument(help="Cost files (CSV/JSON) or 'hierarchy'")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw the matrices side by side as heatmaps (.png, .pdf, .svg), classes in "
        "the clustered order of the first")] = None,
) -> None:
    """Spearman rank correlation between cost matrices, and which sanity orders hold."""
    from cnnrnn.analysis.costs import compare_costs, markdown
    from cnnrnn.costs import load_costs

    if len(files) < 2:
        raise CnnrnnError("give at least two cost matrices to compare")
    matrices = {Path(f).stem: load_costs(f) for f in files}
    if plot is not None:
        from cnnrnn.analysis.embeddings import cluster_order
        from cnnrnn.data.fashion_mnist import CLASSES
        from cnnrnn.plots import figure_path, plot_distance_heatmaps

        figure_path(plot)
        order, _ = cluster_order(next(iter(matrices.values())))
        plot_distance_heatmaps(matrices, CLASSES, order, plot, "cost matrices")
        typer.echo(f"wrote {plot}", err=True)
    result = compare_costs(matrices)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(markdown(result), nl=False)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2.

    An OSError that reaches here (a read-only folder, a missing one, a file where a folder
    should be) is a user's problem with a path too: one line naming the path and the reason.
    """
    first_here = os.environ.get("LOCAL_RANK", "0") == "0"  # this machine's first torchrun rank
    try:
        app()  # standalone: click reports usage errors itself and exits with status 2
    except CnnrnnError as e:
        # an error every rank raised alike: once per machine, not once per rank
        if first_here or not e.every_rank:
            typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and stops itself)
        if first_here:
            typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        typer.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
