"""What a user gets from an install: recipes and priors inside the wheel, every declared
dependency used, a missing recipe refused, and the data-free tests running without the data."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from cnnrnn.config import load_config, recipe_path
from cnnrnn.errors import ConfigError
from cnnrnn.models import model_names

REPO = Path(__file__).resolve().parents[1]
# distribution name -> the module the package imports it as
IMPORT_NAMES = {"scikit-learn": "sklearn", "tomli-w": "tomli_w", "pillow": "PIL",
                "umap-learn": "umap"}


def _imported_modules() -> set[str]:
    names = set()
    for path in (REPO / "cnnrnn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported_by_the_package():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    imported = _imported_modules()
    for dep in deps:
        dist = re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0]
        module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        assert module in imported, f"{dist} is declared in pyproject.toml but never imported"


def test_every_model_has_a_shipped_recipe():
    for task in ("single-label", "multilabel"):
        for name in model_names(task):
            assert recipe_path(task, name).is_file(), (task, name)


def test_a_missing_recipe_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr("cnnrnn.config.recipe_root", lambda: tmp_path)
    with pytest.raises(ConfigError, match=r"no recipe for model 'lstm' .* is missing"):
        load_config("single-label", "lstm")


@pytest.mark.slow
def test_the_wheel_carries_recipes_and_priors(tmp_path):
    """Build the wheel, install it into a folder of its own, and load a recipe and a prior
    from it, run from a folder that has no configs/."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(REPO)], check=True,
                   capture_output=True)
    wheel = next((tmp_path / "dist").glob("cnnrnn-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for want in ("cnnrnn/configs/single_label/vgg16.toml", "cnnrnn/configs/multilabel/bce.toml",
                 "cnnrnn/configs/mosaics/outfits.toml"):
        assert want in names, want
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, capture_output=True)
    code = ("import cnnrnn, pathlib; from cnnrnn.config import load_config; "
            "from cnnrnn.data.priors import load_prior; "
            "cfg = load_config('single-label', 'vgg16'); "
            "print(pathlib.Path(cnnrnn.__file__).parent); "
            "print(cfg.model_args.width, cfg.optimizer, load_prior('outfits').theme_names)")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert Path(out[0]).is_relative_to(tmp_path / "site")  # the installed copy, not the checkout
    assert out[1].startswith("0.5 sgd ('summer',")


@pytest.mark.slow
def test_data_free_tests_run_without_the_data(tmp_path):
    env = {**os.environ, "CNNRNN_DATA": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_mosaics.py", "tests/test_metrics.py"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and re.search(r"\d+ skipped", summary), summary
    assert "Fashion-MNIST not found: set CNNRNN_DATA" in proc.stdout
