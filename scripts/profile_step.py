"""Where a training step's time goes: torch.profiler over N steps of a benchmark model's recipe
(`cnnrnn bench`'s step: a real batch of cnnrnn's pipeline, channels_last, the given precision),
each operator's own time grouped by what it does, in ms per step and as a share of the step.

usage: python scripts/profile_step.py [--model vgg16] [--precision bf16] [--steps 10]
                                      [--threads 2] [--ops]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from cnnrnn.bench import FULL, MODELS, build_bench, median_seconds, recipe, train_step
from cnnrnn.data.fashion_mnist import load_fashion_mnist
from cnnrnn.threads import cpu_model

# group -> the aten operator names (without "aten::") it holds, each a prefix of the names;
# the first group with a matching prefix wins, so the backward names come before the forward
GROUPS = (
    ("convolution, forward (oneDNN)", ("mkldnn_convolution",)),
    ("convolution, backward (oneDNN: input and weight gradients)", ("convolution_backward",)),
    ("matmul (linear layers, cnnrnn's weight gradients on small maps)", ("mm", "addmm")),
    ("copies (casts, the weight gradients' shifted inputs, layouts)", ("copy_", "as_strided")),
    ("batch norm, backward", ("native_batch_norm_backward",)),
    ("batch norm, forward", ("native_batch_norm",)),
    ("ReLU, backward", ("threshold_backward",)),
    ("ReLU, forward", ("clamp_min", "relu")),
    ("max-pooling, backward", ("max_pool2d_with_indices_backward",)),
    ("max-pooling, forward", ("max_pool2d",)),
    ("recurrent layers (oneDNN's LSTM kernels)", ("mkldnn_rnn_layer",)),
    ("optimizer step (fused)", ("_fused_sgd", "_fused_adam")),
)
OTHER = "other (sums, adds, fills, the loss, autograd's bookkeeping)"


def group_of(name: str) -> str:
    op = name.removeprefix("aten::")
    return next((group for group, prefixes in GROUPS if op.startswith(prefixes)), OTHER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16", choices=sorted(MODELS))
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="also list the 25 costliest operators")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = recipe(args.model, FULL)
    b = build_bench(args.model, cfg, channels_last=cfg.channels_last)
    x, y = next(iter(b.task.prepare(cfg, load_fashion_mnist()).train.epoch(0)))

    def step() -> None:
        train_step(b, x, y, args.precision)

    median = 1000 * median_seconds(step, args.steps, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    # aten operators only: their self times add up to the time spent in kernels and dispatch
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    per_group: dict[str, float] = defaultdict(float)
    for e in events:
        per_group[group_of(e.key)] += e.self_cpu_time_total / 1000 / args.steps  # ms per step
    total = sum(per_group.values())
    print(f"# {args.model} ({cfg.model}), {args.precision}, batch {len(y)}, "
          f"{torch.get_num_threads()} threads, {cpu_model()}, torch {torch.__version__}")
    print(f"# median step {median:.1f} ms without the profiler; "
          f"{total:.1f} ms of aten operators per profiled step")
    print("| where | ms per step | share |")
    print("|---|---:|---:|")
    for group, ms in sorted(per_group.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {ms:.1f} | {ms / total:.0%} |")
    if args.ops:
        print()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
