"""The Table 1 recipes: their models (parameter counts by hand), schedules, and one CPU training
epoch of each on tiny data through the real CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnnctl.data import cifar_svhn as data_cifar_svhn
from bnnctl.cli import app
from bnnctl.core.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnctl.core.models import build_model, count_parameters
from bnnctl.optim import lr_at
from bnnctl.recipe import load_recipe
from bnnctl.core.norms import ShiftBatchNorm

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def conv(c_in, c_out):  # 3x3 kernel and a bias
    return c_in * c_out * 9 + c_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


def bn(n):  # gamma and beta (the running statistics are buffers, not parameters)
    return 2 * n


def convnet(widths, fc=1024, classes=10):
    c = [3, *widths]
    total = sum(conv(a, b) + bn(b) for a, b in zip(c, c[1:]))
    return total + dense(widths[-1] * 4 * 4, fc) + bn(fc) + dense(fc, fc) + bn(fc) + dense(fc, classes) + bn(classes)


CIFAR_NET = convnet([128, 128, 256, 256, 512, 512])
SVHN_NET = convnet([64, 64, 128, 128, 256, 256])
TORCH7_MLP = dense(784, 2048) + bn(2048) + 2 * (dense(2048, 2048) + bn(2048)) + dense(2048, 10) + bn(10)

PARAMETERS = {
    "cifar10": ((3, 32, 32), CIFAR_NET, 14_033_566),
    "cifar10_torch7": ((3, 32, 32), CIFAR_NET, 14_033_566),
    "svhn": ((3, 32, 32), SVHN_NET, 6_406_494),
    "svhn_torch7": ((3, 32, 32), SVHN_NET, 6_406_494),
    "mnist_torch7": ((1, 28, 28), TORCH7_MLP, 10_033_182),
}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts_match_hand_counts(name):
    shape, by_formula, by_hand = PARAMETERS[name]
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert by_formula == by_hand
    assert count_parameters(build_model(recipe.model, shape, 10)) == by_hand


def test_convnet_layer_order_pools_between_conv_and_its_bn():
    recipe = load_recipe(REPO / "recipes" / "cifar10_torch7.yaml")
    model = build_model(recipe.model, (3, 32, 32), 10)
    names = [type(m).__name__ for m in model]
    assert names[:8] == ["BinaryConv2d", "ShiftBatchNorm", "SignActivation",
                         "BinaryConv2d", "MaxPool2d", "ShiftBatchNorm", "SignActivation", "BinaryConv2d"]
    assert names[-3:] == ["SignActivation", "BinaryLinear", "BatchNorm1d"]  # exact BN after the output layer
    assert all(m.stochastic for m in model if isinstance(m, SignActivation))
    assert not any(m.stochastic for m in model if isinstance(m, (BinaryConv2d, BinaryLinear)))
    theano = build_model(load_recipe(REPO / "recipes" / "cifar10.yaml").model, (3, 32, 32), 10)
    assert not any(isinstance(m, ShiftBatchNorm) for m in theano)
    assert not any(m.stochastic for m in theano if isinstance(m, SignActivation))


@pytest.mark.parametrize("name,first,halved_at", [("mnist_torch7", 2.0 ** -6, 20), ("cifar10_torch7", 2.0 ** -6, 50),
                                                  ("svhn_torch7", 2.0 ** -7, 20)])
def test_torch7_learning_rates_halve_on_schedule(name, first, halved_at):
    r = load_recipe(REPO / "recipes" / f"{name}.yaml")
    lr = lambda epoch: lr_at(epoch, r.optimizer.lr, r.schedule, r.train.epochs)  # noqa: E731
    assert lr(0) == lr(halved_at - 1) == first
    assert lr(halved_at) == first / 2 and lr(3 * halved_at) == first / 8
    # a tenth of the recipe's epochs runs the same halvings, ten times as often
    short = r.train.epochs // 10
    assert lr_at(halved_at // 10, r.optimizer.lr, r.schedule, short) == first / 2


@pytest.mark.parametrize("name,lr_final", [("cifar10", 3e-7), ("svhn", 1e-6)])
def test_theano_learning_rates_decay_exponentially_to_the_final_rate(name, lr_final):
    r = load_recipe(REPO / "recipes" / f"{name}.yaml")
    epochs = r.train.epochs
    assert lr_at(0, r.optimizer.lr, r.schedule, epochs) == 1e-3
    assert lr_at(epochs, r.optimizer.lr, r.schedule, epochs) == pytest.approx(lr_final)


# ---------------------------------------------------------------------------- one epoch through the CLI

def tiny_npz(path: Path, color: bool, extra: bool = False, variant: str | None = None) -> Path:
    """24 training and 8 test images of 8x8 pixels (the ConvNets pool them down to 1x1)."""
    rng = np.random.default_rng(0)
    shape = (8, 8, 3) if color else (8, 8)
    arrays = {"x_train": rng.integers(0, 256, (24, *shape), dtype=np.uint8), "y_train": np.arange(24) % 10,
              "x_test": rng.integers(0, 256, (8, *shape), dtype=np.uint8), "y_test": np.arange(8) % 10}
    if extra:
        arrays.update(x_extra=rng.integers(0, 256, (12, *shape), dtype=np.uint8), y_extra=np.arange(12) % 10)
    if variant:
        arrays["variant"] = np.array(variant)
    np.savez(path, **arrays)
    return path


CLI_CASES = {
    # recipe: (colour images, extra images, variant in the file, split overrides)
    "mnist_torch7": (False, False, None, ["data.valid_size=8"]),
    "cifar10": (True, False, "cifar10-jpeg", ["data.train_size=16", "data.valid_size=8"]),
    "cifar10_torch7": (True, False, "cifar10-jpeg", ["data.train_size=16", "data.valid_size=8"]),
    "svhn": (True, True, "svhn-tiny", ["data.valid_size=20"]),
    "svhn_torch7": (True, False, "svhn-tiny", ["data.train_size=16", "data.valid_size=8"]),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_one_training_epoch_of_each_recipe_through_the_cli(name, tmp_path, monkeypatch):
    color, extra, variant, split = CLI_CASES[name]
    # the pylearn2 split takes 400 / 200 images per digit; 1 / 1 keeps the tiny set's split the same kind
    monkeypatch.setattr(data_cifar_svhn, "PYLEARN2_VALID_PER_CLASS", {"train": 1, "extra": 1})
    npz = tiny_npz(tmp_path / "tiny.npz", color, extra, variant)
    sets = [f"data.npz={npz}", "data.source=npz", "train.epochs=1", "train.batch_size=8",
            "train.eval_batch_size=16", *split]
    args = ["train", str(REPO / "recipes" / f"{name}.yaml"), "--device", "cpu", "--data-dir", str(tmp_path / "data"),
            "--runs-dir", str(tmp_path / "runs"), "--run-id", "tiny"]
    for item in sets:
        args += ["--set", item]
    torch.manual_seed(0)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "runs" / name / "tiny" / "result.json").read_text())
    assert record["status"] == "finished" and record["epochs_run"] == 1
    assert record["variant"] == (variant or "mnist")
    assert 0 <= record["test_error_pct"] <= 100
    metrics = (tmp_path / "runs" / name / "tiny" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2 and "nan" not in metrics[1]
