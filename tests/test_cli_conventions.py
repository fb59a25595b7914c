"""CLI conventions: `bnnctl --version`, and `bnnctl runs` listing runs as the report judges them."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import bnnctl
from bnnctl.cli import app
from tests.test_report import write_run

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_version():
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output.strip() == f"bnnctl {bnnctl.__version__}"


def test_runs_lists_each_run_faithful_or_with_the_keys_it_changed(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "mnist", "shipped", "mnist", "mnist", [(0.5, 5.0, 5.5)], planned=1000,
              recipes=REPO / "recipes")
    write_run(runs, "mnist", "narrow", "mnist", "mnist", [(0.5, 4.0, 4.5)], recipes=REPO / "recipes",
              sets=["model.hidden=[16]"])
    (runs / "mnist" / "broken").mkdir()
    (runs / "mnist" / "broken" / "result.json").write_text("{")
    done = runner.invoke(app, ["runs", str(runs)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    lines = {line.split("│")[1].strip(): line for line in done.output.splitlines() if line.startswith("│")}
    assert "running" in lines["mnist/shipped"] and "1/1000" in lines["mnist/shipped"]
    assert "faithful" in lines["mnist/shipped"] and "5.50" in lines["mnist/shipped"]
    assert "modified: model.hidden, train.epochs" in lines["mnist/narrow"]
    assert "skipped: mnist/broken/result.json" in done.output
    missing = runner.invoke(app, ["runs", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "is not a folder of runs" in missing.output
