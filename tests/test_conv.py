"""The convolution whose bf16 weight gradient on small maps is one matmul, and max-pooling before
the ReLU (cnnrnn.models.conv)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnrnn.models.conv import SMALL_MAP, Conv2d, pool_then_relu, weight_grad


@pytest.mark.parametrize(("k", "h", "w"), [(3, 4, 4), (3, 2, 3), (5, 3, 3), (3, 1, 1)])
def test_weight_grad_is_the_convolutions_weight_gradient(k, h, w):
    torch.manual_seed(0)
    x = torch.randn(3, 4, h, w, dtype=torch.float64)
    g = torch.randn(3, 6, h, w, dtype=torch.float64)
    want = torch.nn.grad.conv2d_weight(x, (6, 4, k, k), g, padding=k // 2)
    torch.testing.assert_close(weight_grad(x, g, k, k // 2), want)


def pair(c_in: int, c_out: int) -> tuple[Conv2d, nn.Conv2d]:
    ours = Conv2d(c_in, c_out, 3, padding=1)
    theirs = nn.Conv2d(c_in, c_out, 3, padding=1)
    theirs.load_state_dict(ours.state_dict())  # the same parameters under the same names
    return ours, theirs


def forward_backward(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, bf16: bool):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    (y.float() * g).sum().backward()
    return y, x.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("hw", [(4, 4), (2, 2), (2, 5)])
def test_small_maps_in_bf16_take_the_matmul_and_agree_with_nn_conv2d(hw):
    torch.manual_seed(1)
    ours, theirs = pair(64, 32)
    x = torch.randn(16, 64, *hw).contiguous(memory_format=torch.channels_last)
    g = torch.randn(16, 32, *hw)
    y, *grads = forward_backward(ours, x, g, bf16=True)
    y_ref, *grads_ref = forward_backward(theirs, x, g, bf16=True)
    assert type(y.grad_fn).__name__ == "_MatmulWeightGradBackward"
    assert torch.equal(y, y_ref)  # the forward pass is oneDNN's either way
    torch.testing.assert_close(grads[0], grads_ref[0], rtol=0, atol=0)  # input gradient too
    for ours_grad, ref in zip(grads[1:], grads_ref[1:], strict=True):  # bf16 sums, other order
        assert ours_grad.dtype == torch.float32  # the fp32 parameter gets an fp32 gradient
        assert (ours_grad - ref).abs().max() <= 1e-2 * ref.abs().max()


@pytest.mark.parametrize(("hw", "bf16"), [((5, 4), True), ((4, 4), False)])
def test_large_maps_and_fp32_stay_nn_conv2d(hw, bf16):
    assert hw[0] * hw[1] > SMALL_MAP or not bf16
    torch.manual_seed(2)
    ours, theirs = pair(8, 8)
    x = torch.randn(4, 8, *hw)
    g = torch.randn(4, 8, *hw)
    got, want = forward_backward(ours, x, g, bf16), forward_backward(theirs, x, g, bf16)
    assert type(got[0].grad_fn) is type(want[0].grad_fn)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_no_grad_and_strided_convolutions_stay_nn_conv2d():
    conv = Conv2d(4, 4, 3, padding=1, stride=2)
    x = torch.randn(2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"
        with torch.no_grad():
            assert Conv2d(4, 4, 3, padding=1)(x).grad_fn is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pooling_before_the_relu_gives_the_same_numbers_forward_and_backward(dtype, ceil_mode):
    """pool(relu(z)) and relu(pool(z)) are equal bit for bit, and so are their gradients:
    windows whose maximum is <= 0, ties and the ceil_mode edge included."""
    torch.manual_seed(0)
    z = torch.randn(4, 8, 7, 7).round().to(dtype)  # small integers: many ties, many zeros
    z = z.contiguous(memory_format=torch.channels_last)
    z[0, 0, :2, :2] = -1.0  # a window with nothing above 0
    g = torch.randn(4, 8, 4, 4) if ceil_mode else torch.randn(4, 8, 3, 3)
    g = g.to(dtype)
    results = []
    for layers in ([nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=ceil_mode)],
                   pool_then_relu(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode), nn.ReLU())):
        x = z.clone().requires_grad_()
        y = nn.Sequential(*layers)(x)
        y.backward(g)
        results.append((y.detach(), x.grad))
    (y_a, gx_a), (y_b, gx_b) = results
    assert torch.equal(y_a, y_b)
    assert torch.equal(gx_a, gx_b)
    assert (gx_a != 0).any() and (gx_a == 0).any()  # some gradient is routed, some is stopped
    with pytest.raises(ValueError, match="ReLU"):
        pool_then_relu(nn.MaxPool2d(2), nn.Identity())
