"""The 1-bit tensor-core GEMM (``cuda/xnor_tc.cu``) from Python: its configurations and the op.

The CUDA kernels multiply bit matrices on tensor cores (``mma.sync.m16n8k256`` or, on sm_90a,
``wgmma.m64n256k256``, both ``.b1 ... .and.popc``), which count ``popc(a & b)``; the +/-1 dot product
over ``k`` real entries follows from the row popcounts:

    dot = 4 * popc(a & b) - 2 * popc(a) - 2 * popc(b) + k

(each of the ``k`` positions contributes +1 when a and b agree and -1 otherwise; zero padding bits
add nothing to any of the three counts). The kernel applies that correction in its epilogue, or the
threshold of the next binary layer and packs the bits (``xnor_gemm_threshold``).

The mma.sync kernel is one template with several configurations (``CONFIGS``: block tile, K bits per
stage, stages, ...), in the same order as ``BNN_TC_MMA_CONFIGS`` in the CUDA source; the op picks one
by its index there. A CPU model of the kernels' data flow, which the tests hold to the float product
for every configuration, is ``tests/support/tc_emulator.py``; timing the configurations is
``bnnctl.bench.tensorcore``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Kernel geometry (cuda/xnor_tc.cu) common to every configuration.
WARP_M, WARP_N = 64, 64  # 128 int32 accumulators per thread: the most that fits 255 registers
MMA_K_WORDS = 8  # m16n8k256: 256 bits = 8 words of 32 bits
SEGMENT_WORDS = 4  # one 16-byte cp.async / ldmatrix row


@dataclass(frozen=True)
class TcConfig:
    """One configuration of the mma.sync kernel: a row of BNN_TC_MMA_CONFIGS in cuda/xnor_tc.cu."""

    name: str
    block_m: int
    block_n: int
    stage_bits: int  # K bits per row and pipeline stage
    stages: int
    blocks_per_sm: int  # __launch_bounds__ minimum, and what the shared memory is sized for
    fragment_double_buffer: bool  # ldmatrix of the next mma step issued before this step's mma
    streaming_stores: bool  # epilogue stores with the evict-first hint (st.global.cs)
    why: str  # what it might win over the others

    @property
    def warps_n(self) -> int:
        return self.block_n // WARP_N

    @property
    def warps(self) -> int:
        return (self.block_m // WARP_M) * self.warps_n

    @property
    def threads(self) -> int:
        return 32 * self.warps

    @property
    def stage_words(self) -> int:
        return self.stage_bits // 32

    @property
    def segments(self) -> int:  # 16-byte segments per stage row
        return self.stage_words // SEGMENT_WORDS

    @property
    def steps(self) -> int:  # m16n8k256 steps per stage
        return self.stage_words // MMA_K_WORDS

    @property
    def rows_per_pass(self) -> int:  # rows one pass of the stage loader covers
        return self.threads // self.segments

    @property
    def smem_bytes(self) -> int:
        return self.stages * (self.block_m + self.block_n) * self.stage_words * 4

    def describe(self) -> str:
        return (f"{self.block_m}x{self.block_n} tile, {self.threads} threads, {self.stages} stages of {self.stage_bits} "
                f"K bits ({self.smem_bytes // 1024} KiB), {self.blocks_per_sm} block(s)/SM"
                f"{', fragments double-buffered' if self.fragment_double_buffer else ''}"
                f"{', streaming stores' if self.streaming_stores else ''}")


# In the kernel's order (BNN_TC_MMA_CONFIGS; a test holds the two tables equal): the op selects a configuration
# by its index here, and index 0 is the op's default, so the first row is the default everywhere -- in
# kernels.xnor_gemm(impl="tc"), bnnctl bench's xnor-tc and xnor_gemm_tc(config=None).
CONFIGS: dict[str, TcConfig] = {c.name: c for c in [
    TcConfig("base", 128, 256, 512, 4, 1, False, False,
             "the plain pipeline, each step's fragments loaded just before its mma: the reference for the others"),
    TcConfig("fdb", 128, 256, 512, 4, 1, True, False,
             "the next step's fragments load while this step multiplies, so the tensor cores keep busy after "
             "each barrier"),
    TcConfig("fdb_k1024", 128, 256, 1024, 3, 1, True, False,
             "4 mma steps per barrier instead of 2: half the barriers and pipeline bookkeeping per K bit"),
    TcConfig("fdb_2cta", 128, 128, 512, 4, 2, True, False,
             "two blocks per SM: one block's barrier waits, prologue and epilogue overlap the other's mma"),
    TcConfig("fdb_cs", 128, 256, 512, 4, 1, True, True,
             "evict-first int32 stores keep the 17 MB of packed operands in L2 against 268 MB of output"),
]}
# To change the default, move a row to the top of both tables, after timing them all on the GPU
# (bnnctl.bench.tensorcore.bench_configs).
DEFAULT_CONFIG = next(iter(CONFIGS))


# ---- the op ----------------------------------------------------------------------------------------

def config_names() -> list[str]:
    """The mma.sync kernel's configurations, in the kernel's order; the first is the default."""
    return list(CONFIGS)


def _config_index(config: str | None, wgmma: bool) -> int:
    from . import KernelError

    if wgmma:
        if config is not None:
            raise KernelError(f"the wgmma kernel has one shape of its own, so it takes no configuration, got {config!r}")
        return 0
    name = DEFAULT_CONFIG if config is None else config
    if name not in CONFIGS:
        raise KernelError(f"unknown tensor-core kernel configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    return list(CONFIGS).index(name)


def xnor_gemm_tc(a: torch.Tensor, b: torch.Tensor, k: int, thresh: torch.Tensor | None = None,
                 wgmma: bool = False, config: str | None = None) -> torch.Tensor:
    """The tensor-core XNOR GEMM on pack() output: int32 (m, n) ±1 products, or with ``thresh`` (n floats)
    the packed bits of (product >= thresh) per column, int64 (m, ceil(n / 64)) like pack().

    ``wgmma`` picks the sm_90a kernel (needs an extension built with TORCH_CUDA_ARCH_LIST=9.0a);
    ``config`` one of the mma.sync kernel's configurations (``config_names()``; None: DEFAULT_CONFIG; the
    wgmma kernel takes none).
    On CPU tensors the CPU XNOR kernel computes the same values, whatever the configuration.
    """
    from . import KernelError, _check_device, _check_packed, native_ops, threshold_bounds  # the package's own checks

    config_index = _config_index(config, wgmma)
    _check_packed(a, k, "xnor_gemm_tc()", "a")
    _check_packed(b, k, "xnor_gemm_tc()", "b")
    if a.device != b.device:
        raise KernelError(f"xnor_gemm_tc() needs a and b on the same device, got {a.device} and {b.device}")
    _check_device(a, "xnor_gemm_tc()")
    if thresh is not None:
        if not isinstance(thresh, torch.Tensor) or thresh.dim() != 1 or thresh.shape[0] != b.shape[0]:
            raise KernelError(f"xnor_gemm_tc() takes one threshold per row of b ({b.shape[0]}), as a 1-D tensor")
        if thresh.device != a.device:
            raise KernelError(f"xnor_gemm_tc() needs the thresholds on {a.device}, got {thresh.device}")
        thresh = threshold_bounds(thresh, k)  # exact integer boundaries; NaN/inf refused
    return native_ops().xnor_tc_gemm(a.contiguous(), b.contiguous(), k, thresh, wgmma, config_index)


def xnor_gemm_threshold(a: torch.Tensor, b: torch.Tensor, k: int, thresh: torch.Tensor,
                        wgmma: bool = False, config: str | None = None) -> torch.Tensor:
    """Packed bits (int64, like pack()) of bit(dot[i, j] >= thresh[j]), the next binary layer's input."""
    return xnor_gemm_tc(a, b, k, thresh, wgmma, config)


def wgmma_available() -> bool:
    """Whether the loaded extension has the wgmma kernel for the current GPU (sm_90a build on sm_90)."""
    from . import available

    if not available()["cuda"]:
        return False
    one = torch.zeros(1, 1, dtype=torch.int64, device="cuda")
    try:
        xnor_gemm_tc(one, one, 1, wgmma=True)
    except RuntimeError:
        return False
    return True
