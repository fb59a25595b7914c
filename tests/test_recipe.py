import subprocess
import sys
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.recipe import (NUM, RecipeError, check_fits_memory, estimate_parameters, f, load_recipe,
                           parse_override)

from .conftest import REPO

runner = CliRunner()


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def mnist_text():
    return (REPO / "recipes" / "mnist.yaml").read_text()


def test_shipped_recipe_resolves_every_field():
    r = load_recipe(REPO / "recipes" / "mnist.yaml")
    assert r.model.hidden == (4096, 4096, 4096)
    assert r.optimizer.lr == 3e-3 and isinstance(r.optimizer.lr, float)
    assert r.schedule.lr_final == 3e-7
    assert r.data.valid_size == 10000 and r.train.batch_size == 100
    assert r.fast.data_on_device is True  # defaults filled in


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["model"].update(hiden=[1]), "unknown key 'model.hiden'"),
    (lambda r: r["train"].update(epochs="ten"), "'train.epochs' must be an integer"),
    (lambda r: r["optimizer"].update(lr=True), "'optimizer.lr' must be"),
    (lambda r: r["model"].update(arch="transformer"), "'model.arch' must be one of"),
    (lambda r: r["train"].pop("epochs"), "missing required key 'train.epochs'"),
    (lambda r: r["model"].update(hidden=[10, "x"]), "every item of 'model.hidden'"),
    (lambda r: r["schedule"].pop("lr_final"), "'schedule.lr_final' is required"),
    (lambda r: r.update(data=[1, 2]), "'data' must be a mapping"),
    (lambda r: r["optimizer"].update(lr=0), "'optimizer.lr' must be a finite number greater than 0, got 0"),
    (lambda r: r["optimizer"].update(lr=float("inf")), "'optimizer.lr' must be a finite number greater than 0"),
    (lambda r: r["schedule"].update(lr_final=float("nan")), "'schedule.lr_final' must be a finite number"),
    (lambda r: r["model"].update(dropout_in=1.0), "'model.dropout_in' must be a finite number at least 0 and less "
                                                  "than 1"),
    (lambda r: r["model"].update(hidden=[4096, 0]), "every number in 'model.hidden' must be at least 1, got 0"),
    (lambda r: r["optimizer"].update(betas=[0.9]), "'optimizer.betas' must list exactly 2 values"),
    (lambda r: r["optimizer"].update(betas=[0.9, 1]), "every number in 'optimizer.betas' must be a finite number at "
                                                      "least 0 and less than 1"),
    (lambda r: r["train"].update(checkpoint_every=0), "'train.checkpoint_every' must be at least 1, got 0"),
    (lambda r: r["model"].update(bn_momentum=1.5), "'model.bn_momentum' must be a finite number at least 0 and at "
                                                   "most 1"),
    (lambda r: r["data"].update(valid_size=0), "'data.valid_size' must be at least 1"),
    (lambda r: r["model"].update(hidden=[4096, 4096, 4096, 10**9]), "more than this machine's"),
    (lambda r: r["model"].update({1: 2, "z": 3}), "unknown key 'model.1'"),
])
def test_bad_recipes_name_file_and_key(tmp_path, edit, message):
    raw = yaml.safe_load(mnist_text())
    edit(raw)
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_field_ranges_and_what_they_say():
    fraction = f(NUM, 0.0, ge=0, lt=1)
    assert fraction.range_text() == "at least 0 and less than 1"
    assert [fraction.in_range(v) for v in (0, 0.5, 1, -0.1, float("nan"), float("inf"))] == [True, True] + [False] * 4
    positive = f(NUM, gt=0)
    assert positive.range_text() == "greater than 0" and not positive.in_range(0) and positive.in_range(1e-30)
    assert not positive.in_range(10**400)  # an integer too large for a float is not a finite number
    count = f(int, 1, ge=1, le=5)
    assert count.range_text() == "at least 1 and at most 5" and count.in_range(5) and not count.in_range(6)
    assert f(str, "").range_text() == ""


@pytest.mark.parametrize("name", ["mnist", "mnist_torch7", "cifar10", "cifar10_torch7", "svhn", "svhn_torch7"])
def test_parameter_estimate_is_the_built_models_count(name):
    import torch

    from bnnctl.core.models import build_model, count_parameters
    from bnnctl.data import DATASET_IMAGE_SHAPES
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    shape = DATASET_IMAGE_SHAPES[recipe.data.dataset]
    with torch.device("meta"):
        model = build_model(recipe.model, shape, 10)
    assert estimate_parameters(recipe.model, shape, 10) == count_parameters(model)


def test_model_that_does_not_fit_the_machine(monkeypatch):
    recipe = load_recipe(REPO / "recipes" / "mnist.yaml")  # 36.8M parameters: 562 MiB, and 31 MiB of activations
    check_fits_memory(recipe, "r.yaml", memory=1 << 30)
    with pytest.raises(RecipeError, match=r"r\.yaml: training the model needs about 593 MiB of memory for its "
                                          r"36,843,550 parameters \(float32 weights, gradients and Adam state 562 MiB, "
                                          r"activations of a batch 31 MiB\), more than this machine's 512 MiB.*"
                                          r"'model.hidden'"):
        check_fits_memory(recipe, "r.yaml", memory=1 << 29)
    # a batch's activations count: 1000 images of 3 x 4096 values, about 4 float32 each while training
    with pytest.raises(RecipeError, match=r"activations of a batch 188 MiB.*'train.batch_size'"):
        check_fits_memory(replace(recipe, train=replace(recipe.train, batch_size=1000)), "r.yaml", memory=700 << 20)
    monkeypatch.setattr("bnnctl.recipe.checks.physical_memory", lambda: None)  # memory unknown: at most 2^31 parameters
    check_fits_memory(recipe, "r.yaml")
    recipe = replace(recipe, model=replace(recipe.model, hidden=(50_000, 50_000)))
    with pytest.raises(RecipeError, match="more than the 2,147,483,648"):
        check_fits_memory(recipe, "r.yaml")


def test_overrides_by_dotted_path():
    r = load_recipe(REPO / "recipes" / "mnist.yaml",
                    ["train.epochs=20", "optimizer.lr=1e-3", "model.hidden=[64, 32]", "model.bias=false"])
    assert r.train.epochs == 20 and r.optimizer.lr == 1e-3
    assert r.model.hidden == (64, 32) and r.model.bias is False


def test_bad_overrides(tmp_path):
    path = REPO / "recipes" / "mnist.yaml"
    with pytest.raises(RecipeError, match="unknown key 'train.epoch'"):
        load_recipe(path, ["train.epoch=3"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(RecipeError, match="must be an integer"):
        load_recipe(path, ["train.epochs=many"])
    with pytest.raises(RecipeError, match="names a section"):
        load_recipe(path, ["train=3"])
    with pytest.raises(RecipeError, match="'schedule.epochs' must be at least 1"):
        load_recipe(REPO / "recipes" / "mnist_torch7.yaml", ["schedule.epochs=0"])


def test_parse_override_reads_yaml_numbers():
    assert parse_override("a.b=3e-7") == ("a.b", 3e-7)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_files_that_are_not_recipes(tmp_path):
    binary = tmp_path / "best.pt"
    binary.write_bytes(b"PK\x03\x04\x80\xff\xfe" * 100)
    with pytest.raises(RecipeError, match=r"best\.pt is not a text file"):
        load_recipe(binary)
    (tmp_path / "folder.yaml").mkdir()
    for folder in (tmp_path / "folder.yaml", tmp_path):
        with pytest.raises(RecipeError, match="is a folder"):
            load_recipe(folder)


def test_cli_reports_recipe_errors_in_one_sentence_with_exit_code_2(tmp_path):
    path = write(tmp_path, mnist_text().replace("dropout_in:", "dropuot_in:"))
    result = subprocess.run([sys.executable, "-m", "bnnctl", "train", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown key 'model.dropuot_in'" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_missing_recipe_file(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_recipes_command_lists_shipped_recipes():
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0 and "mnist.yaml" in result.output and "0.96" in result.output
