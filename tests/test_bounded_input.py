"""Bounded input and memory faults: nothing a recipe, an option or the machine's memory does hangs or ends in
a traceback.

A recipe is bounded in size, aliases, nesting and values (aliases expanded), and a message quotes only an
excerpt of a value; a name too long for a folder says so. A model that cannot fit is refused before it is
allocated (exit 2, or 4 when the machine is only short of free memory now); running out of memory during a
run ends it with exit 4, saying so, recorded as failed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.core.layers import BinaryLinear
from bnnctl.errors import is_out_of_memory
from bnnctl.recipe import RecipeError, load_recipe

from .conftest import REPO
from .test_bad_inputs import assert_refused, train

runner = CliRunner()
MNIST = REPO / "recipes" / "mnist.yaml"


def alias_chain(levels: int = 9, width: int = 9) -> str:
    """YAML's "billion laughs": each anchored list repeats the previous one ``width`` times (width**levels values)."""
    names = [f"l{i}" for i in range(levels)]
    items = [f"&{names[0]} [" + ", ".join(["x"] * width) + "]"]
    items += [f"&{name} [" + ", ".join([f"*{before}"] * width) + "]" for before, name in zip(names, names[1:])]
    return "[" + ", ".join(items) + "]"


def recipe_with_hidden(tmp_path: Path, hidden: str) -> Path:
    text = MNIST.read_text()
    assert "hidden: [4096, 4096, 4096]" in text
    path = tmp_path / "r.yaml"
    path.write_text(text.replace("hidden: [4096, 4096, 4096]", f"hidden: {hidden}"))
    return path


# ---------------------------------------------------------------------------- bounded recipes

def test_alias_bomb_is_refused_quickly_in_one_sentence(tmp_path):
    recipe = recipe_with_hidden(tmp_path, alias_chain())
    runs = tmp_path / "runs"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bnnctl", "train", str(recipe), "--runs-dir", str(runs),
                           "--device", "cpu"], capture_output=True, text=True, timeout=20, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("error:") and len(line) < 300, line
    assert str(recipe) in line and "aliases expanded" in line
    assert not runs.exists()
    assert time.monotonic() - start < 20


def test_alias_bomb_in_a_set_value_is_refused():
    start = time.monotonic()
    with pytest.raises(RecipeError, match=r"^--set model\.hidden: .*aliases expanded") as refused:
        load_recipe(MNIST, [f"model.hidden={alias_chain()}"])
    assert len(str(refused.value)) < 300 and time.monotonic() - start < 5


def test_too_many_aliases_are_refused(tmp_path):
    def with_aliases(count: int) -> Path:
        recipe = recipe_with_hidden(tmp_path, "[" + ", ".join(["*w"] * count) + "]")
        recipe.write_text(recipe.read_text().replace("valid_size: 10000", "valid_size: &w 10000"))
        return recipe
    with pytest.raises(RecipeError, match="past 100 YAML aliases"):
        load_recipe(with_aliases(101))
    assert load_recipe(with_aliases(2)).model.hidden == (10000, 10000)  # a few are a recipe's own business


def test_deep_nesting_is_refused(tmp_path):
    recipe = recipe_with_hidden(tmp_path, "[" * 25 + "1" + "]" * 25)
    runs = tmp_path / "runs"
    line = assert_refused(train(recipe, runs), runs, str(recipe), "20 levels of nesting")
    assert len(line) < 300
    # nesting deep enough to exhaust Python's recursion is refused the same way, at once
    with pytest.raises(RecipeError, match="20 levels of nesting"):
        load_recipe(MNIST, ["model.hidden=" + "[" * 5000 + "]" * 5000])


@pytest.mark.parametrize("override, key", [
    ("model.arch=" + "x" * 5000, "'model.arch'"),
    ("model.hidden=[" + ", ".join(["y" * 200] * 50) + "]", "'model.hidden'"),
    ("model.hidden=[" + ", ".join(["0"] * 5000) + "]", "'model.hidden'"),
    ("description=[" + ", ".join(["1"] * 5000) + "]", "'description'"),
    ("model." + "z" * 5000 + "=1", "unknown key"),
    ("w" * 5000, "--set"),
])
def test_messages_quote_an_excerpt_of_a_long_value(tiny_recipe, tmp_path, override, key):
    runs = tmp_path / "runs"
    line = assert_refused(train(tiny_recipe, runs, "--set", override), runs, key)
    assert len(line) < 300 and "..." in line, line


def test_a_long_value_in_a_recipe_file_is_quoted_as_an_excerpt(tmp_path):
    recipe = recipe_with_hidden(tmp_path, "[" + ", ".join(["-1"] * 20000) + "]")
    with pytest.raises(RecipeError, match=r"'model\.hidden' must be at least 1, got -1 in \[-1, -1, .*\.\.\.") as e:
        load_recipe(recipe)
    assert len(str(e.value)) < len(str(recipe)) + 200


@pytest.mark.parametrize("extra, what", [
    (["--run-id", "r" * 129], "--run-id"),
    (["--set", "name=" + "n" * 300], "the recipe name"),
])
def test_a_name_too_long_for_a_folder_says_so(tiny_recipe, tmp_path, extra, what):
    runs = tmp_path / "runs"
    line = assert_refused(train(tiny_recipe, runs, *extra), runs, what, "too long", "at most 128")
    assert len(line) < 200


def test_a_name_of_128_characters_is_a_folder(tiny_recipe, tmp_path):
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs, "--run-id", "r" * 128, "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert (runs / "tiny" / ("r" * 128) / "result.json").is_file()


# ---------------------------------------------------------------------------- memory

def test_a_model_that_cannot_fit_names_the_bytes_needed_and_the_machines(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr("bnnctl.recipe.checks.physical_memory", lambda: 4 << 20)
    built = []
    monkeypatch.setattr("bnnctl.core.models.build_model", lambda *a, **k: built.append(a))  # never reached
    runs = tmp_path / "runs"
    line = assert_refused(train(tiny_recipe, runs, "--set", "model.hidden=[1024, 1024]"), runs,
                          "needs about", "this machine's 4 MiB", "model.hidden")
    assert not built and "images" not in line


def test_a_model_the_free_memory_cannot_hold_now_is_exit_4_before_anything_is_written(tiny_recipe, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setattr("bnnctl.recipe.checks.available_memory", lambda: 1 << 10)
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs)
    assert result.exit_code == 4, result.output
    assert "free now" in result.output and "needs about" in result.output and "Traceback" not in result.output
    assert not runs.exists() or not any(runs.rglob("*.json"))


OUT_OF_MEMORY = [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1048576 bytes."),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total)"),
]


def test_what_counts_as_out_of_memory():
    assert all(is_out_of_memory(e) for e in OUT_OF_MEMORY)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x64 and 784x32)"))
    assert not is_out_of_memory(ValueError("out of memory"))


def fail_forward_after(monkeypatch, calls: int, error: BaseException, training_only: bool = True) -> None:
    """BinaryLinear.forward raises ``error`` once it has run ``calls`` times (in training mode if ``training_only``)."""
    original, seen = BinaryLinear.forward, [0]

    def forward(self, x):
        if self.training or not training_only:
            seen[0] += 1
            if seen[0] > calls:
                raise error
        return original(self, x)
    monkeypatch.setattr(BinaryLinear, "forward", forward)


@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["MemoryError", "cpu-allocator", "windows", "cuda"])
def test_running_out_of_memory_during_a_run_is_exit_4_recorded_as_failed(tiny_recipe, tmp_path, monkeypatch, error):
    # tiny: 500 training images in batches of 50 through 3 binary layers = 30 training forwards per epoch
    fail_forward_after(monkeypatch, 30, error)
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs, "--run-id", "a")
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output and "images" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "ran out of memory" in line and "--resume" in line, line
    run = runs / "tiny" / "a"
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "failed" and record["epochs_run"] == 1


def test_running_out_of_memory_building_the_model_is_not_a_shape_error(tiny_recipe, tmp_path, monkeypatch):
    fail_forward_after(monkeypatch, 0, OUT_OF_MEMORY[1], training_only=False)  # the first forward, in eval mode
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs)
    assert result.exit_code == 4, result.output
    assert "ran out of memory (an allocation of 4.0 GiB failed)" in result.output, result.output
    assert "cannot take" not in result.output and "Traceback" not in result.output
    assert not runs.exists() or not any(runs.rglob("*.json"))


def test_eval_and_export_of_a_model_too_large_for_the_machine(tiny_recipe, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert train(tiny_recipe, runs, "--run-id", "a", "--set", "train.epochs=1").exit_code == 0
    run = runs / "tiny" / "a"
    monkeypatch.setattr("bnnctl.recipe.checks.physical_memory", lambda: 1 << 10)
    for command in (["eval", str(run), "--device", "cpu"], ["export", str(run), "-o", str(tmp_path / "m.bnnx")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "needs about" in result.output and "more memory" in result.output, result.output
    assert not (tmp_path / "m.bnnx").exists()
    monkeypatch.undo()
    fail_forward_after(monkeypatch, 0, OUT_OF_MEMORY[0], training_only=False)
    result = runner.invoke(app, ["eval", str(run), "--device", "cpu"])
    assert result.exit_code == 4 and "ran out of memory" in result.output, result.output
