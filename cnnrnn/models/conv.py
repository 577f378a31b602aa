"""A 3x3 convolution whose bf16 weight gradient on small maps is one matmul, and max-pooling
put before the ReLU it follows (`pool_then_relu`): the convolution blocks' faster pieces.

Under bf16 autocast on a CPU, oneDNN's forward and input-gradient kernels for a 3x3
convolution run near the machine's bf16 matmul rate, but its weight-gradient kernel does not
on the last blocks' small maps: on an Intel Xeon with AMX at batch 128 it reached 380 GFLOP/s
on 4x4 maps and 130 on 2x2 (against about 2,700 for a bf16 matmul), 4-6 times the time of the
layer's forward pass. There the weight gradient is cheap to write as one matmul instead:

    dL/dW[o, c, i, j] = sum over (b, y, x) of g[b, o, y, x] * x_pad[b, c, y + i, x + j]

that is, g^T (O, B*H*W) @ cols (B*H*W, k*k*C), where `cols` holds the k*k shifted copies of
the padded input (NHWC, so each is a plain slice, and all of them one strided view). On maps of
at most `SMALL_MAP` positions the copies are small and the matmul runs near the bf16 rate:
2.5-3.1x faster than oneDNN on 4x4, 8x on 2x2 (the conv layer table in docs/results-archive.md,
`scripts/bench_convs.py`). On larger maps the copies cost
more than oneDNN's kernel, so those layers keep it.

`Conv2d` is an `nn.Conv2d` (same parameters, same state_dict, same forward values); only the
backward pass of qualifying calls differs, and only in the order of the sums (the result is
rounded to bf16 either way, as autocast's is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 16  # positions (H * W) up to which the weight gradient is one matmul


def weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, padding: int) -> torch.Tensor:
    """Gradient of a stride-1 k x k convolution's weight from its input and output gradient.

    x: (B, C, H, W) input, g: (B, O, H, W) gradient of the output (same H, W: padding = k // 2);
    returns (O, C, k, k) in x's dtype.
    """
    b, c, h, w = x.shape
    o = g.shape[1]
    p = padding
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p))  # (B, H+2p, W+2p, C), NHWC
    sb, sy, sx, sc = xp.stride()
    # cols[b, y, x, i, j, c] = xp[b, y + i, x + j, c]: a view, copied once by the reshape
    # (half the time of concatenating the k*k slices)
    cols = xp.as_strided((b, h, w, k, k, c), (sb, sy, sx, sy, sx, sc))
    cols = cols.reshape(b * h * w, k * k * c)
    # g^T as a contiguous (O, B*H*W) copy: the matmul runs 1.3-1.7x faster than on the
    # transposed view of a channels_last g
    gt = g.permute(1, 0, 2, 3).reshape(o, b * h * w).contiguous()
    return (gt @ cols).view(o, k, k, c).permute(0, 3, 1, 2)  # (O, k*k*C) -> (O, C, k, k)


class _MatmulWeightGrad(torch.autograd.Function):
    """conv2d (stride 1, 'same' padding) with oneDNN's forward and input gradient and the
    weight gradient of `weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # noqa: ANN001, ANN205 (autograd's signature)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        p = ctx.padding
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                g, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, g, weight.shape[-1], p)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3))
        return gx, gw, gb, None


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` whose bf16 weight gradient on maps of at most `SMALL_MAP` positions is one
    matmul (module doc); every other call is `nn.Conv2d`'s."""

    def _matmul_backward(self, x: torch.Tensor) -> bool:
        k = self.kernel_size[0]
        return (x.device.type == "cpu" and x.dim() == 4
                and x.shape[-2] * x.shape[-1] <= SMALL_MAP
                and torch.is_grad_enabled() and self.weight.requires_grad
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and self.kernel_size == (k, k) and k % 2 == 1
                and self.padding == (k // 2, k // 2) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._matmul_backward(x):
            return super().forward(x)
        bf16 = torch.bfloat16  # what autocast would cast the convolution's operands to
        bias = None if self.bias is None else self.bias.to(bf16)
        return _MatmulWeightGrad.apply(x.to(bf16), self.weight.to(bf16), bias,
                                       self.padding[0])


def pool_then_relu(pool: nn.MaxPool2d, relu: nn.Module) -> list[nn.Module]:
    """[pool, relu] for the layers "relu, then pool": the same numbers, forward and backward.

    Max-pooling commutes with the ReLU before it: max_i relu(a_i) = relu(max_i a_i), and both
    orders send a window's gradient to its first maximum (or nowhere, when that maximum is
    <= 0). Pooling first lets the ReLU read and write a quarter of the map, forward and
    backward: 3.5 % of a bf16 vgg16 training step (docs/results-archive.md). Neither layer has
    parameters, so the state_dict keys (the convolutions' and batch norms' indices) stay
    torchvision's.
    """
    if not isinstance(relu, nn.ReLU):
        raise ValueError(f"expected the ReLU that ends a block, got {relu}")
    return [pool, relu]
