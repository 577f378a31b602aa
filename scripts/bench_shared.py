"""A training step beside another busy job on this machine: torch's default thread count
against `threads = -1` (auto: the CPUs this process may use less the busy ones).

The other job is a second process doing bf16 matmuls with torch's default threads, as another
training would. Prints one Markdown table of median ms per step (batch 128, the recipe's
architecture, bf16 autocast, channels_last): alone with the default threads, beside the other
job with the default threads, and beside it with auto.

usage: python scripts/bench_shared.py [--models cnn,lstm] [--steps 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from cnnrnn.bench import FULL, BenchSize, build_bench, recipe, step_seconds
from cnnrnn.threads import auto_threads

BUSY = ("import torch\nx = torch.randn(1024, 1024)\n"
        "while True:\n    with torch.autocast('cpu', dtype=torch.bfloat16):\n        x @ x\n")


def step_ms(name: str, threads: int, steps: int) -> float:
    """Median ms of a bf16 training step of the single-label model `name` at batch 128."""
    torch.set_num_threads(threads)
    cfg = recipe(name, FULL)
    b = build_bench(name, cfg, channels_last=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), generator=g)
    return 1000 * step_seconds(b, x, y, "bf16", BenchSize(steps=steps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,lstm")
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args()
    default = torch.get_num_threads()
    rows = []
    for name in a.models.split(","):
        alone = step_ms(name, default, a.steps)
        other = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            time.sleep(3)  # the other job is busy and counted in /proc/loadavg
            auto = auto_threads()
            beside = step_ms(name, default, a.steps)
            beside_auto = step_ms(name, auto, a.steps)
        finally:
            other.kill()
            other.wait()
        rows.append(f"| {name} | {alone:.1f} | {beside:.1f} ({beside / alone:.1f}x) | "
                    f"{beside_auto:.1f} ({beside_auto / alone:.1f}x), {auto} thread(s) |")
    print(f"| model | alone, {default} threads | beside a busy job, {default} threads | "
          "beside it, threads = -1 (auto) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
