"""Files made on purpose: nothing in a file runs, nothing bnnctl did not write is replaced, checksums cannot be
dropped, a run's files belong to it, and an interrupt before the first checkpoint says how to start again."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnnctl import files, runs
from bnnctl.cli import app
from bnnctl.data import load_splits
from bnnctl.data.common import DataError
from bnnctl.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from bnnctl.infer.bnnx import MAGIC
from bnnctl.train import loop
from tests.test_data_cifar_svhn import data_cfg, write_cifar_batches

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def train(recipe, runs_dir, *extra):
    return runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs_dir), "--device", "cpu", *extra])


def one_sentence(output: str) -> bool:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    return "Traceback" not in output and len(errors) == 1


def flat(output: str) -> str:
    """Output with the console's line wrapping undone."""
    return output.replace("\n", "")


@pytest.fixture
def finished_run(tiny_recipe, tmp_path) -> Path:
    result = train(tiny_recipe, tmp_path / "runs", "--run-id", "r", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tiny" / "r"


@pytest.fixture
def other_run(tiny_recipe, tmp_path) -> Path:
    """A second run of another experiment (wider layers), whose files must never pass for the first's."""
    result = train(tiny_recipe, tmp_path / "runs", "--run-id", "o", "--set", "train.epochs=2",
                   "--set", "model.hidden=[48,48]")
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tiny" / "o"


# ============================================================================ no code from data

class Payload:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class PathPayload:
    """Unpickling this calls pathlib.Path.touch, without a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def crafted(path: Path, marker: Path, payload=Payload, checksummed: bool = False) -> Path:
    """A torch file shaped like a bnnctl model record whose unpickling would create marker."""
    obj = {"format": runs.MODEL_FORMAT, "version": 1 if not checksummed else runs.FORMAT_VERSION,
           "model": {}, "extra": payload(marker)}
    if checksummed:  # a valid bnnctl checksum: it says the file is whole, not that it is harmless
        files.atomic_torch_save(obj, path)
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("payload", [Payload, PathPayload])
@pytest.mark.parametrize("checksummed", [False, True])
def test_a_crafted_model_file_is_refused_before_it_runs(tmp_path, payload, checksummed):
    marker = tmp_path / "ran"
    evil = crafted(tmp_path / "evil.pt", marker, payload, checksummed)
    for args in (["eval", str(evil), "--device", "cpu"], ["export", str(evil), "-o", str(tmp_path / "e.bnnx")]):
        result = runner.invoke(app, args)
        assert result.exit_code == EXIT_BAD_INPUT, result.output
        assert one_sentence(result.output) and "none of them was run" in flat(result.output)
        assert not marker.exists()
    assert not (tmp_path / "e.bnnx").exists()


def test_a_crafted_model_file_is_refused_by_bench(tmp_path):
    marker = tmp_path / "ran"
    evil = crafted(tmp_path / "evil.pt", marker)
    result = runner.invoke(app, ["bench", "--model", "mnist-mlp", "--run", str(evil), "--device", "cpu",
                                 "--out", str(tmp_path / "bench")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert one_sentence(result.output) and str(evil) in flat(result.output)
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused_on_resume(finished_run):
    marker = finished_run.parent / "ran"
    state = {"format": runs.CHECKPOINT_FORMAT, "version": runs.FORMAT_VERSION, "payload": Payload(marker)}
    files.atomic_torch_save(state, finished_run / "checkpoint.pt")
    result = train(finished_run / "recipe.yaml", finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert one_sentence(result.output) and "checkpoint.pt is refused" in flat(result.output)
    assert not marker.exists()


def test_a_crafted_cifar_batch_is_refused_before_it_runs(tmp_path):
    root = tmp_path / "data"
    write_cifar_batches(root / "cifar-10-batches-py", np.random.default_rng(0))
    marker = tmp_path / "ran"
    with open(root / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({"data": Payload(marker), "labels": [0]}, fh)
    with pytest.raises(DataError, match="names Python code to run"):
        load_splits(data_cfg("cifar10", train_size=20, valid_size=10, variant="cifar10-edited"), root)
    assert not marker.exists()


def test_checkpoints_load_with_the_weights_only_unpickler(finished_run):
    """What training writes holds nothing the weights-only unpickler refuses (the RNG states, the optimizer's
    state, the recipe, the records), so a weights-only load is no loss."""
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(finished_run / name, weights_only=True)
        assert state["format"].startswith("bnnctl") and state["run"]["id"] == "r"


def test_no_module_reads_a_file_with_code_in_it():
    """Every torch.load is weights-only, every np.load refuses pickles, and nothing unpickles unrestricted."""
    for path in sorted((REPO / "bnnctl").rglob("*.py")):
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            assert "weights_only=True" in call.group(0), f"{path}: {call.group(0)}"
        for call in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
            assert "allow_pickle=False" in call.group(0), f"{path}: {call.group(0)}"
        assert not re.search(r"pickle\.loads?\(|yaml\.unsafe_load|yaml\.load\(.*Loader=yaml\.(Full)?Loader", text), path


# ============================================================================ nothing overwritten

@pytest.mark.parametrize("target", ["best.pt", "checkpoint.pt", "result.json", "metrics.csv", "recipe.yaml"])
def test_export_never_replaces_a_runs_file(finished_run, target):
    path = finished_run / target
    before = path.read_bytes()
    result = runner.invoke(app, ["export", str(finished_run), "-o", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert one_sentence(result.output) and "is not a bnnctl export" in flat(result.output)
    assert path.read_bytes() == before


def test_export_replaces_an_export_but_no_other_file(finished_run, tmp_path):
    out = tmp_path / "out" / "model.bnnx"
    assert runner.invoke(app, ["export", str(finished_run), "-o", str(out)]).exit_code == 0
    again = runner.invoke(app, ["export", str(finished_run), "-o", str(out)])
    assert again.exit_code == 0, again.output  # an export is replaced by a new one

    foreign = tmp_path / "notes.bnnx"
    foreign.write_text("my notes")
    signed = tmp_path / "signed.bnnx"  # starts like an export, but is none bnnctl can read
    signed.write_bytes(MAGIC + b"\x00" * 64)
    for path in (foreign, signed):
        before = path.read_bytes()
        result = runner.invoke(app, ["export", str(finished_run), "-o", str(path)])
        assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
        assert path.read_bytes() == before

    # the record written beside the export is replaced only when it is an export record
    record = tmp_path / "mine.export.json"
    record.write_text('{"my": "data"}')
    result = runner.invoke(app, ["export", str(finished_run), "-o", str(tmp_path / "mine.bnnx")])
    assert result.exit_code == EXIT_BAD_INPUT and "is not an export record" in flat(result.output)
    assert record.read_text() == '{"my": "data"}' and not (tmp_path / "mine.bnnx").exists()


def test_export_removes_the_temporaries_a_killed_export_left(finished_run, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # an export still writing
    try:
        out = tmp_path / "model.bnnx"
        stale = [tmp_path / f".model.bnnx.tmp{dead_pid}", tmp_path / f".model.export.json.tmp{dead_pid}"]
        live = tmp_path / f".model.bnnx.tmp{writer.pid}"
        others = tmp_path / f".notes.txt.tmp{dead_pid}"  # not the export's: left alone
        for path in [*stale, live, others]:
            path.write_bytes(b"x" * 100)
        result = runner.invoke(app, ["export", str(finished_run), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert not any(p.exists() for p in stale)
        assert live.exists() and others.exists()
    finally:
        writer.kill()
        writer.wait()


# ============================================================================ integrity cannot be skipped

def recorded(finished_run: Path, results: Path) -> Path:
    done = runner.invoke(app, ["record", str(finished_run), "--results", str(results)])
    assert done.exit_code == 0, done.output
    return results / "tiny" / finished_run.name


def report(results: Path, out: Path) -> tuple[str, str]:
    done = runner.invoke(app, ["report", "--results", str(results), "--out", str(out)])
    assert done.exit_code == 0, done.output
    return (out / "REPORT.md").read_text(), (out / "runs.csv").read_text()


def invent(run: Path, error: float, drop: tuple[str, ...] = ("sha256",)) -> None:
    """The issue's case: result.json's test error edited and its checksum line deleted, metrics.csv made to match."""
    data = json.loads((run / "result.json").read_text())
    best = data["best_epoch"]
    data["test_error_pct"] = error
    for key in drop:
        data.pop(key, None)
    (run / "result.json").write_text(json.dumps(data, indent=2))
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[best].split(",")
    row[header.index("test_error_pct")] = str(error)
    lines[best] = ",".join(row)
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_a_result_without_its_checksum_never_reaches_the_report(finished_run, tmp_path):
    results = tmp_path / "results"
    run = recorded(finished_run, results)
    invent(run, 0.25)
    text, table = report(results, tmp_path / "report")
    assert "0.25" not in text and "0.25" not in table
    skipped = text.split("## Skipped or questioned files")[1]
    assert "tiny/r/result.json" in skipped and "no checksum" in skipped


def test_a_result_with_a_recomputed_checksum_still_needs_the_metrics_checksum(finished_run, tmp_path):
    """metrics.csv is covered: altered alone, it is named; a version 3 record without its SHA-256 is refused."""
    results = tmp_path / "results"
    run = recorded(finished_run, results)
    lines = (run / "metrics.csv").read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[2], "0.0001", 1)  # train loss of epoch 1
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    text, _ = report(results, tmp_path / "report")
    assert "tiny/r/metrics.csv" in text.split("## Skipped")[1] and "does not match the checksum" in text
    assert "tiny/r" not in text.split("## Skipped")[0]
    assert runner.invoke(app, ["record", str(run), "--results", str(tmp_path / "again")]).exit_code == EXIT_BAD_INPUT

    data = json.loads((run / "result.json").read_text())
    fields = {k: v for k, v in data.items() if k not in ("sha256", "metrics_sha256")}
    fields["sha256"] = runs._result_digest(fields)
    (run / "result.json").write_text(json.dumps(fields))
    with pytest.raises(runs.DamagedFile, match="without the checksum of its metrics.csv"):
        runs.read_result(run / "result.json")


def test_eval_refuses_a_run_whose_metrics_were_altered(finished_run):
    with open(finished_run / "metrics.csv", "a") as fh:
        fh.write("3,0.001,0.1,0.1,0.0,0.0,1.0\n")
    result = runner.invoke(app, ["eval", str(finished_run), "--device", "cpu"])
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    assert "agrees" not in result.output and "metrics.csv" in flat(result.output)


def test_a_metrics_row_holding_nan_is_named_not_used(finished_run, tmp_path):
    results = tmp_path / "results"
    run = recorded(finished_run, results)
    data = json.loads((run / "result.json").read_text())
    lines = (run / "metrics.csv").read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[2], "nan", 1)
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    fields = {k: v for k, v in data.items() if k != "sha256"}
    fields["metrics_sha256"] = runs.file_sha256(run / "metrics.csv")  # as if written so
    fields["sha256"] = runs._result_digest(fields)
    (run / "result.json").write_text(json.dumps(fields))
    text, _ = report(results, tmp_path / "report")
    assert "tiny/r/metrics.csv`: line 2 holds a value that is not a finite number" in text


# ============================================================================ a run's files belong together

def test_resume_refuses_another_runs_checkpoint(finished_run, other_run):
    (finished_run / "checkpoint.pt").write_bytes((other_run / "checkpoint.pt").read_bytes())
    before = (finished_run / "result.json").read_bytes()
    result = train(finished_run / "recipe.yaml", finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    assert "does not belong to the run" in flat(result.output) and "run 'o'" in flat(result.output)
    assert (finished_run / "result.json").read_bytes() == before


def test_resume_refuses_a_checkpoint_of_the_same_recipe_from_another_run(finished_run, tiny_recipe, tmp_path):
    """Same folder name, same experiment: only the uid tells the runs apart."""
    twin = tmp_path / "twin"
    assert train(tiny_recipe, twin, "--run-id", "r", "--set", "train.epochs=2").exit_code == 0
    (finished_run / "checkpoint.pt").write_bytes((twin / "tiny" / "r" / "checkpoint.pt").read_bytes())
    result = train(finished_run / "recipe.yaml", finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT and "with uid" in flat(result.output), result.output


def test_a_whole_run_folder_copied_elsewhere_still_resumes(finished_run, tmp_path):
    """Its files go together: the uid they share, not the folder's name, is what ties them."""
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(finished_run, copy)
    result = train(copy / "recipe.yaml", tmp_path / "elsewhere", "--resume", str(copy))
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["eval", str(copy), "--device", "cpu"]).exit_code == 0


def test_eval_refuses_another_runs_best_model(finished_run, other_run):
    (finished_run / "best.pt").write_bytes((other_run / "best.pt").read_bytes())
    result = runner.invoke(app, ["eval", str(finished_run), "--device", "cpu"])
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    assert "agrees" not in result.output and "does not belong to the run" in flat(result.output)
    result = runner.invoke(app, ["eval", str(finished_run / "best.pt"), "--device", "cpu"])
    assert result.exit_code == EXIT_BAD_INPUT and "agrees" not in result.output


def strip_identity(path: Path) -> None:
    """A checkpoint as bnnctl wrote it before checkpoints carried their run's identity."""
    state = torch.load(path, weights_only=True)
    del state["run"]
    files.atomic_torch_save(state, path)


def test_a_checkpoint_from_before_identities_still_resumes(tiny_recipe, tmp_path, monkeypatch):
    original = loop.Trainer.train_epoch

    def interrupt_in_second_epoch(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, progress)

    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "train_epoch", interrupt_in_second_epoch)
        assert train(tiny_recipe, tmp_path / "runs", "--run-id", "old").exit_code == EXIT_INTERRUPTED
    run = tmp_path / "runs" / "tiny" / "old"
    strip_identity(run / "checkpoint.pt")
    result = runs.read_result(run / "result.json")
    result.pop("run_uid")
    runs.write_result(run / "result.json", result)  # a run that records no uid: one started before uids
    done = train(run / "recipe.yaml", run.parent.parent, "--resume", str(run))
    assert done.exit_code == 0, done.output
    assert "note:" not in done.output and "error:" not in done.output
    finished = runs.read_result(run / "result.json")
    assert finished["epochs_run"] == 3 and finished["run_uid"] is None  # it stays a run without a uid
    assert torch.load(run / "checkpoint.pt", weights_only=True)["run"]["uid"] is None


def test_a_checkpoint_without_identity_in_a_run_that_has_one_is_refused(finished_run):
    strip_identity(finished_run / "checkpoint.pt")
    result = train(finished_run / "recipe.yaml", finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT and "carries no run uid" in flat(result.output), result.output


def test_resume_refuses_an_edited_recipe_naming_each_difference(finished_run):
    recipe = finished_run / "recipe.yaml"
    original = recipe.read_text()
    recipe.write_text(original.replace("epochs: 2", "epochs: 5").replace("seed: 0", "seed: 7"))
    result = train(recipe, finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    text = flat(result.output)
    assert "train.epochs: 5 (recorded: 2)" in text and "seed: 7 (recorded: 0)" in text and "restore" in text
    recipe.write_text(original)
    result = train(recipe, finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == 0, result.output  # the run's own recipe.yaml, unchanged


def test_resume_refuses_a_recipe_argument_that_differs_from_the_recorded_one(finished_run, tiny_recipe):
    """The run started with --set train.epochs=2; the recipe file says 3: not silently ignored."""
    result = train(tiny_recipe, finished_run.parent.parent, "--resume", str(finished_run))
    assert result.exit_code == EXIT_BAD_INPUT and one_sentence(result.output), result.output
    text = flat(result.output)
    assert "train.epochs: 3 (recorded: 2)" in text and f"bnnctl train {finished_run / 'recipe.yaml'} --resume" in text


# ============================================================================ interrupted before a checkpoint

def test_ctrl_c_before_the_first_checkpoint_gives_the_command_to_start_again(tiny_recipe, tmp_path, monkeypatch):
    def interrupted(self, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "train_epoch", interrupted)
    runs_dir = tmp_path / "runs"
    result = train(tiny_recipe, runs_dir, "--seed", "3")
    assert result.exit_code == EXIT_INTERRUPTED
    text = flat(result.output)
    assert "before the run's first checkpoint" in text and "--resume" not in text
    assert f"start it again with: bnnctl train {tiny_recipe} --runs-dir {runs_dir} --device cpu --seed 3" in text


def test_sigterm_before_the_first_checkpoint_gives_the_command_to_start_again(tiny_recipe, tmp_path):
    runs_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bnnctl", "train", str(tiny_recipe), "--runs-dir", str(runs_dir), "--device", "cpu",
           "--set", "train.epochs=40", "--set", "train.checkpoint_every=100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(runs_dir.glob("*/*/result.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate()
    (run,) = runs_dir.glob("*/*")
    if runs.read_result(run / "result.json")["status"] == "finished":
        pytest.skip("the 40 epochs finished before SIGTERM arrived")
    assert proc.returncode == EXIT_INTERRUPTED, err
    text = flat(out)
    assert not (run / "checkpoint.pt").exists() and "before the run's first checkpoint" in text
    assert (f"start it again with: bnnctl train {tiny_recipe} --runs-dir {runs_dir} --device cpu --set "
            f"train.epochs=40 --set train.checkpoint_every=100") in text
