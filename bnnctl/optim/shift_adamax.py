"""Shift-based AdaMax (Algorithm 4 of the paper), as the authors' Torch7 code has it.

It follows ``adaMax_binary_clip_shift.lua`` (itayhubara/BinaryNet), including where the code
differs from the paper's pseudo-code. Per step t (all tensors elementwise):
    m = b1 * m + (1 - b1) * g
    v = AP2(max(b2 * v, |g|)) + eps           # Torch7 keeps the AP2'd v (with eps) as its state
    step = AP2(lr / (1 - b1^t))               # the bias-corrected step size is a power of two
    theta = theta - step * lr_scale * m / v
where lr_scale is the layer's Glorot scale (rounded to a power of two in the Torch7 CIFAR-10
and SVHN models: ``optimizer.lr_scale_pow2``).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..core.binarize import ap2, pow2_round
from ..core.norms import NORM_WEIGHT, PARAM_ROLE

class ShiftAdaMax(torch.optim.Optimizer):
    """Shift-based AdaMax (see the module docstring).

    Each parameter group carries ``lr`` (the schedule's LR times ``lr_scale``, as ``optim.set_lr``
    sets it), ``lr_scale`` and ``clip`` (clamp the group's parameters to [-clip, clip] after the
    step, as the Torch7 optimizer does for the entries of its clip vector; None: no clipping).
    The power-of-two rounding applies to the schedule's LR over the bias correction, before the
    layer's scale, as in the Torch7 code.
    """

    def __init__(self, params, lr: float = 2.0 ** -6, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 2.0 ** -27):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, lr_scale=1.0, clip=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1 = group["betas"][0]
            base_lr = group["lr"] / group["lr_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step_size = pow2_round(base_lr / (1 - beta1 ** state["step"])) * group["lr_scale"]
                self.update(p, state, group, step_size)
        return loss

    def update(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], step_size: float) -> None:
        """One parameter's update, given its (already counted) state and power-of-two step size."""
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"], state["exp_inf"]
        m.lerp_(p.grad, 1 - beta1)
        torch.maximum(v.mul_(beta2), p.grad.abs(), out=v)
        v.copy_(ap2(v)).add_(group["eps"])
        p.addcdiv_(m, v, value=-step_size)
        if group["clip"] is not None:
            p.clamp_(-group["clip"], group["clip"])


def make_shift_adamax(groups: list[dict[str, Any]], cfg: Any, device: torch.device) -> ShiftAdaMax:
    """Build ShiftAdaMax from ``optim.param_groups``'s groups and the recipe's optimizer section.

    ``lr_scale_pow2``: round each binary layer's Glorot scale to a power of two (Torch7 CIFAR-10,
    SVHN). ``norm_lr_scale``: each BN gamma (of a shift_bn / torch7_bn layer) learns at
    LR * 1/sqrt(1.5 / features) (Torch7 MNIST). ``clip_all``: clamp every parameter, not only the
    binary weights, to [-1, 1] after each step (Torch7 CIFAR-10).
    """
    out: list[dict[str, Any]] = []
    for group in groups:
        scale = group["lr_scale"]
        if cfg.lr_scale_pow2 and scale != 1.0:
            scale = pow2_round(scale)
        params = group["params"]
        if cfg.norm_lr_scale:
            norm_weights = [p for p in params if getattr(p, PARAM_ROLE, None) == NORM_WEIGHT]
            for p in norm_weights:
                out.append({"params": [p], "lr_scale": 1.0 / math.sqrt(1.5 / p.numel())})
            params = [p for p in params if getattr(p, PARAM_ROLE, None) != NORM_WEIGHT]
        if params:
            out.append({**group, "params": params, "lr_scale": scale})
    for group in out:
        group["clip"] = 1.0 if cfg.clip_all else None
    return ShiftAdaMax(out, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


