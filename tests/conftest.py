"""Shared fixtures: tiny datasets written in the exact on-disk formats bnnctl reads."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# The CPU kernels' instruction sets (bnnctl.kernels.supported_cpu_isas: those this CPU runs).
ALL_ISAS = ["scalar", "avx2", "avx512vpopcntdq"]

# The quick subset, ``python3 -m pytest -m quick`` (about a minute on 2 cores): the binarized core, the
# optimizers and recipes, export files, the public API and its example, the README runner's own tests. The
# marker only selects; every test still runs by default.
QUICK = ("tests/test_binarize.py", "tests/test_shift.py", "tests/test_layers_models.py", "tests/test_recipe_typed.py",
         "tests/test_export_file.py", "tests/test_faithful.py", "tests/test_public_api.py", "tests/test_examples.py",
         "tests/test_readme.py::test_the_parser", "tests/test_readme.py::test_the_runner",
         "tests/test_readme.py::test_every_")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.nodeid.startswith(QUICK):
            item.add_marker(pytest.mark.quick)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an MNIST idx file (gzip): magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_images(n: int, side: int, rng: np.random.Generator, classes: int = 10):
    """Learnable images: each class lights a different band of rows, plus noise."""
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, side, side))
    for c in range(classes):
        rows = slice(c * side // classes, (c + 1) * side // classes + 1)
        x[y == c, rows, :] += 180
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def write_tiny_npz(path: Path, n_train: int = 600) -> Path:
    """Learnable 8x8 images: n_train for training (and validation), 200 for testing."""
    rng = np.random.default_rng(0)
    x_train, y_train = make_images(n_train, 8, rng)
    x_test, y_test = make_images(200, 8, rng)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_tiny_recipe(path: Path, npz: Path, hidden: int = 32, **train) -> Path:
    """The MNIST recipe shrunk to a 2-layer MLP (hidden units each) on npz's images; ``train`` updates its train section."""
    recipe = yaml.safe_load((REPO / "recipes" / "mnist.yaml").read_text())
    recipe["name"] = "tiny"
    recipe["data"].update(source="npz", npz=str(npz), valid_size=100)
    recipe["model"]["hidden"] = [hidden, hidden]
    recipe["train"].update({"epochs": 3, "batch_size": 50, "eval_batch_size": 100, **train})
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz")


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_npz: Path) -> Path:
    """The MNIST recipe shrunk to a 2-layer MLP on 8x8 images: the real code path in a second."""
    return write_tiny_recipe(tmp_path / "tiny.yaml", tiny_npz)


@pytest.fixture
def mnist_raw(tmp_path: Path, monkeypatch) -> Path:
    """A data root holding small MNIST-format .gz files, with their md5s made the expected ones."""
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x_train, y_train = make_images(300, 28, rng)
    x_test, y_test = make_images(100, 28, rng)
    files = {"train-images-idx3-ubyte.gz": x_train, "train-labels-idx1-ubyte.gz": y_train,
             "t10k-images-idx3-ubyte.gz": x_test, "t10k-labels-idx1-ubyte.gz": y_test}
    for name, array in files.items():
        write_idx(raw / name, array)
    md5s = {name: hashlib.md5((raw / name).read_bytes()).hexdigest() for name in files}
    monkeypatch.setattr("bnnctl.data.mnist._mnist_md5s", lambda: md5s)
    return root


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """The test once per instruction set, the CPU kernels forced onto it (kernels.use_cpu_isa); the ones this CPU
    cannot run skip."""
    from bnnctl import kernels  # here, so that collecting the tests needs no torch
    if request.param not in kernels.supported_cpu_isas():
        pytest.skip(f"this CPU has no {request.param}")
    with kernels.use_cpu_isa(request.param):
        yield request.param
