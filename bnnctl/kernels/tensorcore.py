"""CPU-side logic of the 1-bit tensor-core GEMM (``cuda/xnor_tc.cu``), in plain torch.

The CUDA kernel multiplies bit matrices with ``mma.sync.m16n8k256 ... .b1.b1.s32.and.popc``, which
counts ``popc(a & b)``; the +/-1 dot product over ``k`` real entries follows from the row popcounts:

    dot = 4 * popc(a & b) - 2 * popc(a) - 2 * popc(b) + k

(each of the ``k`` positions contributes +1 when a and b agree and -1 otherwise; zero padding bits
add nothing to any of the three counts). This module holds that correction, the row popcounts, and a
model of the kernel's data flow -- the stage tiling, the swizzled shared-memory layout, the ldmatrix
fragment loads, the PTX fragment layouts of the mma and the epilogue's output mapping -- that tests run
on the CPU against the float +/-1 product. The model mirrors the kernel's constants and index formulas
one for one, so a wrong fragment or swizzle formula there shows up here as a wrong product.
"""
from __future__ import annotations

import torch

# Kernel geometry (cuda/xnor_tc.cu).
BLOCK_M, BLOCK_N = 128, 256
WARP_M, WARP_N = 64, 64
WARPS_N = BLOCK_N // WARP_N
WARPS = (BLOCK_M // WARP_M) * WARPS_N
MMA_M, MMA_N, MMA_K_WORDS = 16, 8, 8  # m16n8k256: 256 bits = 8 words of 32 bits
TILES_M, TILES_N = WARP_M // MMA_M, WARP_N // MMA_N
STAGE_WORDS = 16  # 512 bits of K per row and pipeline stage
SEGMENT_WORDS = 4  # one 16-byte cp.async / ldmatrix row
STEPS_PER_STAGE = STAGE_WORDS // MMA_K_WORDS

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


# ---- the kernel's data flow ----------------------------------------------------------------------

def _lanes() -> tuple[torch.Tensor, torch.Tensor]:
    lane = torch.arange(32)
    return lane >> 2, lane & 3  # groupID, threadID_in_group


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
    counts = popcount(a_mat[..., :, None, :] & b_mat[..., None, :, :]).sum(-1, dtype=torch.int32)  # (..., 16, 8)
    d = c.expand(*batch, 32, 4).clone()
    for r in range(4):
        d[..., r] += counts[..., g + 8 * (r // 2), 2 * t + r % 2]
    return d


def swizzle(row, segment):
    """Physical 16-byte segment of logical `segment` in stage row `row` (the kernel's swizzle())."""
    return segment ^ ((row >> 1) & 3)


def _stage_tile(words: torch.Tensor, row0: int, rows: int, kt: int) -> torch.Tensor:
    """Shared memory of one operand for stage kt as the cp.async loads leave it: (rows, 16) words.

    Rows past the matrix and words past its end are zero-filled (cp.async src-size 0); logical segment
    s of row r lands at physical segment swizzle(r, s).
    """
    total_rows, k_words = words.shape
    tile = torch.zeros(rows, STAGE_WORDS, dtype=torch.int32)
    src = words[row0:row0 + rows, kt * STAGE_WORDS:(kt + 1) * STAGE_WORDS]
    tile[:src.shape[0], :src.shape[1]] = src
    row = torch.arange(rows)[:, None]
    seg = torch.arange(STAGE_WORDS // SEGMENT_WORDS)[None, :]
    smem = torch.zeros_like(tile).view(rows, -1, SEGMENT_WORDS)
    smem[row, swizzle(row, seg)] = tile.view(rows, -1, SEGMENT_WORDS)[row, seg]
    return smem.view(rows, STAGE_WORDS)


def ldmatrix_x4(smem: torch.Tensor, rows: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """ldmatrix.sync.aligned.m8n8.x4.shared.b16 on a (rows, 16)-word stage tile.

    rows, segments: (..., 32) -- the row and physical segment each lane points at (lanes 8q..8q+7 give
    the 8 rows of matrix q). Lane 4g + t receives word t of row g of each matrix q as register q.
    Returns (..., 32, 4) int32.
    """
    g, t = _lanes()
    seg_words = smem.view(smem.shape[0], -1, SEGMENT_WORDS)
    regs = [seg_words[rows[..., 8 * q + g], segments[..., 8 * q + g], t] for q in range(4)]
    return torch.stack(regs, dim=-1)


def _fragment_addresses(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and physical segment each lane of each warp hands ldmatrix for A tile i / B tile pair jp.

    Returns a_rows, a_segs of shape (WARPS, TILES_M, 32) and b_rows, b_segs of shape
    (WARPS, TILES_N // 2, 32), with the kernel's formulas: lane = 8 q + rr; A matrix q is rows
    (q & 1) * 8 + rr at segment 2 * step + (q >> 1); B matrix q is columns (q >> 1) * 8 + rr at
    segment 2 * step + (q & 1).
    """
    lane = torch.arange(32)
    q, rr = lane >> 3, lane & 7
    warp = torch.arange(WARPS)[:, None, None]
    warp_m, warp_n = warp // WARPS_N, warp % WARPS_N
    i = torch.arange(TILES_M)[None, :, None]
    jp = torch.arange(TILES_N // 2)[None, :, None]
    a_rows = warp_m * WARP_M + i * MMA_M + (q & 1) * 8 + rr
    a_segs = swizzle(rr, 2 * step + (q >> 1)).expand_as(a_rows)
    b_rows = warp_n * WARP_N + jp * 2 * MMA_N + (q >> 1) * 8 + rr
    b_segs = swizzle(rr, 2 * step + (q & 1)).expand_as(b_rows)
    return a_rows, a_segs, b_rows, b_segs


def emulate_tc_gemm(a_packed: torch.Tensor, b_packed: torch.Tensor, k: int) -> torch.Tensor:
    """The CUDA kernel's computation, block by block and fragment by fragment, on the CPU.

    a_packed (M, W), b_packed (N, W): pack() output of the same real K = k. Returns int32 (M, N).
    Slow (seconds for a few hundred rows): for tests of the kernel's layouts, not for use.
    """
    a, b = words32(a_packed), words32(b_packed)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B rows differ in width: {a.shape[1]} vs {b.shape[1]} words")
    m_rows, n_rows, k_words = a.shape[0], b.shape[0], a.shape[1]
    a_popc, b_popc = row_popcount(a_packed), row_popcount(b_packed)
    out = torch.empty(m_rows, n_rows, dtype=torch.int32)
    k_tiles = -(-k_words // STAGE_WORDS)
    addresses = [_fragment_addresses(step) for step in range(STEPS_PER_STAGE)]
    for m0 in range(0, m_rows, BLOCK_M):
        for n0 in range(0, n_rows, BLOCK_N):
            acc = torch.zeros(WARPS, TILES_M, TILES_N, 32, 4, dtype=torch.int32)
            for kt in range(k_tiles):
                smem_a = _stage_tile(a, m0, BLOCK_M, kt)
                smem_b = _stage_tile(b, n0, BLOCK_N, kt)
                for a_rows, a_segs, b_rows, b_segs in addresses:
                    a_frag = ldmatrix_x4(smem_a, a_rows, a_segs)  # (WARPS, TILES_M, 32, 4)
                    b_pairs = ldmatrix_x4(smem_b, b_rows, b_segs)  # (WARPS, TILES_N / 2, 32, 4)
                    # Registers 0, 1 of a pair feed n tile 2 jp, registers 2, 3 feed n tile 2 jp + 1.
                    b_frag = b_pairs.view(WARPS, TILES_N // 2, 32, 2, 2).permute(0, 1, 3, 2, 4)
                    b_frag = b_frag.reshape(WARPS, TILES_N, 32, 2)
                    acc = mma_m16n8k256_and_popc(a_frag[:, :, None], b_frag[:, None], acc)
            _epilogue(acc, out, m0, n0, a_popc, b_popc, k)
    return out


def _epilogue(acc: torch.Tensor, out: torch.Tensor, m0: int, n0: int, a_popc: torch.Tensor,
              b_popc: torch.Tensor, k: int) -> None:
    """Store one block's accumulators with the correction, dropping rows and columns past the matrix."""
    g, t = _lanes()
    warp = torch.arange(WARPS)[:, None, None, None, None]
    i = torch.arange(TILES_M)[None, :, None, None, None]
    j = torch.arange(TILES_N)[None, None, :, None, None]
    r = torch.arange(4)
    rows = m0 + (warp // WARPS_N) * WARP_M + i * MMA_M + g[:, None] + 8 * (r // 2)
    cols = n0 + (warp % WARPS_N) * WARP_N + j * MMA_N + 2 * t[:, None] + r % 2
    rows, cols = torch.broadcast_tensors(rows, cols)
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
