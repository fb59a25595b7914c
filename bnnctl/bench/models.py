"""The float models the model benches time beside the packed engine, and the random-weight stand-ins.

A bench without a trained run times random weights; ``calibrate_norms`` then sets every BatchNorm's
statistics from one batch of random images, as training would leave them, so that each unit's threshold
lies among its pre-activations. At BN's initial statistics every first-layer threshold sits at exactly 0,
where the engine's exact integer pre-activation and the float model's rounded one can fall on opposite
sides, and the variants would disagree about nothing a trained model shows.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.binarize import sign_pm1
from ..core.layers import BinaryConv2d, BinaryLinear
from ..data import scale_to_pm1

SEED = 0
CALIBRATION_IMAGES = 32


@torch.no_grad()
def calibrate_norms(model: nn.Module, input_shape: tuple[int, ...], seed: int = SEED,
                    images: int = CALIBRATION_IMAGES) -> None:
    """Set every BatchNorm's running statistics to those of one batch of random 8-bit images."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, *input_shape), generator=g, dtype=torch.uint8)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    try:
        model(scale_to_pm1(x))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def frozen_float_model(model: nn.Sequential) -> nn.Sequential:
    """The float model with its binary layers as plain nn.Conv2d / nn.Linear holding sign(W): the same
    torch calls on the same tensors (so the same outputs) without binarizing the weights on every forward."""
    layers: list[nn.Module] = []
    for m in model:
        if isinstance(m, BinaryConv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                              padding_mode=m.padding_mode)
        elif isinstance(m, BinaryLinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        else:
            layers.append(copy.deepcopy(m))
            continue
        with torch.no_grad():
            plain.weight.copy_(sign_pm1(m.weight.detach()))
            if m.bias is not None:
                plain.bias.copy_(m.bias.detach())
        layers.append(plain)
    return nn.Sequential(*layers).eval().requires_grad_(False)


class Int8PM1Linear(nn.Module):
    """A linear layer whose inputs and weights are +-1, on torch's int8 matmul (``torch._int_mm``: int8
    products, int32 sums, so exact): what a user of stock torch would pick for the binary layers on a CPU
    with VNNI or AMX int8."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().to(torch.int8).t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch._int_mm(x.to(torch.int8), self.weight_t).to(torch.float32)
        return out if self.bias is None else out + self.bias


def int8_binary_layers(frozen: nn.Sequential) -> nn.Sequential:
    """The frozen model with every linear layer after the first on int8 (their inputs are +-1 signs; the
    first sees real pixels and stays fp32). ``torch._int_mm`` wants output widths that are multiples of 8,
    so a narrower layer (the 10 classes) stays fp32 too: it is a sliver of the work."""
    linears = [i for i, m in enumerate(frozen) if isinstance(m, nn.Linear)]
    layers = list(frozen)
    for i in linears[1:]:
        if layers[i].out_features % 8 == 0 and layers[i].in_features % 8 == 0:
            layers[i] = Int8PM1Linear(layers[i])
    return nn.Sequential(*layers).eval()


__all__ = ["SEED", "CALIBRATION_IMAGES", "calibrate_norms", "frozen_float_model", "Int8PM1Linear",
           "int8_binary_layers"]
