"""`bnnctl record`: a user's run or bench enters the committed record only on purpose, and never replaces it."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.runs import RunLock, write_result

runner = CliRunner()

RESULT = {"recipe": "mnist", "status": "finished", "dataset": "mnist", "variant": "mnist",
          "paper": {"table": "Table 1", "row": "BNN (Theano)", "test_error": 0.96}, "epochs_run": 2,
          "epochs_planned": 2, "best_epoch": 2, "best_valid_error_pct": 2.0, "test_error_pct": 2.5, "seed": 0}


def a_run(root: Path, run_id: str = "r1", **fields) -> Path:
    run = root / "mnist" / run_id
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: mnist\n")
    (run / "metrics.csv").write_text("epoch,train_loss,valid_error_pct\n1,0.5,3.0\n2,0.4,2.0\n")
    (run / "checkpoint.pt").write_bytes(b"not copied")
    write_result(run / "result.json", {**RESULT, **fields})
    return run


def test_a_run_is_copied_into_the_record_without_its_checkpoints(tmp_path):
    run, results = a_run(tmp_path / "runs"), tmp_path / "results"
    done = runner.invoke(app, ["record", str(run), "--results", str(results)])
    assert done.exit_code == 0, done.output
    target = results / "mnist" / "r1"
    assert sorted(p.name for p in target.iterdir()) == ["metrics.csv", "recipe.yaml", "result.json"]
    assert (target / "result.json").read_bytes() == (run / "result.json").read_bytes()
    # Never over what the record holds, and nothing changed by the refusal.
    before = (target / "result.json").read_bytes()
    again = runner.invoke(app, ["record", str(run), "--results", str(results)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert (target / "result.json").read_bytes() == before


def test_a_damaged_or_running_run_is_refused(tmp_path):
    results = tmp_path / "results"
    run = a_run(tmp_path / "runs")
    data = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**data, "test_error_pct": 0.25}))
    done = runner.invoke(app, ["record", str(run), "--results", str(results)])
    assert done.exit_code == 2 and "does not match its checksum" in done.output
    assert not results.exists()

    busy = a_run(tmp_path / "runs", "r2", status="running")
    lock = RunLock(busy).acquire()
    try:
        done = runner.invoke(app, ["record", str(busy), "--results", str(results)])
    finally:
        lock.release()
    assert done.exit_code == 5 and "training in" in done.output
    assert not (results / "mnist" / "r2").exists()


def test_a_bench_record_is_copied_once(tmp_path):
    bench, results = tmp_path / "runs" / "bench" / "20261206T120000-cpu-64x64x64.json", tmp_path / "results"
    bench.parent.mkdir(parents=True)
    bench.write_text(json.dumps({"kind": "kernels", "kernels": {}}))
    assert runner.invoke(app, ["record", str(bench), "--results", str(results)]).exit_code == 0
    assert (results / "bench" / bench.name).read_bytes() == bench.read_bytes()
    again = runner.invoke(app, ["record", str(bench), "--results", str(results)])
    assert again.exit_code == 2 and "already exists" in again.output
    other = tmp_path / "notes.json"
    other.write_text("[1, 2]")
    refused = runner.invoke(app, ["record", str(other), "--results", str(results)])
    assert refused.exit_code == 2 and "is not a bnnctl bench record" in refused.output
