from dataclasses import replace

import numpy as np
import pytest
import torch

from bnnctl.data import DataError, load_splits, scale_to_pm1
from bnnctl.data.common import read_idx, to_nchw
from bnnctl.recipe import load_recipe

from .conftest import REPO, write_idx


def mnist_data_cfg(**changes):
    return replace(load_recipe(REPO / "recipes" / "mnist.yaml").data, **changes)


def test_idx_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_idx_truncated_file_is_a_data_error(tmp_path):
    import gzip
    write_idx(tmp_path / "a.gz", np.zeros((4, 4), np.uint8))
    data = gzip.open(tmp_path / "a.gz").read()[:-3]
    with gzip.open(tmp_path / "b.gz", "wb") as fh:
        fh.write(data)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_mnist_loader_reads_idx_files_and_cuts_tail_split(mnist_raw):
    s = load_splits(mnist_data_cfg(valid_size=50), mnist_raw)
    assert s.x_train.shape == (250, 1, 28, 28) and s.x_valid.shape == (50, 1, 28, 28)
    assert s.x_test.shape == (100, 1, 28, 28) and s.x_train.dtype == torch.uint8
    full = read_idx(mnist_raw / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    assert np.array_equal(s.x_valid[:, 0].numpy(), full[-50:])  # validation is the tail of train
    assert np.array_equal(s.x_train[:, 0].numpy(), full[:250])
    assert s.num_classes == 10 and s.variant == "mnist"


def test_mnist_md5_mismatch_is_refused(mnist_raw, monkeypatch):
    monkeypatch.setattr("bnnctl.data.mnist._mnist_md5s", lambda: {"train-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match="md5"):
        load_splits(mnist_data_cfg(valid_size=50), mnist_raw)


def test_missing_mnist_says_where_it_looked(tmp_path, monkeypatch):
    def no_internet(*args, **kwargs):
        raise OSError("no route to host")
    monkeypatch.setattr("torchvision.datasets.MNIST.download", no_internet)
    with pytest.raises(DataError) as info:
        load_splits(mnist_data_cfg(), tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message and "copy the four original" in message


def test_npz_source(tiny_npz):
    s = load_splits(mnist_data_cfg(source="npz", npz=str(tiny_npz), valid_size=100))
    assert s.x_train.shape == (500, 1, 8, 8) and len(s.x_valid) == 100 and len(s.x_test) == 200


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(DataError, match="lacks the array 'y_train'"):
        load_splits(mnist_data_cfg(source="npz", npz=str(tmp_path / "bad.npz"), valid_size=1))


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="no .npz file"):
        load_splits(mnist_data_cfg(source="npz", npz=str(tmp_path / "x.npz"), valid_size=1))


def test_split_larger_than_data(tiny_npz):
    with pytest.raises(DataError, match="cannot cut"):
        load_splits(mnist_data_cfg(source="npz", npz=str(tiny_npz), valid_size=700))


def test_scale_maps_pixels_to_pm1():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    assert torch.allclose(scale_to_pm1(x), torch.tensor([-1.0, 1.0, 2 * 128 / 255 - 1]), atol=1e-6)


def test_nhwc_becomes_nchw():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    assert to_nchw(x).shape == (2, 3, 32, 32)
    assert to_nchw(np.zeros((2, 28, 28), np.uint8)).shape == (2, 1, 28, 28)


def test_idx_file_shorter_than_its_header(tmp_path):
    import gzip
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x03\x00\x00")  # says 3 dimensions, ends inside the first
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"plain\.gz cannot be read as an idx file"):
        read_idx(tmp_path / "plain.gz")


def test_check_arrays_names_the_array_and_says_what_is_allowed():
    from bnnctl.data import check_arrays
    rng = np.random.default_rng(0)
    good = {"x_train": rng.integers(0, 256, (20, 4, 4)).astype(np.uint8), "y_train": np.arange(20) % 3,
            "x_test": rng.integers(0, 256, (5, 4, 4, 1)).astype(np.uint8), "y_test": np.arange(5)[:, None] % 3}
    where = lambda key: f"f.npz:{key}"  # noqa: E731
    out = check_arrays(good, where, 10)
    assert out["x_train"].shape == (20, 1, 4, 4) and out["x_test"].shape == (5, 1, 4, 4)
    assert out["y_test"].shape == (5,) and out["y_test"].dtype == np.int64
    for change, message in [
        ({"y_train": np.arange(20) % 3 + 0.25}, "f.npz:y_train holds the label 0.25; class labels are whole numbers"),
        ({"y_train": np.arange(20) - 1}, "f.npz:y_train holds the negative label -1"),
        ({"y_test": np.full(5, 10)}, "f.npz:y_test holds the label 10, beyond the 10 classes"),
        ({"y_test": np.full(5, 7)}, "f.npz:y_test holds the label 7, which no training image has"),
        ({"y_train": np.ones(20, bool)}, "f.npz:y_train must hold integer class labels, got bool"),
        ({"x_test": np.zeros((5, 4, 5), np.uint8)}, r"f.npz:x_test holds images of shape \(1, 4, 5\) but"),
        ({"x_train": np.zeros((20, 16), np.uint8)}, r"f.npz:x_train has shape \(20, 16\); images must be"),
        ({"x_test": np.zeros((5, 4, 4), np.uint16)}, "f.npz:x_test must hold uint8 images"),
        ({"y_train": np.full(20, 2)}, "f.npz:y_train holds only the label 2; a classifier needs"),
    ]:
        with pytest.raises(DataError, match=message):
            check_arrays(good | change, where, 10)
    with pytest.raises(DataError, match="expected 3-channel"):
        check_arrays(good, where, 10, channels=3)


def test_npz_relative_to_the_data_root_for_mnist_too(tiny_npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    s = load_splits(mnist_data_cfg(source="npz", npz=tiny_npz.name, valid_size=100), tiny_npz.parent)
    assert len(s.x_train) == 500
