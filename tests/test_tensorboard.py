"""`bnnctl train --tensorboard`: each epoch's curves as TensorBoard events, equal to metrics.csv, once per epoch
across a resume, and no part of the experiment."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.train.tensorboard_log import SCALARS

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

runner = CliRunner()


def train(recipe: Path, runs: Path, *extra: str):
    return runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs), "--device", "cpu", "--run-id", "a",
                               *extra])


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every tag's (step, value) as TensorBoard reads the run's events (a restart's purge applied)."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def assert_curves_are_the_metrics(run: Path) -> None:
    rows, logged = metrics(run), curves(run)
    assert set(logged) == set(SCALARS)
    for tag, column in SCALARS.items():
        assert [step for step, _ in logged[tag]] == [int(row["epoch"]) for row in rows], tag
        assert [value for _, value in logged[tag]] == pytest.approx([float(row[column]) for row in rows],
                                                                    rel=1e-6), tag


def test_the_event_files_hold_every_epoch_of_metrics_csv_and_change_no_experiment(tiny_recipe, tmp_path):
    done = train(tiny_recipe, tmp_path / "logged", "--tensorboard")
    assert done.exit_code == 0, done.output
    run = tmp_path / "logged" / "tiny" / "a"
    assert len(metrics(run)) == 3
    assert_curves_are_the_metrics(run)
    plain = train(tiny_recipe, tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "plain" / "tiny" / "a" / "tensorboard").exists()
    logged_result = json.loads((run / "result.json").read_text())
    plain_result = json.loads((tmp_path / "plain" / "tiny" / "a" / "result.json").read_text())
    for key in ("experiment_sha256", "faithful_to_shipped"):
        assert logged_result[key] == plain_result[key]
    assert (run / "recipe.yaml").read_text() == (tmp_path / "plain" / "tiny" / "a" / "recipe.yaml").read_text()


def test_a_resumed_run_appends_without_repeating_an_epoch(tiny_recipe, tmp_path, monkeypatch):
    from bnnctl.train.loop import Trainer

    original = Trainer.train_epoch

    def interrupt_in_fourth_epoch(self, progress):
        if self.epoch == 3:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_in_fourth_epoch)
    runs = tmp_path / "runs"
    stopped = train(tiny_recipe, runs, "--tensorboard", "--set", "train.epochs=4", "--set", "train.checkpoint_every=2")
    assert stopped.exit_code == 130, stopped.output
    run = runs / "tiny" / "a"
    assert [step for step, _ in curves(run)["loss/train"]] == [1, 2, 3]  # epoch 3 logged, checkpoint after 2
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = runner.invoke(app, ["train", str(run / "recipe.yaml"), "--resume", str(run), "--device", "cpu",
                                  "--tensorboard"])
    assert resumed.exit_code == 0, resumed.output
    assert len(metrics(run)) == 4
    assert_curves_are_the_metrics(run)


def test_without_tensorboard_installed_the_flag_is_one_sentence(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    for extra in ([], ["--dry-run"]):
        done = train(tiny_recipe, tmp_path / "runs", "--tensorboard", *extra)
        assert done.exit_code == 2, done.output
        assert "pip install" in done.output and "tensorboard" in done.output and "Traceback" not in done.output
        assert done.output.count("\n") == 1 and done.output.startswith("error: ")
    assert not (tmp_path / "runs").exists()
