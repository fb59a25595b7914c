"""Building and loading the bnnctl kernel extension (``cuda/``) with torch.utils.cpp_extension.

The extension is compiled on first use into a cache directory (``$BNNCTL_BUILD_DIR``, else
``~/.cache/bnnctl/kernels``), one sub-directory per variant and per hash of everything that goes into
it (sources, flags, torch and Python versions), so later runs load it in a fraction of a second and
an edited source rebuilds by itself.

Two variants exist: ``cpu`` (the torch glue, ``cuda/glue``, with the CPU kernels, ``cuda/cpu`` and
``cuda/train``) and ``cuda`` (plus every ``cuda/*.cu`` and the CUDA glue). The CUDA variant is built
where CUDA is usable -- a GPU torch can see and an nvcc -- and if it fails to build, the CPU variant is
loaded instead, with a warning, so CUDA never stands in the way of the CPU path. ``$BNNCTL_KERNELS=cpu|cuda`` forces a variant (``cuda``
compiles the CUDA glue even without a GPU, which is how it is compile-checked on GPU-less machines).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EnvironmentFailure, UserError
from ..resources import shipped_dir

SOURCE_DIR = shipped_dir("cuda")
# Paths below cuda/. The CPU XNOR kernels (packing, the GEMM's macro-kernel, one file of micro-kernels per
# instruction set, the few-row kernels), the native plan with its .bnnx reader, and the fused training step's
# kernels: plain C++ without torch headers, seconds to compile. cuda/CMakeLists.txt builds the same plan and kernels
# into the C library.
CPU_KERNEL_SOURCES = ["cpu/xnor_kernels.cpp", "cpu/xnor_scalar.cpp", "cpu/xnor_avx2.cpp", "cpu/xnor_avx512.cpp",
                      "cpu/xnor_rows.cpp", "cpu/xnor_plan.cpp", "cpu/bnnx_reader.cpp", "cpu/bnnx_json.cpp",
                      "cpu/sha256.cpp"]
TRAIN_KERNEL_SOURCES = ["train/train_kernels.cpp"]
# The torch glue of the inference, plan and training ops: the slow translation units.
CPU_GLUE_SOURCES = ["glue/inference_ops.cpp", "glue/plan_ops.cpp", "glue/training_ops.cpp"]
# In both variants.
CPU_SOURCES = CPU_GLUE_SOURCES + CPU_KERNEL_SOURCES + TRAIN_KERNEL_SOURCES
# Added in the CUDA variant, together with every cuda/*.cu.
CUDA_GLUE_SOURCES = ["glue/inference_ops_cuda.cpp"]
# The C++ standard is torch's choice (C++20 for recent torch). No contracted multiply-adds: the fused
# training step must round as torch's eager ops do (cuda/train/train_kernels.cpp); sqrt need not set errno,
# so that it vectorizes.
EXTRA_CFLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
# at::parallel_for runs its loop on one thread unless the extension itself is compiled with OpenMP
# (ATen/Parallel-inl.h: INTRA_OP_PARALLEL comes from _OPENMP), so the CPU kernels need it to use
# torch's threads. torch already loads libgomp on Linux.
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
EXTRA_CFLAGS += OPENMP_FLAGS
# nvcc flags for every .cu file (tests/test_cuda_compile.py compiles with the same ones). The target
# architecture comes from $TORCH_CUDA_ARCH_LIST, else from the visible GPU.
EXTRA_NVCC_FLAGS = ["-O3", "-lineinfo"]
# About how long a first build takes on a 2-core machine, shown while it runs.
BUILD_SECONDS = {"cpu": 30, "cuda": 90}


class KernelBuildError(UserError):
    """The kernel extension could not be built or loaded."""


class KernelBuildFolderError(KernelBuildError, EnvironmentFailure):
    """The build folder cannot be created or written: the environment's fault (exit 4), not the input's."""


def usable_build_dir(build_dir: Path) -> Path:
    """build_dir, created; a KernelBuildFolderError (one sentence) when it cannot be created or written."""
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelBuildFolderError(f"the kernel build folder {build_dir} cannot be created "
                                     f"({e.strerror or type(e).__name__}); set BNNCTL_BUILD_DIR to a writable "
                                     f"folder.") from None
    if not os.access(build_dir, os.W_OK | os.X_OK):
        raise KernelBuildFolderError(f"the kernel build folder {build_dir} is not writable; set BNNCTL_BUILD_DIR "
                                     f"to a writable folder.")
    return build_dir


@dataclass(frozen=True)
class LoadedExtension:
    variant: str  # "cpu" | "cuda"
    library: str  # path of the loaded shared library
    cuda_problem: str | None  # why CUDA kernels are absent, when they are


def build_root() -> Path:
    root = os.environ.get("BNNCTL_BUILD_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "bnnctl" / "kernels"


def find_cuda_home() -> Path | None:
    """The CUDA toolkit directory (with bin/nvcc and include/cuda_runtime.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates.append("/usr/local/cuda")
    for cand in candidates:
        if cand and (Path(cand) / "bin" / "nvcc").exists() and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return Path(cand)
    return None


def cuda_problem() -> str | None:
    """Why the CUDA variant cannot be built here (one phrase), or None when it can."""
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if os.environ.get("BNNCTL_KERNELS") != "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    if find_cuda_home() is None:
        return "no CUDA toolkit (nvcc and headers) was found; set CUDA_HOME"
    return None


def sources(variant: str) -> list[Path]:
    names = CPU_SOURCES + (CUDA_GLUE_SOURCES if variant == "cuda" else [])
    paths = [SOURCE_DIR / name for name in names]
    if variant == "cuda":
        paths += sorted(SOURCE_DIR.glob("*.cu"))
    return paths


def _fingerprint(variant: str) -> str:
    """Hash of everything that makes one build differ from another."""
    h = hashlib.sha256()
    for path in sources(variant) + sorted(SOURCE_DIR.rglob("*.h")):
        h.update(path.relative_to(SOURCE_DIR).as_posix().encode())
        h.update(path.read_bytes())
    h.update(repr((variant, EXTRA_CFLAGS, EXTRA_NVCC_FLAGS, torch.__version__, sys.version_info[:2])).encode())
    if variant == "cuda":
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch and torch.cuda.is_available():
            arch = "sm_%d%d" % torch.cuda.get_device_capability()
        h.update(repr((arch, str(find_cuda_home()))).encode())
    return h.hexdigest()[:16]


def _build(variant: str, verbose: bool) -> str:
    missing = [p for p in sources(variant) if not p.exists()]
    if missing or not SOURCE_DIR.is_dir():
        raise KernelBuildError(f"the kernel sources are missing ({missing[0] if missing else SOURCE_DIR}); "
                               "reinstall bnnctl (its wheel carries them as bnnctl/cuda).")
    if variant == "cuda":
        cuda_home = str(find_cuda_home())
        os.environ["CUDA_HOME"] = cuda_home
    # Imported late: at import it probes for CUDA, and warns that it found none, which is noise when
    # building the CPU variant.
    probe_log = logging.getLogger("torch.utils.cpp_extension")
    level = probe_log.level
    if variant == "cpu":
        probe_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        probe_log.setLevel(level)

    if variant == "cuda":
        cpp_extension.CUDA_HOME = cuda_home  # torch guessed it at import time, perhaps wrongly
    build_dir = usable_build_dir(build_root() / f"{variant}-{_fingerprint(variant)}")
    name = f"bnnctl_kernels_{variant}"
    built = any(build_dir.glob(f"{name}*.so"))
    started = time.perf_counter()
    if not built:
        print(f"building bnnctl kernels (first use, ~{BUILD_SECONDS[variant]} s)...", file=sys.stderr, flush=True)
    try:
        library = cpp_extension.load(
            name=name,
            sources=[str(p) for p in sources(variant)],
            extra_cflags=EXTRA_CFLAGS,
            extra_cuda_cflags=EXTRA_NVCC_FLAGS,
            extra_ldflags=OPENMP_FLAGS,
            build_directory=str(build_dir),
            with_cuda=variant == "cuda",
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as e:  # the compiler's output is in the message; keep it in a file for the user
        log = build_dir / "build-error.log"
        log.write_text(f"{type(e).__name__}: {e}\n")
        raise KernelBuildError(f"building the {variant} kernels failed; the compiler output is in {log}") from None
    if not built:
        print(f"built bnnctl kernels in {time.perf_counter() - started:.0f} s ({build_dir})", file=sys.stderr, flush=True)
    return str(library)


def load_extension(verbose: bool = False) -> LoadedExtension:
    """Build (if needed) and load the extension; its ops appear under torch.ops.bnnctl."""
    forced = os.environ.get("BNNCTL_KERNELS")
    if forced not in (None, "", "cpu", "cuda"):
        raise KernelBuildError(f"BNNCTL_KERNELS must be cpu or cuda, not {forced!r}")
    problem = "BNNCTL_KERNELS=cpu" if forced == "cpu" else cuda_problem()
    if problem is None:
        try:
            return LoadedExtension("cuda", _build("cuda", verbose), None)
        except KernelBuildError as e:
            if forced == "cuda":
                raise
            print(f"warning: {e}; using the CPU kernels only", file=sys.stderr, flush=True)
            problem = str(e)
    return LoadedExtension("cpu", _build("cpu", verbose), problem)
