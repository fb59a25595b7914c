"""A CPU model of the 1-bit tensor-core GEMM's data flow (cuda/xnor_tc.cu), in plain torch, for tests.

The model covers both kernels: the stage loader and its shared-memory layouts (swizzled rows, core
matrices), the ldmatrix fragment loads and the PTX fragment layouts of mma.sync, the wgmma matrix
descriptors and accumulator layout, and the epilogue's output mapping and correction
(``bnnctl.kernels.tensorcore`` states it), for every configuration of the mma.sync kernel
(``tensorcore.CONFIGS``). It mirrors the kernels' constants and index formulas one for one, so a slip
in one of those formulas shows here as a wrong product on the CPU. What it cannot show is whether the
PTX tables were read right, or the pipeline's synchronisation (stages in flight, fragment double
buffering); that needs a GPU.

Also here: the direct references the model and the GPU outputs are compared with (``and_popcount_gemm``,
``threshold_bits``) and the row popcounts of the correction.
"""
from __future__ import annotations

import torch

from bnnctl.kernels.tensorcore import CONFIGS, DEFAULT_CONFIG, MMA_K_WORDS, SEGMENT_WORDS, WARP_M, WARP_N, TcConfig

# Geometry the model needs beyond a configuration's (cuda/xnor_tc.cu).
MMA_M, MMA_N = 16, 8  # m16n8k256
TILES_M, TILES_N = WARP_M // MMA_M, WARP_N // MMA_N
BANK_GROUPS = 8  # shared memory serves 128 bytes per cycle: 8 groups of 16 bytes
WGMMA_N = 256  # the base configuration's block width: one m64n256 per warpgroup and step

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
