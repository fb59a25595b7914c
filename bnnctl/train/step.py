"""The training step, built in one place from the recipe, the data's shape and the device.

``build_step`` makes every part of one optimizer step: the model (seeded, in its memory format,
with synchronized BN across processes where asked), the training forward (through DDP in a run
of several processes), the loss, the evaluation forward, the optimizer (fused where the recipe's
``fast`` section asks), the clipping of the latent weights, bf16 autocast and torch.compile.
The training loop (``loop.Trainer``) only runs epochs with it.

The checks of the ``fast`` switches that hold on any device are the recipe's own
(``bnnctl.recipe.check_consistency``); the ones that depend on the device or on the number of
processes are made here.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..core.layers import BinaryLayer, binary_layers
from ..core.losses import LOSSES
from ..core.models import build_model
from ..errors import UserError
from ..allocator import reuse_freed_memory
from ..optim import build_optimizer
from ..recipe import Recipe
from . import distributed, fused_step
from .distributed import SINGLE, Ranks
from .fast import CUDA_GRAPH_COMPILE_MODES, fused_adam


@dataclass
class TrainingStep:
    """One optimizer step's parts; calling it on a batch of network inputs trains on that batch.

    ``binary_layers`` are the layers whose latent weights the step clips after each update (the
    fused optimizer clips the others itself: ``clipped_by_optimizer`` holds their weights' ids).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]  # trains; through DDP in a run of several processes
    eval_forward: Callable[[torch.Tensor], torch.Tensor]  # this rank's own copy: no gradient synchronisation
    binary_layers: list[BinaryLayer]
    foreach_clip: bool
    use_bf16: bool
    channels_last: bool
    clipped_by_optimizer: set[int] = field(default_factory=set)
    # layer index -> the exact integer product its forward takes (fused_step.choose_integer_products)
    integer_products: dict[int, str] = field(default_factory=dict)
    # eager_forward_loss, or its compiled form
    forward_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.latent_weights = [layer.weight for layer in self.binary_layers]
        self.clip_values = {layer.clip_value for layer in self.binary_layers}
        if self.forward_loss is None:
            self.forward_loss = self.eager_forward_loss

    def autocast(self):
        if self.use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_model_format(self, x: torch.Tensor) -> torch.Tensor:
        """Network inputs in the model's memory format (NHWC where the recipe asks for channels_last)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def eager_forward_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The batch's loss: forward under autocast (if bf16), loss in fp32."""
        with self.autocast():
            out = self.forward(xb)
        return self.loss_fn(out.float(), yb)

    @torch.no_grad()
    def clip_(self) -> None:
        if self.foreach_clip and self.latent_weights:
            (c,) = self.clip_values
            torch._foreach_clamp_min_(self.latent_weights, -c)
            torch._foreach_clamp_max_(self.latent_weights, c)
        else:
            for layer in self.binary_layers:
                layer.clip_()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the detached loss, still on the device.

        Nothing here waits for the device: no .item(), no host-side branching on tensor values.
        """
        loss = self.forward_loss(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.clip_()
        return loss.detach()


def check_device(recipe: Recipe, device: torch.device, ranks: Ranks = SINGLE) -> None:
    """The recipe's switches that this device or this number of processes cannot run."""
    batch_size, fast = recipe.train.batch_size, recipe.fast
    if batch_size % ranks.world_size:
        raise UserError(f"train.batch_size {batch_size} does not split evenly across {ranks.world_size} "
                        f"processes; use a multiple of {ranks.world_size}.")
    if fast.compile and device.type == "cuda" and fast.compile_mode in CUDA_GRAPH_COMPILE_MODES:
        raise UserError(f"fast.compile_mode={fast.compile_mode} replays CUDA graphs, which are not yet shown "
                        f"to train the same model as eager mode; use compile_mode default or "
                        f"max-autotune-no-cudagraphs.")
    if fast.fused_step and device.type != "cpu":
        raise UserError("fast.fused_step is a CPU path; on CUDA use fast.fused_optimizer (Adam is fused there).")


def build_step(recipe: Recipe, input_shape: tuple[int, ...], num_classes: int, device: torch.device,
               ranks: Ranks = SINGLE) -> TrainingStep:
    """The training step of ``recipe`` for inputs of ``input_shape``, on ``device``, as one of ``ranks``.

    Seeds torch with the recipe's seed first (the model's initial weights), then, in a run of
    several processes, each rank's own stream for dropout and stochastic binarization.
    """
    check_device(recipe, device, ranks)
    fast = recipe.fast
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, input_shape, num_classes)
    if fast.sync_bn and ranks.active:
        model = distributed.sync_batch_norm(model, device)
    model = model.to(device)
    channels_last = fast.channels_last and recipe.model.arch == "convnet"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fast.tf32 and device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    optimizer = build_optimizer(model, recipe.optimizer, device)
    if fast.reuse_memory and device.type == "cpu":
        reuse_freed_memory()
    clipped_by_optimizer: set[int] = set()
    integer_products: dict[int, str] = {}
    if fast.fused_step:
        optimizer, clipped_by_optimizer, integer_products = fused_step.setup_fused_step(
            model, optimizer, fast.int8_forward, recipe.train.batch_size // ranks.world_size)
    elif fast.fused_optimizer:
        optimizer = fused_adam(optimizer)
    if ranks.active:
        # Same initial weights everywhere (seeded above, and DDP broadcasts rank 0's), but each
        # rank's dropout and stochastic binarization draw their own numbers.
        torch.manual_seed(distributed.rank_seed(recipe.seed, ranks.rank))
    forward = distributed.wrap(model, ranks, device) if ranks.active else model
    layers = [layer for layer in binary_layers(model) if id(layer.weight) not in clipped_by_optimizer]
    step = TrainingStep(
        model=model, optimizer=optimizer, loss_fn=LOSSES[recipe.train.loss], forward=forward, eval_forward=model,
        binary_layers=layers, foreach_clip=fast.foreach_clip and len({layer.clip_value for layer in layers}) == 1,
        use_bf16=fast.bf16 and device.type == "cuda", channels_last=channels_last,
        clipped_by_optimizer=clipped_by_optimizer, integer_products=integer_products)
    if fast.compile:
        compile_ = functools.partial(torch.compile, mode=fast.compile_mode, dynamic=False)
        step.eval_forward = compile_(model)
        if ranks.active:  # Dynamo splits a DDP module's graph at its gradient buckets
            step.forward = compile_(forward)
        else:  # the loss joins the model's graph
            step.forward_loss = compile_(step.eager_forward_loss)
    return step
