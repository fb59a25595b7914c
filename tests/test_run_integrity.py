"""Run folders are trusted only when whole: checksummed files, confined names, a lock, one sentence per failure."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bnnctl import files, runs
from bnnctl.cli import app
from bnnctl.errors import DamagedFile, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_ENVIRONMENT
from bnnctl.train import loop

runner = CliRunner()


def train(recipe, runs_dir, *extra):
    return runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs_dir), "--device", "cpu", *extra])


def one_sentence(output: str) -> bool:
    """No traceback, and the failure is one line starting 'error:' (after any training output)."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    return "Traceback" not in output and len(errors) == 1


@pytest.fixture
def finished_run(tiny_recipe, tmp_path) -> Path:
    result = train(tiny_recipe, tmp_path / "runs", "--run-id", "r", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tiny" / "r"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["best.pt", "checkpoint.pt"])
@pytest.mark.parametrize("where", [0.3, 0.9, -5])  # inside a tensor, in the archive's index, in the checksum
def test_a_flipped_byte_is_refused_never_used(finished_run, tiny_recipe, name, where):
    path = finished_run / name
    assert torch.load(path, weights_only=False)["format"].startswith("bnnctl")  # still a plain torch file
    size = path.stat().st_size
    flip_byte(path, int(size * where) if where > 0 else size + where)
    if name == "best.pt":
        result = runner.invoke(app, ["eval", str(finished_run), "--device", "cpu"])
    else:
        result = train(tiny_recipe, finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert one_sentence(result.output) and str(path) in result.output.replace("\n", "")


def test_an_edited_result_record_fails_its_checksum(finished_run):
    path = finished_run / "result.json"
    record = runs.read_result(path)
    assert record["format"] == runs.RESULT_FORMAT and record["version"] == runs.RESULT_VERSION
    record["test_error_pct"] = 0.01
    path.write_text(json.dumps(record))
    with pytest.raises(DamagedFile):
        runs.read_result(path)
    without_checksum = {k: v for k, v in record.items() if k != "sha256"}
    path.write_text(json.dumps(without_checksum))  # a checksummed version with its checksum taken out
    with pytest.raises(DamagedFile, match="no checksum"):
        runs.read_result(path)
    # records written before checksums (no format, version, checksum or the fields that came with them)
    legacy = {k: v for k, v in record.items() if k not in runs.CHECKSUMMED_RESULT_FIELDS}
    path.write_text(json.dumps(legacy))
    assert runs.read_result(path)["test_error_pct"] == 0.01


@pytest.mark.parametrize("args", [["--set", "name=../../escaped"], ["--run-id", "../../escaped"],
                                  ["--run-id", "/tmp/escaped"], ["--set", "name=.hidden"], ["--run-id", ""]])
def test_names_cannot_leave_the_runs_folder(tiny_recipe, tmp_path, args):
    result = train(tiny_recipe, tmp_path / "a" / "runs", *args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert one_sentence(result.output)
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))
    assert not (tmp_path / "a" / "runs").exists()  # refused before anything was written


def test_a_run_folder_is_locked_while_a_process_trains_in_it(finished_run, tiny_recipe):
    lock = runs.RunLock(finished_run).acquire()  # as another trainer would hold it
    try:
        result = train(tiny_recipe, finished_run.parent.parent, "--resume", str(finished_run))
        assert result.exit_code == EXIT_BUSY, result.output
        assert one_sentence(result.output)
    finally:
        lock.release()


def test_a_full_disk_is_one_sentence_and_leaves_no_temporary(tiny_recipe, tmp_path, monkeypatch):
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", full_disk)
    result = train(tiny_recipe, tmp_path / "runs", "--run-id", "r")
    assert result.exit_code == EXIT_ENVIRONMENT, result.output
    assert one_sentence(result.output) and "disk is full" in result.output
    run = tmp_path / "runs" / "tiny" / "r"
    assert not list(run.glob(".*.tmp*"))
    assert runs.read_result(run / "result.json")["status"] == "failed"  # never left 'running'
    assert "nothing to resume" in result.output


def test_a_resume_removes_temporaries_an_interrupted_write_left(finished_run, tiny_recipe):
    stale = finished_run / ".checkpoint.pt.tmp99999"
    stale.write_bytes(b"x" * 1000)
    result = train(finished_run / "recipe.yaml", finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == 0, result.output
    assert not stale.exists()


def test_a_resume_with_another_recipe_is_refused(finished_run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text((finished_run / "recipe.yaml").read_text().replace("name: tiny", "name: other"))
    result = train(other, finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tiny_recipe, tmp_path, monkeypatch):
    def interrupted(self, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "train_epoch", interrupted)
    result = train(tiny_recipe, tmp_path / "runs")
    assert result.exit_code == 130
    assert "nothing to resume" in result.output and "--resume" not in result.output


def test_a_diverged_run_names_the_epoch_its_checkpoint_holds(tiny_recipe, tmp_path, monkeypatch):
    real_epoch = loop.Trainer.train_epoch

    def diverge_in_epoch_4(self, progress):
        loss = real_epoch(self, progress)
        return float("nan") if self.epoch == 3 else loss

    monkeypatch.setattr(loop.Trainer, "train_epoch", diverge_in_epoch_4)
    result = train(tiny_recipe, tmp_path / "runs", "--set", "train.epochs=5", "--set", "train.checkpoint_every=2")
    assert result.exit_code == 3, result.output
    assert "epoch 4" in result.output and "after epoch 2" in result.output.replace("\n", " ")


@pytest.mark.parametrize("args", [["--m", "0"], ["--k", "-3"], ["--repeat", "0"], ["--popc-peak", "-1"]])
def test_bench_refuses_impossible_arguments_before_timing(args, tmp_path):
    result = runner.invoke(app, ["bench", "--kernel", "xnor", "--device", "cpu", "--out", str(tmp_path), *args])
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    assert not list(tmp_path.iterdir())


def test_bench_out_onto_a_file_is_one_sentence(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    result = runner.invoke(app, ["bench", "--kernel", "xnor", "--device", "cpu", "--m", "8", "--n", "8", "--k", "64",
                                 "--out", str(target)])
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    assert target.read_text() == "x"
