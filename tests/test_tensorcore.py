"""The 1-bit tensor-core GEMM (cuda/xnor_tc.cu): its CPU-side logic always, the kernel itself on a GPU.

On the CPU, tests/support/tc_emulator.py models both kernels' data flow (stage loader and layouts, ldmatrix
fragments and the mma's PTX fragment layouts, wgmma descriptors and accumulators, the epilogue's
correction and output mapping), for every configuration of the mma.sync kernel; these tests hold that
model to the float +/-1 product. With nvcc the source is compiled for sm_90 (BMMA in the SASS of every
configuration) and sm_90a (BGMMA too), and its configuration table must be the model's; with a GPU every
kernel's output must equal the float product exactly.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnctl import kernels
from bnnctl.kernels import tensorcore as tc
from tests.support import tc_emulator as emu

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()


def pm1_inputs(m: int, n: int, k: int, seed: int, device: str = "cpu"):
    """Random activations and weights with exact zeros and -0.0 (both count as +1), and their ±1 product."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    x[torch.rand(m, k, generator=g) < 0.1] = 0.0
    w[torch.rand(n, k, generator=g) < 0.1] = -0.0
    expected = (torch.where(x >= 0, 1.0, -1.0).double() @ torch.where(w >= 0, 1.0, -1.0).double().T).to(torch.int32)
    return x.to(device), w.to(device), expected


SHAPES = [(1, 1, 1), (1, 7, 31), (5, 1, 64), (3, 5, 70), (9, 17, 255), (16, 8, 256), (7, 9, 257),
          (33, 12, 513), (2, 3, 1000)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_correction_from_and_counts_equals_pm1_product(m, n, k):
    x, w, expected = pm1_inputs(m, n, k, seed=m * 1000 + k)
    assert torch.equal(emu.and_popcount_gemm(kernels.pack(x), kernels.pack(w), k), expected)


def test_row_popcount_counts_the_nonnegative_entries():
    x, _, _ = pm1_inputs(6, 1, 300, seed=3)
    assert emu.row_popcount(kernels.pack(x)).tolist() == (x >= 0).sum(1).tolist()
    # int64 words and their int32 view are the same bits
    assert torch.equal(emu.row_popcount(kernels.pack(x).view(torch.int32)), emu.row_popcount(kernels.pack(x)))


def _fragments_by_the_book(a_bits: torch.Tensor, b_bits: torch.Tensor):
    """Registers of every lane for A (16 x 256 bits) and B (256 x 8 bits), bit by bit from the PTX table."""
    a = torch.zeros(32, 4, dtype=torch.int64)
    b = torch.zeros(32, 2, dtype=torch.int64)
    for lane in range(32):
        group, tig = lane // 4, lane % 4
        for r in range(4):  # a_r: row group (+8 for odd r), columns tig*32 + bit (+128 for r >= 2)
            for bit in range(32):
                a[lane, r] |= int(a_bits[group + 8 * (r % 2), 128 * (r // 2) + tig * 32 + bit]) << bit
        for r in range(2):  # b_r: column group, rows tig*32 + bit (+128 for r = 1)
            for bit in range(32):
                b[lane, r] |= int(b_bits[128 * r + tig * 32 + bit, group]) << bit
    # reinterpret the low 32 bits as int32 registers
    return a.to(torch.int32), b.to(torch.int32)


def test_mma_model_multiplies_fragments_laid_out_by_the_ptx_table():
    g = torch.Generator().manual_seed(7)
    a_bits = torch.rand(16, 256, generator=g) < 0.5
    b_bits = torch.rand(256, 8, generator=g) < 0.5
    a, b = _fragments_by_the_book(a_bits, b_bits)
    c = torch.randint(-100, 100, (32, 4), generator=g, dtype=torch.int32)
    d = emu.mma_m16n8k256_and_popc(a, b, c)
    product = a_bits.int() @ b_bits.int()
    for lane in range(32):
        for r in range(4):
            row, col = lane // 4 + 8 * (r // 2), 2 * (lane % 4) + r % 2
            assert d[lane, r] == c[lane, r] + product[row, col]
    # the model is sensitive to the register order: swapping a1 and a2 changes the product
    assert not torch.equal(emu.mma_m16n8k256_and_popc(a[:, [0, 2, 1, 3]], b, c), d)


EMULATED_SHAPES = [(1, 1, 1), (1, 300, 513), (3, 5, 70), (130, 9, 1100), (17, 260, 192), (129, 257, 600)]
# The model depends only on the layouts a configuration implies (block tile, threads, K bits per stage);
# stages, double buffering and the store policy change when things happen, not which bits meet.
LAYOUTS = {(c.block_m, c.block_n, c.stage_bits): name for name, c in reversed(tc.CONFIGS.items())}
MODEL_CASES = [("mma", name) for name in sorted(LAYOUTS.values())] + [("wgmma", "base")]


def test_every_layout_of_the_configurations_is_modelled():
    assert "base" in LAYOUTS.values() and len(LAYOUTS) >= 3  # 512- and 1024-bit stages, two block tiles
    assert {c.stage_bits for c in tc.CONFIGS.values()} == {512, 1024}


@pytest.mark.parametrize("m,n,k", EMULATED_SHAPES)
@pytest.mark.parametrize("instruction,config", MODEL_CASES)
def test_emulated_kernel_equals_pm1_product(m, n, k, instruction, config):
    """Whole blocks with ragged edges, several stages, a partial last stage, K words not a multiple of 4."""
    x, w, expected = pm1_inputs(m, n, k, seed=k)
    assert torch.equal(emu.emulate_tc_gemm(kernels.pack(x), kernels.pack(w), k, instruction, config), expected)


@pytest.mark.parametrize("config", sorted(LAYOUTS.values()))
def test_emulated_mma_kernel_notices_a_wrong_swizzle(monkeypatch, config):
    """If the fragment reads forgot the swizzle that the loads apply, the product must come out wrong."""
    x, w, expected = pm1_inputs(20, 20, 1024, seed=11)
    real_offsets = emu._fragment_offsets

    def unswizzled_offsets(step, cfg):
        with monkeypatch.context() as patch:
            patch.setattr(emu.SwizzledRows, "swizzle", lambda self, row, segment: segment)
            return real_offsets(step, cfg)

    monkeypatch.setattr(emu, "_fragment_offsets", unswizzled_offsets)
    assert not torch.equal(emu.emulate_tc_gemm(kernels.pack(x), kernels.pack(w), 1024, "mma", config), expected)


def _bank_groups(word_offsets: torch.Tensor) -> torch.Tensor:
    return (word_offsets // tc.SEGMENT_WORDS) % emu.BANK_GROUPS


@pytest.mark.parametrize("config", list(tc.CONFIGS))
def test_shared_memory_accesses_are_free_of_bank_conflicts(config):
    """Each 8-lane phase of an ldmatrix (8 rows of 16 bytes) and of the 16-byte cp.async writes touches
    8 distinct 16-byte bank groups, in every configuration's layout."""
    cfg = tc.CONFIGS[config]
    for step in range(cfg.steps):
        for offsets in emu._fragment_offsets(step, cfg):  # (warps, tiles, 32 lanes)
            phases = _bank_groups(offsets).reshape(-1, 8)  # lanes 8q .. 8q + 7 give the rows of matrix q
            assert all(len(set(p.tolist())) == 8 for p in phases), (config, step)
    layout = emu.SwizzledRows(cfg)
    tid = torch.arange(cfg.threads)
    writes = _bank_groups(layout.offset(layout.copy_row(tid), layout.copy_seg(tid))).reshape(-1, 8)
    assert all(len(set(p.tolist())) == 8 for p in writes), config


def test_configurations_fit_the_hardware_and_the_first_is_the_default():
    # the op's default is index 0 (kernels.xnor_gemm(impl="tc"), the bench's xnor-tc): the same kernel
    assert tc.DEFAULT_CONFIG == tc.config_names()[0] and tc._config_index(None, wgmma=False) == 0
    for cfg in tc.CONFIGS.values():
        assert cfg.smem_bytes <= 227 * 1024, cfg.name
        assert cfg.blocks_per_sm * (cfg.smem_bytes + 1024) <= 228 * 1024, cfg.name
        assert cfg.blocks_per_sm * cfg.threads <= 256, cfg.name  # 255 registers per thread for all resident
        assert cfg.block_m % tc.WARP_M == 0 and cfg.block_n % tc.WARP_N == 0 and cfg.steps % 2 == 0
    assert len(tc.CONFIGS) >= 3 and len({(c.block_m, c.block_n, c.stage_bits, c.stages, c.blocks_per_sm,
                                          c.fragment_double_buffer, c.streaming_stores)
                                         for c in tc.CONFIGS.values()}) == len(tc.CONFIGS)


def test_unknown_or_unsupported_configurations_are_refused_in_one_sentence():
    x, w, _ = pm1_inputs(2, 5, 10, seed=1)
    a, b = kernels.pack(x), kernels.pack(w)
    with pytest.raises(kernels.KernelError, match="unknown tensor-core kernel configuration 'fast'.*base"):
        tc.xnor_gemm_tc(a, b, 10, config="fast")
    with pytest.raises(kernels.KernelError, match="wgmma kernel has one shape of its own"):
        tc.xnor_gemm_tc(a, b, 10, wgmma=True, config="base")


def test_emulated_wgmma_kernel_notices_swapped_descriptor_offsets(monkeypatch):
    """Leading (next K core matrix) and stride (next 8-row group) offsets are not interchangeable."""
    x, w, expected = pm1_inputs(20, 20, 512, seed=12)
    real_operand = emu.wgmma_operand
    monkeypatch.setattr(emu, "wgmma_operand", lambda smem, start, leading, stride, rows:
                        real_operand(smem, start, stride, leading, rows))
    assert not torch.equal(emu.emulate_tc_gemm(kernels.pack(x), kernels.pack(w), 512, "wgmma"), expected)


def test_threshold_bits_are_packed_like_pack():
    x, w, _ = pm1_inputs(5, 70, 40, seed=5)
    dot = emu.and_popcount_gemm(kernels.pack(x), kernels.pack(w), 40)
    thresh = torch.randn(70) * 4
    # pack() sets bit = (value >= 0), and in IEEE arithmetic dot - thresh >= 0 exactly when dot >= thresh
    expected = kernels.pack(dot.float() - thresh[None, :])
    assert torch.equal(emu.threshold_bits(dot, thresh), expected)


def test_tc_impl_on_cpu_tensors_falls_back_to_the_cpu_kernel():
    """The dispatcher never fails: impl="tc" and the threshold form give the exact values on the CPU too."""
    x, w, expected = pm1_inputs(9, 70, 300, seed=21)
    a, b = kernels.pack(x), kernels.pack(w)
    assert torch.equal(kernels.xnor_gemm(a, b, 300, impl="tc"), expected)
    thresh = torch.randn(70, generator=torch.Generator().manual_seed(2)) * 6
    assert torch.equal(tc.xnor_gemm_threshold(a, b, 300, thresh), emu.threshold_bits(expected, thresh))
    assert torch.equal(tc.xnor_gemm_tc(a, b, 300, config=tc.config_names()[-1]), expected)


def test_threshold_form_rejects_a_wrong_number_of_thresholds():
    x, w, _ = pm1_inputs(2, 5, 10, seed=1)
    with pytest.raises(kernels.KernelError, match="one threshold per row of b"):
        tc.xnor_gemm_threshold(kernels.pack(x), kernels.pack(w), 10, torch.zeros(4))


# ---- compiled code ----------------------------------------------------------------------------------

def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") or (str(Path(home) / "bin" / "nvcc") if (Path(home) / "bin" / "nvcc").exists() else None)


def _cuobjdump() -> tuple[str, dict] | None:
    """cuobjdump and an environment where it finds nvdisasm: CUDA_HOME/bin, PATH, or pip's nvidia-cuda-* wheels."""
    home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    candidates = [home / "bin"] + [Path(p) / "nvidia" / "cu13" / "bin" for p in sys.path if p]
    for folder in candidates:
        if (folder / "cuobjdump").exists() and (folder / "nvdisasm").exists():
            return str(folder / "cuobjdump"), {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}
    found = shutil.which("cuobjdump")
    return (found, dict(os.environ)) if found and shutil.which("nvdisasm") else None


CONFIG_TABLE_PROGRAM = r"""
#include "xnor_tc.cu"
#include <cstdio>
int main() {  // the kernel's configuration table, as the launcher sees it
  for (const ConfigInfo& c : kConfigInfo)
    std::printf("%s %d %d %d %d %d %d %d %d %d\n", c.name, c.block_m, c.block_n, c.stage_bits, c.stages,
                c.blocks_per_sm, c.threads, c.smem_bytes, c.fragment_double_buffer, c.streaming_stores);
  return 0;
}
"""


def _model_row(c: tc.TcConfig) -> str:
    return " ".join(str(v) for v in (c.name, c.block_m, c.block_n, c.stage_bits, c.stages, c.blocks_per_sm, c.threads,
                                     c.smem_bytes, int(c.fragment_double_buffer), int(c.streaming_stores)))


def _sass_functions(sass: str) -> dict[str, str]:
    """cuobjdump --dump-sass output split by function (several per target), name -> its instructions."""
    functions: dict[str, str] = {}
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name, _, body = part.partition("\n")
        functions[name.strip()] = functions.get(name.strip(), "") + body
    return functions


def _config_of(mangled: str) -> tc.TcConfig | None:
    """The configuration an instantiation of xnor_tc_kernel<MmaConfig<...>, ...> was compiled for."""
    m = re.search(r"MmaConfigILi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELb([01])ELb([01])E", mangled)
    if not m:
        return None
    values = tuple(int(v) for v in m.groups())
    found = [c for c in tc.CONFIGS.values() if (c.block_m, c.block_n, c.stage_bits, c.stages, c.blocks_per_sm,
                                                 int(c.fragment_double_buffer), int(c.streaming_stores)) == values]
    assert len(found) == 1, f"{mangled}: no configuration in tensorcore.CONFIGS has template arguments {values}"
    return found[0]


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_kernels_compile_for_sm90_and_sm90a_without_spills_and_use_bmma_and_bgmma(tmp_path):
    """One build (every configuration, sm_90 and sm_90a) checked three ways: ptxas resource usage, the SASS
    of each kernel, and the configuration table the launcher holds, which must be tensorcore.CONFIGS."""
    (tmp_path / "configs.cu").write_text(CONFIG_TABLE_PROGRAM)
    exe = tmp_path / "configs"
    result = subprocess.run([_nvcc(), "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90a,code=sm_90a",
                             "--threads", "2", "-O3", "-std=c++17", "--resource-usage", "-I", str(REPO / "cuda"),
                             str(tmp_path / "configs.cu"), "-o", str(exe)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    usage = result.stdout + result.stderr
    assert "warning" not in usage.lower(), usage
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", usage)
    assert frames and all(f == ("0", "0", "0") for f in frames), usage

    table = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert table.stdout.split("\n")[:-1] == [_model_row(c) for c in tc.CONFIGS.values()]

    tool = _cuobjdump()
    if tool is None:
        pytest.skip("compiled without spills; cuobjdump/nvdisasm not found to check the SASS")
    cuobjdump, env = tool
    sass = subprocess.run([cuobjdump, "--dump-sass", str(exe)], capture_output=True, text=True, env=env, timeout=120)
    assert sass.returncode == 0, sass.stderr
    assert not re.search(r"\b(LDL|STL)\b", sass.stdout)  # no local memory anywhere
    functions = _sass_functions(sass.stdout)
    seen = set()
    for name, body in functions.items():
        cfg = _config_of(name)
        if cfg is None:
            continue
        seen.add(cfg.name)
        assert "BMMA.168256.AND.POPC" in body, name  # mma.sync, in both targets
        assert "LDSM" in body, name  # fragments come in through ldmatrix, not per-word shared loads
        assert ("STG.E.EF" in body) == cfg.streaming_stores, name  # evict-first stores where asked for
    assert seen == set(tc.CONFIGS)
    assert any("BGMMA.64x256x256.AND.POPC" in body for body in functions.values())  # wgmma, sm_90a only


needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
CUDA_SHAPES = [(1, 1, 1), (1, 300, 513), (300, 1, 64), (3, 5, 70), (130, 9, 1100), (17, 260, 192),
               (129, 257, 600), (64, 64, 8192), (257, 513, 4096), (1000, 700, 2500)]


def _poisoned_allocator(shape, dtype, value):
    """Leave a freed block of the output's size full of `value`, so unwritten outputs show up."""
    junk = torch.full(shape, value, dtype=dtype, device="cuda")
    del junk


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("m,n,k", CUDA_SHAPES)
def test_cuda_tc_gemm_is_exact(m, n, k):
    x, w, expected = pm1_inputs(m, n, k, seed=m + n + k, device="cuda")
    a, b = kernels.pack(x), kernels.pack(w)
    _poisoned_allocator((m, n), torch.int32, -(2**31) + 7)
    out = kernels.xnor_gemm(a, b, k, impl="tc")
    assert out.dtype == torch.int32 and out.device.type == "cuda"
    assert torch.equal(out.cpu(), expected)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("config", list(tc.CONFIGS))
@pytest.mark.parametrize("m,n,k", CUDA_SHAPES)
def test_cuda_tc_gemm_is_exact_in_every_configuration(m, n, k, config):
    _assert_tc_gemm_exact(m, n, k, config=config)


def _assert_tc_gemm_exact(m, n, k, **kernel):
    """xnor_gemm_tc(..., **kernel) equals the float product, every output written (poisoned memory)."""
    x, w, expected = pm1_inputs(m, n, k, seed=m + n + k, device="cuda")
    _poisoned_allocator((m, n), torch.int32, -(2**31) + 7)
    out = tc.xnor_gemm_tc(kernels.pack(x), kernels.pack(w), k, **kernel)
    assert torch.equal(out.cpu(), expected)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("config", list(tc.CONFIGS))
def test_cuda_tc_gemm_takes_the_unaligned_load_path_in_every_configuration(config):
    """Rows of 32 words (k = 1000) would take 16-byte copies, but a base that is 8 bytes past a 16-byte
    boundary sends the kernel down its 4-byte cp.async path."""
    m, n, k = 70, 300, 1000
    x, w, expected = pm1_inputs(m, n, k, seed=5, device="cuda")
    a, b = kernels.pack(x), kernels.pack(w)
    storage = torch.zeros(m * a.shape[1] + 1, dtype=torch.int64, device="cuda")
    storage[1:].copy_(a.flatten())
    a_offset = storage[1:].view(m, a.shape[1])  # 8-byte aligned, not 16
    assert a_offset.data_ptr() % 16 == 8
    assert torch.equal(tc.xnor_gemm_tc(a_offset, b, k, config=config).cpu(), expected)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("config", list(tc.CONFIGS))
@pytest.mark.parametrize("m,n,k", [(3, 70, 40), (129, 257, 600), (64, 64, 8192)])
def test_cuda_threshold_epilogue_writes_packed_bits(m, n, k, config):
    _assert_threshold_bits_exact(m, n, k, seed=k, config=config)


def _assert_threshold_bits_exact(m, n, k, seed, **kernel):
    x, w, expected_dot = pm1_inputs(m, n, k, seed=seed, device="cuda")
    thresh = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 8
    _poisoned_allocator((m, -(-n // 64)), torch.int64, 0x5A5A5A5A5A5A5A5A)
    bits = tc.xnor_gemm_threshold(kernels.pack(x), kernels.pack(w), k, thresh.cuda(), **kernel)
    assert torch.equal(bits.cpu(), emu.threshold_bits(expected_dot, thresh))


def _skip_without_wgmma():
    if not tc.wgmma_available():
        pytest.skip("the extension has no wgmma kernel here (build with TORCH_CUDA_ARCH_LIST=9.0a on an sm_90 GPU)")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("m,n,k", CUDA_SHAPES)
def test_cuda_wgmma_kernel_is_exact(m, n, k):
    _skip_without_wgmma()
    _assert_tc_gemm_exact(m, n, k, wgmma=True)


@needs_cuda
@pytest.mark.cuda
def test_cuda_wgmma_threshold_epilogue_writes_packed_bits():
    _skip_without_wgmma()
    _assert_threshold_bits_exact(129, 257, 600, seed=3, wgmma=True)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("config", list(tc.CONFIGS))
def test_cuda_tc_gemm_matches_the_cuda_core_kernel_on_a_large_product(config):
    x, w, _ = pm1_inputs(512, 768, 8192 + 96, seed=1, device="cuda")
    a, b = kernels.pack(x), kernels.pack(w)
    assert torch.equal(tc.xnor_gemm_tc(a, b, x.shape[1], config=config), kernels.xnor_gemm(a, b, x.shape[1]))
