import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.recipe import RecipeError, load_recipe, parse_override

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
    assert r["model"]["hidden"] == [4096, 4096, 4096]
    assert r["optimizer"]["lr"] == 3e-3 and isinstance(r["optimizer"]["lr"], float)
    assert r["schedule"]["lr_final"] == 3e-7
    assert r["data"]["valid_size"] == 10000 and r["train"]["batch_size"] == 100
    assert r["fast"]["data_on_device"] is True  # defaults filled in


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["model"].update(hiden=[1]), "unknown key 'model.hiden'"),
    (lambda r: r["train"].update(epochs="ten"), "'train.epochs' must be an integer"),
    (lambda r: r["optimizer"].update(lr=True), "'optimizer.lr' must be"),
    (lambda r: r["model"].update(arch="transformer"), "'model.arch' must be one of"),
    (lambda r: r["train"].pop("epochs"), "missing required key 'train.epochs'"),
    (lambda r: r["model"].update(hidden=[10, "x"]), "every item of 'model.hidden'"),
    (lambda r: r["schedule"].pop("lr_final"), "'schedule.lr_final' is required"),
    (lambda r: r.update(data=[1, 2]), "'data' must be a mapping"),
])
def test_bad_recipes_name_file_and_key(tmp_path, edit, message):
    raw = yaml.safe_load(mnist_text())
    edit(raw)
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_overrides_by_dotted_path():
    r = load_recipe(REPO / "recipes" / "mnist.yaml",
                    ["train.epochs=20", "optimizer.lr=1e-3", "model.hidden=[64, 32]", "model.bias=false"])
    assert r["train"]["epochs"] == 20 and r["optimizer"]["lr"] == 1e-3
    assert r["model"]["hidden"] == [64, 32] and r["model"]["bias"] is False


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
