"""The training losses a recipe's ``train.loss`` chooses from (``LOSSES``)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def squared_hinge(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean(max(0, 1 - t * y)^2) over batch and classes, t = +1 for the label and -1 elsewhere."""
    targets = F.one_hot(labels, output.shape[1]).to(output.dtype) * 2 - 1
    return (1 - targets * output).clamp_min(0).square().mean()


def cross_entropy(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, labels)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "squared_hinge": squared_hinge, "cross_entropy": cross_entropy,
}
