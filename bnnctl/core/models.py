"""The paper's models, built from a recipe's ``model`` section (``bnnctl.recipe.ModelConfig``, read by attribute).

Every model is one flat ``nn.Sequential`` in the order the authors' code uses, so export and
the bit-packed engine can walk it layer by layer:

* MLP:     Flatten, [Dropout], then per hidden layer BinaryLinear, BN, Sign, [Dropout];
           output BinaryLinear, BN.
* ConvNet: per entry of ``conv`` a BinaryConv2d, a MaxPool2d where the next entry is "M"
           (pooling sits between a conv and its BN, as in the Theano code), BN, Sign;
           then Flatten and the ``fc`` layers as in the MLP, output BinaryLinear, BN.

The first layer sees real (or 8-bit) inputs; every later one sees +1/-1 activations.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .layers import BinaryConv2d, BinaryLinear, SignActivation
from .norms import NORMS


def _norm(cfg: Any, dims: int, features: int, kind: str | None = None) -> nn.Module:
    return NORMS[kind or cfg.norm](dims, features, cfg.bn_eps, cfg.bn_momentum)


def _dense_stack(cfg: Any, in_features: int, num_classes: int, hidden: list[int],
                 dropout_hidden: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    widths = [in_features, *hidden]
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [BinaryLinear(fan_in, fan_out, bias=cfg.bias, stochastic=cfg.stochastic_weights),
                   _norm(cfg, 1, fan_out),
                   SignActivation(cfg.stochastic_activations)]
        if dropout_hidden > 0:
            layers.append(nn.Dropout(dropout_hidden))
    layers += [BinaryLinear(widths[-1], num_classes, bias=cfg.bias, stochastic=cfg.stochastic_weights),
               _norm(cfg, 1, num_classes, cfg.output_norm)]
    return layers


def build_mlp(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    in_features = 1
    for d in input_shape:
        in_features *= d
    layers: list[nn.Module] = [nn.Flatten()]
    if cfg.dropout_in > 0:
        layers.append(nn.Dropout(cfg.dropout_in))
    layers += _dense_stack(cfg, in_features, num_classes, cfg.hidden, cfg.dropout_hidden)
    return nn.Sequential(*layers)


def build_convnet(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    channels, height, width = input_shape
    k = cfg.kernel_size
    layers: list[nn.Module] = []
    spec = list(cfg.conv)
    for i, entry in enumerate(spec):
        if entry == "M":
            continue
        layers.append(BinaryConv2d(channels, entry, k, padding=k // 2, bias=cfg.bias,
                                   stochastic=cfg.stochastic_weights))
        channels = entry
        if i + 1 < len(spec) and spec[i + 1] == "M":
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        layers += [_norm(cfg, 2, channels), SignActivation(cfg.stochastic_activations)]
    layers.append(nn.Flatten())
    layers += _dense_stack(cfg, channels * height * width, num_classes, cfg.fc, cfg.dropout_hidden)
    return nn.Sequential(*layers)


ARCHITECTURES = {"mlp": build_mlp, "convnet": build_convnet}


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Build the recipe's model for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs."""
    return ARCHITECTURES[cfg.arch](cfg, tuple(input_shape), num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

