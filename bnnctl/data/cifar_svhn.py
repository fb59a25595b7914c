"""CIFAR-10 and SVHN: sources, the pylearn2 SVHN split, and the Torch7 preprocessors.

Sources (``data.source``):
* ``auto`` / ``torchvision``: the original files under the data root, checked against
  torchvision's md5s and downloaded by torchvision when absent (where there is internet):
  ``<root>/cifar-10-batches-py/`` and ``<root>/SVHN/{train,test,extra}_32x32.mat``.
* ``npz``: a pre-staged ``.npz`` (x_train, y_train, x_test, y_test; SVHN may add x_extra,
  y_extra). A relative ``data.npz`` is looked up in the working directory, then in the data
  root. The file's own ``variant`` array names what it holds: the CIFAR-10 stand-in built by
  ``shared/data/cifar10-reconstruction/build.py`` says 'cifar10-jpeg', and every run on it is
  recorded as that, never as CIFAR-10. The stand-in is only read when the recipe names it.

A run on files that are not the originals must say so: with ``data.variant`` set to a variant of
the dataset ('svhn-synthetic', 'cifar10-…') the md5 check is skipped and the run is recorded
under that name; without it, files that fail the check are an error.

SVHN labels: the .mat files store digit 0 as 10; here it is 0 (as torchvision does).
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .common import (DATASET_CLASSES, DataError, RawData, _verified, check_arrays, load_npz, npz_path,
                     wants_npz)


def recorded_variant(cfg: Any, dataset: str) -> str:
    """The name a run on the dataset's own file layout is recorded under; see the module docstring."""
    label = cfg.variant
    if not label or label == dataset:
        return dataset
    if not label.startswith(dataset + "-"):
        raise DataError(f"data.variant {label!r} does not name a variant of {dataset} "
                        f"(use '{dataset}' or '{dataset}-<what it is>').")
    return label


def _check_file(path: Path, md5: str | None, variant: str, dataset: str) -> None:
    if variant == dataset and not _verified(path, md5):
        raise DataError(f"{path} fails its md5 check: delete it and stage the original file again, or label "
                        f"a modified copy with --set data.variant={dataset}-<what it is>.")


# ---------------------------------------------------------------------------- CIFAR-10

def _cifar10_files() -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    from torchvision.datasets import CIFAR10
    return CIFAR10.base_folder, [tuple(e) for e in CIFAR10.train_list], [tuple(e) for e in CIFAR10.test_list]


CIFAR_IMAGE_BYTES = 3 * 32 * 32


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can name any function to call while it is
    read, and a CIFAR-10 batch names none but numpy's array reconstruction (which calls no other code)."""

    # (module, name) -> the object; numpy 2 pickles name numpy._core, older ones numpy.core, and Python 3
    # pickles of protocol 2 spell bytes as _codecs.encode (a text codec, no code).
    _ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode,
                **{(f"{core}.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0]
                   for core in ("numpy.core", "numpy._core")},
                **{(f"{core}.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0]
                   for core in ("numpy.core", "numpy._core")}}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _RefusedGlobal(f"{module}.{name} is not an array type")
        return self._ALLOWED[(module, name)]


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels) of one pickled batch of cifar-10-batches-py."""
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
    except MemoryError:
        raise
    except _RefusedGlobal:
        raise DataError(f"{path} is refused: it names Python code to run when it is read, which no CIFAR-10 batch "
                        f"does, and none of it was run; stage the original file again.") from None
    except Exception as e:  # noqa: BLE001 - unpickling a damaged file raises many kinds
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}); stage the original "
                        f"file again.") from None
    labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
    if labels is None or "data" not in entry:
        raise DataError(f"{path} is not a CIFAR-10 batch: it lacks the entries 'data' and 'labels'.")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_IMAGE_BYTES:
        raise DataError(f"{path}: 'data' must be uint8 rows of {CIFAR_IMAGE_BYTES} pixels (3 x 32 x 32), got "
                        f"{data.dtype} of shape {tuple(data.shape)}.")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels)


def _read_cifar_batches(folder: Path, files: list[tuple[str, str]], variant: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name, md5 in files:
        path = folder / name
        _check_file(path, md5, variant, "cifar10")
        x, y = _read_cifar_batch(path)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path} holds {len(x)} images but labels of shape {tuple(y.shape)}; there must be one "
                            f"label per image.")
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(cfg: Any, root: Path) -> RawData:
    if wants_npz(cfg):
        return load_npz(npz_path(cfg, root), "cifar10", channels=3)
    variant = recorded_variant(cfg, "cifar10")
    base, train_files, test_files = _cifar10_files()
    folder = root / base
    if not all((folder / name).is_file() for name, _ in train_files + test_files):
        _download_cifar10(root, folder)
    x_train, y_train = _read_cifar_batches(folder, train_files, variant)
    x_test, y_test = _read_cifar_batches(folder, test_files, variant)
    where = {"x_train": "the training batches", "x_test": "the test batch"}
    where |= {"y_train": f"the labels of {where['x_train']}", "y_test": f"the labels of {where['x_test']}"}
    checked = check_arrays({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test},
                           lambda key: f"{where[key]} in {folder}", DATASET_CLASSES["cifar10"])
    return RawData(checked["x_train"], checked["y_train"], checked["x_test"], checked["y_test"], variant)


def _download_cifar10(root: Path, folder: Path) -> None:
    from torchvision.datasets import CIFAR10
    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise DataError(
            f"CIFAR-10 is not under {folder} and could not be downloaded ({type(e).__name__}): extract the "
            f"original cifar-10-python.tar.gz into {root}, point --data-dir / BNNCTL_DATA at a folder holding "
            f"cifar-10-batches-py, or name a pre-staged file with --set data.source=npz --set data.npz=PATH."
        ) from None


# ---------------------------------------------------------------------------- SVHN

# Splits whose training set also draws on SVHN's 531,131 'extra' images.
SPLITS_WITH_EXTRA = {"pylearn2_svhn"}


def _svhn_files() -> dict[str, tuple[str, str]]:
    """split -> (file name, md5), from torchvision."""
    from torchvision.datasets import SVHN
    return {split: (entry[1], entry[2]) for split, entry in SVHN.split_list.items()}


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels 0..9) of a {train,test,extra}_32x32.mat file."""
    import scipy.io
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises several kinds for a damaged file
        raise DataError(f"{path} is not a readable SVHN .mat file ({type(e).__name__}).") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the arrays 'X' and 'y' of an SVHN .mat file.")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N) with N = {len(y)} labels.")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: X must hold uint8 pixels, got {x.dtype}.")
    if len(y) == 0:
        raise DataError(f"{path} holds no images.")
    if y.dtype.kind not in "iuf" or not np.isfinite(y).all() or (y != np.floor(y)).any():
        raise DataError(f"{path}: y must hold whole-number labels 1..10 (10 for the digit 0), got {y.dtype}.")
    if y.min() < 1 or y.max() > 10:
        raise DataError(f"{path}: labels must be 1..10 (10 for the digit 0), found {y.min()}..{y.max()}.")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y.astype(np.int64) % 10


def _svhn_from_npz(cfg: Any, root: Path, need_extra: bool) -> RawData:
    path = npz_path(cfg, root)
    raw = load_npz(path, "svhn", optional=("x_extra", "y_extra") if need_extra else (), channels=3)
    if need_extra and "x_extra" not in raw.extra:
        raise DataError(f"{path} lacks x_extra / y_extra, which split '{cfg.split}' draws on.")
    return raw


def load_svhn(cfg: Any, root: Path) -> RawData:
    need_extra = cfg.split in SPLITS_WITH_EXTRA
    if wants_npz(cfg):
        return _svhn_from_npz(cfg, root, need_extra)
    variant = recorded_variant(cfg, "svhn")
    files = _svhn_files()
    folder = root / "SVHN"
    arrays = {}
    for split in ("train", "test", "extra") if need_extra else ("train", "test"):
        name, md5 = files[split]
        path = folder / name
        if not path.is_file():
            _download_svhn(folder, split, path)
        _check_file(path, md5, variant, "svhn")
        arrays[split] = read_svhn_mat(path)
    named = {f"{kind}_{split}": arrays[split][i] for split in arrays for i, kind in enumerate("xy")}
    checked = check_arrays(named, lambda key: f"{folder / files[key[2:]][0]} ({'X' if key[0] == 'x' else 'y'})",
                           DATASET_CLASSES["svhn"])
    extra = {k: v for k, v in checked.items() if k.endswith("_extra")}
    return RawData(checked["x_train"], checked["y_train"], checked["x_test"], checked["y_test"], variant, extra)


def _download_svhn(folder: Path, split: str, path: Path) -> None:
    from torchvision.datasets import SVHN
    try:
        SVHN(str(folder), split=split, download=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise DataError(
            f"SVHN's {path.name} is not in {folder} and could not be downloaded ({type(e).__name__}): copy the "
            f"original {path.name} there, point --data-dir / BNNCTL_DATA at a folder holding SVHN/, or name a "
            f"pre-staged file with --set data.source=npz --set data.npz=PATH."
        ) from None


# ---------------------------------------------------------------------------- the pylearn2 SVHN split

PYLEARN2_VALID_PER_CLASS = {"train": 400, "extra": 200}
PYLEARN2_SPLIT_SEED = 0  # pylearn2 drew its validation images at random once; ours are drawn the same way every run


def _per_class_pick(y: np.ndarray, per_class: int, rng: np.random.Generator, source: str) -> np.ndarray:
    picked = []
    for label in range(10):
        candidates = np.flatnonzero(y == label)
        if len(candidates) < per_class:
            raise DataError(f"SVHN {source} has {len(candidates)} images of digit {label}; the pylearn2 split "
                            f"takes {per_class} of each digit from it for validation.")
        picked.append(rng.choice(candidates, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def pylearn2_svhn_split(raw: RawData, cfg: Any):
    """Validate on 400 images per digit from train and 200 per digit from extra (6,000 in all,
    as pylearn2's SVHN 'valid' set); train on every other image of train and extra (598,388)."""
    if "x_extra" not in raw.extra:
        raise DataError("split 'pylearn2_svhn' needs SVHN's extra images, which the data source did not provide.")
    expected = 10 * sum(PYLEARN2_VALID_PER_CLASS.values())
    if cfg.valid_size != expected:
        raise DataError(f"split 'pylearn2_svhn' validates on {expected} images; set data.valid_size: {expected}.")
    rng = np.random.default_rng(PYLEARN2_SPLIT_SEED)
    xs, ys, valid_x, valid_y = [], [], [], []
    for source, x, y in (("train", raw.x_train, raw.y_train), ("extra", raw.extra["x_extra"], raw.extra["y_extra"])):
        valid = _per_class_pick(y, PYLEARN2_VALID_PER_CLASS[source], rng, source)
        keep = np.ones(len(y), dtype=bool)
        keep[valid] = False
        xs.append(x[keep])
        ys.append(y[keep])
        valid_x.append(x[valid])
        valid_y.append(y[valid])
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    if cfg.train_size is not None:
        x_train, y_train = x_train[: cfg.train_size], y_train[: cfg.train_size]
    return x_train, y_train, np.concatenate(valid_x), np.concatenate(valid_y)

