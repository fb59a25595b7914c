"""A float torch model rebuilt from an export: its +/-1 weights and folded thresholds in float arithmetic.

For ``bnnctl eval --engine float`` on a ``.bnnx`` file, and for timing torch against the packed engine
when only the export is at hand.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..errors import UserError
from .exported import ExportedModel

class ThresholdSign(nn.Module):
    """+1 where direction * y >= direction * threshold, else -1, in y's dtype (so the model runs in bfloat16
    too): a folded BN + sign, in float.

    Compared in float64, where the float32 pre-activation, the float32 first-layer threshold and the
    integer thresholds are all exact: no float32 rounding of an integer threshold past 2^24."""

    def __init__(self, direction: torch.Tensor, threshold: torch.Tensor):
        super().__init__()
        self.register_buffer("direction", direction.to(torch.float64))
        self.register_buffer("threshold", direction.to(torch.float64) * threshold.to(torch.float64))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y.to(torch.float64) * self.direction >= self.threshold, 1.0, -1.0).to(y.dtype)


class OutputAffine(nn.Module):
    """logits = scale * y + shift, the output layer's folded BN (float64, like the engine's logits)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.to(torch.float64))
        self.register_buffer("shift", shift.to(torch.float64))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(torch.float64) * self.scale + self.shift


# A float32 sum of +/-1 products is exact while it stays below 2^24 in size.
FLOAT_EXACT_FAN_IN = 2 ** 24


def float_model_from_export(exported: ExportedModel) -> nn.Sequential:
    """A float torch MLP with the export's +/-1 weights and folded thresholds: the same fp32 products
    as the trained float model (exact integers on the hidden layers), for ``bnnctl eval --engine float``
    and for timing when only the export is at hand."""
    if any(layer.kind != "dense" for layer in exported.layers):
        raise UserError("a float model can be rebuilt from the export of an MLP only.")
    wide = [layer.fan_in for layer in exported.layers[1:] if layer.fan_in >= FLOAT_EXACT_FAN_IN]
    if wide:
        raise UserError(f"the float model rebuilt from the export sums {wide[0]} +/-1 products per unit, past the "
                        f"{FLOAT_EXACT_FAN_IN} float32 sums exactly; use the packed engine.")
    layers: list[nn.Module] = [nn.Flatten()]
    for layer in exported.layers:
        linear = nn.Linear(layer.fan_in, layer.out_features, bias=False)
        linear.weight.data = kernels.unpack(layer.weight_bits, layer.fan_in)
        t = layer.tensors
        if layer.role == "output":
            layers += [linear, OutputAffine(t["scale"], t["shift"])]
        else:
            threshold = t["float_threshold"] if "float_threshold" in t else t["threshold"]
            layers += [linear, ThresholdSign(t["direction"], threshold)]
    return nn.Sequential(*layers).eval()
