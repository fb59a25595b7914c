"""The C library and bnnctl-classify (cuda/CMakeLists.txt), built with CMake and run on exports with no Python in
the loop: their logits and classes equal the engine's, on the MNIST test images where a data root holds them, and
they refuse damaged exports with bnnctl's own sentences. Skipped where cmake or a C/C++ compiler is missing.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnctl import kernels
from bnnctl.bench.models import calibrate_norms
from bnnctl.core.models import build_model
from bnnctl.infer.bnnx import export_bytes, read_export, save_export
from bnnctl.infer.engine import PackedEngine
from bnnctl.infer.exported import ExportedPreprocessing, ExportError
from bnnctl.infer.fold import export_model
from bnnctl.recipe import load_recipe
from tests.test_export_engine import REPO, images
from tests.test_native_plan import ODD_ARCHS, damaged_files, float_inputs, odd_model

MNIST_ROOT = os.environ.get("BNNCTL_TEST_MNIST")
C_COMPILER = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
CXX_COMPILER = next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or C_COMPILER is None or CXX_COMPILER is None,
                                reason="needs cmake and a C and C++ compiler")


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """The library and the program, built once from cuda/ with the repository's one CMake command."""
    folder = tmp_path_factory.mktemp("native-build")
    for command in (["cmake", "-S", str(REPO / "cuda"), "-B", str(folder)], ["cmake", "--build", str(folder), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_the_c_library_builds_the_plan_and_kernels_the_extension_runs():
    """One implementation: every plain C++ source of cuda/cpu/ that the torch extension compiles, CMake does too."""
    from bnnctl.kernels import build as extension
    cmake = (REPO / "cuda" / "CMakeLists.txt").read_text()
    plain = [name for name in extension.CPU_KERNEL_SOURCES if name.startswith("cpu/")]
    assert plain and all(name in cmake for name in plain)
    assert {f"cpu/{p.name}" for p in (REPO / "cuda" / "cpu").glob("*.cpp")} == set(plain)


def classify(build: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "bnnctl-classify"), *map(str, args)], capture_output=True, text=True)


def logits_of(done: subprocess.CompletedProcess) -> torch.Tensor:
    assert done.returncode == 0, done.stderr
    return torch.tensor([[float(v) for v in line.split()] for line in done.stdout.splitlines()], dtype=torch.float64)


def classes_of(done: subprocess.CompletedProcess) -> torch.Tensor:
    assert done.returncode == 0, done.stderr
    return torch.tensor([int(line) for line in done.stdout.split()])


@pytest.mark.parametrize("arch", list(ODD_ARCHS))
def test_logits_equal_the_engine_on_every_instruction_set(build, tmp_path, arch):
    """8-bit models (the bit-plane first layer) from a .npy and from raw pixels; batches of 1, 7 and 256 (the
    few-row and the many-row paths), one and two threads."""
    exported, shape = odd_model(arch)
    model = tmp_path / "m.bnnx"
    save_export(exported, model)
    x = images(30, shape, 2)
    np.save(tmp_path / "x.npy", x.numpy())
    (tmp_path / "x.raw").write_bytes(x.numpy().tobytes())
    expected = PackedEngine(exported).logits(x)
    for isa in kernels.supported_cpu_isas():
        for images_file, batch, threads in [("x.npy", 1, 1), ("x.raw", 7, 2), ("x.npy", 256, 2)]:
            done = classify(build, model, tmp_path / images_file, "--logits", "--isa", isa, "--batch", batch,
                            "--threads", threads)
            assert torch.equal(logits_of(done), expected), (isa, images_file, batch)
    assert torch.equal(classes_of(classify(build, model, tmp_path / "x.npy")), expected.argmax(1))


@pytest.mark.parametrize("arch", list(ODD_ARCHS))
def test_float_input_models_take_float_npy_files_and_pixels_their_export_preprocesses(build, tmp_path, arch):
    exported, shape = odd_model(arch, "standardize")
    save_export(exported, tmp_path / "m.bnnx")
    x = float_inputs(12, shape, 3)
    expected = PackedEngine(exported).logits(x, lambda t: t.float())  # already the model's inputs, as the CLI takes
    for dtype in (np.float32, np.float64):  # float64 values become float32 first, as the engine's .float() does
        np.save(tmp_path / "x.npy", x.numpy().astype(dtype))
        done = classify(build, tmp_path / "m.bnnx", tmp_path / "x.npy", "--logits", "--batch", 5)
        assert torch.equal(logits_of(done), expected), dtype
    # Raw pixels: preprocessed by the table the export carries, to the engine's logits with the model's own transform.
    pixels = images(12, shape, 4)
    expected = PackedEngine(exported).logits(pixels)
    for images_file in ("x.raw", "x8.npy"):
        (tmp_path / "x.raw").write_bytes(pixels.numpy().tobytes())
        np.save(tmp_path / "x8.npy", pixels.numpy())
        done = classify(build, tmp_path / "m.bnnx", tmp_path / images_file, "--logits", "--batch", 5)
        assert torch.equal(logits_of(done), expected), images_file
    # An export without its preprocessing takes only preprocessed floats.
    save_export(odd_model(arch, "standardize", carry=False)[0], tmp_path / "bare.bnnx")
    refused = classify(build, tmp_path / "bare.bnnx", tmp_path / "x.raw")
    assert refused.returncode == 2 and "takes float inputs" in refused.stderr and "no preprocessing" in refused.stderr


def read_idx_images(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    count, rows, cols = (int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows * cols)


@pytest.mark.skipif(not MNIST_ROOT or not (Path(MNIST_ROOT) / "MNIST" / "raw").is_dir(),
                    reason="set BNNCTL_TEST_MNIST to a folder holding MNIST/raw/*.gz")
def test_predictions_equal_the_engine_on_the_mnist_test_images(build, tmp_path):
    """An MLP of the MNIST shape (random weights, BN statistics from random images) on the 10,000 test images."""
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["model.hidden=[512,256]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 10)
    calibrate_norms(model, (1, 28, 28))
    exported = export_model({"recipe": cfg.to_dict(), "input_shape": [1, 28, 28], "num_classes": 10}, model.eval())
    save_export(exported, tmp_path / "mnist.bnnx")
    pixels = read_idx_images(Path(MNIST_ROOT) / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "test.raw").write_bytes(pixels.tobytes())
    expected = PackedEngine(exported).predict(torch.from_numpy(pixels.copy()).view(-1, 1, 28, 28))
    got = classes_of(classify(build, tmp_path / "mnist.bnnx", tmp_path / "test.raw", "--threads", 2))
    assert len(got) == 10_000 and torch.equal(got, expected)


def test_damaged_exports_are_refused_with_bnnctls_sentence(build, tmp_path):
    """Every damage the Python reader refuses (tests/test_native_plan.py), truncations and bit flips included: the
    same one sentence, exit 2, no output."""
    good = export_bytes(odd_model("mlp-odd")[0])
    cases = damaged_files(good)
    cases.update({f"truncated to {n}": good[:n] for n in (0, 7, 16, 47, 48, 100, len(good) // 2, len(good) - 1)})
    cases.update({f"bit {bit} flipped": good[:bit // 8] + bytes([good[bit // 8] ^ (1 << bit % 8)]) + good[bit // 8 + 1:]
                  for bit in range(0, 8 * len(good), 8 * len(good) // 37)})
    np.save(tmp_path / "x.npy", images(2, ODD_ARCHS["mlp-odd"][2], 0).numpy())
    for name, data in cases.items():
        path = tmp_path / "m.bnnx"
        path.write_bytes(data)
        with pytest.raises(ExportError) as python:
            read_export(data, path)
        done = classify(build, path, tmp_path / "x.npy")
        assert (done.returncode, done.stdout) == (2, ""), name
        assert done.stderr == f"bnnctl-classify: error: {python.value}\n", name
    missing = classify(build, tmp_path / "none.bnnx", tmp_path / "x.npy")
    assert missing.returncode == 2 and "none.bnnx does not exist." in missing.stderr


def test_images_the_model_cannot_take_are_refused(build, tmp_path):
    exported, shape = odd_model("mlp-odd")
    save_export(exported, tmp_path / "m.bnnx")
    np.save(tmp_path / "floats.npy", np.zeros((2, 63), dtype=np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((2, 64), dtype=np.uint8))
    (tmp_path / "ragged.raw").write_bytes(bytes(100))
    for name, message in [("floats.npy", "takes 8-bit pixels"), ("wide.npy", "takes 63 per image"),
                          ("ragged.raw", "takes 63 per image"), ("absent.raw", "cannot be read")]:
        done = classify(build, tmp_path / "m.bnnx", tmp_path / name)
        assert done.returncode == 2 and message in done.stderr, (name, done.stderr)
    # Whitening is not per pixel: such a model takes its preprocessed floats, never pixels.
    whitened, _ = odd_model("mlp-odd", "zca", carry=False)
    whitened.preprocessing = ExportedPreprocessing("zca", {"mean": torch.zeros(63), "matrix": torch.eye(63)})
    save_export(whitened, tmp_path / "zca.bnnx")
    (tmp_path / "pixels.raw").write_bytes(bytes(2 * 63))
    done = classify(build, tmp_path / "zca.bnnx", tmp_path / "pixels.raw")
    assert done.returncode == 2 and "its export carries zca preprocessing, which is not a per-pixel table" in done.stderr


def test_the_readme_example_builds_and_classifies(build, tmp_path):
    """The C example of the README's "embedding it in C" section, compiled against the library as it says."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("embedding it in C"):]
    source = re.search(r"```c\n(.*?)```", section, re.S).group(1)
    (tmp_path / "classify.c").write_text(source)
    done = subprocess.run([C_COMPILER, "-std=c99", "-Wall", "-Werror", str(tmp_path / "classify.c"), "-I",
                           str(REPO / "cuda" / "c"), "-L", str(build), "-lbnnctl", f"-Wl,-rpath,{build}", "-o",
                           str(tmp_path / "classify")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # An 8-bit ConvNet takes its pixels as they are; a standardized (Torch7-style) MLP through its export's table.
    for name, (exported, shape) in {"m": odd_model("convnet-odd"), "s": odd_model("mlp-odd", "standardize")}.items():
        save_export(exported, tmp_path / f"{name}.bnnx")
        x = images(9, shape, 8)
        (tmp_path / f"{name}.raw").write_bytes(x.numpy().tobytes())
        run = subprocess.run([str(tmp_path / "classify"), str(tmp_path / f"{name}.bnnx"), str(tmp_path / f"{name}.raw")],
                             capture_output=True, text=True)
        assert torch.equal(classes_of(run), PackedEngine(exported).logits(x).argmax(1)), name
