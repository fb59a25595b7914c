"""An exported model in memory: its binary layers, each with the BN and sign after it folded in.

What a binary network needs at inference time is much less than its checkpoint:

* every binary layer's weights as signs, one bit each (packed like ``kernels.pack``);
* every hidden layer's BatchNorm and sign folded into one threshold per unit: the unit fires (+1)
  when its pre-activation is >= the threshold, or <= it where the BN scale is negative
  (``direction`` -1);
* the output layer's BatchNorm folded into a float affine map of its pre-activation.

``fold`` builds one from a trained model, ``bnnx`` writes and reads it as a file, ``engine`` runs
it on packed bits and ``float_model`` rebuilds a float torch model from it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..data import preprocessing_from_tensors
from ..errors import UserError

# 8-bit inputs scaled to [-1, 1] by 2x/255 - 1 (the "scale" preprocessing): the engine may run the
# first layer on their bit planes. Any other preprocessing gives float inputs.
UINT8_SCALE, FLOAT_INPUT = "uint8_scale", "float"
INPUT_LEVELS = 255  # 2x/255 - 1 = (2x - 255) / 255


class ExportError(UserError):
    """A model or file that export cannot handle."""


@dataclass
class ExportedLayer:
    """One binary layer with everything that follows it up to the next binary layer, folded.

    kind: "dense" or "conv". role: "first" (real inputs), "hidden" or "output"; a one-layer model's
    only layer is "output". ``in_shape`` is the per-image input: (K,) for a dense layer on flat
    inputs, (C, H, W) for a conv or for the dense layer right after the convs (its weight columns
    are in the model's flatten order, C then H then W). ``weight_bits``: the signs of the weight
    reshaped to (out, -1) (conv: C_in, kh, kw order), packed as ``kernels.pack`` packs.

    Binarizing layers (first, hidden) carry ``direction`` (+1 or -1) and ``threshold``: the unit is
    +1 when direction * acc >= direction * threshold. For hidden layers acc is the +/-1 dot product;
    for the first layer ``float_threshold`` applies to y = w . x in float32 and, with 8-bit inputs,
    ``threshold`` to P = 255 * (w . x) (an integer). The output layer carries ``scale`` and
    ``shift``: logits = scale * y + shift.
    """
    kind: str
    role: str
    in_shape: tuple[int, ...]
    out_features: int
    weight_bits: torch.Tensor
    kernel_size: int = 0
    padding: int = 0
    pool: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def fan_in(self) -> int:
        """Entries per weight row (conv: C_in * k * k)."""
        if self.kind == "conv":
            return self.in_shape[0] * self.kernel_size ** 2
        return math.prod(self.in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Per-image shape of the output: (C, H', W') for a conv (after its pooling), (out,) for a dense one."""
        if self.kind == "conv":
            pool = max(self.pool, 1)
            return self.out_features, self.in_shape[1] // pool, self.in_shape[2] // pool
        return (self.out_features,)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "in_shape": list(self.in_shape),
                "out_features": self.out_features, "kernel_size": self.kernel_size, "padding": self.padding,
                "pool": self.pool}


@dataclass
class ExportedPreprocessing:
    """A model's input preprocessing as its export carries it: the recipe's ``data.preprocess`` kind and its fitted
    tensors (``bnnctl.data.EXPORTED_PREPROCESSING``: the 256 values of a per-pixel one, else its constants)."""
    kind: str
    tensors: dict[str, torch.Tensor]

    @functools.cached_property
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The transform of raw uint8 images these tensors stand for, built once."""
        return preprocessing_from_tensors(self.kind, self.tensors)


@dataclass
class ExportedModel:
    """A deployable 1-bit model: its binary layers in order (``ExportedLayer``, the first takes the inputs, the
    last gives the logits), one input's shape, how inputs reach the first layer (``input_encoding``: "uint8_scale"
    for 8-bit images scaled as 2x/255 - 1, else "float") and the number of classes."""
    layers: list[ExportedLayer]
    input_shape: tuple[int, ...]
    input_encoding: str
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)  # provenance: recipe, dataset, epoch, test error...
    # The recipe's data section (dataset, split, preprocessing): what ``bnnctl eval`` evaluates it on.
    # None when unknown (version 1 files, records without a recipe).
    data: dict[str, Any] | None = None
    # The fitted preprocessing, so that engines run the model on raw images alone; None in files before version 3
    # and in exports written without the training images at hand.
    preprocessing: ExportedPreprocessing | None = None

    @property
    def binary_weights(self) -> int:
        return sum(layer.out_features * layer.fan_in for layer in self.layers)



def input_encoding(recipe: dict[str, Any]) -> str:
    """How a recipe's inputs reach the first layer: 8-bit pixels scaled to [-1, 1], or floats."""
    return UINT8_SCALE if recipe.get("data", {}).get("preprocess") == "scale" else FLOAT_INPUT


def layer_tensor_names(role: str, encoding: str) -> set[str]:
    """The tensors an exported layer of this role carries (besides nothing else)."""
    if role == "output":
        return {"weight_bits", "scale", "shift"}
    if role == "hidden":
        return {"weight_bits", "direction", "threshold"}
    return {"weight_bits", "direction", "float_threshold"} | ({"threshold"} if encoding == UINT8_SCALE else set())

