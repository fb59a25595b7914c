"""Every cuda/*.cu compiles for sm_90 with nvcc, without spilling registers to local memory, and the
CUDA variant of the extension (the .cu files plus the torch glue) builds and registers its ops.

No GPU needed, only nvcc (skipped without it). The .cu files are plain CUDA (no torch headers), so
each compiles in seconds with the extension build's flags (bnnctl/kernels/build.py); the whole CUDA
extension takes about a minute on 2 cores the first time, then comes from the build cache.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnctl.kernels import build

CUDA_HOME = build.find_cuda_home()
SOURCES = sorted(build.SOURCE_DIR.glob("*.cu"))
pytestmark = pytest.mark.skipif(CUDA_HOME is None, reason="needs nvcc (CUDA_HOME)")


@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_file_compiles_for_sm90_without_spills(source: Path, tmp_path: Path):
    nvcc = CUDA_HOME / "bin" / "nvcc"
    proc = subprocess.run([str(nvcc), "-c", "-arch=sm_90", *build.EXTRA_NVCC_FLAGS, "-Xptxas", "-v",
                           "-o", str(tmp_path / (source.stem + ".o")), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / (source.stem + ".o")).stat().st_size > 0
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
    assert spills, "ptxas printed no resource usage"
    assert all(stores == "0" and loads == "0" for stores, loads in spills), proc.stderr


def test_every_cuda_source_is_in_the_extension_build():
    assert set(SOURCES) <= set(build.sources("cuda"))
    assert not set(SOURCES) & set(build.sources("cpu"))


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_cuda_extension_with_its_glue_builds_and_registers_cuda_kernels():
    # In a subprocess: a process holds one variant of the `bnnctl` op library (the tests load the CPU one).
    probe = ("import torch; from bnnctl.kernels.build import load_extension; ext = load_extension(); "
             "assert ext.variant == 'cuda', ext; "
             "ops = ['pack', 'xnor_gemm', 'xnor_gemm_csa', 'xnor_gemm_paper', 'baseline_gemm']; "
             "print([torch._C._dispatch_has_kernel_for_dispatch_key('bnnctl::' + op, 'CUDA') for op in ops])")
    env = {**os.environ, "BNNCTL_KERNELS": "cuda", "CUDA_HOME": str(CUDA_HOME),
           "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=900, env=env,
                          cwd=build.SOURCE_DIR.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "[True, True, True, True, True]"


CARRY_SAVE_CHECK = r"""
#include "xnor_gemm_csa.cu"
#include <cstdio>
#include <random>
int main() {  // the carry-save tree and its LOP3 truth tables, evaluated on the CPU
  std::mt19937 gen(1);
  for (int t = 0; t < 100000; ++t) {
    uint32_t a[8], b[8];
    int expected = 0;
    for (int w = 0; w < 8; ++w) {
      a[w] = t % 7 == 0 ? ~0u : gen();
      b[w] = t % 5 == 0 ? 0u : gen();
      expected += __builtin_popcount(a[w] ^ b[w]);
    }
    if (bnn_disagreements8(a, b) != expected) { std::printf("mismatch at %d\n", t); return 1; }
  }
  std::printf("ok\n");
  return 0;
}
"""


def test_carry_save_popcount_equals_plain_popcount_on_the_host(tmp_path: Path):
    (tmp_path / "check.cu").write_text(CARRY_SAVE_CHECK)
    nvcc = CUDA_HOME / "bin" / "nvcc"
    built = subprocess.run([str(nvcc), "-arch=sm_90", "-I", str(build.SOURCE_DIR), "-o", str(tmp_path / "check"),
                            str(tmp_path / "check.cu")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    ran = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout.strip()) == (0, "ok"), ran.stdout + ran.stderr
