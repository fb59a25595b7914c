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

File format (version 1), little-endian:
    8 bytes   MAGIC
    4 bytes   uint32 format version
    4 bytes   uint32 length of the JSON header
    header    UTF-8 JSON: model description, layers, and for every tensor its dtype, shape and
              byte offset in the data section
    data      the tensors, each aligned to 64 bytes from the start of the data section
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..core.binarize import ap2, sign_pm1
from ..errors import UserError
from ..core.layers import BinaryConv2d, BinaryLinear
from ..core.norms import ShiftBatchNorm

MAGIC = b"BNNCTLX\x00"
EXPORT_VERSION = 1
EXPORT_SUFFIX = ".bnnx"
ALIGN = 64
# 8-bit inputs scaled to [-1, 1] by 2x/255 - 1 (the "scale" preprocessing): the engine may run the
# first layer on their bit planes. Any other preprocessing gives float inputs.
UINT8_SCALE, FLOAT_INPUT = "uint8_scale", "float"
INPUT_LEVELS = 255  # 2x/255 - 1 = (2x - 255) / 255
_DTYPES = {"int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "float32": torch.float32,
           "float64": torch.float64}


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
    keeps "always" and "never" for |acc| <= bound."""
    scaled = threshold.double() * scale  # exact: a float32 times an integer below 2^29
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
    return ExportedModel(layers, input_shape, encoding, int(record["num_classes"]), info)


def _int32(t: torch.Tensor) -> torch.Tensor:
    if t.abs().max() >= 2 ** 31 - 1:
        raise ExportError("a threshold does not fit in 32 bits; the layer is too wide to export.")
    return t.to(torch.int32)


# ---------------------------------------------------------------------------- the file

def _tensor_bytes(t: torch.Tensor) -> bytes:
    array = t.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def save_export(exported: ExportedModel, path: Path | str) -> int:
    """Write the export file atomically; returns its size in bytes."""
    from ..runs import atomic_write_bytes
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
    header = {"format": "bnnctl-export", "version": EXPORT_VERSION, "bnnctl": __version__,
              "input_shape": list(exported.input_shape), "input_encoding": exported.input_encoding,
              "num_classes": exported.num_classes, "info": exported.info, "layers": layers}
    text = json.dumps(header, indent=1).encode()
    text += b" " * (-(len(MAGIC) + 8 + len(text)) % ALIGN)
    data = MAGIC + struct.pack("<II", EXPORT_VERSION, len(text)) + text + b"".join(blobs)
    atomic_write_bytes(Path(path), data)
    return len(data)


def load_export(path: Path | str) -> ExportedModel:
    """Read an export file; a file that is not one, or of another version, raises ExportError."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist.")
    data = path.read_bytes()
    if data[:len(MAGIC)] != MAGIC:
        raise ExportError(f"{path} is not a bnnctl export file (it does not start with the bnnctl export signature).")
    if len(data) < len(MAGIC) + 8:
        raise ExportError(f"{path} is a truncated bnnctl export file.")
    version, header_len = struct.unpack_from("<II", data, len(MAGIC))
    if version != EXPORT_VERSION:
        raise ExportError(f"{path} is a bnnctl export of format version {version}; this bnnctl reads version "
                          f"{EXPORT_VERSION}, so export the run again with it.")
    start = len(MAGIC) + 8
    try:
        header = json.loads(data[start:start + header_len])
        body = memoryview(data)[start + header_len:]

        def tensor(entry: dict[str, Any]) -> torch.Tensor:
            end = entry["offset"] + entry["nbytes"]
            if end > len(body):
                raise ValueError("data section too short")
            t = torch.frombuffer(bytearray(body[entry["offset"]:end]), dtype=_DTYPES[entry["dtype"]])
            return t.reshape(entry["shape"])

        layers = []
        for e in header["layers"]:
            tensors = {name: tensor(t) for name, t in e["tensors"].items()}
            layers.append(ExportedLayer(kind=e["kind"], role=e["role"], in_shape=tuple(e["in_shape"]),
                                        out_features=e["out_features"], weight_bits=tensors.pop("weight_bits"),
                                        kernel_size=e["kernel_size"], padding=e["padding"], pool=e["pool"],
                                        tensors=tensors))
        return ExportedModel(layers, tuple(header["input_shape"]), header["input_encoding"],
                             header["num_classes"], header.get("info", {}))
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ExportError(f"{path} is a damaged bnnctl export file ({type(e).__name__}: {e}).") from None


# ---------------------------------------------------------------------------- the command

def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def run_export(run: Path, out: Path | None, console) -> dict[str, Any]:
    """``bnnctl export RUN [-o FILE]``: export, write, print and record the size against best.pt."""
    from ..runs import atomic_write_text, git_commit, load_model
    record, model, _ = load_model(run)
    checkpoint = run / "best.pt" if run.is_dir() else run
    out = out or checkpoint.parent / f"model{EXPORT_SUFFIX}"
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
