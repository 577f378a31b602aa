"""Mosaics per second on one CPU core: median of several timed runs of MosaicGenerator.sample.

    python scripts/bench_mosaics.py [--n 10000] [--runs 9] [--prior outfits] [--grid 2]
        [--jitter 0] [--scale-min 1.0] [--scale-max 1.0] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cnnrnn.data.fashion_mnist import load_fashion_mnist
from cnnrnn.data.mosaics import MosaicGenerator, MosaicLayout, split_pool
from cnnrnn.data.priors import load_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="mosaics per timed call")
    parser.add_argument("--runs", type=int, default=9, help="timed calls (after one warm-up)")
    parser.add_argument("--prior", default="outfits")
    parser.add_argument("--grid", type=int, default=2)
    parser.add_argument("--jitter", type=int, default=0)
    parser.add_argument("--scale-min", type=float, default=1.0)
    parser.add_argument("--scale-max", type=float, default=1.0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one core, so the number does not depend on the machine's size
    fmnist = load_fashion_mnist(args.data_dir)
    images, labels, _ = split_pool(fmnist, "train")
    layout = MosaicLayout(grid=args.grid, jitter=args.jitter, scale_min=args.scale_min,
                          scale_max=args.scale_max)
    gen = MosaicGenerator(images, labels, load_prior(args.prior), layout)
    g = torch.Generator().manual_seed(0)
    gen.sample(args.n, g)  # warm-up: first-call allocations are not what training sees
    seconds = []
    for _ in range(args.runs):
        start = time.perf_counter()
        gen.sample(args.n, g)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(f"prior={args.prior} layout={layout} n={args.n} runs={args.runs} threads=1: "
          f"median {median * 1e3:.1f} ms, {args.n / median:,.0f} mosaics/s "
          f"(min {args.n / max(seconds):,.0f}, max {args.n / min(seconds):,.0f})")


if __name__ == "__main__":
    main()
