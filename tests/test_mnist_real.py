"""Trains a small MLP on the real MNIST files when a data root holds them; skips otherwise.

Point BNNCTL_TEST_MNIST at a folder holding MNIST/raw/*.gz (``.ci/run`` uses ../shared/data).
"""
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnnctl.cli import app

from .conftest import REPO

ROOT = os.environ.get("BNNCTL_TEST_MNIST")


@pytest.mark.slow
@pytest.mark.skipif(not ROOT or not (Path(ROOT) / "MNIST" / "raw").is_dir(),
                    reason="set BNNCTL_TEST_MNIST to a folder holding MNIST/raw/*.gz")
def test_small_mlp_learns_real_mnist(tmp_path):
    # copy, so a read-only shared folder works and nothing is written beside the originals
    shutil.copytree(Path(ROOT) / "MNIST", tmp_path / "data" / "MNIST")
    result = CliRunner().invoke(app, [
        "train", str(REPO / "recipes" / "mnist.yaml"), "--device", "cpu",
        "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
        "--set", "model.hidden=[256, 256]", "--set", "train.epochs=2", "--set", "data.limit_train=10000",
        "--set", "data.limit_test=2000", "--set", "model.dropout_in=0", "--set", "model.dropout_hidden=0",
        "--set", "schedule.lr_final=1e-3"])  # a short run: keep the LR up rather than compress the decay
    assert result.exit_code == 0, result.output
    error = float(result.output.split("best-validation epoch")[1].split("%")[0].split()[-1])
    assert error < 15.0, result.output  # 200 steps of a small BNN reach ~11% here; chance is 90%
