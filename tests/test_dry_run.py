"""`bnnctl train --dry-run`: the resolved recipe, the run folder and the model's size, with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.recipe import load_recipe
from tests.conftest import write_tiny_recipe

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root: (size, modification time in ns); folders (0, 0)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
            for p in root.rglob("*")}


def dry_run(*args: str):
    return runner.invoke(app, ["train", *args, "--dry-run", "--device", "cpu"], env={"COLUMNS": "80"})


def facts(output: str) -> dict[str, str]:
    """The '# key: value' comment lines of a dry run's output."""
    lines = [line[2:] for line in output.splitlines() if line.startswith("# ") and ": " in line]
    return dict(line.split(": ", 1) for line in lines)


def test_dry_run_prints_the_resolved_recipe_run_folder_and_sizes_and_writes_nothing(tiny_recipe, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    sets = ["--set", "model.hidden=[16,16]", "--set", "train.epochs=1", "--seed", "7", "--fast"]
    done = dry_run(str(tiny_recipe), *sets, "--runs-dir", "runs", "--run-id", "a")
    assert done.exit_code == 0, done.output
    assert tree(tmp_path) == before
    # The output is YAML: the recipe as the run would record it, every --set, --seed and --fast applied.
    from bnnctl.recipe import FAST_PRESETS
    expected = load_recipe(tiny_recipe, [*FAST_PRESETS["cpu"], "model.hidden=[16,16]", "train.epochs=1", "seed=7"])
    assert yaml.safe_load(done.output) == expected.to_dict()
    shown = facts(done.output)
    assert shown["run directory"] == "runs/tiny/a (not created)"
    assert shown["images"].startswith(f"1x8x8 (the header of {tmp_path / 'tiny.npz'})")
    # 64 inputs -> 16 -> 16 -> 10, each layer with a bias and a batch norm's scale and shift (and, stored,
    # its two running statistics).
    binary = 64 * 16 + 16 * 16 + 16 * 10
    units = 16 + 16 + 10
    assert shown["parameters"] == f"{binary + 3 * units:,}"
    assert shown["float32 weights"].startswith(f"{4 * (binary + 3 * units):,} bytes")
    assert shown["1-bit model"].startswith(f"{binary // 8 + 4 * 5 * units:,} bytes")
    assert shown["training memory"].startswith("about ")


def test_dry_run_names_the_folder_and_parameters_the_run_then_has(tiny_recipe, tmp_path):
    runs = tmp_path / "runs"
    planned = facts(dry_run(str(tiny_recipe), "--runs-dir", str(runs), "--run-id", "a").output)
    trained = runner.invoke(app, ["train", str(tiny_recipe), "--runs-dir", str(runs), "--run-id", "a",
                                  "--device", "cpu", "--set", "train.epochs=1"])
    assert trained.exit_code == 0, trained.output
    assert planned["run directory"] == f"{runs / 'tiny' / 'a'} (not created)"
    result = json.loads((runs / "tiny" / "a" / "result.json").read_text())
    assert planned["parameters"] == f"{result['parameters']:,}"
    again = facts(dry_run(str(tiny_recipe), "--runs-dir", str(runs), "--run-id", "a").output)
    assert again["run directory"] == f"{runs / 'tiny' / 'a-2'} (not created)"


def test_dry_run_needs_no_data_and_downloads_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    before = tree(tmp_path)
    done = dry_run(str(REPO / "recipes" / "mnist.yaml"), "--data-dir", "empty")
    assert done.exit_code == 0, done.output
    assert tree(tmp_path) == before
    assert facts(done.output)["images"] == "1x28x28 (mnist's original images), 10 classes"
    assert facts(done.output)["parameters"] == f"{784 * 4096 + 2 * 4096 * 4096 + 4096 * 10 + 3 * (3 * 4096 + 10):,}"
    staged = write_tiny_recipe(tmp_path / "staged.yaml", tmp_path / "absent.npz")
    before = tree(tmp_path)
    missing = dry_run(str(staged))
    assert missing.exit_code == 0, missing.output
    assert tree(tmp_path) == before
    assert facts(missing.output)["images"].startswith("1x28x28 (mnist's original images; ")


def test_a_bad_recipe_is_refused_as_without_dry_run(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for args in (["--set", "optimizer.lr=-1"], ["--set", "model.widths=[3]"], ["--run-id", "../out"]):
        plain = runner.invoke(app, ["train", str(tiny_recipe), *args, "--device", "cpu"])
        dry = dry_run(str(tiny_recipe), *args)
        assert dry.exit_code == plain.exit_code == 2 and dry.output == plain.output, (dry.output, plain.output)
        assert dry.output.startswith("error: ") and "Traceback" not in dry.output
    resumed = dry_run(str(tiny_recipe), "--resume", str(tmp_path))
    assert resumed.exit_code == 2 and "--dry-run shows a new run" in resumed.output
    assert tree(tmp_path) == before
