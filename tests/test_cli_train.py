"""`bnnctl train` -> `bnnctl eval` -> interrupt and `--resume`, end to end through the real CLI."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnnctl.cli import app

runner = CliRunner()
METRIC_KEYS = ("lr", "train_loss", "valid_loss", "valid_error_pct", "test_error_pct")


def train(recipe, runs, *extra):
    result = runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs), "--device", "cpu", *extra])
    return result


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.glob("*/*") if p.is_dir()]
    return run


def metrics(run: Path):
    with open(run / "metrics.csv") as fh:
        return [{k: float(row[k]) for k in METRIC_KEYS} for row in csv.DictReader(fh)]


def test_train_records_run_and_eval_agrees(tiny_recipe, tmp_path):
    runs = tmp_path / "runs"
    result = train(tiny_recipe, runs, "--run-id", "a")
    assert result.exit_code == 0, result.output
    run = runs / "tiny" / "a"
    assert {p.name for p in run.iterdir()} >= {"recipe.yaml", "metrics.csv", "result.json", "checkpoint.pt", "best.pt"}
    record = json.loads((run / "result.json").read_text())
    rows = metrics(run)
    assert record["status"] == "finished" and record["epochs_run"] == record["epochs_planned"] == 3
    best = min(range(3), key=lambda i: (rows[i]["valid_error_pct"], -i))  # '<=': the last of equal bests
    assert record["best_epoch"] == best + 1
    assert record["test_error_pct"] == rows[best]["test_error_pct"]
    assert record["test_error_pct"] < 50  # the tiny task is learnable
    for key in ("seed", "commit", "torch", "hardware", "wall_time_s", "variant", "dataset", "bnnctl"):
        assert key in record
    # 'tiny' is no shipped recipe: the run records its experiment's digest, and that it is not a paper cell.
    assert len(record["experiment_sha256"]) == 64 and record["shipped_experiment_sha256"] is None
    assert record["faithful_to_shipped"] is False

    evaluated = runner.invoke(app, ["eval", str(run), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"test error: {record['test_error_pct']:.2f}%" in evaluated.output and "agrees" in evaluated.output
    valid = runner.invoke(app, ["eval", str(run / "best.pt"), "--split", "valid", "--device", "cpu"])
    assert f"valid error: {record['best_valid_error_pct']:.2f}%" in valid.output


def test_interrupt_then_resume_equals_uninterrupted(tiny_recipe, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert train(tiny_recipe, straight).exit_code == 0
    expected = metrics(only_run(straight))

    from bnnctl.train.loop import Trainer
    original = Trainer.train_epoch

    def interrupt_in_second_epoch(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, progress)

    broken = tmp_path / "broken"
    monkeypatch.setattr(Trainer, "train_epoch", interrupt_in_second_epoch)
    result = train(tiny_recipe, broken)
    assert result.exit_code == 130 and "--resume" in result.output
    run = only_run(broken)
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert len(metrics(run)) == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)

    resumed = runner.invoke(app, ["train", str(tiny_recipe), "--resume", str(run), "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert metrics(run) == expected  # same numbers as the uninterrupted run, to the bit
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished"
    (resume,) = result["resumes"]  # the record lists the resume
    assert resume["after_epoch"] == 1 and resume["commit"] == result["commit"]
    assert resume["hardware"] == result["hardware"] and resume["torch"] == result["torch"]


def start_and_signal_after_first_record(recipe, runs: Path, sig: int) -> subprocess.CompletedProcess:
    """A 12-epoch `bnnctl train` in its own process, sent `sig` once its first record is on disk."""
    cmd = [sys.executable, "-m", "bnnctl", "train", str(recipe), "--runs-dir", str(runs), "--device", "cpu",
           "--set", "train.epochs=12"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(runs.glob("*/*/result.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_sigterm_is_recorded_as_an_interrupted_run(tiny_recipe, tmp_path):
    """A scheduler's or kill's SIGTERM: recorded as interrupted (as Ctrl-C is), exit 130, the resume command."""
    runs = tmp_path / "runs"
    stopped = start_and_signal_after_first_record(tiny_recipe, runs, signal.SIGTERM)
    run = only_run(runs)
    record = json.loads((run / "result.json").read_text())
    if record["status"] == "finished":  # the run ended before the signal came: nothing to check
        pytest.skip("the 12 epochs finished before SIGTERM arrived")
    assert stopped.returncode == 130, stopped.stderr
    assert record["status"] == "interrupted"
    assert "--resume" in stopped.stdout and "Traceback" not in stopped.stderr


def test_kill_leaves_a_resumable_run(tiny_recipe, tmp_path):
    """SIGKILL at an arbitrary moment after the first checkpoint; --resume finishes the run."""
    runs = tmp_path / "runs"
    start_and_signal_after_first_record(tiny_recipe, runs, signal.SIGKILL)
    run = only_run(runs)
    resumed = subprocess.run([sys.executable, "-m", "bnnctl", "train", str(run / "recipe.yaml"), "--resume", str(run),
                              "--device", "cpu"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["epochs_run"] == 12 and len(metrics(run)) == 12
    # the record keeps the command that started the run (train.epochs=12 is in it) and lists the resume
    assert result["command"].endswith("--set train.epochs=12")
    (resume,) = result["resumes"]
    assert "--resume" in resume["command"] and 1 <= resume["after_epoch"] < 12


def test_nan_loss_stops_with_state_saved(tiny_recipe, tmp_path, monkeypatch):
    from bnnctl.core.losses import LOSSES

    monkeypatch.setitem(LOSSES, "squared_hinge",
                        lambda out, y: (out * float("nan")).sum())
    result = train(tiny_recipe, tmp_path / "runs")
    assert result.exit_code == 3 and "training loss became nan" in result.output
    run = only_run(tmp_path / "runs")
    assert json.loads((run / "result.json").read_text())["status"] == "diverged"


def test_resume_refuses_overrides(tiny_recipe, tmp_path):
    runs = tmp_path / "runs"
    assert train(tiny_recipe, runs, "--set", "train.epochs=1").exit_code == 0
    result = runner.invoke(app, ["train", str(tiny_recipe), "--resume", str(only_run(runs)), "--set", "seed=3"])
    assert result.exit_code == 2 and "drop --set" in result.output


def test_eval_rejects_foreign_file(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["eval", str(bogus)])
    assert result.exit_code == 2 and "not a readable bnnctl file" in result.output


def test_cuda_request_without_gpu_is_a_clear_error(tiny_recipe, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["train", str(tiny_recipe), "--device", "cuda", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no CUDA GPU" in result.output


def test_seed_changes_the_run(tiny_recipe, tmp_path):
    assert train(tiny_recipe, tmp_path / "a", "--seed", "1", "--set", "train.epochs=1").exit_code == 0
    assert train(tiny_recipe, tmp_path / "b", "--seed", "2", "--set", "train.epochs=1").exit_code == 0
    assert metrics(only_run(tmp_path / "a")) != metrics(only_run(tmp_path / "b"))
    saved = (only_run(tmp_path / "a") / "recipe.yaml").read_text()
    assert "seed: 1" in saved and "epochs: 1" in saved
