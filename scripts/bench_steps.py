"""Milliseconds per training step (forward, backward, optimizer) per model, fp32 against bf16
autocast, side by side in one run. Batch 128 of 28x28 images; median of the timed steps.

usage: python scripts/bench_steps.py [--steps 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cnnrnn.config import load_config
from cnnrnn.models import build_model


def step_ms(name: str, precision: str, steps: int) -> float:
    cfg = load_config("single-label", name)  # the recipe's architecture
    torch.manual_seed(0)
    model = build_model(name, cfg.model_args).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    times = []
    for _ in range(steps + 3):  # 3 warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, batch 128, median of {args.steps} steps")
    print("| model (recipe architecture) | fp32 ms/step | bf16 ms/step | speed-up |")
    print("|---|---:|---:|---:|")
    for name in ("rnn", "lstm", "gru", "cnn", "vgg16"):
        fp32, bf16 = step_ms(name, "fp32", args.steps), step_ms(name, "bf16", args.steps)
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
