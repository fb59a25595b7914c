"""MNIST: the four original idx files under ``<root>/MNIST/raw``, md5-checked, or a staged .npz.

A missing original is downloaded by torchvision where there is internet. A download that fails
removes what it created (partial downloads, and the uncompressed copies torchvision extracts
from the files already there) and names the files still missing; the user's own files stay.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .common import (DATASET_CLASSES, DataError, RawData, _verified, check_arrays, load_npz, npz_path, read_idx,
                     wants_npz)


MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _mnist_md5s() -> dict[str, str]:
    from torchvision.datasets import MNIST
    return dict(MNIST.resources)


def load_mnist(cfg: Any, root: Path) -> RawData:
    if wants_npz(cfg):
        return load_npz(npz_path(cfg, root), "mnist")
    raw = root / "MNIST" / "raw"
    md5s = _mnist_md5s()
    missing = [name for name in MNIST_FILES.values() if not (raw / name).is_file()]
    if missing:
        _download_mnist(root, raw, missing)
    arrays = {}
    for key, name in MNIST_FILES.items():
        path = raw / name
        if not _verified(path, md5s.get(name)):
            raise DataError(f"{path} fails its md5 check: delete it and stage the original file again.")
        arrays[key] = read_idx(path)
    checked = check_arrays(arrays, lambda key: str(raw / MNIST_FILES[key]), DATASET_CLASSES["mnist"])
    return RawData(checked["x_train"], checked["y_train"], checked["x_test"], checked["y_test"], "mnist")


def _existing(folder: Path) -> set[Path]:
    """Every file and folder under ``folder``, and ``folder`` and the folders above it that exist."""
    found = set()
    for path in (folder, *folder.parents):
        if path.exists():
            found.add(path)
    if folder.is_dir():
        for dirpath, dirnames, filenames in os.walk(folder):
            found.update(Path(dirpath) / n for n in (*dirnames, *filenames))
    return found


def _remove_new(before: set[Path], folder: Path) -> None:
    """Remove what appeared under ``folder`` since ``before``, and the folders made to hold it."""
    for path in sorted(_existing(folder) - before, key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # only once emptied of what this attempt created; never a user's file
            else:
                path.unlink()
        except OSError:
            pass


def _download_mnist(root: Path, raw: Path, missing: list[str]) -> None:
    from torchvision.datasets import MNIST
    before = _existing(raw)
    try:
        MNIST(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        _remove_new(before, raw)
        how = "point --data-dir / BNNCTL_DATA at a folder holding MNIST/raw"
        if len(missing) == len(MNIST_FILES):
            raise DataError(
                f"MNIST is not under {raw} and could not be downloaded ({type(e).__name__}): "
                f"copy the four original .gz files there, or {how}.") from None
        names = ", ".join(missing)
        raise DataError(
            f"{raw} lacks {names} ({len(MNIST_FILES) - len(missing)} of MNIST's four original files are there) and "
            f"{'it' if len(missing) == 1 else 'they'} could not be downloaded ({type(e).__name__}): copy the "
            f"original {'file' if len(missing) == 1 else 'files'} there, or {how}.") from None
