"""Optimizers and learning-rate schedules, chosen by a recipe.

Each binary layer's latent weights get a parameter group of their own whose learning rate is
the schedule's LR times the layer's ``lr_scale`` (the Theano code's per-layer "Glorot" scale,
applied as ``W + scale * (adam(W) - W)``, which for Adam is the same as scaling its LR). All other
parameters (biases, BN) use the schedule's LR unscaled.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..core.layers import binary_layers
from .shift_adamax import make_shift_adamax


def param_groups(model: nn.Module, use_lr_scale: bool = True, lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups: one per binary layer's latent weights, with ``lr_scale`` its Glorot scale
    (1 without ``use_lr_scale``), then one for every other parameter (``lr_scale`` 1).

    With ``lr``, each group's ``lr`` is already ``lr * lr_scale``, so the groups go straight into an optimizer,
    ``ShiftAdaMax(param_groups(model, lr=2**-6))`` or ``torch.optim.Adam(param_groups(model, lr=3e-3))``; without
    it, call ``set_lr(optimizer, lr)`` once the optimizer is built (and at every LR change)."""
    groups, seen = [], set()
    for layer in binary_layers(model):
        groups.append({"params": [layer.weight], "lr_scale": layer.lr_scale if use_lr_scale else 1.0})
        seen.add(id(layer.weight))
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0})
    if lr is not None:
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
    return groups


def make_adam(groups: list[dict[str, Any]], cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            fused=fused, foreach=None if fused else True)


# optimizer name -> factory(param groups, optimizer cfg, device); a recipe's optimizer.name chooses
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adam": make_adam, "shift_adamax": make_shift_adamax}


def build_optimizer(model: nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer a recipe's ``optimizer`` section (``bnnctl.recipe.OptimizerConfig``) names, at its LR."""
    opt = OPTIMIZERS[cfg.name](param_groups(model, cfg.glorot_lr_scale), cfg, device)
    set_lr(opt, cfg.lr)
    return opt


def lr_at(epoch: int, lr: float, schedule: Any, epochs: int) -> float:
    """Learning rate of 0-based ``epoch`` in a run of ``epochs`` epochs.

    exponential: lr * (lr_final / lr) ** (epoch / epochs), the Theano code's per-epoch decay
    LR_decay = (LR_fin / LR_start) ** (1 / num_epochs). step: lr * gamma ** (epoch // step_epochs),
    the Torch7 schedule. Both describe the recipe's whole run, so that cutting ``train.epochs``
    (a 20-epoch check of a 1000-epoch recipe) runs the same schedule compressed rather than its
    first epochs at the top LR: exponential by its definition, step by ``schedule.epochs``, the
    length its ``step_epochs`` is written for (null: decay every ``step_epochs`` whatever the length).
    """
    kind = schedule.kind
    if kind == "exponential":
        return lr * math.exp(math.log(schedule.lr_final / lr) * epoch / epochs)
    if kind == "step":
        every = schedule.step_epochs
        if schedule.epochs:
            every = every * epochs / schedule.epochs
        # the small slack keeps e.g. 19.999999 (floating-point rounding of 20) on the right side
        return lr * schedule.gamma ** math.floor(epoch / every + 1e-9)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr`` times its ``lr_scale`` (the schedule's LR of an epoch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]

