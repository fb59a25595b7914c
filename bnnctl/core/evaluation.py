"""Evaluation of a model on a split: summed loss and error count, kept on the device."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


@torch.no_grad()
def eval_sums(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, transform, loss_fn,
              batch_size: int, device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext,
              on_batch: Callable[[int], Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, number of errors) of the model in eval mode on (x, y), left on the device; ``on_batch``
    is told each batch's number of images once it is done."""
    was_training = model.training
    model.eval()
    errors = torch.zeros((), device=device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=device)
    for start in range(0, len(x), batch_size):
        xb = transform(x[start:start + batch_size].to(device, non_blocking=True))
        yb = y[start:start + batch_size].to(device, non_blocking=True)
        with autocast():
            out = model(xb)
        out = out.float()
        errors += (out.argmax(1) != yb).sum()
        loss_sum += loss_fn(out, yb) * len(yb)
        if on_batch is not None:
            on_batch(len(yb))
    model.train(was_training)
    return loss_sum, errors


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, transform, loss_fn,
             batch_size: int, device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext,
             on_batch: Callable[[int], Any] | None = None) -> tuple[float, float]:
    """(mean loss, error in %) of the model in eval mode on (x, y); ``on_batch`` as for ``eval_sums``."""
    loss_sum, errors = eval_sums(model, x, y, transform, loss_fn, batch_size, device, autocast, on_batch)
    n = max(len(x), 1)
    return loss_sum.item() / n, 100.0 * errors.item() / n
