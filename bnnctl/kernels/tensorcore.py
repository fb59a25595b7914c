"""CPU-side logic of the 1-bit tensor-core GEMM (``cuda/xnor_tc.cu``), in plain torch.

The CUDA kernels multiply bit matrices on tensor cores (``mma.sync.m16n8k256`` or, on sm_90a,
``wgmma.m64n256k256``, both ``.b1 ... .and.popc``), which count ``popc(a & b)``; the +/-1 dot product
over ``k`` real entries follows from the row popcounts:

    dot = 4 * popc(a & b) - 2 * popc(a) - 2 * popc(b) + k

(each of the ``k`` positions contributes +1 when a and b agree and -1 otherwise; zero padding bits
add nothing to any of the three counts). This module holds that correction, the row popcounts, the
threshold epilogue's bit packing, and a model of both kernels' data flow -- the stage loader and its
shared-memory layouts (swizzled rows, core matrices), the ldmatrix fragment loads and the PTX fragment
layouts of mma.sync, the wgmma matrix descriptors and accumulator layout, the epilogue's output
mapping -- that tests run on the CPU against the float +/-1 product, for every configuration of the
mma.sync kernel (``CONFIGS``: block tile, K bits per stage, stages, ...). The model mirrors the kernels'
constants and index formulas one for one, so a slip in one of those formulas shows here as a wrong
product. What it cannot show is whether the PTX tables were read right, or the pipeline's
synchronisation (stages in flight, fragment double buffering); that needs a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Kernel geometry (cuda/xnor_tc.cu) common to every configuration.
WARP_M, WARP_N = 64, 64  # 128 int32 accumulators per thread: the most that fits 255 registers
MMA_M, MMA_N, MMA_K_WORDS = 16, 8, 8  # m16n8k256: 256 bits = 8 words of 32 bits
TILES_M, TILES_N = WARP_M // MMA_M, WARP_N // MMA_N
SEGMENT_WORDS = 4  # one 16-byte cp.async / ldmatrix row
BANK_GROUPS = 8  # shared memory serves 128 bytes per cycle: 8 groups of 16 bytes


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
    why: str  # what it might win, for the listing and the report

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
             "the first design, measured at 3.7x torch bf16 on an H200 (8192^3)"),
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
# To change it, move a row to the top of both tables, on measurements (XNOR_TC.md, "What a GPU run must show").
DEFAULT_CONFIG = next(iter(CONFIGS))

_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def words32(packed: torch.Tensor) -> torch.Tensor:
    """The packed rows as 32-bit words: pack()'s int64 words viewed as int32 (same bytes, same bit order)."""
    if packed.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"packed bits must be int64 or int32 words, got {packed.dtype}")
    return packed.contiguous().view(torch.int32)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Per-element popcount of an int32 tensor, as int32 (same shape)."""
    as_bytes = words.contiguous().view(torch.uint8).reshape(*words.shape, 4)
    return _BYTE_POPCOUNT.to(words.device)[as_bytes.long()].sum(-1, dtype=torch.int32)


def row_popcount(packed: torch.Tensor) -> torch.Tensor:
    """Number of set bits in each row of a packed matrix (int32, one per row): popc(a) in the correction.

    Exact for pack()'s output because its padding bits are zero.
    """
    return popcount(words32(packed)).sum(-1, dtype=torch.int32)


def correct(and_counts: torch.Tensor, a_popc: torch.Tensor, b_popc: torch.Tensor, k: int) -> torch.Tensor:
    """+/-1 dot products from AND counts: 4 * popc(a & b) - 2 * popc(a) - 2 * popc(b) + k."""
    return (4 * and_counts - 2 * a_popc[:, None] - 2 * b_popc[None, :] + k).to(torch.int32)


def and_popcount_gemm(a_packed: torch.Tensor, b_packed: torch.Tensor, k: int) -> torch.Tensor:
    """Direct reference: the correction applied to popc(a & b) for every pair of rows (small inputs)."""
    a, b = words32(a_packed), words32(b_packed)
    and_counts = popcount(a[:, None, :] & b[None, :, :]).sum(-1, dtype=torch.int32)
    return correct(and_counts, row_popcount(a_packed), row_popcount(b_packed), k)


# ---- the kernels' data flow ---------------------------------------------------------------------


def _lanes() -> tuple[torch.Tensor, torch.Tensor]:
    lane = torch.arange(32)
    return lane >> 2, lane & 3  # groupID, threadID_in_group


def _popc_products(a_words: torch.Tensor, b_words: torch.Tensor) -> torch.Tensor:
    """popc(a_i & b_j) summed over words: (..., I, W) x (..., J, W) -> (..., I, J)."""
    return popcount(a_words[..., :, None, :] & b_words[..., None, :, :]).sum(-1, dtype=torch.int32)


def mma_m16n8k256_and_popc(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """PTX semantics of mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc on register fragments.

    a: (..., 32 lanes, 4) int32, b: (..., 32, 2), c: (..., 32, 4); batch dimensions broadcast.
    Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k256"), lane = 4 * g + t:
      a_r holds row g + 8 * (r % 2) of A, k bits 128 * (r // 2) + 32 t + [0, 32);
      b_r holds column g of B, k bits 128 * r + 32 t + [0, 32);
      c_r / d_r is row g + 8 * (r // 2), column 2 t + r % 2.
    Returns d = a @ b + c with AND as the product and popcount as the sum.
    """
    g, t = _lanes()
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2])
    a_mat = torch.zeros(*batch, MMA_M, MMA_K_WORDS, dtype=torch.int32)
    b_mat = torch.zeros(*batch, MMA_N, MMA_K_WORDS, dtype=torch.int32)
    a, b = a.expand(*batch, 32, 4), b.expand(*batch, 32, 2)
    for r in range(4):
        a_mat[..., g + 8 * (r % 2), 4 * (r // 2) + t] = a[..., r]
    for r in range(2):
        b_mat[..., g, 4 * r + t] = b[..., r]
    counts = _popc_products(a_mat, b_mat)  # (..., 16, 8)
    d = c.expand(*batch, 32, 4).clone()
    for r in range(4):
        d[..., r] += counts[..., g + 8 * (r // 2), 2 * t + r % 2]
    return d


class SwizzledRows:
    """Stage layout of the mma.sync kernel (cuda/xnor_tc.cu, SwizzledRows<kSegments>): offsets in 32-bit
    words. Segment s of row r sits at s ^ ((r >> 1) & 3) in 64-byte rows (512-bit stages) and at
    s ^ (r & 7) in 128-byte rows (1024-bit stages)."""

    def __init__(self, config: TcConfig):
        self.segments, self.threads = config.segments, config.threads
        self.stage_words, self.rows_per_pass = config.stage_words, config.rows_per_pass
        self.row_shift = 1 if self.segments == 4 else 0  # rows sharing one 128-byte line: 2 or 1

    def swizzle(self, row, segment):
        return segment ^ ((row >> self.row_shift) & (self.segments - 1))

    def offset(self, row, segment):
        return row * self.stage_words + self.swizzle(row, segment) * SEGMENT_WORDS

    def copy_row(self, tid):
        return tid // self.segments

    def copy_seg(self, tid):
        return tid % self.segments


class CoreMatrices:
    """Stage layout of the wgmma kernel (CoreMatrices): 8-row x 16-byte core matrices, no swizzle.
    The wgmma kernel has the base configuration's block tile, threads and stages."""

    threads, stage_words = 256, 16
    rows_per_pass = threads // (stage_words // SEGMENT_WORDS)
    CORE_WORDS = 8 * SEGMENT_WORDS  # 128 bytes
    GROUP_WORDS = (stage_words // SEGMENT_WORDS) * CORE_WORDS  # one 8-row group, 512 bytes

    @classmethod
    def offset(cls, row, segment):
        return (row // 8) * cls.GROUP_WORDS + segment * cls.CORE_WORDS + (row % 8) * SEGMENT_WORDS

    @staticmethod
    def copy_row(tid):
        return tid % 8 + 8 * (tid // 32)

    @staticmethod
    def copy_seg(tid):
        return (tid // 8) % 4


def _stage_smem(words: torch.Tensor, row0: int, rows: int, kt: int, layout) -> torch.Tensor:
    """Shared memory of one operand for stage kt as the kernel's StageLoader leaves it: flat int32 words.

    Thread tid copies segment copy_seg(tid) of rows copy_row(tid) + rows_per_pass * i to
    offset(copy_row, copy_seg) + i * rows_per_pass * stage_words, exactly the kernel's arithmetic; rows
    past the matrix and words past its end are zero-filled (cp.async src-size 0). Every word must be
    written exactly once.
    """
    stage_words, threads, per_pass = layout.stage_words, layout.threads, layout.rows_per_pass
    segments = stage_words // SEGMENT_WORDS
    tile = torch.zeros(rows, stage_words, dtype=torch.int32)
    src = words[row0:row0 + rows, kt * stage_words:(kt + 1) * stage_words]
    tile[:src.shape[0], :src.shape[1]] = src
    tid = torch.arange(threads)
    row, seg = layout.copy_row(tid), layout.copy_seg(tid)
    smem = torch.zeros(rows * stage_words, dtype=torch.int32)
    writes = torch.zeros(rows * stage_words, dtype=torch.int32)
    word = torch.arange(SEGMENT_WORDS)
    for i in range(rows // per_pass):
        dst = (layout.offset(row, seg) + i * per_pass * stage_words)[:, None] + word
        pieces = tile[row + i * per_pass].view(threads, segments, SEGMENT_WORDS)
        smem[dst] = pieces[torch.arange(threads), seg]
        writes[dst] += 1
    if not bool((writes == 1).all()):
        raise AssertionError("the stage loader does not write every shared-memory word exactly once")
    return smem


def ldmatrix_x4(smem: torch.Tensor, lane_offsets: torch.Tensor) -> torch.Tensor:
    """ldmatrix.sync.aligned.m8n8.x4.shared.b16 on flat shared memory (int32 words).

    lane_offsets: (..., 32) word offset each lane hands in (lanes 8q..8q+7: the 8 rows of matrix q).
    Lane 4g + t receives word t of row g of matrix q as register q. Returns (..., 32, 4) int32.
    """
    g, t = _lanes()
    return torch.stack([smem[lane_offsets[..., 8 * q + g] + t] for q in range(4)], dim=-1)


def _fragment_offsets(step: int, config: TcConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Word offsets each lane of each warp hands ldmatrix for A tile i / B tile pair jp, at mma step `step`.

    Shapes (warps, TILES_M, 32) and (warps, TILES_N // 2, 32); the kernel's formulas: lane = 8 q + rr;
    A matrix q is rows (q & 1) * 8 + rr of the tile at segment 2 step + (q >> 1); B matrix q is
    columns (q >> 1) * 8 + rr of the tile pair at segment 2 step + (q & 1).
    """
    layout = SwizzledRows(config)
    lane = torch.arange(32)
    q, rr = lane >> 3, lane & 7
    warp = torch.arange(config.warps)[:, None, None]
    warp_m, warp_n = warp // config.warps_n, warp % config.warps_n
    i = torch.arange(TILES_M)[None, :, None]
    jp = torch.arange(TILES_N // 2)[None, :, None]
    a = layout.offset(warp_m * WARP_M + i * MMA_M + (q & 1) * 8 + rr, 2 * step + (q >> 1))
    b = layout.offset(warp_n * WARP_N + jp * 2 * MMA_N + (q >> 1) * 8 + rr, 2 * step + (q & 1))
    return a, b


def _mma_sync_stage(smem_a: torch.Tensor, smem_b: torch.Tensor, acc: torch.Tensor, config: TcConfig) -> torch.Tensor:
    """One stage of the mma.sync kernel: acc (warps, TILES_M, TILES_N, 32, 4) in m16n8 tile order.

    The steps run in order; fragment double buffering only moves when their ldmatrix loads are issued."""
    warps = config.warps
    for step in range(config.steps):
        a_offsets, b_offsets = _fragment_offsets(step, config)
        a_frag = ldmatrix_x4(smem_a, a_offsets)  # (warps, TILES_M, 32, 4)
        b_pairs = ldmatrix_x4(smem_b, b_offsets)  # (warps, TILES_N / 2, 32, 4)
        # Registers 0, 1 of a pair feed n tile 2 jp, registers 2, 3 feed n tile 2 jp + 1.
        b_frag = b_pairs.view(warps, TILES_N // 2, 32, 2, 2).permute(0, 1, 3, 2, 4).reshape(warps, TILES_N, 32, 2)
        acc = mma_m16n8k256_and_popc(a_frag[:, :, None], b_frag[:, None], acc)
    return acc


def wgmma_operand(smem: torch.Tensor, start: int, leading: int, stride: int, rows: int) -> torch.Tensor:
    """What wgmma reads through a K-major, no-swizzle matrix descriptor: (rows, 8) words (256 bits per row).

    Offsets in words: core matrix (8 rows x 16 bytes) of row group r // 8 and K column c (0 or 1) starts at
    start + (r // 8) * stride + c * leading; its row r % 8 is the 16 bytes at + (r % 8) * 4.
    """
    r = torch.arange(rows)[:, None]
    c = torch.arange(MMA_K_WORDS)[None, :] // SEGMENT_WORDS
    w = torch.arange(MMA_K_WORDS)[None, :] % SEGMENT_WORDS
    return smem[start + (r // 8) * stride + c * leading + (r % 8) * SEGMENT_WORDS + w]


WGMMA_N = 256  # the base configuration's block width: one m64n256 per warpgroup and step


def _wgmma_stage(smem_a: torch.Tensor, smem_b: torch.Tensor, acc: torch.Tensor, config: TcConfig) -> torch.Tensor:
    """One stage of the wgmma kernel: acc (8 warps, 1, WGMMA_N / 8, 32, 4), each warpgroup's m64n256 tile.

    Two m64n256k256 per warpgroup with descriptors at segment 2s, leading byte offset 128 (next K core
    matrix), stride byte offset 512 (next 8-row group); the accumulator layout per warp w of a warpgroup
    is m16n8 tile order: d[j][r] = D[16 w + g + 8 (r // 2), 8 j + 2 t + r % 2].
    """
    leading, stride = CoreMatrices.CORE_WORDS, CoreMatrices.GROUP_WORDS
    g, t = _lanes()
    r = torch.arange(4)
    rows = (torch.arange(4)[:, None, None, None] * 16 + g[:, None] + 8 * (r // 2))  # (4 warps, 1, 32, 4)
    cols = torch.arange(WGMMA_N // 8)[:, None, None] * 8 + 2 * t[:, None] + r % 2  # (32 tiles, 32, 4)
    for warpgroup in range(2):
        a_start = warpgroup * (64 // 8) * stride
        d = torch.zeros(64, WGMMA_N, dtype=torch.int32)
        for step in range(config.steps):
            a = wgmma_operand(smem_a, a_start + 2 * step * leading, leading, stride, 64)
            b = wgmma_operand(smem_b, 2 * step * leading, leading, stride, WGMMA_N)
            d += _popc_products(a, b)
        warps = slice(4 * warpgroup, 4 * warpgroup + 4)
        acc[warps, 0] += d[rows.expand(4, WGMMA_N // 8, 32, 4), cols.expand(4, -1, -1, -1)]
    return acc


def emulate_tc_gemm(a_packed: torch.Tensor, b_packed: torch.Tensor, k: int, instruction: str = "mma",
                    config: str | None = None) -> torch.Tensor:
    """One of the CUDA kernels' computation, block by block and fragment by fragment, on the CPU.

    a_packed (M, W), b_packed (N, W): pack() output of the same real K = k; instruction "mma"
    (xnor_tc_kernel, in configuration `config`, None: the default) or "wgmma" (xnor_tc_wgmma_kernel, which
    has the base configuration's shape).
    Returns int32 (M, N). Slow (seconds for a few hundred rows): for tests of the kernels' layouts.
    """
    a, b = words32(a_packed), words32(b_packed)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B rows differ in width: {a.shape[1]} vs {b.shape[1]} words")
    if instruction == "wgmma" and config not in (None, "base"):
        raise ValueError("the wgmma kernel has the base configuration's shape only")
    name = ("base" if instruction == "wgmma" else DEFAULT_CONFIG) if config is None else config
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]
    if instruction == "mma":
        layout, stage, tiles = SwizzledRows(cfg), _mma_sync_stage, (TILES_M, TILES_N)
    elif instruction == "wgmma":
        layout, stage, tiles = CoreMatrices, _wgmma_stage, (1, WGMMA_N // MMA_N)
    else:
        raise ValueError(f"instruction must be 'mma' or 'wgmma', not {instruction!r}")
    m_rows, n_rows, k_words = a.shape[0], b.shape[0], a.shape[1]
    a_popc, b_popc = row_popcount(a_packed), row_popcount(b_packed)
    out = torch.empty(m_rows, n_rows, dtype=torch.int32)
    k_tiles = -(-k_words // cfg.stage_words)
    warp = torch.arange(cfg.warps)
    for m0 in range(0, m_rows, cfg.block_m):
        for n0 in range(0, n_rows, cfg.block_n):
            acc = torch.zeros(cfg.warps, *tiles, 32, 4, dtype=torch.int32)
            for kt in range(k_tiles):
                acc = stage(_stage_smem(a, m0, cfg.block_m, kt, layout), _stage_smem(b, n0, cfg.block_n, kt, layout),
                            acc, cfg)
            if instruction == "mma":
                row_base = m0 + (warp // cfg.warps_n) * WARP_M
                col_base = n0 + (warp % cfg.warps_n) * WARP_N
            else:
                row_base = m0 + (warp // 4) * 64 + (warp % 4) * 16
                col_base = torch.full_like(warp, n0)
            _store_tiles(acc, row_base, col_base, out, a_popc, b_popc, k)
    return out


def _store_tiles(acc: torch.Tensor, row_base: torch.Tensor, col_base: torch.Tensor, out: torch.Tensor,
                 a_popc: torch.Tensor, b_popc: torch.Tensor, k: int) -> None:
    """The kernels' store_tiles: acc (warps, I, J, 32, 4) in m16n8 tile order, warp w's tile (i, j) at rows
    row_base[w] + 16 i + g (+ 8), columns col_base[w] + 8 j + 2 t (+ 1); rows and columns past the
    matrix are dropped; the correction is applied on the way out."""
    g, t = _lanes()
    warps, tiles_m, tiles_n = acc.shape[:3]
    shape = (warps, tiles_m, tiles_n, 32, 4)
    i = torch.arange(tiles_m)[None, :, None, None, None]
    j = torch.arange(tiles_n)[None, None, :, None, None]
    r = torch.arange(4)
    rows = (row_base[:, None, None, None, None] + i * MMA_M + g[:, None] + 8 * (r // 2)).expand(shape)
    cols = (col_base[:, None, None, None, None] + j * MMA_N + 2 * t[:, None] + r % 2).expand(shape)
    keep = (rows < out.shape[0]) & (cols < out.shape[1])
    rows, cols, counts = rows[keep], cols[keep], acc[keep]
    out[rows, cols] = (4 * counts - 2 * a_popc[rows] - 2 * b_popc[cols] + k).to(torch.int32)


def threshold_bits(dot: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """The threshold epilogue's output: bit n of row m = (dot[m, n] >= thresh[n]), packed like pack().

    Returns int64 (M, ceil(N / 64)), LSB first, padding bits zero.
    """
    bits = (dot.float() >= thresh.float()[None, :]).to(torch.int64)
    m_rows, n_cols = bits.shape
    words = -(-n_cols // 64)
    padded = torch.zeros(m_rows, words * 64, dtype=torch.int64)
    padded[:, :n_cols] = bits
    weights = torch.ones(64, dtype=torch.int64) << torch.arange(64, dtype=torch.int64)
    return (padded.view(m_rows, words, 64) * weights).sum(-1)  # int64 wraps bit 63 to the sign, as pack() does


# ---- the CUDA kernels from Python -----------------------------------------------------------------

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
    from . import KernelError, _check_device, _check_packed, _ops  # the package's own argument checks

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
        thresh = thresh.to(torch.float32).contiguous()
    return _ops().xnor_tc_gemm(a.contiguous(), b.contiguous(), k, thresh, wgmma, config_index)


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


# ---- reporting against the card's b1 ceilings (tools/gpu_peaks/b1_peak.cu) ------------------------

def parse_b1_peaks(log: str) -> dict[str, float]:
    """The T ops/s column of b1_peak's output, by line name ("mma.sync m16n8k256 AND", ...)."""
    import re

    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S.*?)\s+([0-9.]+) T ops/s", log, re.MULTILINE)}


# The b1_peak line each tensor-core kernel is held to.
MATCHING_PEAK = {"mma": "mma.sync m16n8k256 AND", "wgmma": "wgmma m64n128k256 b1 AND"}


def peak_share_lines(results: list[dict], peaks: dict[str, float]) -> list[str]:
    """One line per tensor-core kernel run in bench records: its rate as a share of the matching b1 peak."""
    lines = []
    for result in results:
        shape = "x".join(str(result["shape"][d]) for d in "mnk")
        for name, entry in result.get("kernels", {}).items():
            instruction = "wgmma" if "wgmma" in name else "mma" if name.startswith("xnor-tc") else None
            if instruction is None or entry.get("status") != "ok":
                continue
            peak_name = MATCHING_PEAK[instruction]
            peak = peaks.get(peak_name)
            share = f"{100 * entry['tbops'] / peak:.0f}% of {peak_name} ({peak:.0f} T ops/s)" if peak else \
                f"no '{peak_name}' line in the b1_peak log"
            ratios = ", ".join(f"{key} {entry[key]:.2f}" for key in ("x_torch_bf16", "x_cublas_fp32")
                               if entry.get(key) is not None)
            lines.append(f"{name} {shape}: {entry['median_ms']:.3f} ms, {entry['tbops']:.0f} T binary-op/s = {share}"
                         f"{'; ' + ratios if ratios else ''}; exact: {entry['exact']}")
    return lines


def report_peak_shares(out_dir: str) -> None:
    """Print peak_share_lines for every bench JSON in out_dir, against out_dir/gpu_peaks.log."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    log = out / "gpu_peaks.log"
    peaks = parse_b1_peaks(log.read_text()) if log.exists() else {}
    print(f"b1 peaks ({log}): {peaks or 'none found'}")
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    for line in peak_share_lines([r for r in results if r.get("kind") == "kernels"], peaks):
        print(line)


WGMMA_BENCH_NAME = "xnor-tc-wgmma"


def bench_wgmma(out_dir: str, m: int, n: int, k: int, others: str = "xnor-tc,bf16,cublas") -> None:
    """``bnnctl bench`` with the wgmma kernel added to its table for this run only (it exists only in
    sm_90a builds, so ``--kernel all`` leaves it out): times it beside ``others`` and records the JSON."""
    from pathlib import Path

    from rich.console import Console

    from ..bench import kernels as bench

    bench.KERNELS.setdefault(WGMMA_BENCH_NAME, bench.BenchKernel(
        "XNOR, tensor cores (wgmma m64n256k256 b1 AND+POPC, sm_90a)",
        lambda o: xnor_gemm_tc(o.a_bits, o.b_bits, o.k, wgmma=True), packed=True, devices=("cuda",),
        unavailable="CUDA-only kernel"))
    bench.run_bench(f"{WGMMA_BENCH_NAME},{others}", m, n, k, repeat=20, device="cuda", out=Path(out_dir),
                    popc_peak_tbops=None, command=f"tensorcore.bench_wgmma({m}, {n}, {k})", console=Console())


# ---- the configurations side by side (scripts/gpu_check.sh, step tc_configs) ---------------------

CONFIG_BENCH_SHAPES = ((8192, 8192, 8192), (10000, 4096, 4096))  # issue 8's target; the MNIST MLP hidden layers


def config_lines(record: dict) -> list[str]:
    """One line per configuration and shape of a bench_configs record: ms, rate, x torch bf16, x the default
    configuration, share of the mma.sync b1 peak (when the record has one), exactness."""
    peak = record.get("mma_peak_tbops")
    lines = []
    for shape in record["shapes"]:
        dims = "x".join(str(shape["shape"][d]) for d in "mnk")
        fastest = min(shape["configs"], key=lambda name: shape["configs"][name]["median_ms"])
        lines.append(f"{dims}: torch bf16 {shape['bf16_ms']:.3f} ms")
        for name, entry in shape["configs"].items():
            share = f", {100 * entry['tbops'] / peak:.0f}% of the mma.sync AND peak" if peak else ""
            mark = "  <- fastest" if name == fastest else ""
            default = " (default)" if name == record["default_config"] else ""
            lines.append(f"  {name + default:16s} {entry['median_ms']:.3f} ms, {entry['tbops']:5.0f} T binary-op/s, "
                         f"x bf16 {entry['x_torch_bf16']:.2f}, x default {entry['x_default']:.3f}{share}, "
                         f"exact {'yes' if entry['exact'] else 'NO'}{mark}")
    return lines


def bench_configs(out_dir: str, shapes=CONFIG_BENCH_SHAPES, rounds: int = 5, runs_per_round: int = 10,
                  device: str = "cuda") -> dict:
    """Time every configuration of the mma.sync kernel beside torch bf16 in one process, check each output
    against the exact product, print config_lines and write the record as JSON into out_dir.

    The contenders take turns, round after round (median of each round's median), so clock and temperature
    drift over the run hit them alike: the configurations differ by a few percent, about what separate
    processes did on the same card. The share of the peak uses out_dir/gpu_peaks.log when it is there.
    On ``device="cpu"`` every configuration is the one CPU kernel: that only exercises this function.
    """
    import json
    import statistics
    from datetime import datetime, timezone
    from pathlib import Path

    from ..bench import kernels as bench

    out = Path(out_dir)
    log = out / "gpu_peaks.log"
    peak = parse_b1_peaks(log.read_text()).get(MATCHING_PEAK["mma"]) if log.exists() else None
    dev = torch.device(device)
    record = {"kind": "tc_configs", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
              "default_config": DEFAULT_CONFIG,
              "mma_peak_tbops": peak, "rounds": rounds, "runs_per_round": runs_per_round,
              "configs": {name: cfg.describe() for name, cfg in CONFIGS.items()}, "shapes": []}
    for m, n, k in shapes:
        ops = bench.make_operands(m, n, k, dev)
        a16, b16 = ops.a_pm1.bfloat16(), ops.b_pm1.bfloat16()
        contenders = {"bf16": lambda: a16 @ b16.T}
        for name in CONFIGS:
            contenders[name] = lambda name=name: xnor_gemm_tc(ops.a_bits, ops.b_bits, k, config=name)
        exact = {}
        for name, run in contenders.items():
            result = run()
            exact[name] = bool(torch.equal(result, ops.exact.to(result.dtype)))
            del result
        round_ms: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, run in contenders.items():
                round_ms[name].append(bench.time_call(run, dev, runs_per_round, budget_s=60.0)[0])
        ms = {name: statistics.median(times) for name, times in round_ms.items()}
        configs = {name: {"median_ms": ms[name], "round_ms": round_ms[name], "tbops": 2 * m * n * k / ms[name] / 1e9,
                          "x_torch_bf16": ms["bf16"] / ms[name], "x_default": ms[DEFAULT_CONFIG] / ms[name],
                          "share_of_mma_peak": 2 * m * n * k / ms[name] / 1e9 / peak if peak else None,
                          "exact": exact[name]} for name in CONFIGS}
        record["shapes"].append({"shape": {"m": m, "n": n, "k": k}, "bf16_ms": ms["bf16"],
                                 "bf16_round_ms": round_ms["bf16"], "configs": configs})
        del ops, a16, b16
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for line in config_lines(record):
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tc_configs-{record['date'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return record
