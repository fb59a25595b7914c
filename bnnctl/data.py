"""Datasets, splits and preprocessing, chosen by a recipe's ``data`` section.

Three registries keep datasets out of the training loop:

* ``DATASETS[name](cfg, root) -> RawData``: read (or download) the images as uint8 NCHW arrays;
* ``SPLITTERS[cfg.split](raw, cfg) -> (x_train, y_train, x_valid, y_valid)``;
* ``PREPROCESSORS[cfg.preprocess](x_train, x_valid, x_test, root) -> arrays``, fitted on the
  training split only.

The data root is ``--data-dir``, else ``$BNNCTL_DATA``, else ``./data``. Missing data is a
``DataError``: one sentence that says where bnnctl looked and how to stage the files.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import UserError


class DataError(UserError):
    """Data the user must stage or fix; the message is one sentence."""


def data_root(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("BNNCTL_DATA") or "data").expanduser()


@dataclass
class RawData:
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    variant: str  # what the numbers are measured on, e.g. 'mnist' or 'cifar10-jpeg'
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. SVHN's extra split


@dataclass
class Splits:
    """Train / valid / test tensors; ``x`` is uint8 or float, ``transform`` makes network inputs."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    dataset: str
    variant: str
    transform: Callable[[torch.Tensor], torch.Tensor]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Splits":
        moved = {k: getattr(self, k).to(device) for k in
                 ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")}
        return Splits(**moved, num_classes=self.num_classes, dataset=self.dataset,
                      variant=self.variant, transform=self.transform)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


# ---------------------------------------------------------------------------- file formats

def to_nchw(x: np.ndarray) -> np.ndarray:
    """(N,H,W) -> (N,1,H,W); (N,H,W,C) with C in {1,3} -> (N,C,H,W); NCHW stays."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4:
        return x
    raise DataError(f"images must have 3 or 4 dimensions, got shape {x.shape}.")


def read_idx(path: Path) -> np.ndarray:
    """Read an MNIST idx file (optionally .gz): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise DataError(f"{path} is not an unsigned-byte idx file (magic {magic:#x}).")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated: expected {expected} bytes of data, found {len(data) - offset}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_npz(path: Path, variant: str) -> RawData:
    if not path.is_file():
        raise DataError(f"no .npz file at {path}: stage x_train, y_train, x_test, y_test (uint8 images) there.")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise DataError(f"{path} lacks the array '{missing[0]}' (needs x_train, y_train, x_test, y_test).")
        if z["x_train"].dtype != np.uint8:
            raise DataError(f"{path}: x_train must be uint8 images, got {z['x_train'].dtype}.")
        found_variant = str(z["variant"]) if "variant" in z.files else variant
        return RawData(to_nchw(z["x_train"]), z["y_train"].astype(np.int64),
                       to_nchw(z["x_test"]), z["y_test"].astype(np.int64), found_variant)


# ---------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _mnist_md5s() -> dict[str, str]:
    from torchvision.datasets import MNIST
    return dict(MNIST.resources)


def _verified(path: Path, md5: str | None) -> bool:
    from torchvision.datasets.utils import check_integrity
    return check_integrity(str(path), md5)


def load_mnist(cfg: dict[str, Any], root: Path) -> RawData:
    if cfg["source"] == "npz" or (cfg["source"] == "auto" and cfg["npz"]):
        return load_npz(Path(cfg["npz"]), "mnist")
    raw = root / "MNIST" / "raw"
    md5s = _mnist_md5s()
    if not all((raw / name).is_file() for name in MNIST_FILES.values()):
        _download_mnist(root)
    arrays = {}
    for key, name in MNIST_FILES.items():
        path = raw / name
        if not _verified(path, md5s.get(name)):
            raise DataError(f"{path} fails its md5 check: delete it and stage the original file again.")
        arrays[key] = read_idx(path)
    return RawData(to_nchw(arrays["x_train"]), arrays["y_train"].astype(np.int64),
                   to_nchw(arrays["x_test"]), arrays["y_test"].astype(np.int64), "mnist")


def _download_mnist(root: Path) -> None:
    from torchvision.datasets import MNIST
    try:
        MNIST(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise DataError(
            f"MNIST is not under {root / 'MNIST' / 'raw'} and could not be downloaded ({type(e).__name__}): "
            f"copy the four original .gz files there, or point --data-dir / BNNCTL_DATA at a folder holding MNIST/raw."
        ) from None


# ---------------------------------------------------------------------------- splits, preprocessing

def tail_split(raw: RawData, cfg: dict[str, Any]):
    """Train on the first ``train_size`` images, validate on the last ``valid_size`` (the Theano code)."""
    n, v = len(raw.x_train), cfg["valid_size"]
    t = cfg["train_size"] if cfg["train_size"] is not None else n - v
    if t + v > n or v < 1 or t < 1:
        raise DataError(f"cannot cut {t} training and {v} validation images from {n}.")
    return raw.x_train[:t], raw.y_train[:t], raw.x_train[n - v:], raw.y_train[n - v:]


def scale_to_pm1(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [-1, 1], as 2 * x / 255 - 1 in the Theano code."""
    return x.float() * (2.0 / 255.0) - 1.0


def identity_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()


def preprocess_scale(x_train, x_valid, x_test, root: Path):
    """Keep uint8 in memory (4x smaller) and scale each batch on the device."""
    return x_train, x_valid, x_test, scale_to_pm1


DATASETS: dict[str, Callable[[dict[str, Any], Path], RawData]] = {"mnist": load_mnist}
SPLITTERS: dict[str, Callable] = {"tail": tail_split}
PREPROCESSORS: dict[str, Callable] = {"scale": preprocess_scale}


def load_splits(cfg: dict[str, Any], root: str | Path | None = None) -> Splits:
    """Load the recipe's dataset, cut the validation split and preprocess; tensors on the CPU."""
    root = data_root(root)
    raw = DATASETS[cfg["dataset"]](cfg, root)
    x_tr, y_tr, x_va, y_va = SPLITTERS[cfg["split"]](raw, cfg)
    x_te, y_te = raw.x_test, raw.y_test
    if cfg["limit_train"]:
        x_tr, y_tr = x_tr[: cfg["limit_train"]], y_tr[: cfg["limit_train"]]
        x_va, y_va = x_va[: cfg["limit_train"]], y_va[: cfg["limit_train"]]
    if cfg["limit_test"]:
        x_te, y_te = x_te[: cfg["limit_test"]], y_te[: cfg["limit_test"]]
    x_tr, x_va, x_te, transform = PREPROCESSORS[cfg["preprocess"]](x_tr, x_va, x_te, root)
    num_classes = int(max(raw.y_train.max(), raw.y_test.max())) + 1
    t = lambda a: torch.from_numpy(np.require(a, requirements=["C", "W"]))  # noqa: E731 - copies read-only buffers
    return Splits(t(x_tr), t(y_tr).long(), t(x_va), t(y_va).long(), t(x_te), t(y_te).long(),
                  num_classes, cfg["dataset"], raw.variant, transform)


from . import data_cifar_svhn  # noqa: E402,F401  registers cifar10 / svhn and their preprocessors
