"""sign(W) kept between steps for the fused CPU step, and the exact integer products it allows
(``fast.int8_forward``).

A binary layer binarizes its latent weight W in every forward. The fused step writes the new signs
in the same pass that updates W, into a ``BinaryWeightCache`` that the layer reads through its
``weight_source`` hook (core/layers.py). A layer whose input is exactly a small integer can take its
forward product in integers, which gives the float32 product bit for bit (every partial sum is an
integer below 2^24, so float32 adds it without rounding):

* ``int8``: int8 products with int32 sums from the cache's int8 copy (``torch._int_mm``);
* ``xnor``: for inputs of exactly +1/-1, the signs of the input and of W packed 64 to a word and
  multiplied by XNOR and popcount (``kernels.xnor_gemm``): 1 bit per weight read instead of 32.

The backward stays in float32 either way: the gradients are real numbers.
"""
from __future__ import annotations

import torch

from .. import kernels
from ..core.binarize import sign_pm1
from ..core.layers import BinaryLayer

# The exact integer forward products a cache can give (see the module docstring).
INTEGER_PRODUCTS = ("int8", "xnor")


class BinaryWeightCache:
    """sign(W) of a layer's latent weight W, kept across steps: float32, and the form its integer
    product (``product``: None, "int8" or "xnor") multiplies with.

    Whoever updates W can write the new signs straight into ``binary`` (the fused training step
    does, in the same pass) and call ``mark_current``; otherwise the cache notices that W changed
    (``Tensor._version`` moves with every in-place change: an optimizer step, load_state_dict,
    clipping) and rebinarizes before the next forward.
    """

    def __init__(self, weight: torch.Tensor, product: str | None = None):
        if product is not None and product not in INTEGER_PRODUCTS:
            raise ValueError(f"unknown integer product {product!r}; choose one of {', '.join(INTEGER_PRODUCTS)}")
        self.weight = weight
        self.product = product
        self.binary = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        self.binary_i8 = torch.empty(weight.shape, dtype=torch.int8, device=weight.device) if product == "int8" else None
        self.version = -1
        # The packed signs for "xnor", made from ``binary`` when first needed after each change of W.
        self.packed: torch.Tensor | None = None
        self.packed_version = -1

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

    def packed_weight(self) -> torch.Tensor:
        """sign(W) packed 64 to a word, (out_features, words), current with W."""
        self.refresh()
        if self.packed is None or self.packed_version != self.version:
            self.packed = kernels.pack(self.binary)
            self.packed_version = self.version
        return self.packed

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """x @ sign(W).T + bias by the cache's integer product for a 2-D float32 x; else None (the float product).

        Whoever asked for an integer product knows x holds small integers, and for "xnor" exactly +1/-1
        (``fused_step.integral_input_scale``)."""
        if self.product is None or x.dim() != 2 or x.dtype != torch.float32:
            return None
        self.refresh()
        return _ExactIntegerLinear.apply(x, self.weight, bias, self.binary, self.integer_product)

    def integer_product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ sign(W).T, exactly, as float32, by the cache's integer product."""
        if self.product == "xnor":
            return kernels.xnor_gemm(kernels.pack(x), self.packed_weight(), x.shape[1]).to(x.dtype)
        return torch._int_mm(x.to(torch.int8), self.binary_i8.t()).to(x.dtype)


class _CachedSign(torch.autograd.Function):
    """Forward: the cached sign(W); backward: the gradient straight through to W, as binarize_weight."""

    @staticmethod
    def forward(ctx, weight, binary):
        return binary.view_as(binary)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ExactIntegerLinear(torch.autograd.Function):
    """x @ sign(W).T + b for an integral x, the product computed exactly in integers; float32 gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, binary, integer_product):
        out = integer_product(x)
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


def attach_weight_cache(layer: BinaryLayer, product: str | None = None) -> BinaryWeightCache:
    """Keep the layer's sign(W) between steps (deterministic weights only); ``product``: also in the form an
    integer product needs ("int8" or "xnor"), for a linear layer whose inputs are known to be small integers
    (+1/-1 for "xnor"; see ``BinaryWeightCache.linear``)."""
    if layer.stochastic:
        raise ValueError("stochastic binary weights are drawn anew every forward; they cannot be cached")
    cache = BinaryWeightCache(layer.weight, product)
    layer.weight_source = cache
    return cache
