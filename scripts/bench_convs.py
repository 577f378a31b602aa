"""Where a bf16 vgg16 step's convolution time goes: each distinct 3x3 convolution of the recipe's
vgg16 (width 0.5, 28x28 inputs, batch 128) timed alone in bf16, channels_last, as oneDNN's
forward, input-gradient and weight-gradient kernels, and as the one-matmul weight gradient of
cnnrnn.models.conv, beside a bf16 matmul measured in the same run (the practical peak).
Median of the timed calls after 3 warm-up calls. --alternatives adds a weight gradient tried
and dropped: a forward convolution of the input's channels (batch as channels) with the output
gradient as its kernel.

usage: python scripts/bench_convs.py [--reps 30] [--threads 2] [--batch 128] [--alternatives]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cnnrnn.bench import matmul_gflops, median_seconds
from cnnrnn.config import load_config
from cnnrnn.models.conv import weight_grad
from cnnrnn.models.vgg import VGGEncoder
from cnnrnn.threads import cpu_model


def layers(width: float) -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, map side, how many) of vgg16's convolutions at `width`, read
    off the encoder itself on a 28x28 input."""
    seen: dict[tuple[int, int, int], int] = {}

    def note(conv: torch.nn.Conv2d, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        key = (conv.in_channels, conv.out_channels, inputs[0].shape[-1])
        seen[key] = seen.get(key, 0) + 1

    encoder = VGGEncoder(width)
    for m in encoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(note)
    with torch.no_grad():
        encoder.eval().forward_features(torch.zeros(1, 1, 28, 28))
    return [(*k, n) for k, n in seen.items()]


def weight_grad_as_conv(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dW[o, i] = sum over n, h, w of g[n, o, h, w] x_pad[n, i, h + kh, w + kw]: a forward
    convolution of x_pad^T (channels as batch, batch as channels) with g^T as a kernel of the
    map's size, whose 3x3 output is dW^T."""
    xt = F.pad(x, (1, 1, 1, 1)).transpose(0, 1).contiguous(memory_format=torch.channels_last)
    gt = g.transpose(0, 1).contiguous(memory_format=torch.channels_last)
    return F.conv2d(xt, gt).transpose(0, 1)


def layer_cells(c_in: int, c_out: int, side: int, batch: int, reps: int, peak: float,
                alternatives: bool = False) -> list[str]:
    """"ms, share of the peak" of a 3x3 convolution's forward, input gradient, oneDNN weight
    gradient and one-matmul weight gradient (and with `alternatives` the weight gradient as a
    forward convolution), bf16 and channels_last."""
    bf16, cl = torch.bfloat16, torch.channels_last
    x = torch.randn(batch, c_in, side, side, dtype=bf16).contiguous(memory_format=cl)
    w = torch.randn(c_out, c_in, 3, 3, dtype=bf16).contiguous(memory_format=cl)
    g = torch.randn(batch, c_out, side, side, dtype=bf16).contiguous(memory_format=cl)
    flop = 2 * batch * side * side * c_in * 9 * c_out  # each of the three products

    def backward(mask: list[bool]) -> object:
        return torch.ops.aten.convolution_backward(g, x, w, [c_out], [1, 1], [1, 1], [1, 1],
                                                   False, [0, 0], 1, mask)

    kernels = (lambda: F.conv2d(x, w, padding=1), lambda: backward([True, False, False]),
               lambda: backward([False, True, True]),
               lambda: (weight_grad(x, g, 3, 1), g.sum((0, 2, 3))))
    if alternatives:  # timed only if it computes the same gradient
        want = backward([False, True, False])[1].float()
        got = weight_grad_as_conv(x, g).float()
        assert (got - want).abs().max() <= 2e-2 * want.abs().max(), (c_in, c_out, side)
        kernels += (lambda: weight_grad_as_conv(x, g),)
    cells = []
    for fn in kernels:
        ms = 1000 * median_seconds(fn, reps, 3)
        cells.append(f"{ms:.2f} ms, {flop / ms / 1e6 / peak:.0%}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--alternatives", action="store_true",
                        help="also the weight gradient as a forward convolution")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_gflops("bf16", 2048, args.reps, 3)
    width = load_config("single-label", "vgg16").model_args.width
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {args.batch}, vgg16 width {width}; bf16 matmul 2048^3: {peak:,.0f} GFLOP/s")
    extra = " weight gradient, as a forward convolution |" if args.alternatives else ""
    print("| convolution | n | forward | input gradient | weight gradient, oneDNN "
          "| weight gradient, one matmul |" + extra)
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if args.alternatives else ""))
    for c_in, c_out, side, n in layers(width):
        cells = layer_cells(c_in, c_out, side, args.batch, args.reps, peak, args.alternatives)
        print(f"| {c_in}->{c_out} on {side}x{side} | {n} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
