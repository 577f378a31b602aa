"""Label embeddings of a run, their distances, and UMAP maps (`cnnrnn analyze embeddings RUN`).

Writes into the output folder:
- embeddings.json: the ten class embeddings (10 x E) with the class names;
- distances_cosine.{csv,json}, distances_euclidean.{csv,json}: their pairwise distances;
- distances.png: both distance matrices as heatmaps, classes ordered by a hierarchical
  clustering (average linkage on the cosine distances), and dendrogram.png;
- umap_*.png and umap_*.json: UMAP maps (umap-learn) of test images projected into the
  label-embedding space together with the ten label embeddings. A CNN-RNN run gets one map of
  single-item mosaics and one of all mosaics (coloured by the label set's most frequent label,
  under the run's prior); a single-label run one map of test images (its penultimate features,
  with the rows of its last linear layer). The same seed gives the same map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST
from cnnrnn.data.loader import sequential_batches
from cnnrnn.evaluate import load_run
from cnnrnn.files import atomic_write
from cnnrnn.models.cnn_rnn import CNNRNN
from cnnrnn.models.embeddings import class_embeddings, embed_images
from cnnrnn.plots import (
    plot_dendrogram,
    plot_distance_heatmaps,
    plot_embedding_map,
    run_title,
    text_safe,
)
from cnnrnn.run_dir import RunDir

METRICS = ("cosine", "euclidean")
# What each map shows, in the titles' mathtext (the paper's names: U_I^x I is the image term of
# eq. 4, U_l the label embeddings); {points} is what the images become in the embedding space
DESCRIPTIONS = {"single_items": "single-item test mosaics ({points})",
                "mosaics": "test mosaics ({points}; colour: the set's most frequent label)",
                "test_images": "test images ({points})"}
CNN_RNN_POINTS, CNN_RNN_STARS = r"$U_I^{x}\,I$", r"label embeddings, rows of $U_l$"


def distance_matrices(vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Pairwise cosine and Euclidean distances of (K, D) vectors, unscaled."""
    from scipy.spatial.distance import pdist, squareform

    return {m: squareform(pdist(vectors.astype(np.float64), metric=m)) for m in METRICS}


def cluster_order(distances: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Leaf order of an average-linkage clustering of a (K, K) distance matrix, and the
    linkage (for the dendrogram)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    z = linkage(squareform(distances, checks=False), method="average")
    return leaves_list(z).tolist(), z


def umap_2d(points: np.ndarray, seed: int, metric: str = "cosine") -> np.ndarray:
    """UMAP (umap-learn) of (N, D) points to (N, 2); a fixed seed gives the same map."""
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, metric=metric,
                        random_state=seed, n_jobs=1)
    return reducer.fit_transform(points.astype(np.float32))


def _write_matrix(out: Path, stem: str, matrix: np.ndarray) -> list[Path]:
    import csv
    import io
    import json

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", *CLASSES])
    for name, row in zip(CLASSES, matrix, strict=True):
        w.writerow([name, *(f"{x:.6f}" for x in row)])
    atomic_write(out / f"{stem}.csv", buf.getvalue())
    atomic_write(out / f"{stem}.json", json.dumps(
        {"classes": list(CLASSES), "distances": np.round(matrix, 6).tolist()}, indent=1))
    return [out / f"{stem}.csv", out / f"{stem}.json"]


def _project(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> np.ndarray:
    """uint8 images (N, H, W) -> (N, E) points in the label-embedding space."""
    parts = [embed_images(model, x) for x in sequential_batches(images, batch)]
    return torch.cat(parts).numpy()


def analyze_embeddings(run: str | Path, fmnist: FashionMNIST, out: str | Path | None = None,
                       seed: int = 0, n: int = 2000) -> dict[str, Any]:
    """Write every file of the module docstring for `run`; returns their paths and the
    distances (JSON-ready)."""
    import json

    cfg, task, model, _ = load_run(run)
    out = Path(out) if out is not None else RunDir(run) / "analysis" / "embeddings"
    out.mkdir(parents=True, exist_ok=True)
    vectors = class_embeddings(model).float().numpy()  # (10, E)
    written = [out / "embeddings.json"]
    atomic_write(written[0], json.dumps({"run": str(run), "model": cfg.model,
                                         "classes": list(CLASSES),
                                         "vectors": vectors.tolist()}, indent=1))
    distances = distance_matrices(vectors)
    for metric, matrix in distances.items():
        written += _write_matrix(out, f"distances_{metric}", matrix)
    order, z = cluster_order(distances["cosine"])
    title = text_safe(run_title(Path(run).resolve().name, cfg.model))
    if isinstance(model, CNNRNN):
        points_are, stars = CNN_RNN_POINTS, CNN_RNN_STARS
    else:  # what the linear head reads, and its rows
        points_are = "encoder features" if hasattr(model, "encode") else "penultimate features"
        stars = "label embeddings, rows of the last linear layer"
    written.append(plot_distance_heatmaps(distances, CLASSES, order, out / "distances.png",
                                          f"{title}: label-embedding distances"))
    written.append(plot_dendrogram(z, CLASSES, out / "dendrogram.png", title))

    data = task.prepare(cfg, fmnist)
    g = torch.Generator().manual_seed(seed)
    images, targets = data.test_images, data.test_targets
    maps: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
    if targets.dim() == 2:  # label sets (mosaics)
        freq = torch.tensor(data.info.get("label_frequencies", [1.0] * len(CLASSES)))
        counts = targets.sum(1)
        single = (counts == 1).nonzero().flatten()
        pick = single[torch.randperm(len(single), generator=g)[:n]]
        maps["single_items"] = (images[pick], targets[pick].float().argmax(1).numpy())
        pick = torch.randperm(len(images), generator=g)[:n]
        most = (targets[pick].float() * freq).argmax(1)  # the set's most frequent label
        maps["mosaics"] = (images[pick], most.numpy())
    else:
        pick = torch.randperm(len(images), generator=g)[:n]
        maps["test_images"] = (images[pick], targets[pick].numpy())
    coords = {}
    for name, (imgs, colour) in maps.items():
        points = _project(model, imgs)
        xy = umap_2d(np.vstack([points, vectors]), seed)
        coords[name] = xy
        atomic_write(out / f"umap_{name}.json", json.dumps({
            "points": np.round(xy[:-len(CLASSES)], 5).tolist(), "colour_class": colour.tolist(),
            "labels": {c: np.round(p, 5).tolist() for c, p in zip(
                CLASSES, xy[-len(CLASSES):], strict=True)}, "seed": seed}, indent=0))
        written.append(out / f"umap_{name}.json")
        written.append(plot_embedding_map(
            xy[:-len(CLASSES)], colour, xy[-len(CLASSES):], CLASSES, out / f"umap_{name}.png",
            f"{title}: UMAP of {DESCRIPTIONS[name].format(points=points_are)}", stars))
    return {"run": str(run), "out": str(out), "files": [str(p) for p in written],
            "distances": {m: d.tolist() for m, d in distances.items()},
            "cluster_order": [CLASSES[i] for i in order]}
