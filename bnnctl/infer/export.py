"""``bnnctl export``: a trained run as a deployable 1-bit model.

What a binary network needs at inference time is much less than its checkpoint:

* every binary layer's weights as signs, one bit each (packed like ``kernels.pack``);
* every hidden layer's BatchNorm and sign folded into one threshold per unit: the unit fires (+1)
  when its pre-activation is >= the threshold, or <= it where the BN scale is negative
  (``direction`` -1);
* the output layer's BatchNorm folded into a float affine map of its pre-activation.

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

File format (version 2), little-endian:
    8 bytes   MAGIC
    4 bytes   uint32 format version
    4 bytes   uint32 length of the JSON header
    32 bytes  SHA-256 of every other byte of the file: the 16 above, the header and the data
    header    UTF-8 JSON: model description, layers, the recipe's data section (what ``bnnctl eval``
              evaluates an export on), and for every tensor its dtype, shape, byte offset in the data
              section and size
    data      the tensors, each aligned to 64 bytes from the start of the data section

Reading a file checks the checksum, then every header field against the data (roles, shapes, the
layer chain, sizes, offsets, dtypes, the values a threshold or direction can take): a damaged file is
one sentence (``DamagedExport``), never a crash or a wrong answer. Version 1 files (no checksum field,
no data section) are still read, with a note that they cannot be verified.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..core.binarize import ap2, sign_pm1
from ..errors import DamagedFile, EnvironmentFailure, UserError
from ..core.layers import BinaryConv2d, BinaryLinear
from ..core.norms import ShiftBatchNorm

MAGIC = b"BNNCTLX\x00"
EXPORT_FORMAT = "bnnctl-export"
EXPORT_VERSION = 2
READABLE_EXPORT_VERSIONS = (1, 2)
EXPORT_SUFFIX = ".bnnx"
ALIGN = 64
_FIXED = len(MAGIC) + 8  # magic, version, header length
_DIGEST = 32  # SHA-256, from version 2
# 8-bit inputs scaled to [-1, 1] by 2x/255 - 1 (the "scale" preprocessing): the engine may run the
# first layer on their bit planes. Any other preprocessing gives float inputs.
UINT8_SCALE, FLOAT_INPUT = "uint8_scale", "float"
INPUT_LEVELS = 255  # 2x/255 - 1 = (2x - 255) / 255


class ExportError(UserError):
    """A model or file that export cannot handle."""


class DamagedExport(ExportError, DamagedFile):
    """An export file that fails its checksum or whose header disagrees with its data."""


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

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "in_shape": list(self.in_shape),
                "out_features": self.out_features, "kernel_size": self.kernel_size, "padding": self.padding,
                "pool": self.pool}


@dataclass
class ExportedModel:
    layers: list[ExportedLayer]
    input_shape: tuple[int, ...]
    input_encoding: str
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)  # provenance: recipe, dataset, epoch, test error...
    # The recipe's data section (dataset, split, preprocessing): what ``bnnctl eval`` evaluates it on.
    # None when unknown (version 1 files, records without a recipe).
    data: dict[str, Any] | None = None

    @property
    def binary_weights(self) -> int:
        return sum(layer.out_features * layer.fan_in for layer in self.layers)


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


# ---------------------------------------------------------------------------- export

def _pack_signs(weight: torch.Tensor) -> torch.Tensor:
    from .. import kernels
    return kernels.pack(sign_pm1(weight.detach().float().cpu()).reshape(weight.shape[0], -1))


def input_encoding(recipe: dict[str, Any]) -> str:
    return UINT8_SCALE if recipe.get("data", {}).get("preprocess") == "scale" else FLOAT_INPUT


@torch.no_grad()
def export_model(record: dict[str, Any], model: nn.Sequential) -> ExportedModel:
    """Fold a trained model (eval mode) and its ``best.pt`` record into an ExportedModel."""
    input_shape = tuple(record["input_shape"])
    encoding = input_encoding(record.get("recipe", {}))
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
                if encoding == UINT8_SCALE:
                    layer.tensors["threshold"] = _int32(integer_thresholds(
                        direction, threshold, INPUT_LEVELS, INPUT_LEVELS * layer.fan_in))
            else:
                layer.tensors["threshold"] = _int32(integer_thresholds(direction, threshold, 1, layer.fan_in))
        layers.append(layer)
    recipe = record.get("recipe", {})
    info = {"recipe": recipe.get("name"), "dataset": record.get("dataset"), "variant": record.get("variant"),
            "epoch": record.get("epoch"), "test_error_pct": record.get("test_error_pct")}
    data = recipe.get("data")
    data = json.loads(json.dumps(data, default=str)) if isinstance(data, dict) else None
    return ExportedModel(layers, input_shape, encoding, int(record["num_classes"]), info, data)


def _int32(t: torch.Tensor) -> torch.Tensor:
    if t.numel() and t.abs().max() >= 2 ** 31 - 1:
        raise ExportError("a threshold does not fit in 32 bits; the layer is too wide to export.")
    return t.to(torch.int32)


# ---------------------------------------------------------------------------- the file

def _tensor_bytes(t: torch.Tensor) -> bytes:
    array = t.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _digest(fixed: bytes, rest: bytes | memoryview) -> bytes:
    h = hashlib.sha256(fixed)
    h.update(rest)
    return h.digest()


def save_export(exported: ExportedModel, path: Path | str) -> int:
    """Write the export file (format version EXPORT_VERSION, with its checksum) atomically; returns its
    size in bytes."""
    from ..files import atomic_write_bytes
    blobs: list[bytes] = []
    offset = 0

    def add(t: torch.Tensor) -> dict[str, Any]:
        nonlocal offset
        data = _tensor_bytes(t)
        entry = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "offset": offset,
                 "nbytes": len(data)}
        pad = -len(data) % ALIGN
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
        return entry

    layers = []
    for layer in exported.layers:
        entry = layer.describe()
        entry["tensors"] = {"weight_bits": add(layer.weight_bits),
                            **{name: add(t) for name, t in layer.tensors.items()}}
        layers.append(entry)
    header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "bnnctl": __version__,
              "input_shape": list(exported.input_shape), "input_encoding": exported.input_encoding,
              "num_classes": exported.num_classes, "info": exported.info, "data": exported.data, "layers": layers}
    text = json.dumps(header, indent=1, default=str).encode()
    text += b" " * (-(_FIXED + _DIGEST + len(text)) % ALIGN)
    fixed = MAGIC + struct.pack("<II", EXPORT_VERSION, len(text))
    rest = text + b"".join(blobs)
    data = fixed + _digest(fixed, rest) + rest
    atomic_write_bytes(Path(path), data)
    return len(data)


def _damaged(path: Path, what: str) -> DamagedExport:
    return DamagedExport(f"{path} is a damaged bnnctl export file: {what}; export the run again or restore it "
                         "from a copy.")


# Header fields, per format version; the tensors each role carries and their dtypes.
_HEADER_FIELDS = {1: {"format", "version", "bnnctl", "input_shape", "input_encoding", "num_classes", "info", "layers"}}
_HEADER_FIELDS[2] = _HEADER_FIELDS[1] | {"data"}
_LAYER_FIELDS = {"kind", "role", "in_shape", "out_features", "kernel_size", "padding", "pool", "tensors"}
_ENTRY_FIELDS = {"dtype", "shape", "offset", "nbytes"}
_TENSOR_DTYPES = {"weight_bits": "int64", "direction": "int8", "threshold": "int32", "float_threshold": "float32",
                  "scale": "float64", "shift": "float64"}
_DTYPES = {name: getattr(torch, name) for name in set(_TENSOR_DTYPES.values())}
_INPUT_ENCODINGS = (UINT8_SCALE, FLOAT_INPUT)


def layer_tensor_names(role: str, encoding: str) -> set[str]:
    """The tensors an exported layer of this role carries (besides nothing else)."""
    if role == "output":
        return {"weight_bits", "scale", "shift"}
    if role == "hidden":
        return {"weight_bits", "direction", "threshold"}
    return {"weight_bits", "direction", "float_threshold"} | ({"threshold"} if encoding == UINT8_SCALE else set())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _HeaderReader:
    """Checks a parsed header against the data section and builds the ExportedModel; any disagreement is a
    DamagedExport naming the file and the field."""

    def __init__(self, path: Path, header: Any, body: memoryview, version: int):
        self.path, self.header, self.body, self.version = path, header, body, version
        self.offset = 0  # where the next tensor must start: the writer lays them out in header order

    def fail(self, what: str) -> DamagedExport:
        return _damaged(self.path, what)

    def int_field(self, value: Any, what: str, minimum: int) -> int:
        if not _is_int(value) or value < minimum:
            raise self.fail(f"{what} is {value!r}, not an integer >= {minimum}")
        return value

    def shape_field(self, value: Any, what: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or not all(_is_int(d) and d > 0 for d in value):
            raise self.fail(f"{what} is {value!r}, not a list of positive integers")
        return tuple(value)

    def read(self) -> ExportedModel:
        h = self.header
        if not isinstance(h, dict):
            raise self.fail("its header is not a JSON object")
        expected = _HEADER_FIELDS[self.version]
        if set(h) != expected:
            missing, unknown = sorted(expected - set(h)), sorted(set(h) - expected)
            raise self.fail(f"its header lacks {', '.join(missing)}" if missing
                            else f"its header has unknown fields {', '.join(unknown)}")
        if h["format"] != EXPORT_FORMAT:
            raise self.fail(f"its header names the format {h['format']!r}, not {EXPORT_FORMAT!r}")
        if h["version"] != self.version:
            raise self.fail(f"its header says format version {h['version']!r} where the file's preamble says "
                            f"{self.version}")
        input_shape = self.shape_field(h["input_shape"], "the input shape")
        if h["input_encoding"] not in _INPUT_ENCODINGS:
            raise self.fail(f"the input encoding {h['input_encoding']!r} is not one of {', '.join(_INPUT_ENCODINGS)}")
        num_classes = self.int_field(h["num_classes"], "the number of classes", 1)
        if not isinstance(h["info"], dict):
            raise self.fail("its info field is not a JSON object")
        data = h.get("data")
        if data is not None and not isinstance(data, dict):
            raise self.fail("its data field is not a JSON object")
        if not isinstance(h["layers"], list) or not h["layers"]:
            raise self.fail("its header lists no layers")
        layers: list[ExportedLayer] = []
        previous_out: tuple[int, ...] | None = None
        count = len(h["layers"])
        for i, entry in enumerate(h["layers"]):
            layer = self.layer(entry, i, count, input_shape, h["input_encoding"], previous_out)
            layers.append(layer)
            previous_out = _out_shape(layer)
        if layers[-1].out_features != num_classes:
            raise self.fail(f"its last layer has {layers[-1].out_features} outputs but the header says "
                            f"{num_classes} classes")
        if self.offset != len(self.body):
            raise self.fail(f"its data section holds {len(self.body)} bytes where its header describes "
                            f"{self.offset}")
        return ExportedModel(layers, input_shape, h["input_encoding"], num_classes, h["info"], data)

    def layer(self, e: Any, i: int, count: int, input_shape: tuple[int, ...], encoding: str,
              previous_out: tuple[int, ...] | None) -> ExportedLayer:
        where = f"layer {i + 1} of {count}"
        if not isinstance(e, dict) or set(e) != _LAYER_FIELDS:
            raise self.fail(f"{where} in its header does not have the fields {', '.join(sorted(_LAYER_FIELDS))}")
        kind, role = e["kind"], e["role"]
        if kind not in ("dense", "conv"):
            raise self.fail(f"{where} is of unknown kind {kind!r}")
        expected_role = "output" if i == count - 1 else ("first" if i == 0 else "hidden")
        if role != expected_role:
            raise self.fail(f"{where} has the role {role!r} where its place makes it {expected_role!r}")
        in_shape = self.shape_field(e["in_shape"], f"the input shape of {where}")
        out = self.int_field(e["out_features"], f"the output count of {where}", 1)
        kernel_size = self.int_field(e["kernel_size"], f"the kernel size of {where}", 0)
        padding = self.int_field(e["padding"], f"the padding of {where}", 0)
        pool = self.int_field(e["pool"], f"the pooling of {where}", 0)
        if kind == "conv":
            if role == "output":
                raise self.fail(f"{where} is a convolution, but the output layer is dense")
            if len(in_shape) != 3 or kernel_size % 2 == 0 or padding != kernel_size // 2:
                raise self.fail(f"{where} is a convolution with input shape {list(in_shape)}, kernel size "
                                f"{kernel_size} and padding {padding}, which do not go together")
            if pool > 1 and pool > min(in_shape[1:]):
                raise self.fail(f"{where} pools by {pool} an image of {in_shape[1]}x{in_shape[2]}")
        elif kernel_size or padding or pool or len(in_shape) not in (1, 3):
            raise self.fail(f"{where} is dense but has kernel size {kernel_size}, padding {padding}, pooling {pool} "
                            f"and input shape {list(in_shape)}")
        if previous_out is None:
            fits = in_shape == input_shape if kind == "conv" else (
                len(in_shape) == 1 and in_shape[0] == math.prod(input_shape))
            if not fits:
                raise self.fail(f"the first layer takes inputs of shape {list(in_shape)}, but the model's input "
                                f"shape is {list(input_shape)}")
        elif in_shape != previous_out:
            raise self.fail(f"{where} takes inputs of shape {list(in_shape)}, but the layer before it gives "
                            f"{list(previous_out)}")
        layer = ExportedLayer(kind=kind, role=role, in_shape=in_shape, out_features=out, weight_bits=torch.empty(0),
                              kernel_size=kernel_size, padding=padding, pool=pool)
        tensors = e["tensors"]
        names = layer_tensor_names(role, encoding)
        if not isinstance(tensors, dict) or set(tensors) != names:
            found = sorted(tensors) if isinstance(tensors, dict) else tensors
            raise self.fail(f"{where} ({role}) carries the tensors {found!r}, not {', '.join(sorted(names))}")
        for name, entry in tensors.items():
            t = self.tensor(entry, name, layer, where)
            if name == "weight_bits":
                layer.weight_bits = t
            else:
                layer.tensors[name] = t
        self.values(layer, where)
        return layer

    def tensor(self, entry: Any, name: str, layer: ExportedLayer, where: str) -> torch.Tensor:
        what = f"the {name} of {where}"
        if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
            raise self.fail(f"{what} is not described by {', '.join(sorted(_ENTRY_FIELDS))}")
        dtype = _TENSOR_DTYPES[name]
        if entry["dtype"] != dtype:
            raise self.fail(f"{what} is stored as {entry['dtype']!r}, not {dtype}")
        from .. import kernels
        shape = [layer.out_features, kernels.words_for(layer.fan_in)] if name == "weight_bits" else [layer.out_features]
        if entry["shape"] != shape:
            raise self.fail(f"{what} has the shape {entry['shape']!r} where the layer needs {shape}")
        itemsize = torch.empty(0, dtype=_DTYPES[dtype]).element_size()
        nbytes = math.prod(shape) * itemsize
        if entry["nbytes"] != nbytes:
            raise self.fail(f"{what} says it takes {entry['nbytes']!r} bytes where its shape takes {nbytes}")
        if entry["offset"] != self.offset:
            raise self.fail(f"{what} says it starts at byte {entry['offset']!r} of the data section, where it "
                            f"lies at byte {self.offset}")
        end = self.offset + nbytes
        padded = end + (-nbytes % ALIGN)
        if padded > len(self.body):
            raise self.fail(f"its data section ends at byte {len(self.body)}, before {what} (bytes {self.offset} "
                            f"to {end})")
        if any(self.body[end:padded]):
            raise self.fail(f"the padding after {what} is not zero")
        raw = bytearray(self.body[self.offset:end])
        self.offset = padded
        t = torch.frombuffer(raw, dtype=_DTYPES[dtype]) if raw else torch.empty(0, dtype=_DTYPES[dtype])
        return t.reshape(shape)

    def values(self, layer: ExportedLayer, where: str) -> None:
        """What the values themselves can be: padding bits zero, directions +/-1, thresholds in range."""
        rem = layer.fan_in % 64
        if rem and bool((layer.weight_bits[:, -1] & ~((1 << rem) - 1)).any()):
            raise self.fail(f"the weight bits of {where} have bits set past its {layer.fan_in} inputs")
        t = layer.tensors
        if "direction" in t and not bool(((t["direction"] == 1) | (t["direction"] == -1)).all()):
            raise self.fail(f"the directions of {where} are not all +1 or -1")
        if "threshold" in t:
            bound = layer.fan_in * (INPUT_LEVELS if layer.role == "first" else 1) + 1
            if bool((t["threshold"].long().abs() > bound).any()):
                raise self.fail(f"the integer thresholds of {where} lie outside [-{bound}, {bound}]")
        if "float_threshold" in t and bool(torch.isnan(t["float_threshold"]).any()):
            raise self.fail(f"the float thresholds of {where} hold NaN")
        for name in ("scale", "shift"):
            if name in t and not bool(torch.isfinite(t[name]).all()):
                raise self.fail(f"the output {name} of {where} holds NaN or infinite values")


def _out_shape(layer: ExportedLayer) -> tuple[int, ...]:
    """Per-image shape of a layer's output: (C, H', W') for a conv (after its pooling), (out,) for a dense one."""
    if layer.kind == "conv":
        pool = max(layer.pool, 1)
        return layer.out_features, layer.in_shape[1] // pool, layer.in_shape[2] // pool
    return (layer.out_features,)


def _note(console, text: str) -> None:
    if console is not None:
        console.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True)
    else:
        print(f"note: {text}", file=sys.stderr, flush=True)


def load_export(path: Path | str, console=None) -> ExportedModel:
    """Read an export file, its checksum and every header field verified against its data.

    A file that is not an export, of a version this bnnctl does not read, or damaged raises ExportError
    (DamagedExport for damage), one sentence. A version 1 file, which has no checksum, is read with a note
    (on ``console``, else on stderr) that it cannot be verified.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder, not a bnnctl export file.")
    if not path.is_file():
        raise ExportError(f"{path} does not exist.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ExportError(f"{path} cannot be read ({e.strerror or type(e).__name__}).") from None
    return read_export(data, path, console)


def read_export(data: bytes, path: Path | str, console=None) -> ExportedModel:
    """The model in an export file's bytes (``load_export`` without the reading); ``path`` names the file in
    messages. Checked as load_export checks it."""
    path = Path(path)
    if data[:len(MAGIC)] != MAGIC:
        raise ExportError(f"{path} is not a bnnctl export file (it does not start with the bnnctl export signature).")
    if len(data) < _FIXED:
        raise _damaged(path, "it is cut short")
    version, header_len = struct.unpack_from("<II", data, len(MAGIC))
    if version not in READABLE_EXPORT_VERSIONS:
        raise ExportError(f"{path} is a bnnctl export of format version {version}; this bnnctl reads versions "
                          f"{' and '.join(map(str, READABLE_EXPORT_VERSIONS))}, so export the run again with it "
                          "(or restore the file, if it is damaged).")
    start = _FIXED
    if version >= 2:
        start += _DIGEST
        if len(data) < start:
            raise _damaged(path, "it is cut short")
        if _digest(data[:_FIXED], memoryview(data)[start:]) != data[_FIXED:start]:
            raise _damaged(path, "its content does not match its checksum")
    if start + header_len > len(data):
        raise _damaged(path, "it is cut short")
    try:
        header = json.loads(data[start:start + header_len])
    except (ValueError, RecursionError):
        raise _damaged(path, "its header is not valid JSON") from None
    exported = _HeaderReader(path, header, memoryview(data)[start + header_len:], version).read()
    if version < 2:
        _note(console, f"{path} is a version {version} bnnctl export, which carries no checksum, so bnnctl cannot "
                       "verify it; export the run again for a verified file.")
    return exported


# ---------------------------------------------------------------------------- the command

def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _output_path(out: Path) -> Path:
    """The file to write: ``out``, or ``out/model.bnnx`` when out is a folder; missing folders are created."""
    if out.is_dir():
        out = out / f"model{EXPORT_SUFFIX}"
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ExportError(f"cannot write {out}: a file stands where its folder {folder} (or one above it) "
                          "should be.") from None
    except OSError as e:
        raise EnvironmentFailure(f"could not create the folder {folder} for {out.name}: "
                                 f"{e.strerror or type(e).__name__}.") from None
    return out


def run_export(run: Path, out: Path | None, console) -> dict[str, Any]:
    """``bnnctl export RUN [-o FILE]``: export, write, print and record the size against best.pt.

    ``-o`` may name a file in a folder that does not exist yet (it is created) or a folder (the export
    goes there as model.bnnx)."""
    from ..checkpoints import load_model
    from ..files import atomic_write_text
    from ..provenance import git_commit
    record, model, _ = load_model(run)
    checkpoint = run / "best.pt" if run.is_dir() else run
    out = _output_path(Path(out)) if out is not None else checkpoint.parent / f"model{EXPORT_SUFFIX}"
    exported = export_model(record, model)
    size = save_export(exported, out)
    load_export(out)  # what was written reads back
    float_params = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    binary_layer_float_bytes = 4 * exported.binary_weights
    summary = {
        "export": str(out), "export_bytes": size, "format_version": EXPORT_VERSION,
        "float32_checkpoint": str(checkpoint), "float32_checkpoint_bytes": checkpoint.stat().st_size,
        "times_smaller_than_checkpoint": checkpoint.stat().st_size / size,
        "float32_model_bytes": 4 * float_params, "times_smaller_than_float32_model": 4 * float_params / size,
        "binary_weights": exported.binary_weights,
        "binary_weights_bytes_packed": sum(layer.weight_bits.numel() * 8 for layer in exported.layers),
        "binary_weights_bytes_float32": binary_layer_float_bytes,
        "input_encoding": exported.input_encoding, "layers": [layer.describe() for layer in exported.layers],
        "epoch": record.get("epoch"), "bnnctl": __version__, "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record_path = out.parent / f"{out.stem}.export.json"
    atomic_write_text(record_path, json.dumps(summary, indent=2) + "\n")
    console.print(f"exported {checkpoint} (epoch {record.get('epoch')}) to {out}: {_megabytes(size)}, "
                  f"[bold]{summary['times_smaller_than_checkpoint']:.1f}x smaller[/] than the float32 checkpoint "
                  f"({_megabytes(summary['float32_checkpoint_bytes'])}); binary weights "
                  f"{_megabytes(summary['binary_weights_bytes_packed'])} packed vs "
                  f"{_megabytes(binary_layer_float_bytes)} as float32; recorded in {record_path}", highlight=False)
    return summary


# ---------------------------------------------------------------------------- the float reconstruction

class ThresholdSign(nn.Module):
    """+1 where direction * y >= direction * threshold, else -1: a folded BN + sign, in float.

    Compared in float64, where the float32 pre-activation, the float32 first-layer threshold and the
    integer thresholds are all exact: no float32 rounding of an integer threshold past 2^24."""

    def __init__(self, direction: torch.Tensor, threshold: torch.Tensor):
        super().__init__()
        self.register_buffer("direction", direction.to(torch.float64))
        self.register_buffer("threshold", direction.to(torch.float64) * threshold.to(torch.float64))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y.to(torch.float64) * self.direction >= self.threshold, 1.0, -1.0)


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
    from .. import kernels
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
