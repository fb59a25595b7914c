"""What every dataset shares: the raw arrays, the splits, file formats, the tail split and [-1, 1] scaling.

The data root is ``--data-dir``, else ``$BNNCTL_DATA``, else ``./data``. Missing data is a
``DataError``: one sentence that says where bnnctl looked and how to stage the files.

Every dataset's arrays pass ``check_arrays`` on load, whatever file they came from: uint8 images
of one size, as many integer labels 0..classes-1 as images, at least two classes to learn, so
that a damaged or mislabelled file stops with one sentence before a run starts, never with a
traceback or a run recorded as finished with meaningless results.
"""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import EnvironmentFailure, UserError


class DataError(UserError):
    """Data the user must stage or fix; the message is one sentence."""


# Classes and image shape (C, H, W) of each dataset's original files.
DATASET_CLASSES: dict[str, int] = {"mnist": 10, "cifar10": 10, "svhn": 10}
DATASET_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                                                          "svhn": (3, 32, 32)}
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


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


# ---------------------------------------------------------------------------- checking arrays

def _layout(shape: tuple[int, ...]) -> str | None:
    """How an array of images of this shape is laid out: 'NHW', 'NHWC' (channels last, 1 or 3 of them),
    'NCHW', or None for no layout of images."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW" if len(shape) == 4 else None


def to_nchw(x: np.ndarray, where: str = "images") -> np.ndarray:
    """(N,H,W) -> (N,1,H,W); (N,H,W,C) with C in {1,3} -> (N,C,H,W); NCHW stays."""
    layout = _layout(x.shape)
    if layout == "NHW":
        return x[:, None]
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if layout == "NCHW":
        return x
    raise DataError(f"{where} has shape {tuple(x.shape)}; images must be (N, H, W), (N, C, H, W) or (N, H, W, C).")


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(C, H, W) of one image of an array of this shape, as ``to_nchw`` lays it out (None: no images)."""
    layout = _layout(shape)
    if layout == "NHW":
        return (1, *shape[1:])
    if layout == "NHWC":
        return (shape[3], shape[1], shape[2])
    return tuple(shape[1:]) if layout == "NCHW" else None


def _check_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where} must hold uint8 images (pixel values 0..255), got {x.dtype}.")
    x = to_nchw(x, where)
    if len(x) == 0:
        raise DataError(f"{where} holds no images.")
    if 0 in x.shape[1:]:
        raise DataError(f"{where} holds empty images of shape {tuple(x.shape[1:])}.")
    return x


def _check_labels(y: np.ndarray, where: str, classes: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"{where} must be a 1-D array of class labels, got shape {tuple(y.shape)}.")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where} must hold integer class labels, got {y.dtype}.")
    if len(y) == 0:
        return y.astype(np.int64)  # the count check against the images says what is wrong
    if y.dtype.kind == "f":
        bad = y[~np.isfinite(y)]
        bad = bad if len(bad) else y[y != np.floor(y)]
        if len(bad):
            raise DataError(f"{where} holds the label {bad[0]}; class labels are whole numbers 0..{classes - 1}.")
    low, high = y.min(), y.max()
    if low < 0:
        raise DataError(f"{where} holds the negative label {low}; class labels are 0..{classes - 1}.")
    if high >= classes:
        raise DataError(f"{where} holds the label {high}, beyond the {classes} classes of the dataset "
                        f"(labels 0..{classes - 1}).")
    return y.astype(np.int64)


def check_arrays(arrays: dict[str, np.ndarray], where: Callable[[str], str], classes: int,
                 channels: int | None = None) -> dict[str, np.ndarray]:
    """Checked arrays: images uint8 (N, C, H, W), all of x_train's size, labels int64 (N,) in 0..classes-1.

    ``arrays`` holds x_train, y_train, x_test, y_test and optionally x_extra, y_extra;
    ``where(key)`` names an array in a message (its file, and the array in that file);
    ``channels``, if given, is the number of colour channels the images must have.
    Each problem is a ``DataError`` naming the array.
    """
    out: dict[str, np.ndarray] = {}
    parts = [p for p in ("train", "test", "extra") if f"x_{p}" in arrays]
    for part in parts:
        x_key, y_key = f"x_{part}", f"y_{part}"
        x = out[x_key] = _check_images(arrays[x_key], where(x_key))
        if channels is not None and x.shape[1] != channels:
            raise DataError(f"{where(x_key)} holds images of shape {tuple(x.shape[1:])}, expected {channels}-channel "
                            f"({channels}, H, W) images.")
        y = out[y_key] = _check_labels(arrays[y_key], where(y_key), classes)
        if len(y) != len(x):
            raise DataError(f"{where(y_key)} holds {len(y)} labels but {where(x_key)} holds {len(x)} images; "
                            f"there must be one label per image.")
        if part != "train" and x.shape[1:] != out["x_train"].shape[1:]:
            raise DataError(f"{where(x_key)} holds images of shape {tuple(x.shape[1:])} but {where('x_train')} "
                            f"holds {tuple(out['x_train'].shape[1:])}; the model needs one image size.")
    train_classes = np.unique(out["y_train"])
    if len(train_classes) < 2:
        raise DataError(f"{where('y_train')} holds only the label {train_classes[0]}; a classifier needs "
                        f"training images of at least two classes.")
    for part in parts[1:]:
        beyond = out[f"y_{part}"].max()
        if beyond > train_classes[-1]:
            raise DataError(f"{where(f'y_{part}')} holds the label {beyond}, which no training image has "
                            f"(the labels of {where('y_train')} end at {train_classes[-1]}).")
    return out


# ---------------------------------------------------------------------------- file formats

def read_idx(path: Path) -> np.ndarray:
    """Read an MNIST idx file (optionally .gz): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read as an idx file ({type(e).__name__}): stage the original file "
                        f"again.") from None
    if len(data) < 4:
        raise DataError(f"{path} is truncated: it holds {len(data)} bytes, too few for an idx header.")
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise DataError(f"{path} is not an unsigned-byte idx file (magic {magic:#x}).")
    ndim = magic & 0xFF
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path} is truncated: its header names {ndim} dimensions but the file ends before them.")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims, dtype=object)) if dims else 1
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated: expected {expected} bytes of data, found {len(data) - offset}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def wants_npz(cfg: Any) -> bool:
    return cfg.source == "npz" or (cfg.source == "auto" and bool(cfg.npz))


def npz_path(cfg: Any, root: Path) -> Path:
    """``data.npz`` as given if it exists (or is absolute), else the same name under the data root."""
    given = Path(cfg.npz).expanduser()
    if given.is_absolute() or given.exists() or not (root / given).exists():
        return given
    return root / given


def npz_image_shape(path: Path) -> tuple[int, int, int] | None:
    """(C, H, W) of the training images of a staged .npz, from the header of its x_train alone (no image is
    read); None where the file or that header cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x_train.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(member)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return image_shape(shape)


def _read_npz(path: Path, keys: tuple[str, ...], optional: tuple[str, ...]) -> tuple[dict[str, np.ndarray], Any]:
    """The arrays ``keys`` (all needed) and ``optional`` (where present) of a .npz, and its 'variant' or None."""
    if path.is_dir():
        raise DataError(f"data.npz {path} is a folder; name a .npz file holding {', '.join(keys)}.")
    if not path.is_file():
        raise DataError(f"no .npz file at {path}: stage x_train, y_train, x_test, y_test (uint8 images) there.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); stage the .npz file again.")
    try:
        z = np.load(path, allow_pickle=False)
    except MemoryError:
        raise EnvironmentFailure(f"not enough memory to read {path}.") from None
    except Exception as e:  # noqa: BLE001 - numpy and zipfile raise many kinds for a file that is no .npz
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}); stage it again with "
                        f"numpy.savez.") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single .npy array, not a .npz archive of the arrays {', '.join(keys)}.")
    with z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise DataError(f"{path} lacks the array '{missing[0]}' (needs {', '.join(keys)}).")
        arrays: dict[str, np.ndarray] = {}
        for key in (*keys, *(k for k in optional if k in z.files), *(["variant"] if "variant" in z.files else [])):
            try:
                arrays[key] = z[key]
            except MemoryError:
                raise EnvironmentFailure(f"not enough memory to read the array '{key}' of {path}.") from None
            except Exception as e:  # noqa: BLE001 - a damaged member: zlib, CRC, EOF, pickled objects
                raise DataError(f"{path}: the array '{key}' cannot be read ({type(e).__name__}); the file is "
                                f"damaged or holds Python objects; stage it again with numpy.savez.") from None
    return arrays, arrays.pop("variant", None)


def _npz_variant(found: Any, path: Path, dataset: str) -> str:
    if found is None:
        return dataset
    if found.ndim != 0 or found.dtype.kind not in "US" or not str(found):
        raise DataError(f"{path}: the array 'variant' must be one string naming what the file holds "
                        f"(e.g. '{dataset}-<what it is>'), got {found.dtype} of shape {tuple(found.shape)}.")
    label = str(found)
    if label != dataset and not label.startswith(dataset + "-"):
        raise DataError(f"{path}: its 'variant' {label!r} does not name a variant of {dataset} "
                        f"('{dataset}' or '{dataset}-<what it is>').")
    return label


def load_npz(path: Path, variant: str, classes: int | None = None, optional: tuple[str, ...] = (),
             channels: int | None = None) -> RawData:
    """A pre-staged .npz (x_train, y_train, x_test, y_test, optionally more), checked by ``check_arrays``.

    ``variant`` is the dataset; the file's own 'variant' array, if any, names what it holds.
    ``optional`` pairs (e.g. x_extra, y_extra) are read where present and kept in ``extra``;
    ``classes`` and ``channels`` default to the dataset's (any number of channels for MNIST).
    """
    arrays, found = _read_npz(path, NPZ_ARRAYS, optional)
    label = _npz_variant(found, path, variant)
    keep = {k: arrays[k] for k in NPZ_ARRAYS}
    for part in dict.fromkeys(k[2:] for k in optional):  # e.g. 'extra' for x_extra, y_extra
        x_key, y_key = f"x_{part}", f"y_{part}"
        if (x_key in arrays) != (y_key in arrays):
            have, lack = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise DataError(f"{path} holds the array '{have}' but not '{lack}'.")
        if x_key in arrays:
            keep[x_key], keep[y_key] = arrays[x_key], arrays[y_key]
    checked = check_arrays(keep, lambda key: f"{path}'s array '{key}'", classes or DATASET_CLASSES.get(variant, 10),
                           channels)
    extra = {k: v for k, v in checked.items() if k not in NPZ_ARRAYS}
    return RawData(checked["x_train"], checked["y_train"], checked["x_test"], checked["y_test"], label, extra)


def _verified(path: Path, md5: str | None) -> bool:
    from torchvision.datasets.utils import check_integrity
    return check_integrity(str(path), md5)


def tail_split(raw: RawData, cfg: Any):
    """Train on the first ``train_size`` images, validate on the last ``valid_size`` (the Theano code)."""
    n, v = len(raw.x_train), cfg.valid_size
    t = cfg.train_size if cfg.train_size is not None else n - v
    if v < 1 or v >= n:
        raise DataError(f"cannot cut data.valid_size={v} validation images from the {n} training images and keep "
                        f"any to train on; set data.valid_size between 1 and {n - 1}.")
    if t + v > n or t < 1:
        raise DataError(f"cannot cut data.train_size={t} training and data.valid_size={v} validation images from "
                        f"the {n} training images; their sum must be at most {n}.")
    return raw.x_train[:t], raw.y_train[:t], raw.x_train[n - v:], raw.y_train[n - v:]


def scale_to_pm1(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [-1, 1], as 2 * x / 255 - 1 in the Theano code."""
    return x.float() * (2.0 / 255.0) - 1.0


def preprocess_scale(x_train, x_valid, x_test, root: Path):
    """Keep uint8 in memory (4x smaller) and scale each batch on the device."""
    return x_train, x_valid, x_test, scale_to_pm1
