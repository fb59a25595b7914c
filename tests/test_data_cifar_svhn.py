"""CIFAR-10 and SVHN sources and splits on written files; the Torch7 preprocessors against numpy."""
import hashlib
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.signal
import torch

from bnnctl.data import cifar_svhn as dcs
from bnnctl.data import preprocessing as pre
from bnnctl.data import DataError, RawData, load_splits
from bnnctl.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


def data_cfg(recipe: str, **changes):
    return replace(load_recipe(REPO / "recipes" / f"{recipe}.yaml").data, **changes)


def numbered_images(n: int, start: int, side: int = 32) -> np.ndarray:
    """(n, 3, side, side) uint8 images whose first two pixels spell a unique id (start + i)."""
    x = np.random.default_rng(start).integers(0, 256, (n, 3, side, side)).astype(np.uint8)
    ids = np.arange(start, start + n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = ids // 256, ids % 256
    return x


def image_ids(x) -> np.ndarray:
    x = np.asarray(x).astype(np.int64)
    return x[:, 0, 0, 0] * 256 + x[:, 0, 0, 1]


# ---------------------------------------------------------------------------- SVHN .mat files

def write_svhn_mat(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """The layout of {train,test,extra}_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 0 stored as 10."""
    stored = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(str(path), {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)), "y": stored})


@pytest.fixture
def svhn_root(tmp_path, monkeypatch):
    """A data root with small SVHN .mat files; torchvision's md5s replaced by the files' own."""
    root = tmp_path / "data"
    (root / "SVHN").mkdir(parents=True)
    sizes = {"train": (60, 0), "test": (20, 1000), "extra": (40, 2000)}
    arrays = {}
    for split, (n, start) in sizes.items():
        x = numbered_images(n, start)
        y = np.arange(n) % 10
        write_svhn_mat(root / "SVHN" / f"{split}_32x32.mat", x, y)
        arrays[split] = (x, y)
    md5s = {split: (f"{split}_32x32.mat", hashlib.md5((root / "SVHN" / f"{split}_32x32.mat").read_bytes()).hexdigest())
            for split in sizes}
    monkeypatch.setattr(dcs, "_svhn_files", lambda: md5s)
    return root, arrays


def test_svhn_mat_reader_transposes_and_maps_label_10_to_digit_0(svhn_root):
    root, arrays = svhn_root
    x, y = dcs.read_svhn_mat(root / "SVHN" / "train_32x32.mat")
    assert x.shape == (60, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x, arrays["train"][0]) and np.array_equal(y, arrays["train"][1])
    raw = scipy.io.loadmat(str(root / "SVHN" / "train_32x32.mat"))
    assert raw["X"].shape == (32, 32, 3, 60) and raw["y"].shape == (60, 1) and raw["y"].min() == 1
    # pixel (row 5, column 7) of channel 2 of image 3, in both layouts
    assert raw["X"][5, 7, 2, 3] == x[3, 2, 5, 7]


def test_svhn_torch7_split_is_the_tail_of_train_without_extra(svhn_root):
    root, arrays = svhn_root
    s = load_splits(data_cfg("svhn_torch7", train_size=45, valid_size=15, preprocess="scale"), root)
    assert np.array_equal(image_ids(s.x_train), np.arange(45))
    assert np.array_equal(image_ids(s.x_valid), np.arange(45, 60))
    assert np.array_equal(image_ids(s.x_test), np.arange(1000, 1020))
    assert s.variant == "svhn" and s.num_classes == 10


def test_svhn_pylearn2_split_reads_extra_and_keeps_every_image_once(svhn_root, monkeypatch):
    root, _ = svhn_root
    monkeypatch.setattr(dcs, "PYLEARN2_VALID_PER_CLASS", {"train": 2, "extra": 1})
    s = load_splits(data_cfg("svhn", valid_size=30), root)
    train_ids, valid_ids = image_ids(s.x_train), image_ids(s.x_valid)
    assert len(valid_ids) == 30 and len(train_ids) == 60 + 40 - 30
    assert sorted(np.concatenate([train_ids, valid_ids])) == list(range(60)) + list(range(2000, 2040))
    from_train = valid_ids < 1000
    assert np.bincount(s.y_valid.numpy()[from_train], minlength=10).tolist() == [2] * 10
    assert np.bincount(s.y_valid.numpy()[~from_train], minlength=10).tolist() == [1] * 10
    again = load_splits(data_cfg("svhn", valid_size=30), root)
    assert np.array_equal(image_ids(again.x_valid), valid_ids)  # the same validation set every run


def test_pylearn2_split_with_the_real_per_class_counts():
    rng = np.random.default_rng(3)
    y_train, y_extra = rng.integers(0, 10, 4500), rng.integers(0, 10, 2500)
    y_train[:4000], y_extra[:2000] = np.arange(4000) % 10, np.arange(2000) % 10
    raw = RawData(numbered_images(4500, 0, side=4), y_train, numbered_images(5, 30000, side=4), np.zeros(5, np.int64),
                  "svhn", {"x_extra": numbered_images(2500, 10000, side=4), "y_extra": y_extra})
    x_tr, y_tr, x_va, y_va = dcs.pylearn2_svhn_split(raw, data_cfg("svhn", valid_size=6000, train_size=None))
    assert len(x_va) == 6000 and len(x_tr) == 4500 + 2500 - 6000
    ids = image_ids(x_va)
    assert np.bincount(y_va[ids < 10000], minlength=10).tolist() == [400] * 10
    assert np.bincount(y_va[ids >= 10000], minlength=10).tolist() == [200] * 10
    assert not set(ids) & set(image_ids(x_tr))
    with pytest.raises(DataError, match="valid_size: 6000"):
        dcs.pylearn2_svhn_split(raw, data_cfg("svhn", valid_size=5000, train_size=None))


def test_svhn_md5_mismatch_is_an_error_unless_labelled_as_a_variant(svhn_root, monkeypatch):
    root, _ = svhn_root
    files = dict(dcs._svhn_files())
    files["test"] = ("test_32x32.mat", "0" * 32)
    monkeypatch.setattr(dcs, "_svhn_files", lambda: files)
    with pytest.raises(DataError, match="md5"):
        load_splits(data_cfg("svhn_torch7", train_size=45, valid_size=15), root)
    s = load_splits(data_cfg("svhn_torch7", train_size=45, valid_size=15, variant="svhn-synthetic",
                             preprocess="scale"), root)
    assert s.variant == "svhn-synthetic"
    with pytest.raises(DataError, match="variant of svhn"):
        load_splits(data_cfg("svhn_torch7", train_size=45, valid_size=15, variant="cifar10"), root)


def test_svhn_missing_files_say_where_bnnctl_looked(tmp_path, monkeypatch):
    import torchvision

    class NoInternet(torchvision.datasets.SVHN):
        def __init__(self, *args, **kwargs):
            raise OSError("no route to host")
    monkeypatch.setattr("torchvision.datasets.SVHN", NoInternet)
    with pytest.raises(DataError, match=r"train_32x32\.mat is not in .*SVHN.*data\.npz"):
        load_splits(data_cfg("svhn_torch7"), tmp_path)


# ---------------------------------------------------------------------------- CIFAR-10 files

def write_cifar_batches(folder: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-batches-py: pickled dicts, 'data' (n, 3072) uint8 rows R..G..B, 'labels' a list."""
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = numbered_images(6, 100 * i)
        y = rng.integers(0, 10, 6)
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name, "data": x.reshape(6, -1), "labels": y.tolist(),
                         "filenames": [f"{j}.png" for j in range(6)]}, fh)
        written[name] = (x, y)
    return written


def test_cifar10_loader_reads_the_python_batches_and_checks_md5s(tmp_path, monkeypatch):
    root = tmp_path / "data"
    written = write_cifar_batches(root / "cifar-10-batches-py", np.random.default_rng(0))
    with pytest.raises(DataError, match="md5"):  # the written files are not the originals
        load_splits(data_cfg("cifar10", train_size=20, valid_size=10), root)
    base, train, test = dcs._cifar10_files()
    own = lambda files: [(n, hashlib.md5((root / base / n).read_bytes()).hexdigest()) for n, _ in files]  # noqa: E731
    monkeypatch.setattr(dcs, "_cifar10_files", lambda: (base, own(train), own(test)))
    s = load_splits(data_cfg("cifar10", train_size=20, valid_size=10), root)
    x_all = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    y_all = np.concatenate([written[f"data_batch_{k}"][1] for k in range(1, 6)])
    assert np.array_equal(s.x_train.numpy(), x_all[:20]) and np.array_equal(s.y_train.numpy(), y_all[:20])
    assert np.array_equal(s.x_valid.numpy(), x_all[20:]) and np.array_equal(s.x_test.numpy(), written["test_batch"][0])
    assert s.variant == "cifar10"


def test_cifar10_never_reads_the_stand_in_unless_the_recipe_names_it(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    x_train, x_test = numbered_images(30, 0), numbered_images(10, 500)
    np.savez(root / "cifar10-jpeg.npz", x_train=x_train.transpose(0, 2, 3, 1), y_train=np.arange(30) % 10,
             x_test=x_test.transpose(0, 2, 3, 1), y_test=np.arange(10), variant="cifar10-jpeg")

    import torchvision

    class NoInternet(torchvision.datasets.CIFAR10):
        def __init__(self, *args, **kwargs):
            raise OSError("no route to host")
    monkeypatch.setattr("torchvision.datasets.CIFAR10", NoInternet)
    with pytest.raises(DataError, match=r"CIFAR-10 is not under .*cifar-10-batches-py"):
        load_splits(data_cfg("cifar10"), root)
    # named by the recipe, relative to the data root: read, and recorded as what it is
    s = load_splits(data_cfg("cifar10", source="npz", npz="cifar10-jpeg.npz", train_size=20, valid_size=10), root)
    assert s.variant == "cifar10-jpeg" and s.x_train.shape == (20, 3, 32, 32)
    assert np.array_equal(s.x_train.numpy(), x_train[:20])
    with pytest.raises(DataError, match="no .npz file"):
        load_splits(data_cfg("cifar10", source="npz", npz="elsewhere.npz"), root)


def test_npz_with_grey_images_is_refused_for_cifar10(tmp_path):
    np.savez(tmp_path / "grey.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2))
    with pytest.raises(DataError, match="3-channel"):
        load_splits(data_cfg("cifar10", source="npz", npz=str(tmp_path / "grey.npz")), tmp_path)


# ---------------------------------------------------------------------------- preprocessors vs numpy

def test_standardize_uses_training_mean_and_std(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 5, 5)).astype(np.uint8)
    *_, transform = pre.preprocess_standardize(x, x[:3], x[:3], tmp_path)
    unit = x / 255.0
    expected = (unit - unit.mean()) / unit.std(ddof=1)
    np.testing.assert_allclose(transform(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def numpy_zca(x_train: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    flat = x_train.reshape(len(x_train), -1) / 255.0
    mean = flat.mean(0)
    cov = np.cov(flat, rowvar=False)  # (n - 1) normalisation, as unsup.pcacov
    lam, vec = np.linalg.eigh(cov)
    p = vec @ np.diag(1 / np.sqrt(lam + eps)) @ vec.T
    return ((x.reshape(len(x), -1) / 255.0 - mean) @ p).reshape(x.shape)


def test_zca_matches_numpy_and_whitens_the_training_set(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (400, 3, 1, 1))  # correlated channels and pixels
    x_train = np.clip(base + rng.integers(-40, 40, (400, 3, 4, 4)), 0, 255).astype(np.uint8)
    x_test = rng.integers(0, 256, (7, 3, 4, 4)).astype(np.uint8)
    *_, transform = pre.preprocess_zca(x_train, x_test, x_test, tmp_path)
    np.testing.assert_allclose(transform(torch.from_numpy(x_test)).numpy(), numpy_zca(x_train, x_test, 1e-5),
                               rtol=1e-4, atol=1e-4)
    white = transform(torch.from_numpy(x_train)).reshape(400, -1).double().numpy()
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(48), atol=2e-3)


def numpy_gcn_lcn(x: np.ndarray) -> np.ndarray:
    """dp.GCN{use_std, sqrt_bias=10} then dp.LeCunLCN{kernel_size=9, divide_by_std}, image by image."""
    out = np.empty(x.shape)
    offsets = np.arange(9) - 4
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 8.0)
    kernel /= kernel.sum()
    for i, image in enumerate(x / 255.0):
        centered = image - image.mean()
        gcn = centered / np.sqrt((centered ** 2).mean() + 10.0)
        for c in range(image.shape[0]):
            local = gcn[c] - scipy.signal.convolve2d(gcn[c], kernel, mode="same", boundary="fill")
            out[i, c] = local / (local.std(ddof=1) + 1e-4)
    return out


def test_gcn_lcn_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (40, 3, 12, 12)).astype(np.uint8)
    x_train[:5] = 77  # flat images: GCN leaves them at 0 (divisor sqrt(10)), LCN too
    x_test = rng.integers(0, 256, (6, 3, 12, 12)).astype(np.uint8)
    *_, transform = pre.preprocess_gcn_lcn(x_train, x_test, x_test, tmp_path)
    train_lcn = numpy_gcn_lcn(x_train)
    mean, std = train_lcn.mean(), train_lcn.std(ddof=1)
    np.testing.assert_allclose(transform(torch.from_numpy(x_test)).numpy(), (numpy_gcn_lcn(x_test) - mean) / std,
                               rtol=1e-4, atol=1e-4)
    assert np.isfinite(transform(torch.from_numpy(x_train[:5])).numpy()).all()


def test_fitted_statistics_are_cached_per_training_set(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x_a = rng.integers(0, 256, (30, 3, 4, 4)).astype(np.uint8)
    x_b = rng.integers(0, 256, (30, 3, 4, 4)).astype(np.uint8)
    *_, first = pre.preprocess_zca(x_a, x_a, x_a, tmp_path)
    cached = list((tmp_path / "preprocessed").glob("zca-*.npz"))
    assert len(cached) == 1

    def refit(*args, **kwargs):
        raise AssertionError("fitted again although cached")
    monkeypatch.setattr(pre, "fit_zca", refit)
    *_, second = pre.preprocess_zca(x_a, x_a, x_a, tmp_path)
    assert torch.equal(first(torch.from_numpy(x_a)), second(torch.from_numpy(x_a)))
    with pytest.raises(AssertionError, match="fitted again"):
        pre.preprocess_zca(x_b, x_b, x_b, tmp_path)  # other training images: another key


def test_load_splits_keeps_uint8_images_and_transforms_batches(svhn_root):
    root, arrays = svhn_root
    s = load_splits(data_cfg("svhn_torch7", train_size=45, valid_size=15), root)
    assert s.x_train.dtype == torch.uint8
    batch = s.transform(s.x_test[:4])
    assert batch.dtype == torch.float32 and batch.shape == (4, 3, 32, 32)
    expected = numpy_gcn_lcn(arrays["test"][0][:4])
    train_lcn = numpy_gcn_lcn(arrays["train"][0][:45])
    np.testing.assert_allclose(batch.numpy(), (expected - train_lcn.mean()) / train_lcn.std(ddof=1), atol=1e-4)


# ---------------------------------------------------------------------------- damaged and unusable files

def test_damaged_cifar_batches_are_data_errors(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar_batches(root / "cifar-10-batches-py", np.random.default_rng(0))
    cfg = data_cfg("cifar10", train_size=20, valid_size=10, variant="cifar10-edited")
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(DataError, match=r"data_batch_3 is not a readable CIFAR-10 batch"):
        load_splits(cfg, root)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": np.zeros((6, 100), np.uint8), "labels": [0] * 6}, fh)
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be uint8 rows of 3072 pixels"):
        load_splits(cfg, root)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": np.zeros((6, 3072), np.uint8), "labels": [0, 1, 12, 3, 4, 5]}, fh)
    with pytest.raises(DataError, match=r"the labels of the training batches in .* holds the label 12"):
        load_splits(cfg, root)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(DataError, match="lacks the entries 'data' and 'labels'"):
        load_splits(cfg, root)


def test_svhn_mat_files_that_cannot_be_used(svhn_root):
    root, _ = svhn_root
    cfg = data_cfg("svhn_torch7", train_size=45, valid_size=15, variant="svhn-synthetic", preprocess="scale")
    test_mat = root / "SVHN" / "test_32x32.mat"
    test_mat.write_bytes(b"")
    with pytest.raises(DataError, match=r"test_32x32\.mat is not a readable SVHN \.mat file"):
        load_splits(cfg, root)
    scipy.io.savemat(str(test_mat), {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.array([[1.5], [2], [3], [4]])})
    with pytest.raises(DataError, match=r"test_32x32\.mat: y must hold whole-number labels"):
        load_splits(cfg, root)
    scipy.io.savemat(str(test_mat), {"X": np.zeros((32, 32, 3, 0), np.uint8), "y": np.zeros((0, 1), np.uint8)})
    with pytest.raises(DataError, match=r"test_32x32\.mat holds no images"):
        load_splits(cfg, root)
    scipy.io.savemat(str(test_mat), {"images": np.zeros(3)})
    with pytest.raises(DataError, match="lacks the arrays 'X' and 'y'"):
        load_splits(cfg, root)


def test_svhn_npz_extra_arrays_are_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(dcs, "PYLEARN2_VALID_PER_CLASS", {"train": 1, "extra": 1})
    x, y = numbered_images(30, 0).transpose(0, 2, 3, 1), np.arange(30) % 10
    arrays = {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": y[:5]}
    np.savez(tmp_path / "s.npz", **arrays)
    cfg = data_cfg("svhn", source="npz", npz=str(tmp_path / "s.npz"), valid_size=20)
    with pytest.raises(DataError, match="lacks x_extra / y_extra"):
        load_splits(cfg, tmp_path)
    np.savez(tmp_path / "s.npz", **arrays, x_extra=x)
    with pytest.raises(DataError, match="holds the array 'x_extra' but not 'y_extra'"):
        load_splits(cfg, tmp_path)
    np.savez(tmp_path / "s.npz", **arrays, x_extra=x.astype(np.float32), y_extra=y)
    with pytest.raises(DataError, match="array 'x_extra' must hold uint8 images"):
        load_splits(cfg, tmp_path)
    np.savez(tmp_path / "s.npz", **arrays, x_extra=x, y_extra=y)
    s = load_splits(cfg, tmp_path)
    assert len(s.x_valid) == 20 and len(s.x_train) == 40


def test_damaged_preprocessing_cache_is_fitted_again(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 3, 4, 4)).astype(np.uint8)
    *_, first = pre.preprocess_zca(x, x, x, tmp_path)
    (cached,) = (tmp_path / "preprocessed").glob("zca-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    *_, second = pre.preprocess_zca(x, x, x, tmp_path)
    assert torch.allclose(first(torch.from_numpy(x)), second(torch.from_numpy(x)))
    with np.load(cached) as z:  # and written again whole
        assert set(z.files) == {"mean", "matrix"}


def test_preprocessing_that_cannot_work_is_refused(tmp_path, monkeypatch):
    flat = np.full((10, 1, 4, 4), 77, np.uint8)
    with pytest.raises(DataError, match="data.preprocess standardize divides by the std of the training pixels"):
        pre.preprocess_standardize(flat, flat, flat, tmp_path)
    monkeypatch.setattr(pre, "physical_memory", lambda: 1 << 20)
    x = np.zeros((4, 3, 32, 32), np.uint8)
    with pytest.raises(DataError, match=r"data.preprocess zca: whitening 3072-pixel images .* more than this "
                                        r"machine's 0.0 GiB"):
        pre.preprocess_zca(x, x, x, tmp_path)
