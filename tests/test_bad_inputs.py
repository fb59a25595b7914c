"""Every bad input stops `bnnctl train` before any work: one sentence naming the key or file, exit code 2,
no traceback, no run folder.

Each class of failure is run through the real CLI on the tiny fixtures of conftest.py: recipe values
the schema's types accept but its ranges do not, models too large for the machine, recipe files that
are not recipes, .npz files that are damaged or hold arrays bnnctl cannot train on, MNIST files that
are missing, and splits the data cannot give.
"""
from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.data import DataError, load_splits
from bnnctl.recipe import load_recipe

from .conftest import REPO, make_images

runner = CliRunner()


def train(recipe: Path, runs: Path, *extra: str):
    return runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs), "--device", "cpu", *extra])


def assert_refused(result, runs: Path, *named: str, alone: bool = True) -> str:
    """Exit code 2, one 'error:' sentence naming ``named`` (and, if ``alone``, nothing else), no run folder."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and "Aborted" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    if alone:
        assert [line for line in out.splitlines() if line.strip()] == errors, out
    for name in named:
        assert name in errors[0], (name, errors[0])
    assert not runs.exists() or not any(runs.iterdir()), list(runs.rglob("*"))
    return errors[0]


# ---------------------------------------------------------------------------- recipe values out of range

HUGE_INT = "1" + "0" * 400  # YAML reads an integer too large for a float

OUT_OF_RANGE = [
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.checkpoint_every=-3", "train.checkpoint_every"),
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.eval_batch_size=-1", "train.eval_batch_size"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.001", "optimizer.lr"),
    ("optimizer.lr=nan", "optimizer.lr"),
    ("optimizer.lr=.nan", "optimizer.lr"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("optimizer.lr=-.inf", "optimizer.lr"),
    (f"optimizer.lr={HUGE_INT}", "optimizer.lr"),
    ("schedule.lr_final=0", "schedule.lr_final"),
    ("schedule.lr_final=-3e-7", "schedule.lr_final"),
    ("schedule.lr_final=nan", "schedule.lr_final"),
    ("model.dropout_in=1.5", "model.dropout_in"),
    ("model.dropout_in=1", "model.dropout_in"),
    ("model.dropout_in=-0.1", "model.dropout_in"),
    ("model.dropout_hidden=1.0", "model.dropout_hidden"),
    ("model.dropout_hidden=nan", "model.dropout_hidden"),
    ("model.hidden=[0, 32]", "model.hidden"),
    ("model.hidden=[32, -4]", "model.hidden"),
    ("optimizer.betas=[0.9]", "optimizer.betas"),
    ("optimizer.betas=[0.9, 0.999, 0.5]", "optimizer.betas"),
    ("optimizer.betas=[0.9, 1.0]", "optimizer.betas"),
    ("optimizer.betas=[-0.1, 0.999]", "optimizer.betas"),
    ("optimizer.betas=[0.9, .nan]", "optimizer.betas"),
    ("optimizer.eps=0", "optimizer.eps"),
    ("optimizer.eps=-1e-8", "optimizer.eps"),
    ("model.bn_eps=0", "model.bn_eps"),
    ("model.bn_eps=-1e-4", "model.bn_eps"),
    ("model.bn_momentum=1.5", "model.bn_momentum"),
    ("model.bn_momentum=-0.1", "model.bn_momentum"),
    ("data.valid_size=0", "data.valid_size"),
    ("data.valid_size=-10", "data.valid_size"),
    ("data.train_size=0", "data.train_size"),
    ("data.limit_train=0", "data.limit_train"),
    ("data.limit_test=0", "data.limit_test"),
    ("data.limit_test=-5", "data.limit_test"),
    ("seed=-1", "seed"),
    (f"seed={2**64}", "seed"),
    ("paper.test_error=150", "paper.test_error"),
]


@pytest.mark.parametrize("override, key", OUT_OF_RANGE, ids=[o[:40] for o, _ in OUT_OF_RANGE])
def test_out_of_range_values_are_refused(tiny_recipe, tmp_path, override, key):
    runs = tmp_path / "runs"
    line = assert_refused(train(tiny_recipe, runs, "--set", override), runs, f"'{key}'", str(tiny_recipe))
    assert "must" in line  # says what is allowed


CONVNET = ["--set", "model.arch=convnet", "--set", "model.conv=[8, M, 8]", "--set", "model.fc=[16]"]

CONVNET_CASES = [
    (["--set", "model.conv=[0, M]"], "model.conv"),
    (["--set", "model.conv=[8, -8, M]"], "model.conv"),
    (["--set", "model.fc=[0]"], "model.fc"),
    (["--set", "model.kernel_size=2"], "model.kernel_size"),
    (["--set", "model.kernel_size=0"], "model.kernel_size"),
    (["--set", "model.kernel_size=-3"], "model.kernel_size"),
    (["--set", "model.conv=[M, 8]"], "model.conv"),
    (["--set", "model.conv=[8, M, M]"], "model.conv"),
    (["--set", "model.conv=[8, Q]"], "model.conv"),
    # MNIST's 28x28 originals cannot take 5 max-pools
    (["--set", "data.source=torchvision", "--set", "model.conv=[8, M, 8, M, 8, M, 8, M, 8, M]"], "model.conv"),
]


@pytest.mark.parametrize("extra, key", CONVNET_CASES, ids=[" ".join(e[1::2])[:40] for e, _ in CONVNET_CASES])
def test_convnet_shapes_that_cannot_be_built_are_refused(tiny_recipe, tmp_path, extra, key):
    runs = tmp_path / "runs"
    assert_refused(train(tiny_recipe, runs, *CONVNET, *extra), runs, f"'{key}'", str(tiny_recipe))


def test_step_schedule_gamma_must_be_positive(tiny_recipe, tmp_path):
    runs = tmp_path / "runs"
    for gamma in ("0", "-0.5", "nan"):
        result = train(tiny_recipe, runs, "--set", "schedule.kind=step", "--set", "schedule.step_epochs=1",
                       "--set", f"schedule.gamma={gamma}")
        assert_refused(result, runs, "'schedule.gamma'")


def test_seed_option_out_of_range(tiny_recipe, tmp_path):
    runs = tmp_path / "runs"
    assert_refused(train(tiny_recipe, runs, "--seed=-1"), runs, "'seed'")


@pytest.mark.parametrize("extra, key", [
    (["--set", "data.limit_train=10"], "data.limit_train"),
    (["--set", "data.train_size=20"], "data.train_size"),
])
def test_batch_larger_than_the_training_set_the_recipe_leaves(tiny_recipe, tmp_path, extra, key):
    runs = tmp_path / "runs"
    assert_refused(train(tiny_recipe, runs, *extra), runs, "'train.batch_size'", key)


# ---------------------------------------------------------------------------- models too large

@pytest.mark.parametrize("extra, key", [
    (["--set", "model.hidden=[1000000, 1000000]"], "model.hidden"),
    (["--set", "model.hidden=[100000000000]"], "model.hidden"),
    (CONVNET + ["--set", "model.conv=[100000, 100000, M]"], "model.conv"),
    (CONVNET + ["--set", "model.fc=[1000000, 1000000]"], "model.fc"),
])
def test_model_too_large_for_memory_is_refused(tiny_recipe, tmp_path, extra, key):
    runs = tmp_path / "runs"
    line = assert_refused(train(tiny_recipe, runs, *extra), runs, key, str(tiny_recipe))
    assert "parameters" in line and "memory" in line


# ---------------------------------------------------------------------------- recipe files that are not recipes

def test_binary_recipe_file(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    runs = tmp_path / "runs"
    assert_refused(train(path, runs), runs, str(path), "not a text file")


def test_folder_as_recipe(tmp_path):
    folder = tmp_path / "recipes.yaml"
    folder.mkdir()
    runs = tmp_path / "runs"
    for given in (folder, tmp_path):
        assert_refused(train(given, runs), runs, str(given), "is a folder")


def test_recipe_too_large_to_be_one(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    runs = tmp_path / "runs"
    assert_refused(train(path, runs), runs, str(path), "too large")


def test_unreadable_recipe(tmp_path):
    import os
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "secret.yaml"
    path.write_text((REPO / "recipes" / "mnist.yaml").read_text())
    path.chmod(0)
    runs = tmp_path / "runs"
    assert_refused(train(path, runs), runs, str(path), "cannot be read")


def test_recipe_with_keys_that_are_not_names(tiny_recipe, tmp_path):
    raw = yaml.safe_load(tiny_recipe.read_text())
    raw["model"][1] = 2
    raw["model"]["colour"] = 3
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = tmp_path / "runs"
    assert_refused(train(path, runs), runs, str(path), "unknown key 'model.1'")


# ---------------------------------------------------------------------------- .npz data

def tiny_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x_train, y_train = make_images(600, 8, rng)
    x_test, y_test = make_images(200, 8, rng)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def changed(**arrays):
    return lambda a: a | arrays


def edit(key, fn):
    return lambda a: a | {key: fn(a[key])}


NPZ_CASES = [
    ("label count differs from image count", edit("y_train", lambda y: y[:-5]), "y_train"),
    ("test labels count differs", edit("y_test", lambda y: y[:10]), "y_test"),
    ("test images of another size", changed(x_test=np.zeros((200, 10, 10), np.uint8)), "x_test"),
    ("negative label", edit("y_train", lambda y: np.where(np.arange(len(y)) == 7, -1, y)), "y_train"),
    ("negative test label", edit("y_test", lambda y: np.where(np.arange(len(y)) == 3, -2, y)), "y_test"),
    ("fractional labels", edit("y_train", lambda y: y + 0.5), "y_train"),
    ("nan label", edit("y_train", lambda y: np.where(np.arange(len(y)) == 0, np.nan, y.astype(float))), "y_train"),
    ("string labels", edit("y_train", lambda y: y.astype(str)), "y_train"),
    ("2-D labels", edit("y_train", lambda y: np.stack([y, y], 1)), "y_train"),
    ("float train images", edit("x_train", lambda x: x.astype(np.float32) / 255), "x_train"),
    ("float test images", edit("x_test", lambda x: x.astype(np.float64)), "x_test"),
    ("int64 images", edit("x_train", lambda x: x.astype(np.int64)), "x_train"),
    ("flat images", edit("x_train", lambda x: x.reshape(len(x), -1)), "x_train"),
    ("5-D images", edit("x_train", lambda x: x[:, None, None]), "x_train"),
    ("empty train", changed(x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64)), "x_train"),
    ("empty test", changed(x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64)), "x_test"),
    ("zero-size images", changed(x_train=np.zeros((600, 0, 8), np.uint8)), "x_train"),
    ("label beyond the 10 classes", edit("y_train", lambda y: np.where(np.arange(len(y)) == 9, 10, y)), "y_train"),
    ("test label beyond the 10 classes", edit("y_test", lambda y: np.where(np.arange(len(y)) == 9, 57, y)), "y_test"),
    ("test label no training image has", lambda a: a | {"y_train": a["y_train"] % 9,
                                                        "y_test": np.where(np.arange(200) == 0, 9, a["y_test"] % 9)},
     "y_test"),
    ("a single class", edit("y_train", np.zeros_like), "y_train"),
    ("object array", changed(y_test=np.array([object()] * 200, dtype=object)), "y_test"),
    ("variant of another dataset", changed(variant=np.array("fashion")), "variant"),
    ("variant that is not a string", changed(variant=np.arange(3)), "variant"),
    ("missing array", lambda a: {k: v for k, v in a.items() if k != "y_test"}, "y_test"),
]


@pytest.mark.parametrize("what, change, array", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_bad_npz_arrays_are_refused(tiny_recipe, tmp_path, what, change, array):
    path = tmp_path / "bad.npz"
    np.savez(path, **change(tiny_arrays()))
    runs = tmp_path / "runs"
    assert_refused(train(tiny_recipe, runs, "--set", f"data.npz={path}"), runs, str(path), f"'{array}'")


def truncated(path: Path) -> None:
    np.savez_compressed(path, **tiny_arrays())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damaged_member(path: Path) -> None:
    """A whole zip whose compressed x_train bytes are flipped: the member fails its CRC or zlib check."""
    np.savez_compressed(path, **tiny_arrays())
    data = bytearray(path.read_bytes())
    start = data.index(b"x_train.npy") + 200
    data[start:start + 50] = bytes(b ^ 0xFF for b in data[start:start + 50])
    path.write_bytes(bytes(data))


def npy_bytes(array: np.ndarray) -> bytes:
    import io
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


NPZ_FILES = [
    ("zero bytes", lambda p: p.write_bytes(b""), "empty"),
    ("truncated", truncated, "not a readable .npz"),
    ("not a zip", lambda p: p.write_bytes(b"hello, these are not arrays\n" * 100), "not a readable .npz"),
    ("a damaged array", damaged_member, "'x_train' cannot be read"),
    ("a .npy array", lambda p: p.write_bytes(npy_bytes(np.zeros(3))), ".npy"),
    ("a folder", lambda p: p.mkdir(), "is a folder"),
    ("missing", lambda p: None, "no .npz file"),
]


@pytest.mark.parametrize("what, make, says", NPZ_FILES, ids=[c[0] for c in NPZ_FILES])
def test_npz_files_that_are_not_readable_are_refused(tiny_recipe, tmp_path, what, make, says):
    path = tmp_path / "data.npz"
    make(path)
    runs = tmp_path / "runs"
    assert_refused(train(tiny_recipe, runs, "--set", f"data.npz={path}"), runs, str(path), says)


@pytest.mark.parametrize("extra, says", [
    (["--set", "data.valid_size=600"], "data.valid_size"),
    (["--set", "data.valid_size=5000"], "data.valid_size"),
    (["--set", "data.train_size=550", "--set", "data.valid_size=100"], "data.train_size"),
])
def test_splits_the_data_cannot_give(tiny_recipe, tmp_path, extra, says):
    runs = tmp_path / "runs"
    assert_refused(train(tiny_recipe, runs, *extra), runs, says, "600 training images")


def test_data_root_that_is_a_file(tiny_recipe, tmp_path):
    root = tmp_path / "root"
    root.write_text("not a folder")
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs, "--set", "data.source=torchvision", "--data-dir", str(root))
    assert_refused(result, runs, str(root), "folder")


def test_npz_images_channels_last_and_column_labels_are_read(tmp_path):
    """What the checks accept: NHWC images and (N, 1) labels, as the CIFAR-10 stand-in and .mat files hold."""
    a = tiny_arrays()
    rgb = {k: (np.repeat(v[..., None], 3, -1) if k.startswith("x_") else v[:, None]) for k, v in a.items()}
    np.savez(tmp_path / "rgb.npz", **rgb, variant=np.array("cifar10-tiny"))
    cfg = load_recipe(REPO / "recipes" / "cifar10.yaml", ["data.source=npz", f"data.npz={tmp_path / 'rgb.npz'}",
                                                           "data.train_size=500", "data.valid_size=100"]).data
    s = load_splits(cfg, tmp_path)
    assert s.x_train.shape == (500, 3, 8, 8) and s.y_train.shape == (500,) and s.variant == "cifar10-tiny"


def test_float_labels_with_whole_values_are_read(tmp_path):
    a = tiny_arrays()
    np.savez(tmp_path / "f.npz", **(a | {"y_train": a["y_train"].astype(np.float32)}))
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["data.source=npz", f"data.npz={tmp_path / 'f.npz'}",
                                                         "data.valid_size=100"]).data
    s = load_splits(cfg)
    assert s.y_train.dtype.is_floating_point is False and s.num_classes == 10


# ---------------------------------------------------------------------------- MNIST files

def fail_downloads(monkeypatch, md5s: dict[str, str]) -> None:
    """torchvision's real download path, offline: present files verify and get extracted, a missing one
    leaves a partial download behind and fails."""
    import torchvision
    from torchvision.datasets import utils

    def partial_then_fail(url, filename, chunk_size=None):
        Path(filename).write_bytes(b"partial")
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", list(md5s.items()))
    monkeypatch.setattr(utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(utils, "_urlretrieve", partial_then_fail)


MNIST_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize("missing", MNIST_NAMES)
def test_one_missing_mnist_file_is_named_and_a_failed_download_leaves_nothing(mnist_raw, monkeypatch, missing):
    from bnnctl.data import mnist
    raw = mnist_raw / "MNIST" / "raw"
    fail_downloads(monkeypatch, mnist._mnist_md5s())
    (raw / missing).unlink()
    (raw / "notes.txt").write_text("the user's own file")
    before = sorted(p.name for p in raw.iterdir())
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["data.valid_size=50", "data.source=torchvision"]).data
    with pytest.raises(DataError) as info:
        load_splits(cfg, mnist_raw)
    message = str(info.value)
    assert missing in message and str(raw) in message
    assert [n for n in MNIST_NAMES if n != missing and n in message] == []  # names only the missing one
    assert sorted(p.name for p in raw.iterdir()) == before  # no uncompressed copies, no partial download


def test_missing_mnist_through_the_cli(mnist_raw, tiny_recipe, tmp_path, monkeypatch):
    from bnnctl.data import mnist
    raw = mnist_raw / "MNIST" / "raw"
    fail_downloads(monkeypatch, mnist._mnist_md5s())
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs, "--set", "data.source=torchvision", "--set", "data.valid_size=50",
                   "--data-dir", str(mnist_raw))
    assert_refused(result, runs, "t10k-labels-idx1-ubyte.gz", alone=False)  # torchvision prints what it tried
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_NAMES[:3])


def test_failed_download_into_a_new_data_root_removes_the_folders_it_made(tmp_path, monkeypatch):
    fail_downloads(monkeypatch, {n: "0" * 32 for n in MNIST_NAMES})
    root = tmp_path / "new" / "data"
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["data.source=torchvision"]).data
    with pytest.raises(DataError, match="copy the four original"):
        load_splits(cfg, root)
    assert list(tmp_path.iterdir()) == []  # new/data/MNIST/raw, made by the attempt, are gone


def test_damaged_mnist_file_when_md5s_are_not_known(mnist_raw, monkeypatch):
    raw = mnist_raw / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    monkeypatch.setattr("bnnctl.data.mnist._mnist_md5s", lambda: {})
    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["data.valid_size=50", "data.source=torchvision"]).data
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_splits(cfg, mnist_raw)


# ---------------------------------------------------------------------------- SVHN and CIFAR-10 files

def test_svhn_mat_that_is_not_one_through_the_cli(tmp_path, monkeypatch):
    from bnnctl.data import cifar_svhn
    root = tmp_path / "data"
    (root / "SVHN").mkdir(parents=True)
    for split in ("train", "test"):
        (root / "SVHN" / f"{split}_32x32.mat").write_bytes(b"MATLAB? no." * 50)
    files = {s: (f"{s}_32x32.mat", hashlib.md5(b"").hexdigest()) for s in ("train", "test", "extra")}
    monkeypatch.setattr(cifar_svhn, "_svhn_files", lambda: files)
    runs = tmp_path / "runs"
    result = train(REPO / "recipes" / "svhn_torch7.yaml", runs, "--data-dir", str(root),
                   "--set", "data.variant=svhn-synthetic")
    assert_refused(result, runs, "train_32x32.mat", "not a readable SVHN .mat file")
