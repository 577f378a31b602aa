"""Where a multilabel run looks when it names a label (`cnnrnn analyze saliency RUN`).

Every label a run emits on a test mosaic gets a saliency map over the mosaic (56x56) by each
of three methods, the first two the usual pair:

- Grad-CAM (Selvaraju et al., ICCV 2017) on the encoder's last feature map A (C, h, w), which
  is 2x2 for a 56x56 mosaic, one map cell per mosaic cell: channel weights
  alpha_c = mean over the h*w positions of dy/dA_c, map = ReLU(sum_c alpha_c A_c), upsampled to
  the mosaic by nearest neighbours (each map cell fills its mosaic cell). With `per_cell`
  encoders A is the grid of the cells' pooled features.
- input gradients (Simonyan et al., 2014): |dy/dx| per pixel of the normalised input x,
  summed over its channels;
- HiResCAM (Draelos & Carin, 2020): ReLU(sum_c dy/dA_c * A_c) position
  by position, upsampled as Grad-CAM. Grad-CAM averages the gradient over the map, so with
  `image_grid` 2, where each cell's features have their own weights in U_I^x, it keeps which
  channels matter but drops in which cell the model reads them; HiResCAM keeps both.

The explained number y: for the CNN-RNN, the score s_t[l_t] (eq. 5; or log P(l_t | I, l_<t)
with target "log-prob") at the step t that emitted l_t on the best beam path, the decoder re-run
teacher-forced on the emitted labels (START, l_1, ..., l_{T-1}) with gradients on; for binary
relevance, the logit of each predicted label. The maps are computed in fp32, whatever the
run's precision.

For a CNN-RNN with the attention decoder (`model.decoder = "attention"`) a fourth method,
"attention", reads the step's attention weights a_t over the grid cells directly (each weight
fills its mosaic cell): no gradient, and the most attended cell is the peak.

Localisation, on the run's own test mosaics (regenerated with their cells and checked equal to
the ones `cnnrnn evaluate` reads): a label's peak is the mosaic cell of largest total saliency;
a correctly emitted label (one in the true set) scores 1 when its peak cell holds an item of
that class, else 0. Cells that tie for the peak share the credit (a map with k equal top cells
scores the share of them holding the class), so an all-zero map scores exactly chance. Chance:
a peak in a uniformly random cell, i.e. (cells holding the class) / cells, averaged over the
scored labels. `peak_on_item` is the share of peaks on any item, against `occupied_share`
(items per mosaic / cells over the scored labels' mosaics; `items_per_mosaic_over_cells` is
the same over all the mosaics).

That chance counts empty cells, which a map that finds any item never peaks on. Beside each
score: `nonempty_chance`, a peak on a uniformly random item ((cells holding the class) /
(non-empty cells), averaged); `label_agnostic`, the method's score with one map per mosaic for
all its labels (the mean of its step maps); `randomised_weights`, the method on a copy of the
model with re-initialised weights (Adebayo et al., NeurIPS 2018) explaining the trained model's
labels; `multi_item`, the scores on mosaics of 2 or more items (one-item mosaics score 1 for
any map that finds the item; `one_item_share` says how many scored labels sit in them).
"""

from __future__ import annotations

import json
from copy import deepcopy as copy_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST
from cnnrnn.data.loader import to_input
from cnnrnn.data.mosaics import CELL, make_split_mosaics_with_cells
from cnnrnn.errors import CnnrnnError, DataError
from cnnrnn.evaluate import load_run
from cnnrnn.files import atomic_write
from cnnrnn.models.bce import BCEHead
from cnnrnn.models.cnn_rnn import CNNRNN
from cnnrnn.plots import plot_saliency, run_title
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks.multilabel import EVAL_SEED, Multilabel

METHODS = ("gradcam", "input-gradients", "hirescam")
ATTENTION = "attention"  # the attention decoder's own weights, where the model has them
TARGETS = ("score", "log-prob")
BATCH = 100  # mosaics per forward and backward pass
RANDOM_SEED = 0  # the randomised-weights baseline's weights


# ---- the maps --------------------------------------------------------------------------------

def feature_map(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The encoder's last feature map A (B, C, h, w) and the image representation I (B, D)
    computed from it, exactly as `encoder.forward_features(x)` computes I.

    For a `per_cell` encoder A is the (grid, grid) map of the cells' pooled features, each cell
    encoded alone.
    """
    pool = F.adaptive_max_pool2d if encoder.pool == "max" else F.adaptive_avg_pool2d
    x = encoder.input(x)
    g = encoder.grid
    if encoder.per_cell and g > 1:
        b, c, h, w = x.shape
        cells = x.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5)
        cells = cells.reshape(b * g * g, c, h // g, w // g)  # row-major cells
        fmap = pool(encoder.features(cells), 1).reshape(b, g, g, -1).permute(0, 3, 1, 2)
        return fmap, fmap.permute(0, 2, 3, 1).reshape(b, -1)  # I made from A: its gradient
    fmap = encoder.features(x)  # (B, C, h, w)
    return fmap, pool(fmap, g).flatten(1)


def gradcam(fmap: Tensor, grad: Tensor, size: int) -> Tensor:
    """Grad-CAM: feature map and its gradient (B, C, h, w) -> (B, size, size) >= 0."""
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1) channel weights
    cam = torch.relu((alpha * fmap).sum(1, keepdim=True))  # (B, 1, h, w)
    return F.interpolate(cam, size=(size, size), mode="nearest")[:, 0]


def hirescam(fmap: Tensor, grad: Tensor, size: int) -> Tensor:
    """HiResCAM: like Grad-CAM with the gradient kept per position, (B, C, h, w) ->
    (B, size, size) >= 0."""
    cam = torch.relu((grad * fmap).sum(1, keepdim=True))  # (B, 1, h, w)
    return F.interpolate(cam, size=(size, size), mode="nearest")[:, 0]


def input_gradients(grad: Tensor) -> Tensor:
    """|dy/dx| summed over the input channels: (B, c, S, S) -> (B, S, S) >= 0."""
    return grad.abs().sum(1)


@dataclass(frozen=True)
class Saliency:
    """The maps of a batch: one slot per emitted label (the CNN-RNN's decoding steps in order,
    BCE's predicted labels by id)."""

    labels: Tensor  # (B, T) long: the label of each slot, -1 where the mosaic has no more
    maps: dict[str, Tensor]  # method -> (B, T, S, S) float >= 0, zero in empty slots


def _explain(encoder: nn.Module, x: Tensor, head: Any) -> Saliency:
    """Maps of every method for y = head(I): (labels (B, T), y (B, T)); one backward pass per
    slot, batched: in eval mode the mosaics of a batch do not interact, so the gradient of the
    batch's sum of y[:, t] is each mosaic's own gradient."""
    x = x.detach().float().requires_grad_(True)
    S = x.shape[-1]
    with torch.enable_grad():
        fmap, features = feature_map(encoder, x)
        labels, y = head(features.float())
        B, T = labels.shape
        valid = labels >= 0
        maps = {m: x.new_zeros(B, T, S, S) for m in METHODS}
        for t in range(T):
            if not valid[:, t].any():
                continue
            total = torch.where(valid[:, t], y[:, t], 0.0).sum()
            g_x, g_a = torch.autograd.grad(total, (x, fmap), retain_graph=t < T - 1)
            keep = valid[:, t, None, None].float()
            maps["gradcam"][:, t] = gradcam(fmap.detach(), g_a, S) * keep
            maps["input-gradients"][:, t] = input_gradients(g_x) * keep
            maps["hirescam"][:, t] = hirescam(fmap.detach(), g_a, S) * keep
    return Saliency(labels, maps)


def step_scores(model: CNNRNN, features: Tensor, inputs: Tensor) -> Tensor:
    """s_t (eq. 5) at every step, teacher-forced: features (B, D), inputs (B, T) -> (B, T, K+1).

    The same pass as `CNNRNN.sequence_log_probs`, before its masked softmax."""
    o, _ = model.lstm(model.U_l[inputs])  # (B, T, H)
    return model._scores(o, model.image_context(features))


def emitted_path(model: CNNRNN, features: Tensor, beam_width: int) -> tuple[Tensor, Tensor]:
    """The best beam path's labels (B, T) long (-1 after END) and the teacher-forcing inputs
    (B, T) that re-run it: START, then the emitted labels shifted by one."""
    K = model.num_labels
    path = model.decode(features.detach(), beam_width).paths[:, 0]  # (B, K+1)
    is_label = (path >= 0) & (path < K)  # the labels come first, then END, then -1
    T = max(1, int(is_label.sum(1).max()))
    labels = torch.where(is_label, path, -1)[:, :T]
    return labels, teacher_inputs(model, labels)


def teacher_inputs(model: CNNRNN, labels: Tensor) -> Tensor:
    """The teacher-forcing inputs (B, T) that re-run the labels (B, T) (-1 after the last):
    START, then the labels shifted by one (END in the slots after the last label)."""
    prev = labels[:, :-1].masked_fill(labels[:, :-1] < 0, model.END)
    start = torch.full_like(labels[:, :1], model.START)
    return torch.cat([start, prev], dim=1)


def cnn_rnn_saliency(model: CNNRNN, x: Tensor, beam_width: int, target: str = "score",
                     labels: Tensor | None = None) -> Saliency:
    """Maps for each decoding step of the best beam path: x (B, 1, S, S) normalised input.

    With `labels` (B, T) (-1 after the last) the steps re-run those labels instead of the
    model's own path: another model's path, for the randomised-weights baseline."""
    if target not in TARGETS:
        raise CnnrnnError(f"unknown saliency target {target!r}; use score or log-prob")

    weights: list[Tensor] = []

    def head(features: Tensor) -> tuple[Tensor, Tensor]:
        if labels is None:
            path, inputs = emitted_path(model, features, beam_width)
        else:
            path, inputs = labels.to(features.device), teacher_inputs(model, labels).to(
                features.device)
        if model.decoder == "attention":
            weights.append(model.attention_weights(features, inputs).detach())  # (B, T, G)
        if target == "log-prob":
            out = model.sequence_log_probs(features, inputs)  # (B, T, K+1)
        else:
            out = step_scores(model, features, inputs)
        return path, out.gather(2, path.clamp(min=0)[..., None])[..., 0]

    sal = _explain(model.encoder, x, head)
    if weights:
        sal.maps[ATTENTION] = attention_maps(weights[0], x.shape[-1]) * (sal.labels >= 0)[
            ..., None, None]
    return sal


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of the model with every weight re-initialised (the "model randomisation" sanity
    check of Adebayo et al., NeurIPS 2018): each module's own `reset_parameters` (batch-norm
    statistics too), seeded; parameters a module holds without one (the CNN-RNN's U_l) are
    redrawn as U_l is made, N(0, 1/E). Buffers that are not weights (label order, threshold,
    input normalisation) are kept."""
    device = next(model.parameters()).device
    copy = copy_module(model).cpu().eval()  # drawn on the CPU: the same weights on any device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in copy.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
                continue
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, p.shape[-1] ** -0.5)
    return copy.to(device)


def attention_maps(weights: Tensor, size: int) -> Tensor:
    """Attention weights over row-major grid cells (B, T, G) -> (B, T, size, size), each
    weight filling its cell."""
    B, T, G = weights.shape
    g = int(round(G ** 0.5))
    grid = weights.reshape(B * T, 1, g, g).float()
    return F.interpolate(grid, size=(size, size), mode="nearest").view(B, T, size, size)


def bce_saliency(model: BCEHead, x: Tensor, labels: Tensor | None = None) -> Saliency:
    """Maps for each label a binary-relevance run predicts (its logit), labels by id; with
    `labels` (B, T) (-1: none) for those labels instead, as `cnn_rnn_saliency`."""
    def head(features: Tensor) -> tuple[Tensor, Tensor]:
        logits = model.logits_from_features(features)  # (B, K)
        if labels is not None:
            given = labels.to(features.device)
            return given, logits.gather(1, given.clamp(min=0))
        predicted = torch.sigmoid(logits) >= model.threshold  # one or (K,) per label
        T = max(1, int(predicted.sum(1).max()))
        ids = torch.arange(model.num_labels, device=x.device).expand_as(predicted)
        key = torch.where(predicted, ids, model.num_labels + ids)  # predicted labels first
        order = key.argsort(1)[:, :T]  # (B, T)
        return torch.where(predicted.gather(1, order), order, -1), logits.gather(1, order)

    return _explain(model.encoder, x, head)


# ---- the localisation score ------------------------------------------------------------------

def cell_saliency(maps: Tensor, grid: int) -> Tensor:
    """Total saliency per cell: (M, S, S) maps -> (M, grid*grid), cells row-major."""
    M, S = maps.shape[0], maps.shape[-1]
    c = S // grid
    return maps.reshape(M, grid, c, grid, c).sum(dim=(2, 4)).reshape(M, grid * grid)


def peak_share(cell_scores: Tensor, hit: Tensor) -> Tensor:
    """Share of the peak cells (the cells tied for the largest score) where `hit` holds:
    (M, C) float and (M, C) bool -> (M,) in [0, 1]."""
    peak = cell_scores >= cell_scores.amax(1, keepdim=True)  # (M, C), ties all count
    return (peak & hit).sum(1) / peak.sum(1)


def localisation(scores: Tensor, labels: Tensor, cells: Tensor) -> dict[str, Any]:
    """The localisation score of emitted labels (pure; see the module docstring).

    scores: maps (M, S, S) or cell scores (M, C); labels (M,) long, the emitted label of each
    row (-1: none); cells (M, C) long, the class in each cell of the row's mosaic, -1 if empty.
    Only rows whose label is in its mosaic are scored. Returns counts and shares (None when
    nothing is scored): localisation, chance (a peak in a random cell, empty ones included),
    nonempty_chance (a peak in a random non-empty cell: (cells holding the class) / (non-empty
    cells), averaged), peak_on_item, occupied_share, and `flat`, the scored rows whose map is
    zero everywhere.
    """
    scores, labels, cells = scores.detach().float().cpu(), labels.cpu(), cells.cpu()
    if scores.dim() == 3:
        scores = cell_saliency(scores, int(round(cells.shape[1] ** 0.5)))
    if scores.shape != cells.shape or labels.shape != cells.shape[:1]:
        raise DataError(f"localisation: cell scores {tuple(scores.shape)}, labels "
                        f"{tuple(labels.shape)} and cells {tuple(cells.shape)} do not match")
    holds = (cells == labels[:, None]) & (labels[:, None] >= 0)  # (M, C)
    scored = holds.any(1)
    scores, holds, cells = scores[scored], holds[scored], cells[scored]
    n = int(scored.sum())

    def mean(v: Tensor) -> float | None:
        return float(v.double().mean()) if n else None

    return {"scored": n,
            "localisation": mean(peak_share(scores, holds)),
            "chance": mean(holds.float().mean(1)),
            "nonempty_chance": mean(holds.sum(1) / (cells >= 0).sum(1)),
            "peak_on_item": mean(peak_share(scores, cells >= 0)),
            "occupied_share": mean((cells >= 0).float().mean(1)),
            "flat": int((scores.amax(1) <= 0).sum())}


BASELINES = ("label_agnostic", "randomised_weights")


def scored(scores: Tensor, labels: Tensor, cells: Tensor, keep: Tensor,
           baselines: dict[str, Tensor]) -> dict[str, Any]:
    """`localisation` of the rows in `keep` (M,) bool, with each baseline's localisation on the
    same rows beside it (name -> its score, None when nothing is scored)."""
    row = localisation(scores[keep], labels[keep], cells[keep])
    for name, other in baselines.items():
        row[name] = localisation(other[keep], labels[keep], cells[keep])["localisation"]
    return row


def summarise(cell_scores: dict[str, Tensor], labels: Tensor, cells: Tensor, steps: Tensor,
              by_step: bool, baselines: dict[str, dict[str, Tensor]] | None = None
              ) -> dict[str, Any]:
    """Scores of every method, overall, on mosaics of 2 or more items (`multi_item`), per item
    count and (CNN-RNN) per decoding step; `one_item_share` is the share of the scored labels
    in one-item mosaics, where any map that finds an item scores 1.

    cell_scores: method -> (M, C); labels, steps (M,) long; cells (M, C) of each row's mosaic;
    baselines: name -> method -> (M, C), other maps for the same rows, scored beside each
    figure under their name.
    """
    items = (cells >= 0).sum(1)  # (M,)
    holds = ((cells == labels[:, None]) & (labels[:, None] >= 0)).any(1)  # the scored rows
    n_scored = int(holds.sum())
    out: dict[str, Any] = {}
    for method, scores in cell_scores.items():
        others = {name: maps[method] for name, maps in (baselines or {}).items()}

        def part(keep: Tensor, scores: Tensor = scores, others: dict = others
                 ) -> dict[str, Any]:
            return scored(scores, labels, cells, keep, others)

        row = part(torch.ones_like(items, dtype=torch.bool))
        row["multi_item"] = part(items >= 2)
        row["one_item_share"] = (int((holds & (items == 1)).sum()) / n_scored if n_scored
                                 else None)
        row["by_items"] = {str(k): part(items == k)
                           for k in range(1, cells.shape[1] + 1) if (items == k).any()}
        if by_step:
            row["by_step"] = {str(t + 1): part(steps == t)
                              for t in range(int(steps.max()) + 1 if len(steps) else 0)}
        out[method] = row
    return out


# ---- the analysis ----------------------------------------------------------------------------

def figure_picks(cells: Tensor, n: int) -> list[int]:
    """n mosaics for the figure that cover the item counts: the first mosaic of each count,
    then the second of each, ..., listed by item count."""
    counts = (cells >= 0).sum(1).tolist()
    seen: dict[int, int] = {}
    rank = []
    for i, k in enumerate(counts):
        rank.append((seen.get(k, 0), k, i))
        seen[k] = seen.get(k, 0) + 1
    picks = sorted(rank)[:n]
    return [i for _, _, i in sorted(picks, key=lambda r: (r[1], r[2]))]


def run_test_mosaics(cfg: Any, task: Multilabel, fmnist: FashionMNIST
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """The run's own test mosaics (as `cnnrnn evaluate` reads them), their labels and cells
    (N, C); the cells are regenerated with the same generator and seed, and the images are
    checked to be the task's."""
    ml = cfg.multilabel
    data = task.prepare(cfg, fmnist)
    images, labels, cells, _ = make_split_mosaics_with_cells(
        fmnist, "test", ml.test_mosaics, ml.prior, EVAL_SEED, val_size=cfg.val_size)
    if not (torch.equal(images, data.test_images) and torch.equal(labels, data.test_targets)):
        raise CnnrnnError("the regenerated test mosaics differ from the run's own test mosaics "
                          "(has Multilabel.prepare changed how it draws them?)")
    return images, labels, cells


def analyze_saliency(run: str | Path, fmnist: FashionMNIST, out: str | Path | None = None,
                     n: int = 1000, n_figure: int = 4, method: str = "gradcam",
                     target: str = "score", device: str = "cpu") -> dict[str, Any]:
    """Saliency maps and their localisation score for a multilabel run; writes
    saliency.json and the figure saliency_<method>.png into `out` (default
    RUN/analysis/saliency) and returns the JSON's content."""
    if method not in (*METHODS, ATTENTION):
        raise CnnrnnError(f"unknown saliency method {method!r}; use "
                          f"{', '.join((*METHODS, ATTENTION))}")
    if target not in TARGETS:
        raise CnnrnnError(f"unknown saliency target {target!r}; use score or log-prob")
    if n < 1 or n_figure < 0:
        raise CnnrnnError(f"--n must be at least 1 and --n-figure at least 0, got {n}, "
                          f"{n_figure}")
    cfg, task, model, _ = load_run(run, device=device)
    if not isinstance(task, Multilabel) or not isinstance(model, CNNRNN | BCEHead):
        raise CnnrnnError(f"{run} is a {cfg.task} {cfg.model} run; saliency reads multilabel "
                          "runs (cnn-rnn or bce)")
    attends = isinstance(model, CNNRNN) and model.decoder == "attention"
    if method == ATTENTION and not attends:
        raise CnnrnnError(f"{run} has no attention to read: the paper's CNN-RNN (Wang et al. "
                          "2016) feeds the same image representation I to every decoding step "
                          "(eq. 4) and binary relevance has none; train with --set "
                          "model.decoder=attention, or use --method "
                          f"{', '.join(METHODS)}")
    methods = (*METHODS, ATTENTION) if attends else METHODS
    images, truth, cells = run_test_mosaics(cfg, task, fmnist)
    images, truth, cells = images[:n], truth[:n], cells[:n]
    grid = images.shape[-1] // CELL
    dev = next(model.parameters()).device
    is_rnn = isinstance(model, CNNRNN)
    picks = figure_picks(cells, n_figure)
    random_model = randomised(model, RANDOM_SEED)
    rows: dict[str, list[Tensor]] = {
        "mosaic": [], "step": [], "label": [],
        **{f"{name}/{m}": [] for name in ("trained", *BASELINES) for m in methods}}
    shown: dict[int, Saliency] = {}
    for start in range(0, len(images), BATCH):
        x = to_input(images[start:start + BATCH]).to(dev)
        sal = (cnn_rnn_saliency(model, x, cfg.multilabel.beam_width, target) if is_rnn
               else bce_saliency(model, x))
        # the randomised model explains the trained model's labels, step by step
        random_sal = (cnn_rnn_saliency(random_model, x, 1, target, sal.labels) if is_rnn
                      else bce_saliency(random_model, x, sal.labels))
        B, T = sal.labels.shape
        keep = (sal.labels >= 0).cpu()
        rows["mosaic"].append((start + torch.arange(B)[:, None].expand(B, T))[keep])
        rows["step"].append(torch.arange(T).expand(B, T)[keep])
        rows["label"].append(sal.labels.cpu()[keep])
        for m in methods:
            cells_of = cell_saliency(sal.maps[m].flatten(0, 1), grid).view(B, T, -1).cpu()
            rows[f"trained/{m}"].append(cells_of[keep])
            # label-agnostic: the mean of the mosaic's step maps, the same for each of its labels
            mean = cells_of.sum(1) / keep.sum(1, keepdim=True).clamp(min=1)  # (B, C)
            rows[f"label_agnostic/{m}"].append(mean[:, None].expand_as(cells_of)[keep])
            rows[f"randomised_weights/{m}"].append(
                cell_saliency(random_sal.maps[m].flatten(0, 1), grid).view(B, T, -1)
                .cpu()[keep])
        for i in picks:
            if start <= i < start + B:
                shown[i] = Saliency(sal.labels[i - start].cpu(),
                                    {m: v[i - start].detach().cpu() for m, v in sal.maps.items()})
    flat = {k: torch.cat(v) for k, v in rows.items()}
    row_cells = cells[flat["mosaic"]]  # (M, C)
    scores = summarise({m: flat[f"trained/{m}"] for m in methods}, flat["label"], row_cells,
                       flat["step"], by_step=is_rnn,
                       baselines={name: {m: flat[f"{name}/{m}"] for m in methods}
                                  for name in BASELINES})
    overall = scores[methods[0]]
    out = Path(out) if out is not None else RunDir(run) / "analysis" / "saliency"
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "run": str(run), "model": cfg.model, "checkpoint": "best",
        "explained": ("s_t[label] (eq. 5)" if target == "score" else "log P(label | I, l_<t)")
        if is_rnn else "the label's logit",
        "beam_width": cfg.multilabel.beam_width if is_rnn else None,
        "prior": cfg.multilabel.prior, "mosaics": len(images),
        "emitted": len(flat["label"]), "scored": overall["scored"],
        "correct_share": overall["scored"] / max(1, len(flat["label"])),
        "chance": overall["chance"], "occupied_share": overall["occupied_share"],
        "nonempty_chance": overall["nonempty_chance"],
        "nonempty_chance_by_items": {k: r["nonempty_chance"]
                                     for k, r in overall["by_items"].items()},
        "multi_item_scored": overall["multi_item"]["scored"],
        "one_item_share": overall["one_item_share"],
        "randomised_seed": RANDOM_SEED,
        "items_per_mosaic": float((cells >= 0).sum(1).double().mean()),
        "items_per_mosaic_over_cells": float((cells >= 0).double().mean()),
        "methods": scores,
        "definitions": {
            "gradcam": "ReLU(sum_c mean_hw(dy/dA_c) A_c) on the encoder's last feature map A "
                       f"({grid}x{grid} for these mosaics), nearest-upsampled to the mosaic",
            "input-gradients": "|dy/dx| per input pixel, summed over channels",
            "hirescam": "ReLU(sum_c dy/dA_c * A_c) per position of A, nearest-upsampled",
            **({ATTENTION: "the decoding step's attention weights a_t over the grid cells"}
               if attends else {}),
            "peak": "the cell of largest total saliency; tied cells share the credit",
            "localisation": "share of correctly emitted labels whose peak cell holds that class",
            "chance": "mean over the scored labels of (cells holding the class) / cells, "
                      "empty cells included",
            "nonempty_chance": "mean over the scored labels of (cells holding the class) / "
                               "(non-empty cells): the score of a map that peaks on a random "
                               "item; the chance level that means something",
            "label_agnostic": "the method's score when every label of a mosaic gets the same "
                              "map, the mean of the mosaic's maps over its "
                              f"{'decoding steps' if is_rnn else 'predicted labels'}",
            "randomised_weights": "the method's score on a copy of the model with every weight "
                                  f"re-initialised (seed {RANDOM_SEED}; Adebayo et al. 2018), "
                                  "explaining the trained model's labels on the same mosaics",
            "multi_item": "the scores on mosaics of 2 or more items alone",
            "one_item_share": "share of the scored labels in one-item mosaics, where any map "
                              "that peaks on an item scores 1",
            "peak_on_item": "share of peaks on any item; its chance is occupied_share",
        },
    }
    json_path = out / "saliency.json"
    result["files"] = [str(json_path)]
    if picks:
        figure = out / f"saliency_{method}.png"
        _figure(figure, images, truth, cells, picks, shown, method, is_rnn, result,
                run_title(Path(run).resolve().name, cfg.model))
        result["files"].append(str(figure))
    atomic_write(json_path, json.dumps(result, indent=1))
    return result


def _figure(path: Path, images: Tensor, truth: Tensor, cells: Tensor, picks: list[int],
            shown: dict[int, Saliency], method: str, is_rnn: bool, result: dict[str, Any],
            title: str) -> Path:
    short = [c.split("/")[0] for c in CLASSES]
    grid = images.shape[-1] // CELL
    rows = []
    for i in picks:
        sal = shown[i]
        panels = []
        for t, label in enumerate(sal.labels.tolist()):
            if label < 0:
                continue
            cell_scores = cell_saliency(sal.maps[method][t][None], grid)[0]
            hit = float(peak_share(cell_scores[None], (cells[i] == label)[None])[0])
            top = cell_scores >= cell_scores.max()
            peaks = top.nonzero().flatten().tolist() if cell_scores.max() > 0 else []
            name = f"step {t + 1}: {short[label]}" if is_rnn else short[label]
            panels.append({"map": sal.maps[method][t].numpy(), "title": name, "hit": hit,
                           "present": bool(truth[i, label]),
                           "peaks": peaks})
        rows.append({"image": images[i].numpy(), "panels": panels,
                     "cells": [short[c] if c >= 0 else "" for c in cells[i].tolist()]})
    m = result["methods"][method]
    caption = (f"{method} maps, each scaled to its own maximum, with each cell's share; "
               "outlined: the peak cell. \u2713 the peak cell holds the emitted class, \u2717 it "
               f"does not (orange: tied peaks). Over {result['mosaics']} test mosaics, "
               f"{m['scored']} correctly emitted labels: peak in a cell of the class "
               f"{_fmt(m['localisation'], 2)} (on a random item's cell "
               f"{_fmt(m['nonempty_chance'], 2)}, same map for every label "
               f"{_fmt(m['label_agnostic'], 2)}, random weights "
               f"{_fmt(m['randomised_weights'], 2)})")
    what = "decoding step" if is_rnn else "predicted label"
    return plot_saliency(rows, path, f"{title}: where the model looks at each {what}", caption,
                         CELL)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The localisation scores as a Markdown table: overall, on mosaics of 2-4 items and per
    item count; under each method its two baselines, then the chance levels."""
    fmt = _fmt

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    counts = sorted({k for m in result["methods"].values() for k in m["by_items"]}, key=int)
    head = ["method", "all", f"2-{counts[-1] if counts else 4} items",
            *[f"{k} item{'s' if k != '1' else ''}" for k in counts]]
    lines = [line(head), "|---|" + "---:|" * (len(head) - 1)]
    first = next(iter(result["methods"].values()))

    def cells(m: dict[str, Any], key: str, show=fmt) -> list[str]:
        return [show(m.get(key)), show(m["multi_item"].get(key)),
                *[show(m["by_items"][k].get(key)) for k in counts]]

    names = {"label_agnostic": "label-agnostic map", "randomised_weights": "random weights"}
    for name, m in result["methods"].items():
        lines.append(line([name, *cells(m, "localisation")]))
        for key in BASELINES:
            if key in m:
                lines.append(line([f"{name}, {names[key]}", *cells(m, key)]))
    lines.append(line(["chance", *cells(first, "chance")]))
    if "nonempty_chance" in first:
        lines.append(line(["non-empty-cell chance", *cells(first, "nonempty_chance")]))
    lines.append(line(["scored labels", *cells(first, "scored", str)]))
    share = first.get("one_item_share")
    note = ("" if share is None else
            f"\nOne-item mosaics hold {share:.3f} of the scored labels (there any map that "
            "peaks on an item scores 1); chance: a peak in a random cell, non-empty-cell "
            "chance: in a random item's cell.\n")
    return "\n".join(lines) + "\n" + note
