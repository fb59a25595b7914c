"""Engines and benches take the preprocessing from the model they run (its recipe's ``data.preprocess``): a
Torch7-style model (standardized inputs, fitted on its training images) and a Theano-style one (2x/255 - 1)."""
from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from bnnctl.bench import model_bench
from bnnctl.bench.models import calibrate_norms
from bnnctl.core.models import build_model
from bnnctl.data import DataError, input_transform, load_splits, scale_to_pm1
from bnnctl.data.preprocessing import (EXPORTED_PREPROCESSING, GCNLCN, Standardize, ZCAWhiten, fit_gcn_lcn,
                                       fit_standardize, fit_zca, pixel_table, preprocessing_tensors)
from bnnctl.errors import UserError
from bnnctl.files import atomic_torch_save
from bnnctl.infer.engine import EngineError, PackedEngine
from bnnctl.infer.bnnx import load_export, save_export
from bnnctl.infer.export import run_export
from bnnctl.infer.exported import ExportedPreprocessing
from bnnctl.infer.fold import export_model
from bnnctl.infer.variants import ENGINE_VARIANTS
from bnnctl.recipe import load_recipe, recipes_dir
from bnnctl.runs import FORMAT_VERSION, MODEL_FORMAT

SHAPE = (1, 28, 28)
QUIET = Console(file=io.StringIO())
EIGHT_BIT_ONLY = {name for name, v in ENGINE_VARIANTS.items() if v.first_layer != "float" and "cpu" in v.devices}


def small_recipe(recipe_file: str):
    # the mnist_raw fixture has 300 training images: 100 of them validate
    return load_recipe(recipes_dir() / recipe_file, ["model.hidden=[32]", "data.valid_size=100"])


def write_run(tmp_path, recipe_file: str):
    """A run folder holding best.pt of a small MLP of the recipe, with calibrated norm statistics."""
    recipe = small_recipe(recipe_file)
    torch.manual_seed(0)
    model = build_model(recipe.model, SHAPE, 10)
    calibrate_norms(model, SHAPE)
    run = tmp_path / recipe.name
    run.mkdir()
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": recipe.to_dict(), "input_shape": list(SHAPE),
              "num_classes": 10, "dataset": "mnist", "variant": "mnist", "epoch": 1, "test_error_pct": None,
              "valid_error_pct": None}
    atomic_torch_save({**record, "model": model.state_dict()}, run / "best.pt")
    return run, recipe, model.eval()


def test_the_transform_is_the_one_the_recipe_fitted(mnist_raw):
    assert input_transform(small_recipe("mnist.yaml").data, mnist_raw / "absent") is scale_to_pm1  # needs no data
    cfg = small_recipe("mnist_torch7.yaml").data
    transform = input_transform(cfg, mnist_raw)
    fitted = fit_standardize(load_splits(cfg, mnist_raw).x_train.numpy())  # the training split only
    assert isinstance(transform, Standardize)
    assert (transform.mean, transform.std) == (float(fitted["mean"]), float(fitted["std"]))
    with pytest.raises(DataError, match="preprocessed as 'pca', which this bnnctl does not know"):
        input_transform(type(cfg)(**{**cfg.__dict__, "preprocess": "pca"}), mnist_raw)


def _bench(run, data_dir, names=None):
    return model_bench.bench_model("mnist-mlp", run, "cpu", data_dir, repeat=1, names=names, budget_s=0.01)


@pytest.mark.parametrize("recipe_file,transform_of", [
    ("mnist_torch7.yaml", lambda cfg, root: input_transform(cfg, root)),  # standardized (Torch7)
    ("mnist.yaml", lambda cfg, root: scale_to_pm1),  # 2x/255 - 1 (Theano)
])
def test_the_mlp_bench_feeds_every_variant_the_models_own_preprocessing(tmp_path, mnist_raw, recipe_file,
                                                                        transform_of):
    run, recipe, model = write_run(tmp_path, recipe_file)
    result = _bench(run, mnist_raw)
    x, y = load_splits(recipe.data, mnist_raw).x_test, load_splits(recipe.data, mnist_raw).y_test
    with torch.no_grad():
        expected = model(transform_of(recipe.data, mnist_raw)(x)).argmax(1)
        other = model((scale_to_pm1 if recipe.data.preprocess != "scale" else input_transform(
            small_recipe("mnist_torch7.yaml").data, mnist_raw))(x)).argmax(1)
    assert not torch.equal(expected, other)  # the two preprocessings tell the model apart: the check can fail
    expected_error = 100.0 * (expected != y).sum().item() / len(y)
    assert result["model"]["preprocess"] == recipe.data.preprocess
    ran = {n: e for n, e in result["variants"].items() if e["status"] == "ok"}
    for name, e in ran.items():
        if model_bench.SPECS["mnist-mlp"].variants[name].exact:
            assert e["test_error_pct"] == expected_error and e["predictions_differing_from_torch"] == 0, name
    skipped = {n for n, e in result["variants"].items() if "8-bit images scaled" in e["status"]}
    if recipe.data.preprocess == "scale":
        assert EIGHT_BIT_ONLY <= set(ran) and not skipped
    else:
        assert skipped == EIGHT_BIT_ONLY
        assert {"xnor", "baseline", "torch", "torch-int8"} <= set(ran)
    assert result["targets"]["exact_variants_same_predictions"] is True


def test_a_variant_that_cannot_apply_the_models_preprocessing_is_refused(tmp_path, mnist_raw):
    run, _, _ = write_run(tmp_path, "mnist_torch7.yaml")
    with pytest.raises(UserError, match=r"^--variant xnor-int8 cannot run here: it needs a model trained on 8-bit "
                                        r"images scaled as 2x/255 - 1, and this one was trained on inputs "
                                        r"preprocessed as 'standardize'; leave it out or choose another variant\.$"):
        _bench(run, mnist_raw, names=["xnor-int8", "torch"])


def test_fitted_preprocessing_without_its_training_images_is_one_sentence(tmp_path):
    run, _, _ = write_run(tmp_path, "mnist_torch7.yaml")
    with pytest.raises(UserError, match=r"^the model was trained on inputs preprocessed as 'standardize', fitted on "
                                        r"its training images, and there is no MNIST under .*; give --data-dir"):
        _bench(run, tmp_path / "no-data")


def test_the_engine_applies_only_the_preprocessing_it_knows_without_fitting(tmp_path):
    _, recipe, model = write_run(tmp_path, "mnist_torch7.yaml")
    record = {"recipe": recipe.to_dict(), "input_shape": list(SHAPE), "num_classes": 10}
    engine = PackedEngine(export_model(record, model))
    x = torch.randint(0, 256, (4, *SHAPE), dtype=torch.uint8)
    with pytest.raises(EngineError, match="preprocessed as 'standardize', which is fitted on its training images and "
                                          "not carried by its export"):
        engine.logits(x)
    standardize = Standardize(0.13, 0.31)
    with torch.no_grad():
        assert torch.equal(engine.predict(x, standardize), model(standardize(x)).argmax(1))


# ---------------------------------------------------------------------------- the preprocessing in the export

def _raw_images(n: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def test_an_export_carries_its_fitted_preprocessing_and_runs_on_raw_images(tmp_path, mnist_raw):
    run, recipe, model = write_run(tmp_path, "mnist_torch7.yaml")
    summary = run_export(run, tmp_path / "m.bnnx", QUIET, data_dir=mnist_raw)
    exported = load_export(tmp_path / "m.bnnx")
    assert summary["preprocessing"] == exported.preprocessing.kind == "standardize"
    fitted = input_transform(recipe.data, mnist_raw)
    assert torch.equal(exported.preprocessing.tensors["table"], pixel_table(fitted))
    x = _raw_images(40)
    with torch.no_grad():
        expected = model(fitted(x)).argmax(1)
    assert not torch.equal(expected, model(scale_to_pm1(x)).argmax(1))  # the preprocessing matters: the check can fail
    engine = PackedEngine(exported)
    for n in (1, 3, 40):  # the plan below 16 images per call, the layers above
        assert torch.equal(engine.logits(x[:n]).argmax(1), expected[:n]), n
    assert torch.equal(engine.predict(x), expected)
    assert torch.equal(engine.logits(x[:5]), engine.logits(x[:5], fitted))  # the table is the transform, to the bit


def test_an_export_without_its_training_images_says_so_and_the_engine_asks_for_the_transform(tmp_path):
    run, _, _ = write_run(tmp_path, "mnist_torch7.yaml")
    out = io.StringIO()
    summary = run_export(run, tmp_path / "m.bnnx", Console(file=out, width=400), data_dir=tmp_path / "no-data")
    assert summary["preprocessing"] is None
    assert "the export carries no standardize preprocessing" in out.getvalue()
    with pytest.raises(EngineError, match="not carried by its export"):
        PackedEngine(load_export(tmp_path / "m.bnnx")).logits(_raw_images(2))


def test_a_scaled_models_export_needs_no_data_for_its_preprocessing(tmp_path):
    run, _, _ = write_run(tmp_path, "mnist.yaml")
    summary = run_export(run, tmp_path / "m.bnnx", QUIET, data_dir=tmp_path / "no-data")
    exported = load_export(tmp_path / "m.bnnx")
    assert summary["preprocessing"] == "scale"
    x = _raw_images(3)
    assert torch.equal(exported.preprocessing.transform(x), scale_to_pm1(x))


@pytest.mark.parametrize("kind", ["zca", "gcn_lcn", "standardize"])
def test_every_fitted_preprocessing_survives_the_file(tmp_path, kind):
    """Written into a .bnnx and read back, each preprocessing gives the transform it was made from, bit for bit."""
    images = torch.randint(0, 256, (200, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    fitted = {"zca": lambda a: ZCAWhiten(**fit_zca(a)), "gcn_lcn": lambda a: GCNLCN(**fit_gcn_lcn(a)),
              "standardize": lambda a: Standardize(**fit_standardize(a))}[kind](images.numpy())
    _, recipe, model = write_run(tmp_path, "mnist_torch7.yaml")
    data = {**recipe.to_dict()["data"], "preprocess": kind}
    exported = export_model({"recipe": {**recipe.to_dict(), "data": data}, "input_shape": list(SHAPE),
                             "num_classes": 10}, model)
    exported.preprocessing = ExportedPreprocessing(kind, preprocessing_tensors(kind, fitted))
    save_export(exported, tmp_path / "m.bnnx")
    back = load_export(tmp_path / "m.bnnx").preprocessing
    assert back.kind == kind and back.tensors.keys() == EXPORTED_PREPROCESSING[kind].keys()
    x = _raw_images(6)
    assert torch.equal(back.transform(x), fitted(x))
