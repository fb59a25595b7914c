"""The whole exported network in one native call per batch: the native plan (``cuda/cpu/xnor_plan.h``).

    plan = NativePlan(exported)              # or PackedEngine(exported, variant="plan")
    logits = plan.logits(images)             # float64 (N, classes): PackedEngine(exported).logits(images), to the bit

The plan is built once from the export's bytes (``bnnx.export_bytes``), read and checked by the same native
reader as the C library's: every layer's weights in the panel layout of the CPU's XNOR kernels (for the
instruction set in use when it is built: ``kernels.use_cpu_isa`` picks one), its integer thresholds, border
corrections and output affine, and the buffers between layers. A call runs every layer in C++ on torch's threads,
with no Python between them: dense layers on up to 8 rows on the few-row kernels, their threshold and the packing
of the next layer's bits done on the kernel's outputs; more rows on the many-row GEMM; convolutions a few output
rows at a time, threshold and max-pool packed straight into the next layer's bits. The same code builds without
Python as a C library and a command-line program (``cuda/CMakeLists.txt``, ``cuda/c/bnnctl.h``).

The first layer runs as "bitplane" (XNOR on the 8 bit planes of 8-bit images, for models trained on 2x/255 - 1:
the integers of PackedEngine's bitplane, integer and int8 first layers) or "float" (the float baseline kernel on the
model's float inputs, as PackedEngine's float first layer); "auto" takes bitplane where the model allows it.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch

from .. import kernels
from .bnnx import DamagedExport, export_bytes
from .engine_inputs import EngineError, own_transform
from .exported import ExportedModel, ExportError

PLAN_FIRST_LAYERS = ("bitplane", "float")


def _refusal_error(refused: kernels.PlanRefused) -> Exception:
    """The Python error of a native refusal: what ``bnnx.read_export`` or the engine raises for the same cause."""
    if refused.reason == "damaged":
        return DamagedExport(str(refused))
    if refused.reason == "cannot_run":
        return EngineError(str(refused))
    return ExportError(str(refused))


def native_plan_handle(data: bytes, name: str, first_layer: str = "auto") -> int:
    """A native plan of a .bnnx file's bytes (``kernels.create_plan``), its refusals raised as the Python reader
    and engine raise them: ExportError, DamagedExport (one sentence each, the same as ``bnnx.read_export``'s) or
    EngineError."""
    try:
        return kernels.create_plan(data, name, first_layer)
    except kernels.PlanRefused as refused:
        raise _refusal_error(refused) from None


class NativePlan:
    """An exported model as one native plan on the CPU.

    first_layer: "auto" (bitplane for models of 8-bit images, else float), "bitplane" or "float". The plan keeps
    the instruction set in use when it is built; calls on one plan take turns.
    """

    def __init__(self, exported: ExportedModel, first_layer: str = "auto"):
        if first_layer != "auto" and first_layer not in PLAN_FIRST_LAYERS:
            raise EngineError(f"the native plan runs the first layer as {' or '.join(PLAN_FIRST_LAYERS)} (or auto), "
                              f"not {first_layer!r}.")
        self.exported = exported
        self._handle = native_plan_handle(export_bytes(exported), "the exported model", first_layer)
        weakref.finalize(self, kernels.release_plan, self._handle)
        self.isa, self.first_layer, self.input_size, _ = kernels.plan_info(self._handle)
        # A float first layer whose own transform is its export's per-pixel table maps pixels natively through it
        # (the same table, so the same floats) instead of by torch ops on every call.
        self._native_pixels = (self.first_layer == "float" and exported.preprocessing is not None
                               and own_transform(exported) is exported.preprocessing.transform
                               and kernels.plan_takes_pixels(self._handle))

    def _inputs(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """What the native plan reads: the 8-bit images themselves (bitplane), or the model's float inputs."""
        x = torch.as_tensor(x).detach()
        if x.device.type != "cpu":
            raise EngineError(f"the native plan runs on the CPU; move the inputs there (they are on {x.device}).")
        if self.first_layer == "bitplane":
            if x.dtype != torch.uint8:
                raise EngineError(f"the bitplane first layer takes 8-bit images, got "
                                  f"{str(x.dtype).replace('torch.', '')}.")
        elif not (transform is None and self._native_pixels and x.dtype == torch.uint8):
            x = (own_transform(self.exported) if transform is None else transform)(x).float()
        if x.dim() == 0 or x.numel() != x.shape[0] * self.input_size:
            raise EngineError(f"the model takes inputs of {self.input_size} values each, got a tensor of shape "
                              f"{list(x.shape)}.")
        return x.contiguous()

    def logits(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """float64 logits of a batch of raw inputs. ``transform`` maps them to the float model's inputs, for the
        float first layer (the model's own preprocessing, ``data.input_transform``; default: 2x/255 - 1, for 8-bit
        models only)."""
        return kernels.plan_logits(self._handle, self._inputs(x, transform))

    def outputs(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
        """Each binarizing layer's packed output ((N, words), or (N, H, W, words) channels-last for a convolution),
        then the logits: what PackedEngine's layers give, one by one."""
        return kernels.plan_trace(self._handle, self._inputs(x, transform))

    def predict(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                batch_size: int = 1000) -> torch.Tensor:
        """Predicted classes (int64) for raw inputs, in batches."""
        return torch.cat([self.logits(x[i:i + batch_size], transform).argmax(1)
                          for i in range(0, len(x), batch_size)])
