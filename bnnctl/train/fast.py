"""The fast path's switches: what ``--fast`` turns on, and the helpers behind some switches.

The ``fast`` section of a recipe only removes overhead around the paper's step (batch,
schedule, binarization and clipping stay); see the README's "Fast training" section.
"""
from __future__ import annotations

import torch

from ..data import Splits

# torch.compile modes that replay the compiled graphs as CUDA graphs; refused on CUDA until
# tests/test_fast_path.py::test_cuda_compiled_training_equals_eager passes for them on a GPU.
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def _already_transformed(x: torch.Tensor) -> torch.Tensor:
    return x


def pretransformed(splits: Splits, chunk: int) -> Splits:
    """``splits`` preprocessed once, ``chunk`` images at a time, where they are; the transform becomes the identity.

    Every transform works image by image, so this feeds the network the same inputs as
    transforming each batch, without redoing it every epoch (a 3072x3072 matmul per batch for ZCA).
    """
    def apply(x: torch.Tensor) -> torch.Tensor:
        parts = [splits.transform(x[i:i + chunk]) for i in range(0, len(x), chunk)]
        return torch.cat(parts) if parts else splits.transform(x)

    return Splits(apply(splits.x_train), splits.y_train, apply(splits.x_valid), splits.y_valid,
                  apply(splits.x_test), splits.y_test, splits.num_classes, splits.dataset, splits.variant,
                  _already_transformed)


def fused_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same Adam (groups, LR scales, hyper-parameters) with its fused kernel: one pass per tensor.

    Other optimizers (shift-based AdaMax) are returned as they are.
    """
    if type(optimizer) is not torch.optim.Adam or optimizer.defaults.get("fused"):
        return optimizer
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    return torch.optim.Adam(groups, **{**optimizer.defaults, "fused": True, "foreach": False})
