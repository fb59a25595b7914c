"""Folding a trained model into an ExportedModel: BN and sign become one threshold per unit.

Thresholds reproduce the float model's own arithmetic, not a re-derivation of it: for each unit,
``fold_thresholds`` finds by bisection the float32 pre-activation y at which
``sign(norm(y + bias))`` changes, evaluating the model's norm module itself on float32 inputs. On
a hidden layer y is an integer (a sum of +/-1 products), so the unit fires exactly when
``y >= ceil(t)`` (or ``y <= floor(t)``); pre-activations that land exactly on a threshold get the
float model's answer, sign(0) = +1 included. On the first layer the inputs are real; with 8-bit
inputs scaled as 2x/255 - 1 (the MNIST recipes) the exact pre-activation is P / 255 with P an
integer (see ``engine``), and the threshold on P is ``ceil(255 t)``.

One limit, the float model's and not the export's: with a bias, torch's float GEMM adds
``integer + bias`` in an order that depends on its blocking, so its pre-activation can differ from
the correctly rounded ``fl32(y + bias)`` used here by an ulp or two. A unit whose BN output lies
within those ulps of zero can then differ; on the MNIST test set with the trained MLP none did
(0 of 10,000 x 12,288 hidden activations).

Past 2^24 inputs per unit the float model's float32 sums round, and the export's integers do not: there
the engine computes the exact +/-1 product and compares it with the integer threshold exactly.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .. import kernels
from ..core.binarize import ap2, sign_pm1
from ..core.layers import BinaryConv2d, BinaryLinear
from ..core.norms import ShiftBatchNorm
from .exported import (FLOAT_INPUT, INPUT_LEVELS, UINT8_SCALE, ExportedLayer, ExportedModel, ExportError,
                       input_encoding)


# ---------------------------------------------------------------------------- reading the model

@dataclass
class _Block:
    """A binary layer and the modules after it, up to the next binary layer."""
    layer: nn.Module
    in_shape: tuple[int, ...]
    pool: int = 0
    norm: nn.Module | None = None
    norm_shape: tuple[int, ...] = ()
    sign: bool = False


NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, ShiftBatchNorm)
_SKIPPED = (nn.Dropout, nn.Identity)  # identities in eval mode


def _module_input_shapes(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-image shape of each module's input, from one forward pass on zeros."""
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:])))
             for m in model]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _check_conv(conv: BinaryConv2d) -> int:
    k = conv.kernel_size[0]
    if (conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.padding != (k // 2, k // 2)
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"):
        raise ExportError(f"export handles square odd-sized convolutions with stride 1 and 'same' zero padding, "
                          f"not {conv}.")
    return k


def _pool_size(pool: nn.MaxPool2d) -> int:
    size = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    if (pool.kernel_size not in (size, (size, size)) or stride != size or pool.padding not in (0, (0, 0))
            or pool.dilation not in (1, (1, 1)) or pool.ceil_mode):
        raise ExportError(f"export handles non-overlapping max-pooling (kernel = stride, no padding), not {pool}.")
    return size


def _blocks(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[_Block]:
    if not isinstance(model, nn.Sequential):
        raise ExportError(f"export reads bnnctl's flat nn.Sequential models, not a {type(model).__name__}.")
    shapes = _module_input_shapes(model, input_shape)
    blocks: list[_Block] = []
    for module, shape in zip(model, shapes):
        if isinstance(module, (BinaryLinear, BinaryConv2d)):
            if blocks and not blocks[-1].sign:
                raise ExportError(f"layer {len(blocks)} of the model is followed by another binary layer "
                                  "without a sign activation in between.")
            # A dense layer right after the convolutions keeps the (C, H, W) shape its columns come from.
            if isinstance(module, BinaryLinear) and blocks and isinstance(blocks[-1].layer, BinaryConv2d):
                shape = tuple(blocks[-1].norm_shape)
            blocks.append(_Block(module, shape))
        elif isinstance(module, (*_SKIPPED, nn.Flatten)):
            continue
        elif not blocks:
            raise ExportError(f"the model starts with a {type(module).__name__}; export expects a binary layer "
                              "(after an optional Flatten and Dropout) first.")
        elif isinstance(module, nn.MaxPool2d) and blocks[-1].norm is None and blocks[-1].pool == 0:
            blocks[-1].pool = _pool_size(module)
        elif isinstance(module, NORM_TYPES) and blocks[-1].norm is None:
            blocks[-1].norm, blocks[-1].norm_shape = module, shape
        elif type(module).__name__ == "SignActivation" and blocks[-1].norm is not None and not blocks[-1].sign:
            blocks[-1].sign = True
        else:
            raise ExportError(f"export does not know what to do with {module} after binary layer {len(blocks)} "
                              "(it expects [MaxPool2d,] BatchNorm, SignActivation after each binary layer).")
    if not blocks:
        raise ExportError("the model has no binary layer to export.")
    for i, b in enumerate(blocks):
        if b.norm is None:
            raise ExportError(f"binary layer {i + 1} of the model has no BatchNorm after it; export folds one into "
                              "every layer's threshold or output affine.")
        if (i < len(blocks) - 1) != b.sign:
            raise ExportError("export expects a sign activation after every binary layer but the last, "
                              "and none after the last (the logits).")
        if isinstance(b.layer, BinaryConv2d) and i == len(blocks) - 1:
            raise ExportError("export expects the model to end with a dense output layer, not a convolution.")
    return blocks


# ---------------------------------------------------------------------------- folding BN + sign

def _check_norm(norm: nn.Module) -> None:
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and (not norm.track_running_stats
                                                               or norm.running_mean is None):
        raise ExportError(f"{norm} normalises with batch statistics at inference; export needs running statistics.")
    for name, t in list(norm.named_parameters()) + list(norm.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ExportError(f"the model's {type(norm).__name__} has non-finite values in {name}; "
                              "the run diverged or the checkpoint is damaged.")


def _float_keys(v: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 keys in the same order as the floats (+0.0 and -0.0 share key 0)."""
    bits = v.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _floats_from_keys(keys: torch.Tensor) -> torch.Tensor:
    bits = torch.where(keys >= 0, keys, (-keys) | (1 << 31))
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)
    return bits.to(torch.int32).view(torch.float32)


# Bisection range for pre-activations; far past any reachable one, and far from float32 overflow
# once the norm multiplies it.
_SEARCH_LIMIT = 2.0 ** 62


@torch.no_grad()
def fires(norm: nn.Module, bias: torch.Tensor, norm_shape: tuple[int, ...], y: torch.Tensor) -> torch.Tensor:
    """Whether each unit c fires for pre-activation y[c] (float32, bias not included), as the float
    model decides it: sign(norm(y + bias)) = +1, the norm run on a tensor of its real input shape."""
    z = (y.float() + bias).view(1, -1, *([1] * (len(norm_shape) - 1)))
    out = norm(z.expand(1, *norm_shape).contiguous())
    out = out.reshape(1, norm_shape[0], -1)
    firing = sign_pm1(out) > 0
    if not (firing == firing[..., :1]).all():
        raise ExportError(f"{type(norm).__name__} gave different answers at different positions for equal inputs; "
                          "export cannot fold it into one threshold per channel.")
    return firing[0, :, 0]


@torch.no_grad()
def fold_thresholds(norm: nn.Module, bias: torch.Tensor | None, norm_shape: tuple[int, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(direction int8, threshold float32) per unit such that the unit fires exactly when
    direction * y >= direction * threshold, for every float32 pre-activation y.

    Bisection over the float32 values in their natural order, on the norm's own arithmetic (BN
    followed by sign is monotone in y: increasing for a positive scale, decreasing for a negative
    one). Units that never change (a zero scale) get direction +1 and a threshold of -inf (always
    +1) or +inf (always -1).
    """
    _check_norm(norm)
    channels = norm_shape[0]
    bias = torch.zeros(channels) if bias is None else bias.detach().float().cpu()
    was_training = norm.training
    norm.eval()
    try:
        lo = _float_keys(torch.full((channels,), -_SEARCH_LIMIT))
        hi = _float_keys(torch.full((channels,), _SEARCH_LIMIT))
        fires_lo = fires(norm, bias, norm_shape, _floats_from_keys(lo))
        fires_hi = fires(norm, bias, norm_shape, _floats_from_keys(hi))
        changes = fires_lo != fires_hi
        while bool(((hi - lo > 1) & changes).any()):
            mid = torch.div(lo + hi, 2, rounding_mode="floor")
            same = fires(norm, bias, norm_shape, _floats_from_keys(mid)) == fires_lo
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    finally:
        norm.train(was_training)
    # hi: the first value where the answer differs from the one at -limit; lo: the last where it does not.
    increasing = changes & ~fires_lo
    decreasing = changes & fires_lo
    threshold = torch.where(fires_lo, torch.tensor(-math.inf), torch.tensor(math.inf))
    threshold = torch.where(increasing, _floats_from_keys(hi), threshold)
    threshold = torch.where(decreasing, _floats_from_keys(lo), threshold)
    direction = torch.where(decreasing, -1, 1).to(torch.int8)
    return direction, threshold.float()


def integer_thresholds(direction: torch.Tensor, threshold: torch.Tensor, scale: int, bound: int) -> torch.Tensor:
    """Threshold on an integer accumulator acc = scale * y: direction * acc >= direction * result
    exactly when direction * y >= direction * threshold. Clamped to [-bound - 1, bound + 1], which
    keeps "always" and "never" for |acc| <= bound.

    In float64, so exact for any float32 or float64 threshold (a float32 threshold times an integer
    below 2^29 is exact in float64); ``acc >= ceil(t)`` and ``acc <= floor(t)`` are then comparisons of
    integers, with no float32 rounding of either side however large acc is."""
    if bool(torch.isnan(threshold).any()):
        raise ExportError("a folded threshold is NaN; the model's norm has values export cannot fold.")
    scaled = threshold.double() * scale
    rounded = torch.where(direction > 0, torch.ceil(scaled), torch.floor(scaled))
    return rounded.clamp(-bound - 1, bound + 1).to(torch.int64)


def norm_affine(norm: nn.Module, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float64 with norm(y + bias) = scale * y + shift, for the output layer."""
    _check_norm(norm)
    b = torch.zeros(norm.num_features, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    if isinstance(norm, ShiftBatchNorm):
        scale = (ap2(norm.running_inv_std.float()) * ap2(norm.weight.float())).double()  # powers of two: exact
        mean, beta = norm.running_mean.double(), norm.bias.double()
    elif isinstance(norm, nn.modules.batchnorm._BatchNorm):
        gamma = norm.weight.double() if norm.affine else torch.ones(norm.num_features, dtype=torch.float64)
        scale = gamma / torch.sqrt(norm.running_var.double() + norm.eps)
        mean = norm.running_mean.double()
        beta = norm.bias.double() if norm.affine else torch.zeros(norm.num_features, dtype=torch.float64)
    else:
        raise ExportError(f"export cannot fold a {type(norm).__name__} into the output affine.")
    return scale.detach().cpu(), ((b - mean) * scale + beta).detach().cpu()


# ---------------------------------------------------------------------------- the whole model

def _pack_signs(weight: torch.Tensor) -> torch.Tensor:
    return kernels.pack(sign_pm1(weight.detach().float().cpu()).reshape(weight.shape[0], -1))


@torch.no_grad()
def export_sequential(model: nn.Sequential, input_shape: tuple[int, ...], num_classes: int,
                      input_encoding: str = FLOAT_INPUT, info: dict[str, Any] | None = None,
                      data: dict[str, Any] | None = None,
                      on_layer: Callable[[int, int], object] | None = None) -> ExportedModel:
    """Fold a trained binarized ``nn.Sequential`` into an ExportedModel (the model is put in eval mode).

    The model is bnnctl's layer order: [Flatten,] [Dropout,] then per binary layer (``BinaryLinear`` or
    ``BinaryConv2d``) an optional ``MaxPool2d``, a BatchNorm (``nn.BatchNorm1d``/``2d`` or ``ShiftBatchNorm``)
    and a ``SignActivation`` (none after the last layer, whose norm gives the logits), Dropout anywhere.
    ``input_shape`` is one input's shape, e.g. (1, 28, 28). ``input_encoding``: "float" (the engine takes
    the model's own float inputs) or "uint8_scale" (the model was trained on 8-bit images scaled as
    2x/255 - 1; the engine takes the uint8 images and runs the first layer exactly on their bit planes).
    ``info`` (provenance) and ``data`` (the recipe's data section) are stored in the export as given.
    ``on_layer`` is told (layers folded, layers) after each binary layer.
    A model export cannot fold raises ExportError, one sentence.
    """
    if input_encoding not in (UINT8_SCALE, FLOAT_INPUT):
        raise ExportError(f"input_encoding must be {UINT8_SCALE!r} or {FLOAT_INPUT!r}, got {input_encoding!r}.")
    input_shape = tuple(input_shape)
    model.eval()
    blocks = _blocks(model, input_shape)
    layers = []
    for i, b in enumerate(blocks):
        role = "output" if i == len(blocks) - 1 else ("first" if i == 0 else "hidden")
        conv = isinstance(b.layer, BinaryConv2d)
        layer = ExportedLayer(kind="conv" if conv else "dense", role=role, in_shape=tuple(b.in_shape),
                              out_features=b.layer.weight.shape[0], weight_bits=_pack_signs(b.layer.weight),
                              kernel_size=_check_conv(b.layer) if conv else 0,
                              padding=b.layer.padding[0] if conv else 0, pool=b.pool)
        if role == "output":
            scale, shift = norm_affine(b.norm, b.layer.bias)
            layer.tensors.update(scale=scale, shift=shift)
        else:
            direction, threshold = fold_thresholds(b.norm, b.layer.bias, b.norm_shape)
            layer.tensors["direction"] = direction
            if role == "first":
                layer.tensors["float_threshold"] = threshold
                if input_encoding == UINT8_SCALE:
                    layer.tensors["threshold"] = _int32(integer_thresholds(
                        direction, threshold, INPUT_LEVELS, INPUT_LEVELS * layer.fan_in))
            else:
                layer.tensors["threshold"] = _int32(integer_thresholds(direction, threshold, 1, layer.fan_in))
        layers.append(layer)
        if on_layer is not None:
            on_layer(len(layers), len(blocks))
    return ExportedModel(layers, input_shape, input_encoding, int(num_classes), dict(info or {}), data)


def export_model(record: dict[str, Any], model: nn.Sequential,
                 on_layer: Callable[[int, int], object] | None = None) -> ExportedModel:
    """Fold a trained model and its ``best.pt`` record (input shape, classes, recipe) into an ExportedModel;
    ``on_layer`` is told (layers folded, layers) after each binary layer."""
    recipe = record.get("recipe", {})
    info = {"recipe": recipe.get("name"), "dataset": record.get("dataset"), "variant": record.get("variant"),
            "epoch": record.get("epoch"), "test_error_pct": record.get("test_error_pct")}
    data = recipe.get("data")
    data = json.loads(json.dumps(data, default=str)) if isinstance(data, dict) else None
    return export_sequential(model, tuple(record["input_shape"]), int(record["num_classes"]),
                             input_encoding(recipe), info, data, on_layer)


def _int32(t: torch.Tensor) -> torch.Tensor:
    if t.numel() and t.abs().max() >= 2 ** 31 - 1:
        raise ExportError("a threshold does not fit in 32 bits; the layer is too wide to export.")
    return t.to(torch.int32)

