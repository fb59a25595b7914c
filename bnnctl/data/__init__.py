"""Datasets, splits and preprocessing, chosen by a recipe's ``data`` section.

Three tables keep datasets out of the training loop, each entry beside its code:

* ``DATASETS[name](cfg, root) -> RawData``: read (or download) the images as uint8 NCHW arrays;
* ``SPLITTERS[cfg.split](raw, cfg) -> (x_train, y_train, x_valid, y_valid)``;
* ``PREPROCESSORS[cfg.preprocess](x_train, x_valid, x_test, root) -> arrays``, fitted on the
  training split only.

The recipe schema reads its choices from these tables, and its model-size check the classes and
image shape of each dataset's originals (``DATASET_CLASSES``, ``DATASET_IMAGE_SHAPES``). Every
loader checks its arrays (``check_arrays``) before anything is split or fitted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import cifar_svhn, preprocessing
from .common import (DATASET_CLASSES, DATASET_IMAGE_SHAPES, DataError, RawData, Splits, check_arrays, data_root,
                     load_npz, npz_image_shape, npz_path, preprocess_scale, scale_to_pm1, tail_split, wants_npz)
from .mnist import MNIST_FILES, load_mnist
from .preprocessing import (EXPORTED_PREPROCESSING, available_memory, exported_shape, physical_memory,
                            preprocessing_from_tensors, preprocessing_tensors)

__all__ = ["DATASETS", "SPLITTERS", "PREPROCESSORS", "DATASET_CLASSES", "DATASET_IMAGE_SHAPES", "DataError",
           "RawData", "Splits", "check_arrays", "data_root", "input_shape", "input_transform", "load_npz",
           "load_splits", "physical_memory", "available_memory", "scale_to_pm1", "wants_npz", "MNIST_FILES",
           "load_mnist", "EXPORTED_PREPROCESSING", "exported_shape", "exported_preprocessing",
           "preprocessing_from_tensors"]

DATASETS: dict[str, Callable[[Any, Path], RawData]] = {
    "mnist": load_mnist, "cifar10": cifar_svhn.load_cifar10, "svhn": cifar_svhn.load_svhn,
}
SPLITTERS: dict[str, Callable] = {"tail": tail_split, "pylearn2_svhn": cifar_svhn.pylearn2_svhn_split}
PREPROCESSORS: dict[str, Callable] = {"scale": preprocess_scale, **preprocessing.PREPROCESSORS}


def input_shape(cfg: Any, root: str | Path | None = None) -> tuple[tuple[int, int, int], str]:
    """(C, H, W) of the images ``load_splits`` gives for the recipe's ``data`` section, and what says so, read
    without loading them: a staged .npz's header, else the shape of the dataset's original images (every
    preprocessing keeps the shape)."""
    originals = DATASET_IMAGE_SHAPES[cfg.dataset]
    if not wants_npz(cfg):
        return originals, f"{cfg.dataset}'s original images"
    path = npz_path(cfg, data_root(root))
    found = npz_image_shape(path) if path.is_file() else None
    if found is None:
        return originals, f"{cfg.dataset}'s original images; {path} cannot be read"
    return found, f"the header of {path}"


def load_splits(cfg: Any, root: str | Path | None = None) -> Splits:
    """Load the recipe's dataset, cut the validation split and preprocess; tensors on the CPU.

    ``cfg`` is the recipe's ``data`` section (``bnnctl.recipe.DataConfig``), read by attribute.
    """
    root = data_root(root)
    if root.exists() and not root.is_dir() and not wants_npz(cfg):
        raise DataError(f"the data root {root} is a file; --data-dir (or BNNCTL_DATA) must name a folder.")
    raw = DATASETS[cfg.dataset](cfg, root)
    x_tr, y_tr, x_va, y_va = SPLITTERS[cfg.split](raw, cfg)
    x_te, y_te = raw.x_test, raw.y_test
    if cfg.limit_train:
        x_tr, y_tr = x_tr[: cfg.limit_train], y_tr[: cfg.limit_train]
        x_va, y_va = x_va[: cfg.limit_train], y_va[: cfg.limit_train]
    if cfg.limit_test:
        x_te, y_te = x_te[: cfg.limit_test], y_te[: cfg.limit_test]
    x_tr, x_va, x_te, transform = PREPROCESSORS[cfg.preprocess](x_tr, x_va, x_te, root)
    num_classes = int(max(raw.y_train.max(), raw.y_test.max())) + 1
    t = lambda a: torch.from_numpy(np.require(a, requirements=["C", "W"]))  # noqa: E731 - copies read-only buffers
    return Splits(t(x_tr), t(y_tr).long(), t(x_va), t(y_va).long(), t(x_te), t(y_te).long(),
                  num_classes, cfg.dataset, raw.variant, transform)


def input_transform(cfg: Any, root: str | Path | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The preprocessing of a model trained on the recipe data section ``cfg``, as a transform of its uint8
    images (what the engines and benches feed the float model). "scale" (2x/255 - 1) needs nothing; the others
    are fitted on the training split ``cfg`` names (the same images, limits and cache as training, so the same
    statistics), which must then be readable under the data root: a DataError (one sentence) otherwise."""
    if cfg.preprocess == "scale":
        return scale_to_pm1
    if cfg.preprocess not in PREPROCESSORS:
        raise DataError(f"the model was trained on inputs preprocessed as {cfg.preprocess!r}, which this bnnctl does "
                        f"not know ({', '.join(PREPROCESSORS)}).")
    return load_splits(cfg, root).transform


def exported_preprocessing(cfg: Any, root: str | Path | None = None) -> dict[str, torch.Tensor]:
    """What an export of a model trained on the recipe data section ``cfg`` carries of its preprocessing, so that it
    runs without the training images: the 256 values of a per-pixel one, the fitted constants of the others
    (``EXPORTED_PREPROCESSING``), fitted as ``input_transform`` fits them (a DataError when they cannot be)."""
    return preprocessing_tensors(cfg.preprocess, input_transform(cfg, root))
