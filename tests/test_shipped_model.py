"""The trained model that ships with bnnctl: the 1-bit export of a full-schedule run of the Torch7 MNIST recipe,
committed beside that run's record (results/mnist_torch7/<run>/: result.json with the command, commit and seed,
metrics.csv with every epoch, recipe.yaml, and the export's own record model.export.json).

Without MNIST the file is checked against its record and run on raw pixels; with it (BNNCTL_TEST_MNIST), `bnnctl
eval` of the file must give the test error the run recorded at its best-validation epoch.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.infer.bnnx import load_export
from bnnctl.infer.engine import PackedEngine
from bnnctl.infer.float_model import float_model_from_export
from bnnctl.recipe import load_recipe, recipes_dir

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "results" / "mnist_torch7" / "cpu-200ep-fast-s1"
MODEL = SHIPPED / "model.bnnx"
MNIST_ROOT = os.environ.get("BNNCTL_TEST_MNIST")


def result() -> dict:
    return json.loads((SHIPPED / "result.json").read_text())


def test_the_shipped_model_is_its_runs_best_validation_epoch():
    exported = load_export(MODEL)  # the checksum and every header field verified
    run, record = result(), json.loads((SHIPPED / "model.export.json").read_text())
    assert run["status"] == "finished" and run["epochs_run"] == run["epochs_planned"] == 200
    assert exported.info["recipe"] == run["recipe"] == "mnist_torch7"
    assert (exported.info["epoch"], exported.info["test_error_pct"]) == (run["best_epoch"], run["test_error_pct"])
    assert exported.data == load_recipe(SHIPPED / "recipe.yaml").to_dict()["data"]
    # the shipped recipe's model, optimizer and schedule (--fast and the seed change neither)
    ran, shipped = load_recipe(SHIPPED / "recipe.yaml").to_dict(), load_recipe(recipes_dir() / "mnist_torch7.yaml").to_dict()
    assert all(ran[key] == shipped[key] for key in ("model", "optimizer", "train")) and ran["seed"] == run["seed"] == 1
    assert record["export_bytes"] == MODEL.stat().st_size < 2_000_000
    assert [layer.out_features for layer in exported.layers] == [2048, 2048, 2048, 10]
    assert exported.preprocessing is not None and exported.preprocessing.kind == "standardize"


def test_the_shipped_model_runs_on_raw_pixels_alone():
    """Its standardization travels in the file: the packed engine and the float network rebuilt from it agree on
    raw pixels, with no data root anywhere."""
    exported = load_export(MODEL)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = float_model_from_export(exported)(exported.preprocessing.transform(x)).argmax(1)
    engine = PackedEngine(exported)
    assert torch.equal(engine.predict(x), expected)
    assert torch.equal(engine.logits(x[:1]).argmax(1), expected[:1])  # one image per call: the native plan


@pytest.mark.skipif(not MNIST_ROOT or not (Path(MNIST_ROOT) / "MNIST" / "raw").is_dir(),
                    reason="set BNNCTL_TEST_MNIST to a folder holding MNIST/raw/*.gz")
def test_the_shipped_model_gives_its_recorded_test_error():
    done = CliRunner().invoke(app, ["eval", str(MODEL), "--device", "cpu", "--data-dir", MNIST_ROOT])
    assert done.exit_code == 0, done.output
    error = float(re.search(r"test error: ([0-9.]+)%", done.output).group(1))
    assert error == result()["test_error_pct"]
    assert "(agrees)" in done.output
