"""sign(W) kept between steps for the fused CPU step, and the int8 product it allows (``fast.int8_forward``).

A binary layer binarizes its latent weight W in every forward. The fused step writes the new signs
in the same pass that updates W, into a ``BinaryWeightCache`` that the layer reads through its
``weight_source`` hook (core/layers.py); a layer whose input is exactly a small integer multiplies
in int8 with int32 sums from the cache's int8 copy, which gives the float32 product bit for bit.
"""
from __future__ import annotations

import torch

from ..core.binarize import sign_pm1
from ..core.layers import BinaryLayer


class BinaryWeightCache:
    """sign(W) of a layer's latent weight W, kept across steps (float32, and int8 where asked for).

    Whoever updates W can write the new signs straight into ``binary`` (the fused training step
    does, in the same pass) and call ``mark_current``; otherwise the cache notices that W changed
    (``Tensor._version`` moves with every in-place change: an optimizer step, load_state_dict,
    clipping) and rebinarizes before the next forward.
    """

    def __init__(self, weight: torch.Tensor, int8: bool):
        self.weight = weight
        self.binary = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        self.binary_i8 = torch.empty(weight.shape, dtype=torch.int8, device=weight.device) if int8 else None
        self.version = -1

    @torch.no_grad()
    def refresh(self) -> None:
        if self.version == self.weight._version:
            return
        self.binary.copy_(sign_pm1(self.weight))
        if self.binary_i8 is not None:
            self.binary_i8.copy_(self.binary)
        self.version = self.weight._version

    def mark_current(self) -> None:
        """W and the buffers were just rewritten together (by an op autograd does not see)."""
        torch.autograd.graph.increment_version(self.weight)
        self.version = self.weight._version

    # The layer's weight_source hook (core.layers.WeightSource).

    def binary_weight(self) -> torch.Tensor:
        self.refresh()
        return _CachedSign.apply(self.weight, self.binary)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """x @ sign(W).T + bias in int8 for a 2-D float32 x, with an int8 cache; else None (the float product).

        Whoever asked for int8 knows x holds small integers (``fused_step.integral_input_scale``)."""
        if self.binary_i8 is None or x.dim() != 2 or x.dtype != torch.float32:
            return None
        self.refresh()
        return _Int8Linear.apply(x, self.weight, bias, self.binary, self.binary_i8)


class _CachedSign(torch.autograd.Function):
    """Forward: the cached sign(W); backward: the gradient straight through to W, as binarize_weight."""

    @staticmethod
    def forward(ctx, weight, binary):
        return binary.view_as(binary)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Int8Linear(torch.autograd.Function):
    """x @ sign(W).T + b for an integral x: int8 products with int32 sums, so exact; float32 gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, binary, binary_i8):
        out = torch._int_mm(x.to(torch.int8), binary_i8.t()).to(x.dtype)
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(x, binary)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, binary = ctx.saved_tensors
        grad_x = grad.mm(binary) if ctx.needs_input_grad[0] else None
        # g.T @ x, as autograd's backward of F.linear computes it, so the float32 sums round alike
        grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def attach_weight_cache(layer: BinaryLayer, int8: bool = False) -> BinaryWeightCache:
    """Keep the layer's sign(W) between steps (deterministic weights only); ``int8``: also as int8, for a
    linear layer whose inputs are known to be small integers (``BinaryWeightCache.linear``)."""
    if layer.stochastic:
        raise ValueError("stochastic binary weights are drawn anew every forward; they cannot be cached")
    cache = BinaryWeightCache(layer.weight, int8)
    layer.weight_source = cache
    return cache
