"""The README and docs/ commands run as written: every `cnnrnn ...` line in a code block parses
against today's CLI (command, options, their values and config keys), and the README's
multilabel example runs end to end at tiny size."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cnnrnn.cli import app
from cnnrnn.config import load_config, parse_set

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "paper_notes.md"]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `cnnrnn` line in the docs' fenced code blocks."""
    found = []
    for path in DOCS:
        in_block = False
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            if in_block and line.startswith("cnnrnn "):
                argv = shlex.split(line.split("  #")[0], comments=True)
                for j, token in enumerate(argv):  # the shell's part of the line
                    if token in (">", ">>", "|", "&&", ";", "2>"):
                        argv = argv[:j]
                        break
                found.append((f"{path.name}:{i}", argv[1:]))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, argv):
    # typer's own command objects (it carries its own copy of click): a group has `commands`
    cmd, name, rest = typer.main.get_command(app), "cnnrnn", list(argv)
    while hasattr(cmd, "commands"):  # `cnnrnn data mosaics`, `cnnrnn analyze errors`
        sub = cmd.commands.get(rest[0])
        assert sub is not None, f"{where}: no command {rest[0]!r} in `{name}`"
        cmd, name, rest = sub, rest[0], rest[1:]
    try:
        params = cmd.make_context(name, rest).params
    except Exception as e:  # a usage error: an unknown option, a bad value
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        pytest.fail(f"{where}: `cnnrnn {' '.join(argv)}`: {message}")
    if name == "train" and not params.get("resume"):
        # every --set key and the recipe it overrides are valid
        over = parse_set(params.get("set_") or [])
        load_config(params["task"], params.get("model"), overrides={
            k: v for k, v in over.items() if not k.startswith("multilabel.encoder")})


def test_readme_multilabel_example_runs_as_written(tmp_path, data_dir, monkeypatch):
    """docs/multilabel.md's mosaics -> train -> evaluate -> predict -> analyze chain, tiny."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    d = ["--data-dir", str(data_dir)]
    run("train", "--model", "vgg16", "--epochs", "1", "--limit-train", "256", "--set",
        "val_size=200", "--set", "model.width=0.0625", "--out", "enc", "--quiet", *d)
    tiny = ["--epochs", "1", "--limit-train", "128", "--batch-size", "64", "--set",
            "val_size=200", "--set", "multilabel.val_mosaics=100", "--set",
            "multilabel.test_mosaics=100", "--encoder-checkpoint", "enc", "--quiet", *d]
    page = (REPO / "docs" / "multilabel.md").read_text()
    lines = [x for x in page.splitlines() if x.startswith("cnnrnn ")]
    assert any("data mosaics --split test --n 12 --out mosaics.npz" in x for x in lines)
    run("data", "mosaics", "--split", "test", "--n", "12", "--out", "mosaics.npz", *d)
    run("train", "--task", "multilabel", "--out", "runs/cnn-rnn-x", *tiny,
        "--set", "model.hidden_size=16")
    run("train", "--task", "multilabel", "--model", "bce", "--out", "runs/bce-x", *tiny)
    result = json.loads(run("evaluate", "runs/cnn-rnn-x", "--json", *d))
    assert 0 <= result["O-F1"] <= 1
    pred = json.loads(run("predict", "runs/cnn-rnn-x", "mosaics.npz"))
    assert len(pred["label_sets"]) == 12 and pred["names"][0] == "mosaics.npz[0]"
    table = run("analyze", "errors", "runs/cnn-rnn-x", "runs/bce-x", *d)
    assert len(table.strip().splitlines()) == 4
    assert re.search(r"\| runs/cnn-rnn-x \|", table)


def test_readme_is_an_entry_point():
    """About 150 lines at most: the two commands, the inner loop, the Python example; the
    long sections live in docs/ pages, each of which the README links."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make demo" in text and "make test" in text and "make test-fast" in text
    assert "\n## Python\n" in text and "```python" in text
    for page in ("single-label", "multilabel", "severity", "scale", "results", "metrics"):
        assert f"(docs/{page}.md)" in text and (REPO / "docs" / f"{page}.md").is_file()
