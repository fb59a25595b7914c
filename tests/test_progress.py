"""Progress of long work (`eval`, `export`, `bench --model`, training): a bar on a terminal, nothing in a pipe."""
from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

import bnnctl.cli
from bnnctl.cli import app

runner = CliRunner()
BAR = "━"  # what rich draws a progress bar with
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def terminal(monkeypatch) -> io.StringIO:
    """Make the CLI print to a terminal (a forced one, written into the returned buffer)."""
    screen = io.StringIO()
    monkeypatch.setattr(bnnctl.cli, "console", Console(file=screen, force_terminal=True, width=120))
    return screen


def run(*args: str):
    done = runner.invoke(app, list(args), env={"COLUMNS": "120"})  # as wide as the terminal
    assert done.exit_code == 0, done.output
    return done.output


@pytest.fixture
def tiny_run(tiny_recipe, tmp_path):
    run("train", str(tiny_recipe), "--runs-dir", str(tmp_path / "runs"), "--run-id", "a", "--device", "cpu",
        "--set", "train.epochs=1")
    return tmp_path / "runs" / "tiny" / "a"


def test_eval_and_export_show_progress_on_a_terminal_and_nothing_in_a_pipe(tiny_run, monkeypatch):
    commands = [("eval", str(tiny_run), "--device", "cpu"),
                ("eval", str(tiny_run), "--device", "cpu", "--engine", "xnor", "--split", "valid"),
                ("export", str(tiny_run)),
                ("eval", str(tiny_run / "model.bnnx"), "--device", "cpu")]
    piped = [run(*command) for command in commands]
    for output in piped:
        assert BAR not in output and "\x1b" not in output and output.strip()
    assert piped[0].splitlines()[0].startswith("test error: ") and len(piped[0].splitlines()) == 2
    screens = []
    for command in commands:
        screen = terminal(monkeypatch)
        run(*command)
        screens.append(screen.getvalue())
    # 200 test and 100 validation images; the tiny MLP's three binary layers folded, written and read back
    assert "test images" in screens[0] and "200/200" in screens[0] and BAR in screens[0]
    assert "valid images" in screens[1] and "100/100" in screens[1]
    assert "folding layer 1" in screens[2] and "reading model.bnnx back" in screens[2] and "5/5" in screens[2]
    assert "test images" in screens[3] and "200/200" in screens[3]
    for screen, output in zip(screens, piped):
        # the bar is transient: it ends before the results, which are what a pipe gets
        assert CONTROL.sub("", screen).endswith(output)


def test_bench_model_shows_progress_on_a_terminal_and_nothing_in_a_pipe(tmp_path, monkeypatch):
    from bnnctl.core.models import build_model
    from bnnctl.recipe import load_recipe
    from bnnctl.runs import FORMAT_VERSION, MODEL_FORMAT
    from tests.test_export_engine import REPO, perturb_norms, write_run

    cfg = load_recipe(REPO / "recipes" / "mnist.yaml", ["model.hidden=[16]"])
    model = build_model(cfg.model, (1, 28, 28), 10).eval()
    perturb_norms(model, seed=4)
    record = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "recipe": cfg.to_dict(), "input_shape": [1, 28, 28],
              "num_classes": 10, "dataset": "mnist", "variant": "random", "epoch": 1, "test_error_pct": None,
              "valid_error_pct": None}
    args = ["bench", "--model", "mnist-mlp", "--run", str(write_run(tmp_path, record, model)), "--device", "cpu",
            "--repeat", "1", "--variant", "xnor,torch", "--data-dir", str(tmp_path / "no-data"),
            "--out", str(tmp_path / "bench")]
    piped = run(*args)
    assert BAR not in piped and "\x1b" not in piped and "recorded " in piped
    screen = terminal(monkeypatch)
    run(*args)
    # two variants, each a warm-up and one timed pass
    assert "mnist-mlp: " in screen.getvalue() and "4/4" in screen.getvalue() and BAR in screen.getvalue()
