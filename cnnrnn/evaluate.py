"""Evaluate, predict with and compare saved runs.

The run's task does the work: its data split, decoding options, prediction and metrics. Run
folders of every cnnrnn version read here (older configs are upgraded on load).
"""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnrnn.checkpoint import load_model_state
from cnnrnn.config import TrainConfig, config_from_dict, read_toml
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, load_fashion_mnist
from cnnrnn.errors import CnnrnnError
from cnnrnn.files import atomic_write
from cnnrnn.images import check_array, read_inputs
from cnnrnn.models.registry import count_parameters
from cnnrnn.precision import autocast, resolve_device
from cnnrnn.run_dir import CONFIG, RunDir
from cnnrnn.tasks import Task, apply_eval_options, get_task, run_predict

SPLITS = ("test", "val")
MAX_PARAMETERS = 2_000_000_000  # a stored config asking for more is corrupt or edited


def parameter_count(task: Task, cfg: TrainConfig) -> int:
    """The parameters of `cfg`'s model, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        return count_parameters(task.build(cfg, None))


def build_checked(task: Task, cfg: TrainConfig, where: str | Path) -> nn.Module:
    """The bare model of a stored config, after counting its parameters on the meta device
    (no memory): an absurd architecture is refused before anything is allocated."""
    n = parameter_count(task, cfg)
    if n > MAX_PARAMETERS:
        raise CnnrnnError(f"the config stored in {where} describes a {cfg.model} of {n:,} "
                          "parameters; refusing to build it (is the checkpoint corrupt or "
                          "edited?)")
    return task.build(cfg, None)


def config_drift(run: str | Path, cfg: TrainConfig) -> list[str]:
    """The keys where the run folder's config.toml differs from the checkpoint's config."""
    path = RunDir(run) / CONFIG
    try:
        saved = config_from_dict(read_toml(path)).to_dict()
    except CnnrnnError:
        return [CONFIG] if path.exists() else []
    ours = cfg.to_dict()

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    a, b = flat(saved), flat(ours)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu",
             say: Callable[[str], None] | None = None
             ) -> tuple[TrainConfig, Task, nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its checkpoint (the architecture comes from the checkpoint).

    `say` hears a one-line warning naming the keys when the run folder's config.toml was
    edited after training: the checkpoint's config is the one used."""
    run_dir = RunDir(run)
    path = run_dir.checkpoint_path(checkpoint)
    state = run_dir.load(checkpoint)
    cfg = config_from_dict(state["config"])
    if say is not None:
        drift = config_drift(run, cfg)
        if drift:
            say(f"warning: {run_dir / CONFIG} differs from the config stored in {path.name} "
                f"({', '.join(drift[:5])}{', ...' if len(drift) > 5 else ''}); using the "
                "checkpoint's")
    task = get_task(cfg.task)
    model = build_checked(task, cfg, path)
    load_model_state(model, state, path)
    return cfg, task, model.to(resolve_device(device)).eval(), state


def predict_images(task: Task, model: nn.Module, images: torch.Tensor, cfg: TrainConfig,
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The task's predictions for uint8 images (N, H, W), under the run's precision; an fp16
    run (trained on a GPU) read on a CPU, which has no fp16 autocast, reads in fp32 (its
    weights are fp32)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    precision = "fp32" if cfg.precision == "fp16" and dev.type == "cpu" else cfg.precision
    return run_predict(task, model, images, cfg, dev, lambda: autocast(dev, precision))


def evaluate_run(run: str | Path, split: str = "test", data_dir: str | Path | None = None,
                 checkpoint: str = "best", device: str = "cpu",
                 options: dict[str, Any] | None = None,
                 say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Metrics of a run's checkpoint on the validation or test split.

    `options` are the task's evaluation options (`beam_width` for CNN-RNN runs, `tta_flip` for
    single-label runs); None keeps the run's own. The result also gives the prediction time
    and images per second (the whole split, batches of eval_batch_size, excluding data
    loading).
    """
    if split not in SPLITS:
        raise CnnrnnError(f"unknown split {split!r}; choose test or val")
    resolve_device(device)  # an unknown or absent device fails before anything is read
    cfg, task, model, state = load_run(run, checkpoint, device, say)
    cfg = apply_eval_options(cfg, run, options or {})  # a wrong option fails before the data
    return _evaluate_loaded(run, cfg, task, model, state, load_fashion_mnist(data_dir), split,
                            checkpoint, device)


def _evaluate_loaded(run: str | Path, cfg: TrainConfig, task: Task, model: nn.Module,
                     state: dict[str, Any], fmnist: FashionMNIST, split: str, checkpoint: str,
                     device: str) -> dict[str, Any]:
    """Metrics of a loaded run whose `cfg` already carries its evaluation options."""
    return _evaluate_samples(run, cfg, task, model, state, fmnist, split, checkpoint, device)[0]


def _evaluate_samples(run: str | Path, cfg: TrainConfig, task: Task, model: nn.Module,
                      state: dict[str, Any], fmnist: FashionMNIST, split: str, checkpoint: str,
                      device: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metrics and the per-sample outputs (`SAMPLE_KEYS`) of a loaded run."""
    data = task.prepare(cfg, fmnist)
    images, targets = ((data.test_images, data.test_targets) if split == "test"
                       else (data.val_images, data.val_targets))
    start = time.perf_counter()
    outputs = predict_images(task, model, images, cfg, device)
    seconds = time.perf_counter() - start
    metrics = task.metrics(outputs, targets, cfg)
    result = {"run": str(run), "task": cfg.task, "model": cfg.model, "split": split,
              "checkpoint": checkpoint, "epoch": state["epoch"], "n": len(images),
              **task.describe(cfg), "predict_seconds": seconds,
              "images_per_second": len(images) / seconds, **metrics}
    # single-label: labels (N,) and probs (N, K); multilabel: label_sets and scores (N, K)
    pred, scores = ("labels", "probs") if "labels" in outputs else ("label_sets", "scores")
    samples = {"y_true": targets.numpy(), "y_pred": outputs[pred].numpy(),
               "scores": outputs[scores].numpy().astype(np.float32)}
    # what hdist@k ranks the classes by: the decision's own order (under CRM the least
    # expected cost first, cnnrnn.metrics.severity), so resampled hdist@k is the metric's
    expected = outputs.get("expected_cost")
    samples["ranking"] = samples["scores"] if expected is None else \
        (-expected).numpy().astype(np.float32)
    return result, samples


# ---- saved per-sample evaluations ------------------------------------------------------------

SAMPLE_KEYS = ("y_true", "y_pred", "scores", "ranking")  # a saved evaluation's .npz arrays
EVAL_PREFIX = "eval_"  # eval_<split>_<checkpoint>_<key>.npz and .json in the run folder


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluation_key(run: str | Path, cfg: TrainConfig, task: Task, split: str,
                   checkpoint: str) -> dict[str, Any]:
    """What a saved evaluation depends on: the checkpoint's bytes, the split, the evaluation
    options in effect (the run's own where none was given) and, under a cost matrix, the
    matrix itself (a cost file may be edited under the same name)."""
    from cnnrnn.costs import load_costs

    options = task.describe(cfg)
    costs = options.get("costs")
    return {"split": split, "checkpoint": checkpoint,
            "checkpoint_sha256": file_sha256(RunDir(run).checkpoint_path(checkpoint)),
            "options": options,
            "costs_sha256": (hashlib.sha256(load_costs(costs).tobytes()).hexdigest()
                             if costs else None)}


def _key_name(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{EVAL_PREFIX}{key['split']}_{key['checkpoint']}_{digest}"


def _read_saved(run_dir: RunDir, name: str, key: dict[str, Any]
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A saved evaluation under `name` made with exactly `key`; None if absent or stale."""
    try:
        saved = run_dir.read_json(name + ".json")
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None
        with np.load(run_dir / (name + ".npz"), allow_pickle=False) as z:
            samples = {k: z[k] for k in SAMPLE_KEYS}
    except (OSError, ValueError, KeyError):  # a missing, partial or foreign file: evaluate
        return None
    return saved["result"], samples


def _write_saved(run_dir: RunDir, name: str, key: dict[str, Any], result: dict[str, Any],
                 samples: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **samples)
    atomic_write(run_dir / (name + ".npz"), buf.getvalue())  # the arrays first, the key last
    run_dir.write_json(name + ".json", {"key": key, "result": result})


def evaluate_samples(run: str | Path, split: str = "test", data_dir: str | Path | None = None,
                     checkpoint: str = "best", device: str = "cpu",
                     options: dict[str, Any] | None = None,
                     say: Callable[[str], None] | None = None, save: bool = True,
                     fmnist: FashionMNIST | None = None
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`evaluate_run`'s metrics and the per-sample outputs behind them: `y_true`, `y_pred` and
    `scores` (single-label: (N,) classes, (N,) classes, (N, K) probabilities; multilabel:
    (N, K) multi-hot, (N, K) multi-hot, (N, K) per-label scores), in the split's fixed order.

    With `save`, both are kept in the run folder (eval_<split>_<checkpoint>_<key>.json and
    .npz), and a later call with the same checkpoint bytes and options reads them back instead
    of evaluating again (`evaluation_key`); the result then says `"reused": true`.
    """
    if split not in SPLITS:
        raise CnnrnnError(f"unknown split {split!r}; choose test or val")
    resolve_device(device)
    cfg, task, model, state = load_run(run, checkpoint, device, say)
    cfg = apply_eval_options(cfg, run, options or {})
    return _saved_or_evaluated(run, cfg, task, model, state,
                               lambda: fmnist or load_fashion_mnist(data_dir), split,
                               checkpoint, device, save, say)


def _saved_or_evaluated(run: str | Path, cfg: TrainConfig, task: Task, model: nn.Module,
                        state: dict[str, Any], fmnist: Callable[[], FashionMNIST], split: str,
                        checkpoint: str, device: str, save: bool = True,
                        say: Callable[[str], None] | None = None
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A loaded run's saved evaluation if one matches `evaluation_key` (the result then says
    `"reused": true`), else a fresh one, saved when `save`. `fmnist` is called only when the
    model must run. A run folder that cannot be written to (read-only) is evaluated all the
    same; `say` hears why nothing was saved."""
    run_dir = RunDir(run)
    key = evaluation_key(run, cfg, task, split, checkpoint)
    name = _key_name(key)
    if save:
        saved = _read_saved(run_dir, name, key)
        if saved is not None:
            return {**saved[0], "reused": True}, saved[1]
    result, samples = _evaluate_samples(run, cfg, task, model, state, fmnist(), split,
                                        checkpoint, device)
    if save:
        try:
            _write_saved(run_dir, name, key, result, samples)
        except OSError as e:
            if say is not None:
                say(f"note: could not save the evaluation in {run} ({e.strerror or e}); it "
                    "will be computed again next time")
    return result, samples


def predict_run(run: str | Path, input_path: str | Path | np.ndarray | torch.Tensor,
                device: str = "cpu", invert: bool = False,
                options: dict[str, Any] | None = None,
                say: Callable[[str], None] | None = None, fit: bool = False
                ) -> dict[str, Any]:
    """Predictions of a run's best checkpoint for the images in `input_path`: a .npy or .npz
    array, a PNG or JPEG file or a folder of them (`cnnrnn.images.read_inputs`), with one
    name per image; or, from Python, the uint8 images (N, S, S) themselves, named
    "images[i]". `invert` turns dark-on-light photos into light-on-dark ones first, `fit`
    frames each photo's item as Fashion-MNIST does (`cnnrnn.images.fit_item`; files only).
    `say` hears a warning when the run's config.toml was edited (`load_run`) or images have
    a light border."""
    resolve_device(device)  # an unknown or absent device fails before anything is read
    cfg, task, model, _ = load_run(run, "best", device, say)
    cfg = apply_eval_options(cfg, run, options or {})  # e.g. --decision crm --costs FILE
    if isinstance(input_path, np.ndarray | torch.Tensor):
        arr = check_array(np.asarray(input_path), task.image_size)
        images = torch.from_numpy(np.ascontiguousarray(255 - arr if invert else arr))
        names = [f"images[{i}]" for i in range(len(images))]
    else:
        images, names = read_inputs(input_path, task.image_size, invert, fit, say)
    if len(images):
        outputs = predict_images(task, model, images, cfg, device)
    else:  # every output empty: the task's JSON keys with empty lists, the model never run
        outputs = defaultdict(lambda: torch.empty(0))
    result = {"classes": list(CLASSES), "names": names, **task.format_predictions(outputs)}
    if isinstance(getattr(model, "threshold", None), torch.Tensor) and \
            getattr(model, "count", None) is None:  # the thresholds the label sets used
        fixed = cfg.multilabel.threshold
        result["thresholds"] = [fixed] * len(CLASSES) if fixed else \
            [round(float(t), 6) for t in model.threshold]
    return result


def compare_runs(runs: list[str | Path], data_dir: str | Path | None = None,
                 say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per run: parameters, ms per step, peak and final validation metric, test metric.

    All runs must be of one task, so that one metric compares them; that and each run's history
    are checked before the data is read. The test metric is the run's saved evaluation (of
    `cnnrnn evaluate`, the run's own options on its best checkpoint) while best.pt is
    unchanged; otherwise the run is evaluated and the result saved."""
    loaded = [load_run(run) for run in runs]
    tasks = {cfg.task for cfg, *_ in loaded}
    if len(tasks) > 1:
        kinds = ", ".join(f"{run} is {cfg.task}" for run, (cfg, *_) in zip(runs, loaded,
                                                                           strict=True))
        raise CnnrnnError(f"compare runs of one task at a time ({kinds})")
    histories = [RunDir(run).read_history() for run in runs]
    for run, history in zip(runs, histories, strict=True):
        if not history:
            raise CnnrnnError(f"{run} has no finished epoch yet; train it first")
    fmnist: list[FashionMNIST] = []  # read and verified once, and only if a run is evaluated

    def data() -> FashionMNIST:
        if not fmnist:
            fmnist.append(load_fashion_mnist(data_dir))
        return fmnist[0]

    rows = []
    for run, (cfg, task, model, state), history in zip(runs, loaded, histories, strict=True):
        key = f"val_{task.primary}"
        # the run's own options, as `cnnrnn evaluate RUN` saves them; reused while best.pt
        # is unchanged
        test = _saved_or_evaluated(run, cfg, task, model, state, data, "test", "best", "cpu",
                                   say=say)[0]
        rows.append({"run": Path(run).name, "task": cfg.task, "model": cfg.model,
                     "parameters": count_parameters(model), "epochs": len(history),
                     "ms_per_step": statistics.median(r["ms_per_step"] for r in history),
                     "epoch_seconds": statistics.median(r["train_seconds"] for r in history),
                     "peak_val": max(r[key] for r in history), "final_val": history[-1][key],
                     "test": test[task.primary], "metric": task.primary})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `compare_runs` as Markdown; metric values as the run's task writes them."""
    head = ("| run | model | parameters | epochs | ms/step (median) | s/epoch (median) | "
            "peak val | final val | test |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        f = get_task(r["task"]).format_value
        lines.append(f"| {r['run']} | {r['model']} | {r['parameters']:,} | {r['epochs']} | "
                     f"{r['ms_per_step']:.1f} | {r['epoch_seconds']:.1f} | "
                     f"{f(r['metric'], r['peak_val'])} | {f(r['metric'], r['final_val'])} | "
                     f"{f(r['metric'], r['test'])} |\n")
    return head + "".join(lines)
