"""`cnnrnn bench`: how fast cnnrnn trains on this CPU, and how much faster than the plain way.

Four measurements, each a function of its own, all in one run so they share the machine's state:

- `matmul_gflops`: the machine's practical limit, a square matmul in fp32 and in bf16.
- `step_seconds`: one training step (forward, backward, optimizer step) as `cnnrnn.train`
  takes it, channels_last, fp32 and bf16 autocast, median over N steps after warm-up; with
  `count_flops` (torch.utils.flop_counter) it gives the achieved GFLOP/s and the share of the
  matmul limit of the same precision.
- `data_epoch_seconds`: producing one epoch of batches with cnnrnn's own pipeline
  (`IndexedBatches`, `MosaicBatches`, as the tasks' `prepare` builds them), against the epoch's
  compute (steps x median step time at the recipe's precision).
- `loop_seconds_per_batch`: a real loop over K batches, each fetched and then trained on, once
  cnnrnn's way (its pipeline, the recipe's precision, channels_last) and once the plain way of
  the PyTorch tutorials (torchvision's FashionMNIST + ToTensor + DataLoader, or a per-sample
  mosaic Dataset, fp32, NCHW), extrapolated to one epoch of the same number of batches. Both
  loops train the same architecture with the same loss, optimizer and gradient clipping.

Times are seconds (ms in the report), throughput samples per second, rates GFLOP/s (1e9
floating-point operations per second; a multiply-add counts 2). A benchmark beside another job
measures the other job too: run it on an idle machine.

Time to accuracy (`cnnrnn bench --time-to-accuracy`) needs whole training runs, minutes to
hours each: `cnnrnn.time_to_accuracy`.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode

from cnnrnn.config import TrainConfig, load_config
from cnnrnn.data.fashion_mnist import FILES, FashionMNIST, load_fashion_mnist, locate, read_bytes
from cnnrnn.data.mosaics import MosaicGenerator, split_pool
from cnnrnn.data.priors import load_prior
from cnnrnn.errors import CnnrnnError
from cnnrnn.precision import autocast
from cnnrnn.tasks import Task, get_task
from cnnrnn.tasks.base import BatchSource
from cnnrnn.threads import cpu_model
from cnnrnn.train import make_optimizer, training_step

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")
# The benchmarked models: name -> (task, model), each with its shipped recipe's architecture.
MODELS: dict[str, tuple[str, str]] = {
    "rnn": ("single-label", "rnn"), "lstm": ("single-label", "lstm"),
    "gru": ("single-label", "gru"), "cnn": ("single-label", "cnn"),
    "vgg16": ("single-label", "vgg16"), "timm": ("single-label", "timm"),
    "cnn-rnn": ("multilabel", "cnn-rnn"), "bce": ("multilabel", "bce"),
}


@dataclass(frozen=True)
class BenchSize:
    """How much to measure."""

    batch_size: int = 128
    steps: int = 20  # timed steps (and timed loop batches) per measurement
    warmup: int = 3  # untimed steps first: allocator, oneDNN kernel choice
    matmul_n: int = 2048  # side of the square matmul
    limit: int = 0  # images (single-label) or mosaics per epoch; 0 = the recipe's full epoch
    data_batches: int = 0  # batches timed for the data share; 0 = a whole epoch


FULL = BenchSize()
TINY = BenchSize(batch_size=16, steps=2, warmup=1, matmul_n=256, limit=256, data_batches=4)


def bench_size(tiny: bool, steps: int | None = None) -> BenchSize:
    """The full or the tiny size (a test's few seconds), with `steps` timed steps if given."""
    size = TINY if tiny else FULL
    if steps is None:
        return size
    if steps < 1:
        raise CnnrnnError(f"--steps must be at least 1, got {steps}")
    return BenchSize(size.batch_size, steps, size.warmup, size.matmul_n, size.limit,
                     size.data_batches)


def parse_models(text: str | None, known: Iterable[str] = MODELS) -> list[str]:
    """`cnn,gru` -> ["cnn", "gru"]; None or empty: every model of `known`. Unknown names are
    an error."""
    known = list(known)
    names = [n.strip() for n in (text or "").split(",") if n.strip()] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CnnrnnError(f"unknown model {unknown[0]!r} for --models; choose from "
                          f"{', '.join(known)}")
    return list(dict.fromkeys(names))


# --- the machine ------------------------------------------------------------------------------

def median_seconds(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Median wall-clock seconds of `fn()` over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(precision: str, n: int, steps: int, warmup: int) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matmul in fp32 or bf16: 2 n^3 / median seconds / 1e9."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), steps, warmup) / 1e9


# --- FLOPs ------------------------------------------------------------------------------------

def _lstm_layer_flops(input_shape: tuple[int, ...], w_ih_shape: tuple[int, ...],
                      w_hh_shape: tuple[int, ...], *args: Any, **kwargs: Any) -> int:
    """oneDNN LSTM layer, forward: every (step, sample) row multiplies x_t by W_ih (4H, I)
    and h_(t-1) by W_hh (4H, H)."""
    rows = math.prod(input_shape[:-1])  # T * B
    return 2 * rows * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def _lstm_layer_backward_flops(*args: Any, **kwargs: Any) -> int:
    """Twice the forward: the gradients of the inputs and of the weights."""
    return 2 * _lstm_layer_flops(*args[:3])


def _flop_mapping() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for ops torch's counter leaves out: on a CPU nn.LSTM runs as oneDNN
    `mkldnn_rnn_layer` ops (GRU and RNN decompose into counted matmuls)."""
    aten = torch.ops.aten
    mapping: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "mkldnn_rnn_layer"):
        mapping[aten.mkldnn_rnn_layer] = _lstm_layer_flops
    if hasattr(aten, "mkldnn_rnn_layer_backward"):
        mapping[aten.mkldnn_rnn_layer_backward] = _lstm_layer_backward_flops
    return mapping


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of matmuls and convolutions that `fn()` runs, forward and
    backward alike (a multiply-add counts 2); elementwise work is not counted."""
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        fn()
    return counter.get_total_flops()


# --- one model, ready to train ----------------------------------------------------------------

@dataclass
class Bench:
    """A model with its loss and optimizer, trained as the recipe `cfg` says."""

    name: str
    task: Task
    cfg: TrainConfig
    model: nn.Module
    criterion: nn.Module
    opt: torch.optim.Optimizer
    channels_last: bool


def recipe(name: str, size: BenchSize, extra: Mapping[str, Any] | None = None) -> TrainConfig:
    """The shipped recipe of benchmark model `name` at the batch size (and epoch) of `size`,
    with the config keys `extra` set (`cnnrnn bench --set`)."""
    task, model = MODELS[name]
    overrides: dict[str, Any] = {"batch_size": size.batch_size, "limit_train": size.limit,
                                 **(extra or {})}
    if task == "multilabel" and size.limit:  # the fixed validation and test mosaics too
        overrides.update({"multilabel.val_mosaics": size.limit,
                          "multilabel.test_mosaics": size.limit})
    return load_config(task, model, overrides=overrides)


def build_bench(name: str, cfg: TrainConfig, channels_last: bool, seed: int = 0) -> Bench:
    """The recipe's architecture with fresh weights (`task.build(cfg, None)`)."""
    task = get_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build(cfg, None).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return Bench(name, task, cfg, model, task.criterion(cfg), make_optimizer(cfg, trainable),
                 channels_last)


def train_step(b: Bench, x: torch.Tensor, y: torch.Tensor, precision: str) -> None:
    """One training step as `cnnrnn.train.train_one_epoch` takes it: forward under autocast,
    backward, gradient clipping if the recipe sets it, optimizer step."""
    if b.channels_last:  # with one channel this changes strides, not data
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(CPU, precision):
        loss, _ = training_step(b.task, b.model, b.criterion, x, y)
    b.opt.zero_grad(set_to_none=True)
    loss.backward()
    if b.cfg.grad_clip:
        nn.utils.clip_grad_norm_(b.model.parameters(), b.cfg.grad_clip)
    b.opt.step()
    loss.item()  # the loop logs the loss: the step ends when its value exists


def step_seconds(b: Bench, x: torch.Tensor, y: torch.Tensor, precision: str,
                 size: BenchSize) -> float:
    """Median seconds of one training step on the batch (x, y)."""
    return median_seconds(lambda: train_step(b, x, y, precision), size.steps, size.warmup)


def step_report(flops: int, seconds: float, batch_size: int, peak_gflops: float
                ) -> dict[str, float]:
    """ms per step, samples per second, achieved GFLOP/s and its share of the matmul peak."""
    gflops = flops / seconds / 1e9
    return {"ms_per_step": 1000 * seconds, "samples_per_second": batch_size / seconds,
            "gflops": gflops, "peak_share": gflops / peak_gflops}


# --- data pipelines ---------------------------------------------------------------------------

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def data_epoch_seconds(batches: BatchSource, max_batches: int = 0) -> float:
    """Seconds to produce one epoch of batches from cnnrnn's pipeline (`len`, `epoch(e)`);
    with `max_batches`, the first ones are timed and the time scaled to the epoch."""
    n = min(max_batches, len(batches)) if max_batches else len(batches)
    start = time.perf_counter()
    for i, _ in enumerate(batches.epoch(0)):
        if i + 1 == n:
            break
    return (time.perf_counter() - start) * len(batches) / n


def loop_seconds_per_batch(batches: Batches, step: Callable[[torch.Tensor, torch.Tensor], None],
                           k: int, warmup: int) -> float:
    """Mean seconds per batch of a real training loop (fetch a batch, train on it) over `k`
    batches after `warmup` untimed ones."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    start = time.perf_counter()
    for _ in range(k):
        step(*next(it))
    return (time.perf_counter() - start) / k


@contextmanager
def torchvision_root(data_dir: str | Path | None) -> Iterator[Path]:
    """A temporary root for torchvision's FashionMNIST: <root>/FashionMNIST/raw/ holding the
    four files that `locate(data_dir)` finds, uncompressed as torchvision reads them."""
    with tempfile.TemporaryDirectory(prefix="cnnrnn-bench-") as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for key, path in locate(data_dir).items():
            target = raw / FILES[key].name
            if path.suffix == ".gz":
                target.write_bytes(read_bytes(path))
            else:
                target.symlink_to(path.resolve())
        yield Path(tmp)


def plain_fashion_mnist(root: Path, limit: int = 0) -> Dataset:
    """The tutorials' dataset: torchvision's FashionMNIST (train) with ToTensor, per sample."""
    from torchvision import datasets, transforms

    dataset = datasets.FashionMNIST(str(root), train=True, download=False,
                                    transform=transforms.ToTensor())
    return Subset(dataset, range(limit)) if limit else dataset


class PlainMosaics(Dataset):
    """A per-sample mosaic dataset as a user would write it: each item one fresh 2x2 mosaic,
    (1, 56, 56) float in [0, 1] and its (10,) uint8 label set."""

    def __init__(self, generator: MosaicGenerator, n: int, seed: int = 0) -> None:
        self.generator, self.n = generator, n
        self.rng = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.generator.sample(1, self.rng)  # (1, 56, 56), (1, 10)
        return images.float() / 255.0, labels[0]


def plain_mosaics(cfg: TrainConfig, fmnist: FashionMNIST) -> Dataset:
    """Mosaics from the training items under the recipe's prior, one per __getitem__."""
    images, labels, _ = split_pool(fmnist, "train", cfg.val_size)
    n = cfg.limit_train or cfg.multilabel.train_mosaics
    return PlainMosaics(MosaicGenerator(images, labels, load_prior(cfg.multilabel.prior)), n)


def plain_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """The tutorials' loader: shuffled, the main process only."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)


# --- one model, all measurements --------------------------------------------------------------

def bench_model(name: str, cfg: TrainConfig, size: BenchSize, fmnist: FashionMNIST,
                plain: Dataset, peaks: dict[str, float]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps, data share and pipeline comparison of one model trained by the recipe `cfg`,
    against the plain loop over `plain`: (its "models" entry, its "pipelines" entry)."""
    b = build_bench(name, cfg, channels_last=cfg.channels_last)
    source = b.task.prepare(cfg, fmnist).train  # cnnrnn's own pipeline, as training builds it
    x, y = next(iter(source.epoch(0)))
    flops = count_flops(lambda: train_step(b, x, y, "fp32"))
    row: dict[str, Any] = {"gflop_per_step": flops / 1e9, "recipe_precision": cfg.precision}
    seconds = {}
    for precision in PRECISIONS:
        seconds[precision] = step_seconds(b, x, y, precision, size)
        row[precision] = step_report(flops, seconds[precision], len(y), peaks[precision])
    data = data_epoch_seconds(source, size.data_batches)
    compute = len(source) * seconds.get(cfg.precision, seconds["fp32"])
    row.update(data_epoch_seconds=data, compute_epoch_seconds=compute,
               steps_per_epoch=len(source), data_share=data / (data + compute))

    k = max(1, min(size.steps, len(source) - size.warmup))
    ours = loop_seconds_per_batch(source.epoch(1), lambda x, y: train_step(b, x, y, cfg.precision),
                                  k, size.warmup)
    p = build_bench(name, cfg, channels_last=False)
    theirs = loop_seconds_per_batch(plain_loader(plain, size.batch_size),
                                    lambda x, y: train_step(p, x, y, "fp32"), k, size.warmup)
    pipeline = {"cnnrnn_epoch_seconds": ours * len(source),
                "plain_epoch_seconds": theirs * len(source), "ratio": theirs / ours,
                "cnnrnn_precision": cfg.precision, "epoch_batches": len(source)}
    return row, pipeline


def run_bench(names: list[str], size: BenchSize = FULL, data_dir: str | Path | None = None,
              threads: int = 0, say: Callable[[str], None] = lambda message: None,
              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every measurement for the models `names`; the JSON-ready result (see the module doc).

    threads: torch CPU threads, 0 = torch's default. `say` gets a line per stage. overrides:
    config keys set in every model's recipe (e.g. {"model.width": 1.0}).
    """
    overrides = dict(overrides or {})
    fixed = sorted(set(overrides) & {"batch_size", "limit_train"})
    if fixed:  # the plain loop and the report use the bench's own batch and epoch
        raise CnnrnnError(f"--set {fixed[0]} would change cnnrnn's side only; the benchmark's "
                          "batch is 128 and its epoch the recipe's")
    cfgs = {name: recipe(name, size, overrides) for name in names}  # a bad key fails first
    if threads < 0:
        raise CnnrnnError(f"--threads must be 0 (torch's default) or more, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    fmnist = load_fashion_mnist(data_dir)
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                              "torch": torch.__version__,
                              "isa": torch.backends.cpu.get_cpu_capability(),
                              "batch_size": size.batch_size, "steps": size.steps,
                              "overrides": overrides}
    say(f"matmul {size.matmul_n}x{size.matmul_n}, fp32 and bf16")
    peaks = {p: matmul_gflops(p, size.matmul_n, size.steps, size.warmup) for p in PRECISIONS}
    result.update(matmul_gflops=peaks, matmul_n=size.matmul_n, models={}, pipelines={})
    with torchvision_root(data_dir) as root:
        plain_images = plain_fashion_mnist(root, size.limit)
        for name in names:
            say(f"{name}: training steps, data pipeline, plain loop")
            cfg = cfgs[name]
            plain = plain_mosaics(cfg, fmnist) if cfg.task == "multilabel" else plain_images
            row, pipeline = bench_model(name, cfg, size, fmnist, plain, peaks)
            result["models"][name] = row
            result["pipelines"][name] = pipeline
    return result


# --- the report -------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def format_report(result: dict[str, Any]) -> str:
    """The result as plain-text tables: machine, training steps, data share, pipelines."""
    peaks = result["matmul_gflops"]
    out = [f"CPU {result['cpu']} ({result['isa']}), {result['threads']} threads, "
           f"torch {result['torch']}, batch {result['batch_size']}, median of "
           f"{result['steps']} steps",
           f"matmul {result['matmul_n']}^2: fp32 {peaks['fp32']:.1f} GFLOP/s, "
           f"bf16 {peaks['bf16']:.1f} GFLOP/s"]
    if result.get("overrides"):
        out.append("recipes with " + ", ".join(f"{k} = {v!r}" for k, v in
                                                result["overrides"].items()))
    out += ["", "Training step (channels_last, as cnnrnn trains)"]
    rows = []
    for name, m in result["models"].items():
        for p in PRECISIONS:
            s = m[p]
            rows.append([name, p, f"{m['gflop_per_step']:.2f}", f"{s['ms_per_step']:.1f}",
                         f"{s['samples_per_second']:.0f}", f"{s['gflops']:.1f}",
                         f"{100 * s['peak_share']:.1f} %"])
    out += _table(["model", "precision", "GFLOP/step", "ms/step", "samples/s", "GFLOP/s",
                   "of matmul peak"], rows)
    out += ["", "Data pipeline's share of an epoch (cnnrnn's pipeline, recipe precision)"]
    out += _table(["model", "precision", "batches", "data s", "compute s", "data share"],
                  [[n, m["recipe_precision"], str(m["steps_per_epoch"]),
                    f"{m['data_epoch_seconds']:.2f}", f"{m['compute_epoch_seconds']:.1f}",
                    f"{100 * m['data_share']:.1f} %"] for n, m in result["models"].items()])
    out += ["", "Epoch, data and training: cnnrnn (its pipeline, recipe precision, channels_last) "
            "against plain (DataLoader, fp32)"]
    out += _table(["model", "batches", "cnnrnn s", "plain s", "plain/cnnrnn"],
                  [[n, str(p["epoch_batches"]), f"{p['cnnrnn_epoch_seconds']:.1f}",
                    f"{p['plain_epoch_seconds']:.1f}", f"{p['ratio']:.2f}x"]
                   for n, p in result["pipelines"].items()])
    return "\n".join(out) + "\n"
