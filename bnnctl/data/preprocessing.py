"""The Torch7 recipes' input preprocessing: standardization, ZCA whitening, GCN + LCN.

The authors' Torch7 ``Data.lua`` scales pixels to [0, 1] (dp's ``scale={0,1}``) and then
* MNIST: standardizes with the training set's mean and std, one number each (DataProvider's
  'simple' normalization);
* CIFAR-10: ZCA-whitens (``unsup.zca_whiten``, eigenvalue floor 1e-5), fitted on the training split;
* SVHN: global contrast normalization per image (``dp.GCN{use_std=true, sqrt_bias=10}``), then
  local contrast normalization per image and channel (``dp.LeCunLCN{kernel_size=9,
  divide_by_std=true}``: subtract a 9x9 Gaussian (sigma 2) local mean, divide by the std), then
  the 'simple' standardization. (Data.lua divides each split by its own maximum in between; with
  one divisor for all splits that division cancels in the standardization, so we leave it out
  rather than use statistics of the test split.)

Each preprocessor fits its statistics on the training split only, caches them under
``<data root>/preprocessed/`` keyed by a hash of the training images and the parameters (a cache
file that cannot be read is fitted and written again), and keeps
the images as uint8: the returned transform turns each uint8 batch into network inputs on
whatever device the batch is on (a 3072x3072 matmul per batch for ZCA), which keeps the dataset
4x smaller in memory than float inputs would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .common import DataError

ZCA_EPS = 1e-5            # unsup.zca_whiten's default
GCN_SQRT_BIAS = 10.0      # dp.GCN{sqrt_bias=10}
GCN_MIN_DIVISOR = 1e-8    # dp.GCN: a smaller divisor is replaced by 1
LCN_KERNEL_SIZE = 9       # dp.LeCunLCN{kernel_size=9}
LCN_KERNEL_STD = 2.0      # dp.LeCunLCN's default kernel_std
LCN_THRESHOLD = 1e-4      # dp.LeCunLCN: added to the std before dividing

FIT_CHUNK = 4096          # images per chunk when fitting, to bound memory


def unit_scale(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [0, 1] (dp's rescale to {0, 1} of images holding both 0 and 255)."""
    return x.float() / 255.0


class _DeviceCache:
    """Fitted tensors, copied once to each device a batch arrives on."""

    def __init__(self, **tensors: torch.Tensor):
        self._cpu = tensors
        self._copies: dict[torch.device, dict[str, torch.Tensor]] = {}

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._copies:
            self._copies[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return self._copies[device]


# ---------------------------------------------------------------------------- transforms

class Standardize:
    """(x / 255 - mean) / std with one training-set mean and std."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = float(mean), float(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (unit_scale(x) - self.mean) / self.std


class ZCAWhiten:
    """(x / 255 - mean) @ P per flattened image, P = V diag(1 / sqrt(lambda + eps)) V^T."""

    def __init__(self, mean: np.ndarray, matrix: np.ndarray):
        self._fitted = _DeviceCache(mean=torch.from_numpy(mean.astype(np.float32)),
                                    matrix=torch.from_numpy(matrix.astype(np.float32)))

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The fitted float32 mean and matrix on ``device``."""
        return self._fitted.on(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fitted = self._fitted.on(x.device)
        flat = unit_scale(x).reshape(len(x), -1)
        return ((flat - fitted["mean"]) @ fitted["matrix"]).reshape(x.shape)


def gaussian_kernel(size: int = LCN_KERNEL_SIZE, std: float = LCN_KERNEL_STD) -> torch.Tensor:
    """dp.LeCunLCN.gaussianFilter: a size x size Gaussian centred on the middle pixel, summing to 1."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * std ** 2))
    return (kernel / kernel.sum()).float()


def global_contrast_normalize(x: torch.Tensor) -> torch.Tensor:
    """dp.GCN with use_std: per image, subtract its mean, divide by sqrt(mean of squares + 10)."""
    flat = x.reshape(len(x), -1)
    centered = flat - flat.mean(dim=1, keepdim=True)
    divisor = (centered.square().mean(dim=1, keepdim=True) + GCN_SQRT_BIAS).sqrt()
    divisor = torch.where(divisor < GCN_MIN_DIVISOR, torch.ones_like(divisor), divisor)
    return (centered / divisor).reshape(x.shape)


def local_contrast_normalize(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """dp.LeCunLCN with divide_by_std, per image and channel of an (N, C, H, W) batch.

    Subtract the Gaussian-weighted local mean (zero padding at the borders, as the full
    convolution Torch7 crops), then divide by the channel's std over the image (n - 1) + 1e-4.
    """
    n, c, h, w = x.shape
    planes = x.reshape(n * c, 1, h, w)
    pad = kernel.shape[-1] // 2
    local_mean = F.conv2d(planes, kernel.to(x.device, x.dtype)[None, None], padding=pad)
    centered = (planes - local_mean).reshape(n, c, h * w)
    std = centered.std(dim=2, keepdim=True) + LCN_THRESHOLD
    return (centered / std).reshape(n, c, h, w)


class GCNLCN:
    """Standardized LCN(GCN(x / 255)); mean and std are the training split's."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = float(mean), float(std)
        self._kernel = _DeviceCache(kernel=gaussian_kernel())

    def contrast_normalize(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel.on(x.device)["kernel"]
        return local_contrast_normalize(global_contrast_normalize(unit_scale(x)), kernel)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.contrast_normalize(x) - self.mean) / self.std


# ---------------------------------------------------------------------------- carried by an export

PIXEL_VALUES = 256  # an 8-bit pixel's values


class PixelTable:
    """A per-pixel preprocessing held as the float32 value it gives each byte 0..255: what an export carries for
    ``scale`` and ``standardize``, so that the engines (and the C runner) need neither the training images nor the
    transform's code. It gives, value for value, what the transform it was made from gives (``pixel_table``)."""

    def __init__(self, table: torch.Tensor):
        if table.shape != (PIXEL_VALUES,) or table.dtype != torch.float32:
            raise ValueError(f"a pixel table holds {PIXEL_VALUES} float32 values, not {tuple(table.shape)} "
                             f"{table.dtype}")
        self._table = _DeviceCache(table=table)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise DataError(f"a per-pixel preprocessing takes 8-bit pixels (uint8), not {x.dtype}.")
        return self._table.on(x.device)["table"][x.long()]


def pixel_table(transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The float32 values a per-pixel transform gives the bytes 0..255 (elementwise operations give each byte the
    same value whatever the batch around it, so the table is exact)."""
    return transform(torch.arange(PIXEL_VALUES, dtype=torch.uint8)).float().contiguous()


# What an export carries of each preprocessing: tensor names, dtypes and shapes (D: values per image).
EXPORTED_PREPROCESSING: dict[str, dict[str, tuple[torch.dtype, str]]] = {
    "scale": {"table": (torch.float32, "pixels")},
    "standardize": {"table": (torch.float32, "pixels")},
    "zca": {"mean": (torch.float32, "D"), "matrix": (torch.float32, "DxD")},
    "gcn_lcn": {"mean": (torch.float64, "1"), "std": (torch.float64, "1")},
}


def exported_shape(rule: str, values_per_image: int) -> list[int]:
    """The shape a tensor of EXPORTED_PREPROCESSING has for images of values_per_image values."""
    return {"pixels": [PIXEL_VALUES], "D": [values_per_image], "DxD": [values_per_image, values_per_image],
            "1": [1]}[rule]


def preprocessing_tensors(kind: str, transform: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """What an export carries of the fitted preprocessing ``transform`` of kind ``kind`` (EXPORTED_PREPROCESSING);
    ``preprocessing_from_tensors`` rebuilds it."""
    if "table" in EXPORTED_PREPROCESSING[kind]:
        return {"table": pixel_table(transform)}
    if isinstance(transform, ZCAWhiten):
        fitted = transform.on(torch.device("cpu"))
        return {"mean": fitted["mean"].clone(), "matrix": fitted["matrix"].clone()}
    if isinstance(transform, GCNLCN):
        return {"mean": torch.tensor([transform.mean], dtype=torch.float64),
                "std": torch.tensor([transform.std], dtype=torch.float64)}
    raise ValueError(f"no exported form of the {kind!r} preprocessing from {type(transform).__name__}")


def preprocessing_from_tensors(kind: str, tensors: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform an export's preprocessing tensors (``preprocessing_tensors``) stand for."""
    if "table" in EXPORTED_PREPROCESSING[kind]:
        return PixelTable(tensors["table"])
    if kind == "zca":
        return ZCAWhiten(tensors["mean"].numpy(), tensors["matrix"].numpy())
    return GCNLCN(float(tensors["mean"][0]), float(tensors["std"][0]))


# ---------------------------------------------------------------------------- fitting and caching

def cache_key(kind: str, x_train: np.ndarray, params: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"kind": kind, "shape": list(x_train.shape), "dtype": str(x_train.dtype), **params},
                        sort_keys=True).encode())
    h.update(np.ascontiguousarray(x_train).data)
    return h.hexdigest()


def _cached(root: Path, kind: str, x_train: np.ndarray, params: dict,
            fit: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Fitted arrays from ``<root>/preprocessed/<kind>-<hash>.npz``, fitting and saving them if absent."""
    path = root / "preprocessed" / f"{kind}-{cache_key(kind, x_train, params)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - a truncated or damaged cache file is only a lost cache: fit again
            pass
    fitted = fit()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, **fitted)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only data root only costs a refit next time
    return fitted


def _unbiased_mean_std(total: float, total_sq: float, count: int) -> tuple[float, float]:
    mean = total / count
    var = max(total_sq - count * mean * mean, 0.0) / max(count - 1, 1)
    return mean, math.sqrt(var)


def fit_standardize(x_train: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and std (n - 1) of all training pixels / 255, exactly, from a histogram of the bytes."""
    counts = np.bincount(x_train.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = _unbiased_mean_std(float(counts @ values), float(counts @ values ** 2), int(counts.sum()))
    return {"mean": np.float64(mean), "std": np.float64(std)}


def fit_zca(x_train: np.ndarray, eps: float = ZCA_EPS) -> dict[str, np.ndarray]:
    """unsup.zca_whiten's fit: feature means, covariance (n - 1), P = V diag((lambda + eps)^-1/2) V^T.

    Eigenvalues are floored at 0 before adding eps: rounding can make those of a rank-deficient
    covariance (fewer images than pixels) slightly negative.
    """
    n = len(x_train)
    flat = x_train.reshape(n, -1)
    mean = np.zeros(flat.shape[1])
    for start in range(0, n, FIT_CHUNK):
        mean += flat[start:start + FIT_CHUNK].sum(axis=0, dtype=np.float64) / 255.0
    mean /= n
    cov = np.zeros((flat.shape[1], flat.shape[1]))
    for start in range(0, n, FIT_CHUNK):
        chunk = flat[start:start + FIT_CHUNK].astype(np.float64) / 255.0 - mean
        cov += chunk.T @ chunk
    cov /= max(n - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    scale = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
    matrix = (eigenvectors * scale) @ eigenvectors.T
    return {"mean": mean, "matrix": matrix}


def fit_gcn_lcn(x_train: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and std (n - 1) over all values of LCN(GCN(x / 255)) on the training split."""
    transform = GCNLCN(0.0, 1.0)
    total = total_sq = 0.0
    with torch.no_grad():
        for start in range(0, len(x_train), FIT_CHUNK):
            y = transform.contrast_normalize(torch.from_numpy(x_train[start:start + FIT_CHUNK])).double()
            total += float(y.sum())
            total_sq += float(y.square().sum())
    mean, std = _unbiased_mean_std(total, total_sq, x_train.size)
    return {"mean": np.float64(mean), "std": np.float64(std)}


# ---------------------------------------------------------------------------- registered preprocessors

def _check_spread(std: float, kind: str, what: str) -> None:
    if not std > 0:
        raise DataError(f"data.preprocess {kind} divides by the std of {what}, which is {std}: the training "
                        f"images carry no information; check them, or use data.preprocess scale.")


def physical_memory() -> int | None:
    """Bytes of memory of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes that can be allocated now without swapping (the kernel's MemAvailable), or None where the system
    does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def preprocess_standardize(x_train, x_valid, x_test, root: Path):
    fitted = _cached(root, "standardize", x_train, {}, lambda: fit_standardize(x_train))
    _check_spread(float(fitted["std"]), "standardize", "the training pixels")
    return x_train, x_valid, x_test, Standardize(fitted["mean"], fitted["std"])


ZCA_MATRICES = 4  # float64 D x D matrices alive at once while fitting: covariance, eigenvectors, product, result


def preprocess_zca(x_train, x_valid, x_test, root: Path):
    features = int(np.prod(x_train.shape[1:]))
    need, have = ZCA_MATRICES * 8 * features ** 2, physical_memory()
    if have is not None and need > have:
        raise DataError(f"data.preprocess zca: whitening {features}-pixel images fits a {features} x {features} "
                        f"matrix, about {need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB of "
                        f"memory; use data.preprocess scale or standardize, or smaller images.")
    fitted = _cached(root, "zca", x_train, {"eps": ZCA_EPS}, lambda: fit_zca(x_train))
    return x_train, x_valid, x_test, ZCAWhiten(fitted["mean"], fitted["matrix"])


def preprocess_gcn_lcn(x_train, x_valid, x_test, root: Path):
    params = {"sqrt_bias": GCN_SQRT_BIAS, "kernel_size": LCN_KERNEL_SIZE, "kernel_std": LCN_KERNEL_STD,
              "threshold": LCN_THRESHOLD}
    fitted = _cached(root, "gcn_lcn", x_train, params, lambda: fit_gcn_lcn(x_train))
    _check_spread(float(fitted["std"]), "gcn_lcn", "the contrast-normalized training images")
    return x_train, x_valid, x_test, GCNLCN(fitted["mean"], fitted["std"])


PREPROCESSORS = {"standardize": preprocess_standardize, "zca": preprocess_zca, "gcn_lcn": preprocess_gcn_lcn}
