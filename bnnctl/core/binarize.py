"""Binarizers: small functions with their straight-through estimators (STE).

Everything in bnnctl that turns a real number into +1/-1 goes through this module, so the
paper's conventions hold everywhere:

* sign(0) = +1 (the authors' Theano code rounds hard_sigmoid(0) = 0.5 up). ``torch.sign``
  maps 0 to 0 and must never be used. -0.0 also maps to +1, since -0.0 >= 0.
* The STE passes the gradient through where |x| <= 1 and cancels it elsewhere
  (the gradient of hard tanh), Eq. (4) of the paper.
"""
from __future__ import annotations

import math

import torch


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (including 0 and -0.0), -1 where x < 0; same dtype as x. No gradient.

    A NaN follows its sign bit here, whereas kernels.pack (bit = x >= 0) maps it to -1; NaNs only
    appear in a diverged run, which the training loop stops.
    """
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        # x + 0.0 turns -0.0 into +0.0 (IEEE round-to-nearest), so copysign gives +1 for both
        # zeros; in eager mode on the CPU this is 4x faster than torch.where on the MLP's 4096x4096
        # weights. A compiler may fold the + 0.0 away, and on a GPU torch.where is one fused pass.
        return torch.ones_like(x).copysign_(x + 0.0)
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """clip((x + 1) / 2, 0, 1): the probability of +1 in stochastic binarization."""
    return ((x + 1) / 2).clamp(0, 1)


def stochastic_sign(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """+1 with probability hard_sigmoid(x), else -1. No gradient."""
    u = torch.rand(x.shape, device=x.device, dtype=torch.float32, generator=generator)
    return torch.where(u < hard_sigmoid(x.float()), 1.0, -1.0).to(x.dtype)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stochastic: bool):
        ctx.save_for_backward(x)
        return stochastic_sign(x) if stochastic else sign_pm1(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * (x.abs() <= 1).to(grad_out.dtype), None


def binarize_ste(x: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
    """Binarize to +1/-1 in the forward pass; gradient 1_{|x|<=1} in the backward pass."""
    return _SignSTE.apply(x, stochastic)


class _WeightSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, stochastic: bool):
        return stochastic_sign(w) if stochastic else sign_pm1(w)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


def binarize_weight(w: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
    """Binarize latent weights; the gradient passes straight through to them.

    This is binarize_ste without the mask, as in the authors' code: latent weights are clipped to
    [-1, 1] after every step, where 1_{|w|<=1} is 1 everywhere, so the mask would only cost time.
    """
    return _WeightSTE.apply(w, stochastic)


def ap2(x: torch.Tensor) -> torch.Tensor:
    """Approximate power of two, AP2(x) = sign(x) * 2^round(log2|x|); AP2(0) = 0.

    The shift-based BatchNorm and AdaMax of the paper (Algorithms 3 and 4) replace
    multiplications by this so that they become bit shifts. Rounded exactly: log2 is taken in
    float64, where its error (< 2^-45) is far below the distance (> 2^-27) between the log2 of any
    float32 and the nearest tie k + 1/2; in float32 some |x| within an ulp of 2^k * sqrt(2) round
    the wrong way, and differently on other CPUs and libraries.
    """
    magnitude = torch.exp2(torch.round(torch.log2(x.abs().double()))).to(x.dtype)
    return torch.copysign(magnitude, x)


def pow2_round(x: float) -> float:
    """AP2 of a positive Python number: 2^round(log2 x)."""
    return 2.0 ** round(math.log2(x))
