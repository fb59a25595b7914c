"""Bit-packing and XNOR-popcount GEMM kernels, the same semantics on CPU and CUDA tensors.

    from bnnctl import kernels
    a_bits, b_bits = kernels.pack(a), kernels.pack(b)   # (m, k), (n, k) floats -> int64 words
    c = kernels.xnor_gemm(a_bits, b_bits, k)            # int32 (m, n) = sign(a) @ sign(b).T exactly

Packed layout: row r of a (rows, k) float matrix becomes ceil(k / 64) int64 words; element j is bit
j % 64 (LSB first) of word j // 64, set when x >= 0, so 0 and -0.0 count as +1 as in
``bnnctl.core.binarize.sign_pm1`` (and NaN as -1); bits past k are zero. Viewed as int32 (``t.view(torch.int32)``) the
same buffer is the 32-bit-word layout, which the paper-style kernel reads. The sign is exact for every
floating dtype: float32 and float64 are packed from their own bits (a float64 is never rounded to float32,
which would turn -1e-300 into -0.0, i.e. +1), and float16 / bfloat16 widen to float32 exactly.

Thresholds: the products are integers in [-k, k], so ``dot >= t`` for a real t is ``dot >= ceil(t)``;
``threshold_bounds`` converts thresholds once to those int32 boundaries (in float64), and ``pack_ge``
packs ``value >= bound`` exactly -- no float32 comparison, which goes wrong past 2^24 or for a float64
threshold that float32 rounds across an integer.

The native code lives in ``cuda/`` and is compiled on first use (see ``build.py``); a wrong dtype,
device or shape raises ``KernelError``, a one-sentence ``UserError``.
"""
from __future__ import annotations

import numbers

import torch

from ..errors import UserError
from .build import KernelBuildError, LoadedExtension, load_extension

__all__ = ["KernelError", "KernelBuildError", "pack", "unpack", "pack_ge", "threshold_bounds", "xnor_gemm",
           "baseline_gemm", "conv_threshold", "xnor_conv", "xnor_few_rows", "available", "words_for", "cpu_isa",
           "supported_cpu_isas", "use_cpu_isa", "native_ops", "PlanRefused", "create_plan", "release_plan", "plan_info",
           "plan_logits", "plan_trace", "plan_takes_pixels", "XNOR_IMPLS", "MAX_K", "MAX_FEW_ROWS"]

# xnor_gemm(impl=...) -> the torch.ops.bnnctl op that implements it.
XNOR_IMPLS = {"tuned": "xnor_gemm", "csa": "xnor_gemm_csa", "paper": "xnor_gemm_paper", "tc": "xnor_tc_gemm"}
# The products are int32, and a threshold boundary may be k + 1 (cuda/glue/op_checks.h kMaxK).
MAX_K = 2 ** 31 - 2
# The CUDA kernels' limits (their launchers refuse larger problems): rows of a per launch (65535 blocks of
# this many rows), and for the tensor-core kernel k (4 * popcount must fit in int32) and its GPU.
CUDA_MAX_ROWS = {"tuned": 65535 * 128, "csa": 65535 * 128, "paper": 65535 * 16, "tc": 65535 * 128,
                 "baseline": 65535 * 16}
CUDA_TC_MAX_K = 2 ** 29
# Rows the few-row kernels take at once (cuda/cpu/xnor_kernels.h kMaxFewRows).
MAX_FEW_ROWS = 8


class KernelError(UserError):
    """A kernel was called with arguments it cannot take (dtype, device, shape)."""


_loaded: LoadedExtension | KernelBuildError | None = None


def _extension() -> LoadedExtension:
    """The loaded extension; a failed build is remembered, not retried on every call."""
    global _loaded
    if _loaded is None:
        try:
            _loaded = load_extension()
        except KernelBuildError as e:
            _loaded = e
    if isinstance(_loaded, KernelBuildError):
        raise _loaded
    return _loaded


def native_ops():
    """The extension's ops, ``torch.ops.bnnctl``, built and loaded on first use: the fused training step's C++
    passes are called there directly; everything else goes through this module's checked functions."""
    _extension()
    return torch.ops.bnnctl


def words_for(k: int) -> int:
    """Number of 64-bit words per packed row of k entries."""
    return (k + 63) // 64


def _check_device(t: torch.Tensor, what: str) -> None:
    if t.device.type == "cuda":
        ext = _extension()
        if ext.variant != "cuda":
            raise KernelError(f"{what} got CUDA tensors but the CUDA kernels are not built here "
                              f"({ext.cuda_problem}); use CPU tensors")
    elif t.device.type != "cpu":
        raise KernelError(f"{what} runs on CPU or CUDA tensors, not on {t.device.type}")


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}"
    layout = "" if t.layout == torch.strided else f"{str(t.layout).replace('torch.', '')} "
    return f"a {t.dim()}-D {layout}{str(t.dtype).replace('torch.', '')} tensor"


def _is_dense(t) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided


def _check_cuda_rows(t: torch.Tensor, impl: str, what: str) -> None:
    """The CUDA launchers cover at most CUDA_MAX_ROWS[impl] rows of the left operand per call."""
    if t.device.type == "cuda" and t.shape[0] > CUDA_MAX_ROWS[impl]:
        raise KernelError(f"{what} on CUDA takes at most {CUDA_MAX_ROWS[impl]} rows of a per call, got "
                          f"{t.shape[0]}; split a into batches")


# Floating dtypes the native pack reads directly; every other floating dtype (float16, bfloat16, the float8
# types) widens to float32 exactly, sign, zero and NaN included.
_NATIVE_PACK_DTYPES = (torch.float32, torch.float64)


def pack(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Pack the signs of a 2-D float tensor: (rows, k) -> int64 (rows, ceil(k / 64)), same device.

    ``dim=0`` packs columns instead: (k, cols) -> (cols, ceil(k / 64)), the right-hand operand of a
    matmul ``x @ w`` written as ``xnor_gemm(pack(x), pack(w, dim=0), k)``. The sign is taken in x's own
    dtype (bit = x >= 0: 0 and -0.0 are +1, NaN is -1), whatever the dtype and the floating-point mode.
    """
    if not _is_dense(x) or x.dim() != 2 or not x.is_floating_point():
        raise KernelError(f"pack() takes a 2-D floating-point tensor (rows, k), got {_describe(x)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim not in (0, 1, -1, -2):
        raise KernelError(f"pack() packs along dim 1 (rows) or 0 (columns) of a 2-D tensor, not dim {dim!r}")
    _check_device(x, "pack()")
    x = x.detach()
    if dim in (0, -2):
        x = x.t()
    if x.dtype not in _NATIVE_PACK_DTYPES:
        x = x.to(torch.float32)
    return native_ops().pack(x.contiguous())


def unpack(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack(): int64 (rows, ceil(k / 64)) -> float32 (rows, k) of +1/-1."""
    k = _check_packed(packed, k, "unpack()")
    shifts = torch.arange(64, device=packed.device, dtype=torch.int64)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # arithmetic shift; & 1 keeps just the bit
    bits = bits.reshape(packed.shape[0], -1)[:, :k]
    return bits.to(torch.float32) * 2 - 1


def _check_k(k, what: str) -> int:
    """k as a Python int in [0, MAX_K] (numpy and torch integers too), else a KernelError."""
    if isinstance(k, torch.Tensor) and k.dim() == 0 and not k.is_floating_point() and k.dtype != torch.bool:
        k = k.item()
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise KernelError(f"{what} needs k, the number of real entries per row, as an int >= 0, got {k!r}")
    if k > MAX_K:
        raise KernelError(f"{what}: k = {k} is more than {MAX_K}, beyond what the int32 products can hold")
    return int(k)


def _check_packed(t, k, what: str, name: str = "the packed tensor") -> int:
    """Checks a packed operand and its k; returns k as an int."""
    if not _is_dense(t) or t.dim() != 2 or t.dtype != torch.int64:
        raise KernelError(f"{what} takes {name} as a 2-D int64 tensor from pack(), got {_describe(t)}")
    k = _check_k(k, what)
    if t.shape[1] != words_for(k):
        raise KernelError(f"{what}: k = {k} needs {words_for(k)} words per packed row, but {name} has "
                          f"{t.shape[1]}")
    return k


def threshold_bounds(thresh, k: int) -> torch.Tensor:
    """int32 boundaries of per-unit thresholds on an integer product in [-k, k]: dot >= t exactly when
    dot >= bound, where bound = ceil(t) clamped to [-k, k + 1] (-k: always true; k + 1: never).

    Computed once, in float64 on the CPU (float32, float16 and bfloat16 widen to it exactly; integer
    thresholds are used as they are), and returned on thresh's device. A NaN or infinite threshold is a
    KernelError: it has no boundary (a unit that always or never fires has -k or k + 1).
    """
    k = _check_k(k, "threshold_bounds()")
    if not _is_dense(thresh) or thresh.dim() != 1 or thresh.dtype == torch.bool or thresh.is_complex():
        raise KernelError(f"threshold_bounds() takes a 1-D tensor of thresholds, got {_describe(thresh)}")
    host = thresh.detach().cpu()
    if host.is_floating_point():
        host = host.double()
        bad = ~torch.isfinite(host)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise KernelError(f"threshold {i} is {host[i].item()}, but thresholds must be finite numbers (a unit "
                              f"that always fires has threshold {-k}, one that never fires {k + 1})")
        host = torch.ceil(host).clamp(-k, k + 1)
    else:
        host = host.to(torch.int64).clamp(-k, k + 1)
    return host.to(torch.int32).to(thresh.device)


def pack_ge(value: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Packed bits of ``value[r, j] >= bound[j]``: (rows, n) -> int64 (rows, ceil(n / 64)), like pack().

    value and bound are both int32 (exact integer comparison: the threshold form of an XNOR layer, with
    bounds from ``threshold_bounds``) or both float32 (an exact float comparison; NaN gives 0).
    """
    for name, t, dims in (("value", value, 2), ("bound", bound, 1)):
        if not _is_dense(t) or t.dim() != dims or t.dtype not in (torch.int32, torch.float32):
            raise KernelError(f"pack_ge() takes {name} as a {dims}-D int32 or float32 tensor, got {_describe(t)}")
    if value.dtype != bound.dtype:
        raise KernelError(f"pack_ge() compares values and bounds of one dtype, got "
                          f"{str(value.dtype).replace('torch.', '')} and {str(bound.dtype).replace('torch.', '')}")
    if bound.shape[0] != value.shape[1]:
        raise KernelError(f"pack_ge() needs one bound per column: {value.shape[1]} columns but {bound.shape[0]} "
                          "bounds")
    if value.device != bound.device:
        raise KernelError(f"pack_ge() needs value and bound on the same device, got {value.device} and "
                          f"{bound.device}")
    _check_device(value, "pack_ge()")
    return native_ops().pack_ge(value.detach().contiguous(), bound.detach().contiguous())


def conv_threshold(products: torch.Tensor, bound: torch.Tensor, pool: int = 1,
                   correction: torch.Tensor | None = None, direction: torch.Tensor | None = None) -> torch.Tensor:
    """A binary convolution's epilogue in one pass, on a CPU: int32 products (N, H, W, C) channels-last ->
    packed bits (N, H // pool, W // pool, ceil(C / 64)) of ``direction * maxpool(products - correction)
    >= bound``; correction int32 (H * W, C) or None, direction int32 (C,) or None (+1), bound int32 (C,).
    The same bits as the separate steps (subtract, max-pool, multiply, pack_ge), without their passes
    over the products."""
    for name, t in (("products", products), ("bound", bound), ("correction", correction), ("direction", direction)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.device.type != "cpu"):
            raise KernelError(f"conv_threshold() takes {name} as an int32 CPU tensor, got {_describe(t)}")
    if products.dim() != 4:
        raise KernelError(f"conv_threshold() takes products (N, H, W, C), got {_describe(products)}")
    return native_ops().conv_threshold(products.contiguous(), None if correction is None else correction.contiguous(),
                                       int(pool), None if direction is None else direction.contiguous(),
                                       bound.contiguous())


def xnor_gemm(a: torch.Tensor, b: torch.Tensor, k: int, impl: str = "tuned") -> torch.Tensor:
    """int32 (m, n) = (+/-1 A) @ (+/-1 B).T from a = pack(A) (m, k) and b = pack(B) (n, k).

    Exact: k - 2 * popcount(a_i XOR b_j) over the k real bits (padding bits are ignored). ``impl``
    picks the CUDA kernel: "tuned" (register-tiled, the default), "csa" (the same with carry-save
    popcounts, half the POPC instructions), "paper" (the paper's 16x16 tiled kernel) or "tc" (tensor
    cores, sm_80+, see ``tensorcore``); on CPU all run the same vectorised kernel.
    """
    if not isinstance(impl, str) or impl not in XNOR_IMPLS:
        raise KernelError(f"unknown xnor_gemm impl {impl!r}; choose one of {', '.join(XNOR_IMPLS)}")
    k = _check_packed(a, k, "xnor_gemm()", "a")
    _check_packed(b, k, "xnor_gemm()", "b")
    if a.device != b.device:
        raise KernelError(f"xnor_gemm() needs a and b on the same device, got {a.device} and {b.device}")
    _check_device(a, "xnor_gemm()")
    _check_cuda_rows(a, impl, f"xnor_gemm(impl={impl!r})")
    if impl == "tc" and a.device.type == "cuda":
        if k > CUDA_TC_MAX_K:
            raise KernelError(f"xnor_gemm(impl='tc') on CUDA takes k up to {CUDA_TC_MAX_K}, got {k}; use "
                              "impl='tuned'")
        if torch.cuda.get_device_capability(a.device) < (8, 0):
            raise KernelError(f"xnor_gemm(impl='tc') needs a GPU of compute capability 8.0 or later, and "
                              f"{torch.cuda.get_device_name(a.device)} is "
                              f"{'.'.join(map(str, torch.cuda.get_device_capability(a.device)))}; use impl='tuned'")
    return getattr(native_ops(), XNOR_IMPLS[impl])(a.contiguous(), b.contiguous(), k)


def xnor_conv(x: torch.Tensor, b: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """A stride-1 binary convolution on a CPU: int32 (N * H * W, out) = xnor_gemm(im2col(x), b), exactly, with
    x channels-last packed words (N, H, W, C words) (taps outside the image all-zero words) and b (out,
    kernel * kernel * C words), taps in (kh, kw) order. The im2col rows are gathered into the GEMM's panels
    straight from x, never written out whole."""
    for name, t in (("x", x), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.device.type != "cpu":
            raise KernelError(f"xnor_conv() takes {name} as int64 packed words on the CPU, got {_describe(t)}")
    if x.dim() != 4 or b.dim() != 2:
        raise KernelError(f"xnor_conv() takes x (N, H, W, words) and b (out, words), got {_describe(x)} and "
                          f"{_describe(b)}")
    return native_ops().xnor_conv(x.contiguous(), b.contiguous(), int(kernel), int(padding))


def xnor_few_rows(a: torch.Tensor, b: torch.Tensor, k: int, bound: torch.Tensor | None = None, planes: bool = False,
                  words_per_call: int = 1) -> torch.Tensor:
    """The few-row XNOR kernel (GEMV-shaped, for 1 to MAX_FEW_ROWS rows of a) with its fused epilogue, on a CPU:
    int32 (rows, n) = xnor_gemm(a, b, k); with ``bound`` (n int32) the packed bits (rows, ceil(n / 64)) of
    ``product >= bound`` straight from the kernel's outputs; with ``planes`` a's rows are bit planes 0, 1, ... of
    one input and the one output row is sum over r of 2^r times row r's products. The plan runs dense layers on it;
    ``words_per_call`` (64 outputs each) sets how the columns are split between calls, as the plan's threads split
    them."""
    k = _check_packed(a, k, "xnor_few_rows()", "a")
    _check_packed(b, k, "xnor_few_rows()", "b")
    if a.device.type != "cpu" or b.device.type != "cpu" or not 1 <= a.shape[0] <= MAX_FEW_ROWS:
        raise KernelError(f"xnor_few_rows() takes 1 to {MAX_FEW_ROWS} rows of a and b on the CPU, got "
                          f"{a.shape[0]} rows on {a.device.type} and b on {b.device.type}")
    if bound is not None and (not _is_dense(bound) or bound.dtype != torch.int32 or bound.shape != (b.shape[0],)):
        raise KernelError(f"xnor_few_rows() takes bound as {b.shape[0]} int32 values, got {_describe(bound)}")
    return native_ops().xnor_few_rows(a.contiguous(), b.contiguous(), k,
                                      None if bound is None else bound.contiguous(), bool(planes), int(words_per_call))


# plan_create's statuses (cuda/glue/plan_ops.cpp PlanStatus): why an export was refused.
_PLAN_REFUSALS = {1: "not_export", 2: "version", 3: "damaged", 4: "cannot_run"}


class PlanRefused(KernelError):
    """The native plan refused an export: ``reason`` is not_export, version, damaged (the checks of
    ``infer.bnnx.read_export``, made by the native reader) or cannot_run (the plan cannot run the model as asked)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def create_plan(data: bytes, name: str, first_layer: str = "auto") -> int:
    """A native plan (``cuda/cpu/xnor_plan.h``) of a .bnnx file's bytes, for the CPU instruction set in use now;
    returns its handle (``release_plan`` frees it). ``name`` names the file in messages; first_layer: "bitplane",
    "float" or "auto". The bytes are checked as ``infer.bnnx.read_export`` checks them: PlanRefused otherwise."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    handle, status, message = native_ops().plan_create(raw, str(name), first_layer)
    if status:
        raise PlanRefused(_PLAN_REFUSALS[status], message)
    return handle


def release_plan(handle: int) -> None:
    native_ops().plan_release(handle)


def plan_info(handle: int) -> tuple[str, str, int, int]:
    """(instruction set, first layer, values per input, classes) of a plan."""
    return tuple(native_ops().plan_info(handle))


def plan_logits(handle: int, x: torch.Tensor) -> torch.Tensor:
    """float64 logits (n, classes) of a batch x (n, ...): contiguous uint8 (bitplane) or float32 (float) on the CPU,
    or uint8 pixels for a float first layer whose export carries a per-pixel preprocessing (plan_takes_pixels),
    mapped through it natively."""
    return native_ops().plan_logits(handle, x)


def plan_takes_pixels(handle: int) -> bool:
    """Whether a float first layer's plan maps uint8 pixels through its export's per-pixel preprocessing."""
    return bool(native_ops().plan_takes_pixels(handle))


def plan_trace(handle: int, x: torch.Tensor) -> list[torch.Tensor]:
    """Each binarizing layer's packed output (int64 words: (n, words) dense, (n, H, W, words) conv), then the
    logits."""
    return list(native_ops().plan_trace(handle, x))


def baseline_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 (m, n) = a (m, k) @ b (n, k).T with the paper's unoptimised kernel (CUDA: 16x16 tiles;
    CPU: a plain register-blocked loop). The reference point of the paper's speed-up figure."""
    for name, t in (("a", a), ("b", b)):
        if not _is_dense(t) or t.dim() != 2 or not t.is_floating_point():
            raise KernelError(f"baseline_gemm() takes {name} as a 2-D floating-point tensor, got {_describe(t)}")
    if a.shape[1] != b.shape[1]:
        raise KernelError(f"baseline_gemm() multiplies a (m, k) by b (n, k).T, but a has k = {a.shape[1]} "
                          f"and b has k = {b.shape[1]}")
    if a.device != b.device:
        raise KernelError(f"baseline_gemm() needs a and b on the same device, got {a.device} and {b.device}")
    _check_device(a, "baseline_gemm()")
    _check_cuda_rows(a, "baseline", "baseline_gemm()")
    return native_ops().baseline_gemm(a.detach().to(torch.float32).contiguous(),
                                      b.detach().to(torch.float32).contiguous())


def cpu_isa() -> str:
    """Instruction set the CPU kernels use now: "avx512vpopcntdq", "avx2" or "scalar"."""
    return native_ops().cpu_isa()


def supported_cpu_isas() -> list[str]:
    """Instruction sets this CPU can run, slowest first."""
    return list(native_ops().supported_cpu_isas())


class use_cpu_isa:
    """Context manager running the CPU kernels with another supported instruction set (tests use it
    to check every code path the machine has)."""

    def __init__(self, isa: str):
        if isa not in supported_cpu_isas():
            raise KernelError(f"this CPU cannot run the {isa!r} kernels; it supports "
                              f"{', '.join(supported_cpu_isas())}")
        self.isa = isa

    def __enter__(self):
        self.previous = cpu_isa()
        native_ops().set_cpu_isa(self.isa)
        return self

    def __exit__(self, *exc):
        native_ops().set_cpu_isa(self.previous)
        return False


def available() -> dict:
    """What runs here: {"cpu": bool, "cuda": bool, "cpu_isa": str} (builds the extension if needed)."""
    try:
        ext = _extension()
    except KernelBuildError:
        return {"cpu": False, "cuda": False, "cpu_isa": None}
    return {"cpu": True, "cuda": ext.variant == "cuda" and torch.cuda.is_available(), "cpu_isa": cpu_isa()}
