import numpy as np
import pytest
import torch

from bnnctl.data import DataError, load_splits, scale_to_pm1
from bnnctl.data.common import read_idx, to_nchw
from bnnctl.recipe import load_recipe

from .conftest import REPO, write_idx


def mnist_data_cfg(**changes):
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml")["data"]
    cfg.update(changes)
    return cfg


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
