"""Bit-packing and XNOR-popcount GEMM kernels, the same semantics on CPU and CUDA tensors.

    from bnnctl import kernels
    a_bits, b_bits = kernels.pack(a), kernels.pack(b)   # (m, k), (n, k) floats -> int64 words
    c = kernels.xnor_gemm(a_bits, b_bits, k)            # int32 (m, n) = sign(a) @ sign(b).T exactly

Packed layout: row r of a (rows, k) float matrix becomes ceil(k / 64) int64 words; element j is bit
j % 64 (LSB first) of word j // 64, set when x >= 0, so 0 and -0.0 count as +1 as in
``bnnctl.binarize.sign_pm1`` (and NaN as -1); bits past k are zero. Viewed as int32 (``t.view(torch.int32)``) the
same buffer is the 32-bit-word layout, which the paper-style kernel reads.

The native code lives in ``cuda/`` and is compiled on first use (see ``build.py``); a wrong dtype,
device or shape raises ``KernelError``, a one-sentence ``UserError``.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .build import KernelBuildError, LoadedExtension, load_extension

__all__ = ["KernelError", "KernelBuildError", "pack", "unpack", "xnor_gemm", "baseline_gemm", "available",
           "words_for", "cpu_isa", "supported_cpu_isas", "use_cpu_isa", "XNOR_IMPLS"]

# xnor_gemm(impl=...) -> the torch.ops.bnnctl op that implements it.
XNOR_IMPLS = {"tuned": "xnor_gemm", "csa": "xnor_gemm_csa", "paper": "xnor_gemm_paper", "tc": "xnor_tc_gemm"}


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


def _ops():
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
    return f"a {t.dim()}-D {str(t.dtype).replace('torch.', '')} tensor"


def pack(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Pack the signs of a 2-D float tensor: (rows, k) -> int64 (rows, ceil(k / 64)), same device.

    ``dim=0`` packs columns instead: (k, cols) -> (cols, ceil(k / 64)), the right-hand operand of a
    matmul ``x @ w`` written as ``xnor_gemm(pack(x), pack(w, dim=0), k)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise KernelError(f"pack() takes a 2-D floating-point tensor (rows, k), got {_describe(x)}")
    if dim not in (0, 1, -1, -2):
        raise KernelError(f"pack() packs along dim 1 (rows) or 0 (columns) of a 2-D tensor, not dim {dim}")
    _check_device(x, "pack()")
    if dim in (0, -2):
        x = x.t()
    return _ops().pack(x.to(torch.float32).contiguous())


def unpack(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack(): int64 (rows, ceil(k / 64)) -> float32 (rows, k) of +1/-1."""
    _check_packed(packed, k, "unpack()")
    shifts = torch.arange(64, device=packed.device, dtype=torch.int64)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # arithmetic shift; & 1 keeps just the bit
    bits = bits.reshape(packed.shape[0], -1)[:, :k]
    return bits.to(torch.float32) * 2 - 1


def _check_packed(t, k: int, what: str, name: str = "the packed tensor") -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != torch.int64:
        raise KernelError(f"{what} takes {name} as a 2-D int64 tensor from pack(), got {_describe(t)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise KernelError(f"{what} needs k, the number of real entries per row, as an int >= 0, got {k!r}")
    if t.shape[1] != words_for(k):
        raise KernelError(f"{what}: k = {k} needs {words_for(k)} words per packed row, but {name} has "
                          f"{t.shape[1]}")


def xnor_gemm(a: torch.Tensor, b: torch.Tensor, k: int, impl: str = "tuned") -> torch.Tensor:
    """int32 (m, n) = (+/-1 A) @ (+/-1 B).T from a = pack(A) (m, k) and b = pack(B) (n, k).

    Exact: k - 2 * popcount(a_i XOR b_j) over the k real bits (padding bits are ignored). ``impl``
    picks the CUDA kernel: "tuned" (register-tiled, the default), "csa" (the same with carry-save
    popcounts, half the POPC instructions), "paper" (the paper's 16x16 tiled kernel) or "tc" (tensor
    cores, sm_80+, see ``tensorcore``); on CPU all run the same vectorised kernel.
    """
    if impl not in XNOR_IMPLS:
        raise KernelError(f"unknown xnor_gemm impl {impl!r}; choose one of {', '.join(XNOR_IMPLS)}")
    _check_packed(a, k, "xnor_gemm()", "a")
    _check_packed(b, k, "xnor_gemm()", "b")
    if a.device != b.device:
        raise KernelError(f"xnor_gemm() needs a and b on the same device, got {a.device} and {b.device}")
    _check_device(a, "xnor_gemm()")
    return getattr(_ops(), XNOR_IMPLS[impl])(a.contiguous(), b.contiguous(), k)


def baseline_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 (m, n) = a (m, k) @ b (n, k).T with the paper's unoptimised kernel (CUDA: 16x16 tiles;
    CPU: a plain register-blocked loop). The reference point of the paper's speed-up figure."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise KernelError(f"baseline_gemm() takes {name} as a 2-D floating-point tensor, got {_describe(t)}")
    if a.shape[1] != b.shape[1]:
        raise KernelError(f"baseline_gemm() multiplies a (m, k) by b (n, k).T, but a has k = {a.shape[1]} "
                          f"and b has k = {b.shape[1]}")
    if a.device != b.device:
        raise KernelError(f"baseline_gemm() needs a and b on the same device, got {a.device} and {b.device}")
    _check_device(a, "baseline_gemm()")
    return _ops().baseline_gemm(a.to(torch.float32).contiguous(), b.to(torch.float32).contiguous())


def cpu_isa() -> str:
    """Instruction set the CPU kernels use now: "avx512vpopcntdq", "avx2" or "scalar"."""
    return _ops().cpu_isa()


def supported_cpu_isas() -> list[str]:
    """Instruction sets this CPU can run, slowest first."""
    return list(_ops().supported_cpu_isas())


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
        _ops().set_cpu_isa(self.isa)
        return self

    def __exit__(self, *exc):
        _ops().set_cpu_isa(self.previous)
        return False


def available() -> dict:
    """What runs here: {"cpu": bool, "cuda": bool, "cpu_isa": str} (builds the extension if needed)."""
    try:
        ext = _extension()
    except KernelBuildError:
        return {"cpu": False, "cuda": False, "cpu_isa": None}
    return {"cpu": True, "cuda": ext.variant == "cuda" and torch.cuda.is_available(), "cpu_isa": cpu_isa()}
