"""The bit-packed inference engine: an exported BNN run on XNOR kernels, on CPU or CUDA.

Every hidden layer is one ``kernels.xnor_gemm`` on packed bits, then the integer threshold
``fold`` gave it, whose comparison is packed straight into the next layer's input bits:

    dense:  bits (N, words) --xnor_gemm--> int32 (N, out) --threshold--> bits (N, out words)
    conv:   bits (N, H, W, C words) --im2col on words--> (N*H*W, k*k*C words) --xnor_gemm-->
            int32 --border correction--> max-pool --threshold--> bits (N, H', W', out words)

Activations of a conv layer are packed along channels, one row of words per pixel, so im2col is a
gather of whole words. Channel counts that are not a multiple of 64 leave padding bits, which are 0
in both operands and add one agreement each: a constant. Pixels outside the image are all-zero words
(-1 for every channel), where the float model pads with 0; both are undone by subtracting a per
pixel and channel correction computed once from the weights. Max-pooling runs on the integer
pre-activations before the threshold, in the paper's layer order. Where the BN scale is negative the
unit fires for small pre-activations (direction -1): its weight row is negated, or, under a max-pool
(where max(-y) = -min(y) would be wrong), its comparison is flipped after the max.

The first layer sees real inputs, in one of three ways (FIRST_LAYERS):

* ``float``: the paper's choice, the float baseline kernel (``kernels.baseline_gemm``) on the
  model's own float inputs, compared with the float threshold.
* ``bitplane``: for 8-bit images scaled as 2x/255 - 1, the paper's Algorithm 5. With b_n the n-th
  bit of a pixel x (n = 1..8) as +/-1 values, sum_n 2^(n-1) (2 b_n - 1) = 2x - 255, so the scaled
  pixel is exactly (1/255) sum_n 2^(n-1) b_n(+/-1), and for a weight row w

      P = sum_n 2^(n-1) (b_n . w) = 255 * (w . (2x/255 - 1))

  is an integer computed by eight XNOR GEMMs on the bit planes, compared with the integer threshold
  on P. This is the model's pre-activation without float rounding.
* ``integer``: the same P as 2 (x . w) - 255 sum(w) from torch's fp32 matmul on the pixel values,
  exact because every partial sum is an integer below 2^24; the fastest first layer on a CPU.

Hidden layers can also run on the baseline float kernel with +/-1 floats (``hidden="float"``), the
reference point of the paper's speed-up figure; the integer pre-activations are the same, so the
answers are too.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import kernels
from .engine_inputs import EngineError, own_transform
from .exported import INPUT_LEVELS, UINT8_SCALE, ExportedLayer, ExportedModel
from .fold import export_model
from .variants import AUTO, ENGINE_VARIANTS, EngineVariant, check_variant, default_variant

HIDDEN_MODES = ("xnor", "float")
PLANES = 8
# How a batch runs: the Python loop over the layers below, or the whole network in one native call
# (native_engine.NativePlan: XNOR hidden layers on a CPU, first layer bitplane or float; the same results).
VARIANTS = ("layers", "plan")


def _words(channels: int) -> int:
    return kernels.words_for(channels)


def _exactly_as(threshold: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """threshold in dtype when every value is exactly representable there, else None."""
    if threshold.dtype == dtype:
        return threshold
    converted = threshold.to(dtype)
    return converted if torch.equal(converted.to(threshold.dtype), threshold) else None


_UNSET = object()


def _ge(value: torch.Tensor, threshold: torch.Tensor, same=_UNSET) -> torch.Tensor:
    """value >= threshold as real numbers, whatever the two dtypes: in value's dtype when the thresholds
    are exact there (``same``: them in that dtype, or None; found here when not given), else in float64,
    where int32 and float32 are both exact. Never a float32 rounding of an integer threshold, which past
    2^24 would move it across values."""
    same = _exactly_as(threshold, value.dtype) if same is _UNSET else same
    if same is not None:
        return value >= same
    return value.to(torch.float64) >= threshold.to(torch.float64)


def _pack_ge(value: torch.Tensor, threshold: torch.Tensor, same=_UNSET) -> torch.Tensor:
    """Pack (value >= threshold) along the last dimension into words: (..., C) -> (..., ceil(C/64)).

    int32 pre-activations (the XNOR products, the bit-plane sums) against int32 thresholds go to
    ``kernels.pack_ge``, an exact integer comparison, and so do float32 ones against thresholds exactly
    representable in float32; anything else is compared in float64 and packed as +/-1. ``same`` as in _ge.
    """
    lead, channels = value.shape[:-1], value.shape[-1]
    flat = value.reshape(-1, channels)
    same = _exactly_as(threshold, value.dtype) if same is _UNSET else same
    if value.dtype in (torch.int32, torch.float32) and same is not None:
        return kernels.pack_ge(flat, same).reshape(*lead, _words(channels))
    signs = torch.where(_ge(flat, threshold, same), 1.0, -1.0)
    return kernels.pack(signs).reshape(*lead, _words(channels))


def _pm1_ge(value: torch.Tensor, threshold: torch.Tensor, same=_UNSET) -> torch.Tensor:
    """+1.0 where value >= threshold else -1.0 (the float-kernel path's activations), compared exactly."""
    return torch.where(_ge(value, threshold, same), 1.0, -1.0)


def _max_pool(t: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping max-pool of (N, H, W, C), dropping a ragged edge as nn.MaxPool2d does."""
    if size <= 1:
        return t
    n, h, w, c = t.shape
    h2, w2 = h // size, w // size
    return t[:, :h2 * size, :w2 * size].reshape(n, h2, size, w2, size, c).amax(dim=(2, 4))


def _im2col_words(words: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """(N, H, W, Wc) words -> (N*H*W, k*k*Wc): each pixel's k x k neighbourhood, whole words, taps
    in (kh, kw) order; outside the image all-zero words."""
    n, h, w, wc = words.shape
    padded = F.pad(words, (0, 0, pad, pad, pad, pad))
    taps = [padded[:, i:i + h, j:j + w] for i in range(k) for j in range(k)]
    return torch.stack(taps, dim=3).reshape(n * h * w, k * k * wc)


def _bit_planes(x: torch.Tensor) -> torch.Tensor:
    """uint8 (...) -> float32 (8, ...): plane n holds bit n of each value as +0.5 / -0.5, which pack()
    turns into bit 1 / bit 0."""
    shifts = torch.arange(PLANES, device=x.device, dtype=torch.uint8).view(PLANES, *([1] * x.dim()))
    return ((x.unsqueeze(0) >> shifts) & 1).to(torch.float32) - 0.5


def _sum_planes(d: torch.Tensor) -> torch.Tensor:
    """(8, ...) int32 dot products of the bit planes -> sum_n 2^n d[n]."""
    total = d[0].clone()
    for n in range(1, PLANES):
        total.add_(d[n], alpha=1 << n)
    return total


def _channels_last_weight(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(out, C, ...) +/-1 floats -> (out, ..., C padded to whole words) with -1 in the padding, flattened;
    and the number of padding entries per row (each adds +1 to an XNOR dot with zero padding bits)."""
    out, channels = w.shape[:2]
    spatial = w.shape[2:]
    w = w.permute(0, *range(2, w.dim()), 1)
    padded = F.pad(w, (0, 64 * _words(channels) - channels), value=-1.0)
    positions = 1
    for s in spatial:
        positions *= s
    return padded.reshape(out, -1).contiguous(), positions * (64 * _words(channels) - channels)


class _Layer:
    """One exported layer, prepared on a device.

    A unit with direction -1 fires when its pre-activation is <= its threshold. Where no max-pool sits
    between the product and the threshold, its weight row is negated instead (the product negates
    exactly, in integers and in floats), so every comparison is ``pre >= direction * threshold``;
    under a max-pool the comparison itself is flipped after the max, since max(-y) = -min(y).
    """

    def __init__(self, layer: ExportedLayer, device: torch.device, packed_out: bool, xnor_impl: str):
        self.spec, self.device, self.xnor_impl, self.packed_out = layer, device, xnor_impl, packed_out
        self._in_dtype: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.weight = kernels.unpack(layer.weight_bits, layer.fan_in).to(device)  # (out, fan_in) +/-1
        t = {name: v.to(device) for name, v in layer.tensors.items()}
        self.output = layer.role == "output"
        self.flipped = not self.output and layer.pool <= 1
        if self.output:
            self.scale, self.shift = t["scale"], t["shift"]
            self.rhs = self.float_rhs = None
            return
        self.direction = t["direction"].to(torch.int32)
        if self.flipped:
            self.weight = self.weight * self.direction.to(self.weight.dtype)[:, None]
        # Right-hand sides of the comparisons: direction * threshold.
        self.rhs = None if "threshold" not in t else self.direction * t["threshold"]
        self.float_rhs = None if "float_threshold" not in t else self.direction * t["float_threshold"]

    def _threshold_in(self, rhs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """rhs in dtype when exact there, else None; worked out once per threshold tensor and dtype."""
        key = (id(rhs), dtype)
        if key not in self._in_dtype:
            self._in_dtype[key] = (rhs, _exactly_as(rhs, dtype))  # holding rhs keeps its id unique
        return self._in_dtype[key][1]

    def _one_pass_bound(self) -> torch.Tensor | None:
        """The int32 thresholds ``kernels.conv_threshold`` compares with, where it can run (packed output on
        a CPU, thresholds exact in int32); else None, and the separate steps run."""
        if not self.packed_out or self.device.type != "cpu" or self.rhs is None:
            return None
        return self._threshold_in(self.rhs, torch.int32)

    def xnor(self, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        return kernels.xnor_gemm(a, b, k, impl=self.xnor_impl)

    def xnor_conv(self, words: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        """The XNOR products of a stride-1 convolution of channels-last words (N, H, W, C words): on a CPU
        with the im2col gathered inside the GEMM, on a GPU as im2col on words, then the GEMM."""
        if words.device.type == "cpu" and 2 * self.spec.padding == self.spec.kernel_size - 1:
            return kernels.xnor_conv(words, b, self.spec.kernel_size, self.spec.padding)
        return self.xnor(_im2col_words(words, self.spec.kernel_size, self.spec.padding), b, k)

    def finish(self, pre: torch.Tensor, rhs: torch.Tensor | None, acc_scale: float = 1.0):
        """Threshold (and pack) a channels-last pre-activation, or turn it into logits."""
        if self.output:
            return pre.double() * (self.scale / acc_scale) + self.shift
        if not self.flipped:
            pre = pre * self.direction.to(pre.dtype)
        same = self._threshold_in(rhs, pre.dtype)
        if self.packed_out:
            return _pack_ge(pre, rhs, same)
        out = _pm1_ge(pre, rhs, same)
        return out.permute(0, 3, 1, 2).contiguous() if out.dim() == 4 else out


class _XnorDense(_Layer):
    """Dense layer on packed bits (flat, or channels-last from a conv)."""

    def __init__(self, layer, device, packed_out, xnor_impl):
        super().__init__(layer, device, packed_out, xnor_impl)
        w, self.pad_agreements = self.weight, 0
        if len(layer.in_shape) == 3:  # after the convs: the columns follow the channels-last bits
            c, h, wd = layer.in_shape
            w, self.pad_agreements = _channels_last_weight(w.view(-1, c, h, wd))
        self.k, self.bits = w.shape[1], kernels.pack(w.contiguous())
        if not self.output:
            self.rhs = self.rhs + self.pad_agreements  # compare the raw count: no subtraction per output

    def __call__(self, a: torch.Tensor):
        d = self.xnor(a.reshape(a.shape[0], -1), self.bits, self.k)
        if self.output:
            return self.finish(d - self.pad_agreements, None)
        return self.finish(d, self.rhs)


class _XnorConv(_Layer):
    """Convolution on channels-last packed bits: im2col on words, XNOR GEMM, border correction."""

    def __init__(self, layer, device, packed_out, xnor_impl):
        super().__init__(layer, device, packed_out, xnor_impl)
        c, h, w = layer.in_shape
        k = layer.kernel_size
        weight = self.weight.view(-1, c, k, k)
        rows, pad_agreements = _channels_last_weight(weight)
        self.k, self.bits = rows.shape[1], kernels.pack(rows)
        self.correction = _border_correction(weight, h, w, layer.padding, pad_agreements)

    def __call__(self, a: torch.Tensor):
        n, h, w, _ = a.shape
        spec = self.spec
        d = self.xnor_conv(a, self.bits, self.k)
        bound = self._one_pass_bound()
        if bound is not None:  # correction, pool, direction and threshold in one pass over the products
            return kernels.conv_threshold(d.view(n, h, w, -1), bound, max(1, spec.pool), self.correction,
                                          None if self.flipped else self.direction)
        d = (d.view(n, h * w, -1) - self.correction).view(n, h, w, -1)
        return self.finish(_max_pool(d, spec.pool), self.rhs)


def _border_correction(weight: torch.Tensor, h: int, w: int, pad: int, pad_agreements: int) -> torch.Tensor:
    """int32 (H*W, out): what the packed conv adds to the float model's pre-activation at each pixel.

    Taps outside the image read all-zero words, i.e. -1 for every channel, where the float model reads
    0: they add -sum(w) over those taps; channel padding adds a constant number of agreements.
    """
    outside = F.pad(torch.zeros(1, weight.shape[1], h, w, device=weight.device), (pad,) * 4, value=1.0)
    weight_outside = F.conv2d(outside.double(), weight.double())[0]  # (out, H, W), exact integers
    correction = pad_agreements - weight_outside
    return correction.permute(1, 2, 0).reshape(h * w, -1).round().to(torch.int32).contiguous()


def _check_float_fan_in(layer: ExportedLayer) -> None:
    """The baseline float kernel sums +/-1 products in float32: exact integers below 2^24 only."""
    if layer.fan_in >= 2 ** 24:
        raise EngineError(f"the float kernel sums {layer.fan_in} +/-1 products per unit, past the 2^24 that float32 "
                          "sums exactly; run the hidden layers on XNOR (hidden='xnor').")


class _FloatDense(_Layer):
    """Dense layer on the float baseline kernel with +/-1 float inputs (the speed-up's reference)."""

    def __init__(self, layer, device, packed_out, xnor_impl):
        _check_float_fan_in(layer)
        super().__init__(layer, device, packed_out, xnor_impl)

    def __call__(self, a: torch.Tensor):
        return self.finish(kernels.baseline_gemm(a.reshape(a.shape[0], -1), self.weight), self.rhs)


class _FloatConv(_Layer):
    """Convolution as float im2col + the baseline kernel, +/-1 float inputs, the model's zero padding."""

    def __init__(self, layer, device, packed_out, xnor_impl):
        _check_float_fan_in(layer)
        super().__init__(layer, device, packed_out, xnor_impl)

    def __call__(self, a: torch.Tensor):
        return self.finish(_float_conv(self.spec, self.weight, a), self.rhs)


def _float_conv(spec: ExportedLayer, weight: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Channels-last, max-pooled pre-activation (N, H', W', out) of a conv on float NCHW inputs."""
    n, _, h, w = a.shape
    cols = F.unfold(a, spec.kernel_size, padding=spec.padding).transpose(1, 2).reshape(n * h * w, -1)
    y = kernels.baseline_gemm(cols.contiguous(), weight).view(n, h, w, -1)
    return _max_pool(y, spec.pool)


class _FirstLayer(_Layer):
    """The first layer, on real inputs; see FIRST_LAYERS for the ways it can run."""

    def __init__(self, layer, device, packed_out, xnor_impl, mode: str):
        super().__init__(layer, device, packed_out, xnor_impl)
        self.mode = mode
        spec = layer
        conv = spec.kind == "conv"
        weight = self.weight.view(-1, *spec.in_shape[:1], spec.kernel_size, spec.kernel_size) if conv else None
        if mode == "bitplane":
            if conv:
                rows, pad_agreements = _channels_last_weight(weight)
                c, h, w = spec.in_shape
                self.correction = INPUT_LEVELS * _border_correction(weight, h, w, spec.padding, pad_agreements)
            else:
                rows = self.weight
            self.k, self.bits = rows.shape[1], kernels.pack(rows.contiguous())
        elif mode == "integer":
            if 2 * INPUT_LEVELS * spec.fan_in >= 2 ** 24:
                raise EngineError(f"the integer first layer is exact in float32 up to {2 ** 24 // (2 * INPUT_LEVELS)} "
                                  f"inputs per unit; this one has {spec.fan_in}.")
            # P = sum over the pixels inside the image of (2x - 255) w = 2 (x . w) - 255 * (those w summed).
            if conv:
                c, h, w = spec.in_shape
                inside = F.conv2d(torch.ones(1, c, h, w, device=device, dtype=torch.float64), weight.double(),
                                  padding=spec.padding)[0]
                self.weight_sum = (INPUT_LEVELS * inside).permute(1, 2, 0).float().contiguous()  # (H, W, out)
            else:
                # P >= rhs  <=>  x . w >= (rhs + 255 sum(w)) / 2: one comparison on the matmul's output.
                weight_sum = INPUT_LEVELS * self.weight.sum(1)
                self.integer_rhs = None if self.output else (self.rhs + weight_sum) / 2
                self.weight_sum = weight_sum
        elif mode == "int8":
            # x - 128 as int8 times the +/-1 weights on torch's int8 matmul, exact int32 sums d; then
            # P = sum (2x - 255) w = 2 (d + 128 sum(w)) - 255 sum(w) = 2 d + sum(w), the sums over the pixels
            # inside the image (a padded tap reads x - 128 = 0, as the float model reads 0 there).
            if conv:
                c, h, w = spec.in_shape
                if 2 * spec.padding != spec.kernel_size - 1:
                    raise EngineError("the int8 first layer runs convolutions that keep the image's size "
                                      f"(padding (kernel - 1) / 2); this one has kernel {spec.kernel_size}, padding "
                                      f"{spec.padding}.")
                rows = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # taps (kh, kw), channels fastest
                self.weight_t_i8 = rows.to(torch.int8).t().contiguous()
                inside = F.conv2d(torch.ones(1, c, h, w, device=device, dtype=torch.float64), weight.double(),
                                  padding=spec.padding)[0]
                self.weight_sum_i32 = inside.permute(1, 2, 0).round().to(torch.int32).contiguous()  # (H, W, out)
            else:
                self.weight_t_i8 = self.weight.to(torch.int8).t().contiguous()
                self.weight_sum_i32 = self.weight.sum(1).to(torch.int32)

    def __call__(self, x: torch.Tensor, x_float: Callable[[], torch.Tensor]):
        spec = self.spec
        if self.mode == "float":
            xf = x_float()
            if spec.kind == "dense":
                y = kernels.baseline_gemm(xf.reshape(xf.shape[0], -1).contiguous(), self.weight)
            else:
                y = _float_conv(spec, self.weight, xf)
            return self.finish(y, self.float_rhs)
        if x.dtype != torch.uint8:
            raise EngineError(f"the {self.mode} first layer takes 8-bit images, got "
                              f"{str(x.dtype).replace('torch.', '')}.")
        if self.mode == "integer" and spec.kind == "dense" and not self.output:
            return self.finish(x.reshape(x.shape[0], -1).to(torch.float32) @ self.weight.T, self.integer_rhs)
        if self.mode == "int8" and spec.kind == "dense":
            signed = (x.reshape(x.shape[0], -1) ^ 128).view(torch.int8)  # x - 128, in two's complement
            p = 2 * torch._int_mm(signed, self.weight_t_i8) + self.weight_sum_i32
            return self.finish(p, self.rhs, acc_scale=INPUT_LEVELS)
        if self.mode == "int8":
            p = self._int8_conv(x)
            bound = self._one_pass_bound()
            if bound is not None:  # pool, direction and threshold in one pass
                return kernels.conv_threshold(p, bound, max(1, spec.pool), None,
                                              None if self.flipped else self.direction)
            return self.finish(_max_pool(p, spec.pool), self.rhs, acc_scale=INPUT_LEVELS)
        p = self._bitplane(x) if self.mode == "bitplane" else self._integer(x)
        return self.finish(p, self.rhs, acc_scale=INPUT_LEVELS)

    def _bitplane(self, x: torch.Tensor) -> torch.Tensor:
        spec, n = self.spec, x.shape[0]
        planes = _bit_planes(x)
        if spec.kind == "dense":
            d = self.xnor(kernels.pack(planes.reshape(PLANES * n, -1)), self.bits, self.k)
            return _sum_planes(d.view(PLANES, n, -1))
        c, h, w = spec.in_shape
        pixels = kernels.pack(planes.permute(0, 1, 3, 4, 2).reshape(-1, c)).view(PLANES * n, h, w, -1)
        d = self.xnor_conv(pixels, self.bits, self.k)
        p = (_sum_planes(d.view(PLANES, n, h * w, -1)) - self.correction).view(n, h, w, -1)
        return _max_pool(p, spec.pool)

    def _int8_conv(self, x: torch.Tensor) -> torch.Tensor:
        """P (N, H, W, out) int32, channels-last: im2col of x - 128 on int8 (taps outside the image 0), one
        torch int8 matmul, then 2 d + the weights summed over the taps inside the image at each pixel."""
        spec, n = self.spec, x.shape[0]
        _, h, w = spec.in_shape
        k, pad = spec.kernel_size, spec.padding
        signed = F.pad((x ^ 128).view(torch.int8).permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))
        cols = torch.stack([signed[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], dim=3)
        d = torch._int_mm(cols.reshape(n * h * w, -1), self.weight_t_i8).view(n, h, w, -1)
        return d.mul_(2).add_(self.weight_sum_i32)

    def _integer(self, x: torch.Tensor) -> torch.Tensor:
        """P from torch's float32 matmul on the pixel values: every partial sum is an integer below
        2^24, so the result is exact whatever the order of the additions (TF32 too: 0..255 and +/-1
        are exact in it). Convolutions go through unfold + matmul, never a Winograd or FFT algorithm."""
        spec, n = self.spec, x.shape[0]
        pixels = x.to(torch.float32)
        if spec.kind == "dense":
            return 2 * (pixels.reshape(n, -1) @ self.weight.T) - self.weight_sum
        _, h, w = spec.in_shape
        cols = F.unfold(pixels, spec.kernel_size, padding=spec.padding).transpose(1, 2)
        y = (cols @ self.weight.T).view(n, h, w, -1)
        return _max_pool(2 * y - self.weight_sum, spec.pool)


# The first layer's modes: the paper's float kernel, Algorithm 5, or the same integers on fp32 matmul.
FIRST_LAYERS = {
    "float": "float baseline kernel on the scaled inputs",
    "bitplane": "XNOR on the 8 bit planes of the 8-bit inputs",
    "integer": "8-bit inputs times +/-1 weights on torch's fp32 matmul (exact integers)",
    "int8": "8-bit inputs less 128 times +/-1 weights on torch's int8 matmul (exact integers)",
}


class PackedEngine:
    """An exported model prepared on a device.

    first_layer: one of FIRST_LAYERS ("bitplane", "integer" and "int8" for 8-bit inputs only) or "auto": for
    each batch, the variant ``variants.default_variant`` picks for that many images among those this engine can
    run (the fallback, xnor, has the float first layer). hidden: "xnor" (packed bits) or "float" (the baseline
    float kernel on +/-1 floats). xnor_impl: which ``kernels.xnor_gemm`` (``impl=``: "tuned", "csa", "paper",
    "tc"; on CPU they are one kernel). variant: "layers" (this module's loop over the layers, or, with the first
    layer "auto" on a CPU, the native plan for the batches the rule gives to it) or "plan" (always the whole
    network in one native call, ``native_engine.NativePlan``; CPU, hidden "xnor", first layer auto, bitplane or
    float).
    """

    def __init__(self, exported: ExportedModel, device: torch.device | str = "cpu", first_layer: str = "auto",
                 hidden: str = "xnor", xnor_impl: str = "tuned", variant: str = "layers"):
        if first_layer != "auto" and first_layer not in FIRST_LAYERS:
            raise EngineError(f"first_layer must be auto, {', '.join(FIRST_LAYERS)}, got {first_layer!r}.")
        if hidden not in HIDDEN_MODES:
            raise EngineError(f"hidden must be one of {', '.join(HIDDEN_MODES)}, got {hidden!r}.")
        eight_bit = exported.input_encoding == UINT8_SCALE
        if first_layer not in ("auto", "float") and not eight_bit:
            raise EngineError(f"the {first_layer} first layer needs a model trained on 8-bit images scaled as "
                              "2x/255 - 1; this one takes other inputs, so use the float first layer.")
        self.exported, self.device = exported, torch.device(device)
        self.first_layer, self.hidden, self.xnor_impl, self.variant = first_layer, hidden, xnor_impl, variant
        self.plan = None
        self._plans: dict[str, Any] = {}  # first layer -> NativePlan, built when the rule first picks it
        # (batch, torch_int8_is_fast()) -> the rule's variant: a call of one image pays a lookup, not the rule
        self._chosen: dict[tuple[int, bool], str] = {}
        if variant not in VARIANTS:
            raise EngineError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
        if variant == "plan":
            if self.device.type != "cpu" or hidden != "xnor" or first_layer not in ("auto", "bitplane", "float"):
                raise EngineError("the plan variant runs XNOR hidden layers on a CPU, with a bitplane or float first "
                                  f"layer; this engine asks for {first_layer} first and {hidden} hidden layers on "
                                  f"{self.device.type}.")
            from .native_engine import NativePlan
            self.plan = NativePlan(exported, first_layer)
            return
        packed = hidden == "xnor"
        first, *rest = exported.layers
        self._firsts: dict[str, _FirstLayer] = {}
        self._make_first = lambda mode: _FirstLayer(first, self.device, packed, xnor_impl, mode)
        if first_layer != "auto":
            self._first(first_layer)  # built now, so that a first layer that cannot run this model says so here
        kinds = {("xnor", "dense"): _XnorDense, ("xnor", "conv"): _XnorConv,
                 ("float", "dense"): _FloatDense, ("float", "conv"): _FloatConv}
        self.rest = [kinds[hidden, layer.kind](layer, self.device, packed, xnor_impl) for layer in rest]

    def _first(self, mode: str) -> _FirstLayer:
        if mode not in self._firsts:
            self._firsts[mode] = self._make_first(mode)
        return self._firsts[mode]

    def _runs(self, name: str) -> bool:
        """Whether this engine runs the named variant: its own layers with another first layer (same hidden
        layers and kernel), or, choosing per batch on a CPU, the native plan (the tuned XNOR kernel)."""
        v = ENGINE_VARIANTS[name]
        if v.builder == "plan":
            return (self.first_layer == "auto" and self.device.type == "cpu" and self.hidden == "xnor"
                    and self.xnor_impl == "tuned")
        return v.builder == "packed" and v.hidden == self.hidden and v.xnor_impl == self.xnor_impl

    def variant_for(self, batch: int) -> str | None:
        """The row of ``variants.ENGINE_VARIANTS`` this engine runs a batch of ``batch`` images as (None: an
        explicit first layer or variant given when it was built)."""
        if self.first_layer != "auto" or self.plan is not None:
            return None
        key = (batch, torch_int8_is_fast())
        if key not in self._chosen:
            self._chosen[key] = default_variant(self.exported, self.device.type, batch, key[1], among=self._runs)
        return self._chosen[key]

    def first_layer_for(self, batch: int) -> str:
        """The first layer this engine runs a batch of ``batch`` images on."""
        name = self.variant_for(batch)
        return self.first_layer if name is None else ENGINE_VARIANTS[name].first_layer

    def _plan_for(self, batch: int):
        """The native plan that runs a batch of ``batch`` images, or None where this engine's own layers do."""
        if self.plan is not None:
            return self.plan
        name = self.variant_for(batch)
        if name is None or ENGINE_VARIANTS[name].builder != "plan":
            return None
        first_layer = ENGINE_VARIANTS[name].first_layer
        if first_layer not in self._plans:
            from .native_engine import NativePlan
            self._plans[first_layer] = NativePlan(self.exported, first_layer)
        return self._plans[first_layer]

    def _outputs(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None):
        """Each layer's output in the engine's own form (packed words or +/-1 floats), then the logits."""
        if transform is None:
            transform = own_transform(self.exported)
        plan = self._plan_for(len(x))
        if plan is not None:
            yield from plan.outputs(x, transform)
            return
        x = x.to(self.device)
        out = self._first(self.first_layer_for(len(x)))(x, lambda: transform(x).float().contiguous())
        yield out
        for layer in self.rest:
            out = layer(out)
            yield out

    @torch.no_grad()
    def logits(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """float64 logits of a batch of raw inputs. ``transform`` maps them to the float model's inputs (the
        model's own preprocessing, ``data.input_transform``; default: 2x/255 - 1, for 8-bit models only)."""
        plan = self._plan_for(len(x))
        if plan is not None:  # the logits alone, without every layer's outputs; its own transform where none given
            return plan.logits(x, transform)
        *_, logits = self._outputs(x, transform)
        return logits

    @torch.no_grad()
    def trace(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> list[torch.Tensor]:
        """Every binarizing layer's activations as +/-1 floats in the float model's layout ((N, C) or
        (N, C, H, W)), then the logits: to compare with the float model unit by unit."""
        outputs = list(self._outputs(x, transform))
        for i, (spec, out) in enumerate(zip(self.exported.layers, outputs[:-1])):
            if out.dtype == torch.int64:  # packed words, channels last
                pm1 = kernels.unpack(out.reshape(-1, out.shape[-1]), spec.out_features)
                out = pm1.view(*out.shape[:-1], spec.out_features)
                outputs[i] = out.permute(0, 3, 1, 2).contiguous() if out.dim() == 4 else out
        return outputs

    def predict(self, x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                batch_size: int = 1000, on_batch: Callable[[int], object] | None = None) -> torch.Tensor:
        """Predicted classes (int64, on the engine's device) for raw inputs, in batches; ``on_batch`` is told
        each batch's number of images once it is done."""
        predicted = []
        for i in range(0, len(x), batch_size):
            predicted.append(self.logits(x[i:i + batch_size], transform).argmax(1))
            if on_batch is not None:
                on_batch(len(predicted[-1]))
        return torch.cat(predicted)


def torch_int8_is_fast() -> bool:
    """Whether torch's int8 matmul (``torch._int_mm``) has a fast kernel on this CPU: AVX512-VNNI or AMX, by torch's
    own CPU checks. Without one it is a plain loop, slower than the fp32 matmul by two orders of magnitude."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, check, lambda: False)()) for check in ("_is_vnni_supported", "_is_amx_tile_supported"))


# EngineVariant.builder -> (exported, device, variant) -> an engine with logits(x, transform) and predict().
BUILDERS: dict[str, Callable[[ExportedModel, torch.device, EngineVariant], "PackedEngine"]] = {
    "packed": lambda exported, device, v: PackedEngine(exported, device, v.first_layer, v.hidden, v.xnor_impl),
    "plan": lambda exported, device, v: PackedEngine(exported, device, v.first_layer, variant="plan"),
}


def make_engine(exported: ExportedModel, device: torch.device | str = "cpu", variant: str = AUTO) -> PackedEngine:
    """The engine that runs the named row of ``variants.ENGINE_VARIANTS`` (a VariantRefused, one sentence, when it
    cannot run this model on the device), or for "auto" the rule's choice for each batch: a ``PackedEngine``
    whose first layer follows ``variants.default_variant`` (every variant the rule picks today is one of its
    first layers)."""
    device = torch.device(device)
    if variant == AUTO:
        return PackedEngine(exported, device)
    v = check_variant(variant, exported, device.type)
    return BUILDERS[v.builder](exported, device, v)


def default_batch_size(exported: ExportedModel) -> int:
    """Images per batch: the MLP's intermediates are small, a conv net's are per pixel."""
    return 100 if any(layer.kind == "conv" for layer in exported.layers) else 1000


def export_error(exported: ExportedModel, x: torch.Tensor, y: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None, device: torch.device,
                 variant: str = AUTO, on_batch: Callable[[int], object] | None = None) -> float:
    """Test error in % of an exported model run by the packed engine (``variant``: a row of ENGINE_VARIANTS or auto;
    ``on_batch`` as for ``predict``)."""
    if device.type == "cuda" and not kernels.available()["cuda"]:
        raise EngineError("the CUDA kernels are not available here; run the engine with --device cpu.")
    if tuple(x.shape[1:]) != tuple(exported.input_shape):
        raise EngineError(f"the model takes inputs of shape {list(exported.input_shape)}, but the data has "
                          f"{list(x.shape[1:])}.")
    engine = make_engine(exported, device, variant)
    predicted = engine.predict(x, transform, default_batch_size(exported), on_batch)
    return 100.0 * (predicted.cpu() != y.cpu()).sum().item() / max(len(y), 1)


def engine_error(record: dict, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device, variant: str = AUTO,
                 on_batch: Callable[[int], object] | None = None) -> float:
    """Test error in % of the model run by the packed engine (``bnnctl eval --engine xnor [--variant NAME]``)."""
    if device.type == "cuda" and not kernels.available()["cuda"]:
        raise EngineError("the CUDA kernels are not available here; run the engine with --device cpu.")
    return export_error(export_model(record, model), x, y, transform, device, variant, on_batch)
