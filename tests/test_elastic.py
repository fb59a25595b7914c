"""Restarts under torchrun: a group restarted after a fault continues its run and ends with the numbers of
an uninterrupted one (CPU, gloo).

The fast tests set the environment torchrun gives its workers and run one process in this one; the slow
ones start `bnnctl train --nproc 2 --max-restarts N` and two torchrun "nodes" on 127.0.0.1, SIGKILL a worker
mid-epoch and compare metrics.csv number for number with an uninterrupted `--nproc 2` run.
"""
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
from bnnctl.train import distributed, elastic
from bnnctl.errors import UserError
from tests.conftest import write_tiny_npz, write_tiny_recipe
from tests.test_distributed import RUN_FILES, free_port, interrupting_in_second_epoch, metrics

runner = CliRunner()


def torchrun_env(monkeypatch, job: str, restart: int, max_restarts: int = 2) -> None:
    """The variables torchrun sets in its workers that bnnctl reads, for a store of each attempt's own."""
    monkeypatch.setenv(elastic.JOB_ENV, job)
    monkeypatch.setenv(elastic.RESTART_COUNT_ENV, str(restart))
    monkeypatch.setenv(elastic.MAX_RESTARTS_ENV, str(max_restarts))
    monkeypatch.setenv(elastic.AGENT_STORE_ENV, "False")


def train(recipe: Path, runs: Path, *extra: str):
    return runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs), "--device", "cpu", *extra])


def run_folders(runs: Path) -> list[Path]:
    return sorted(p for p in (runs / "tiny").iterdir() if p.is_dir())


def fail_in_second_epoch(recipe: Path, runs: Path, monkeypatch, *extra: str) -> Path:
    """A first attempt that stops in its second epoch, as a group torchrun then restarts; its run folder."""
    from bnnctl.train.loop import Trainer
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", interrupting_in_second_epoch(Trainer.train_epoch))
        result = train(recipe, runs, *extra)
    assert result.exit_code == 130, result.output
    (run,) = run_folders(runs)
    assert len(metrics(run)) == 1
    return run


def test_a_restart_continues_the_run_its_first_attempt_began(tiny_recipe, tmp_path, monkeypatch):
    expected = tmp_path / "straight"
    assert train(tiny_recipe, expected, "--run-id", "straight").exit_code == 0
    runs = tmp_path / "runs"
    torchrun_env(monkeypatch, "job-a", restart=0)
    run = fail_in_second_epoch(tiny_recipe, runs, monkeypatch)  # no --run-id: the run folder gets a fresh name
    assert (run / "checkpoint.pt").is_file()

    monkeypatch.setenv(elastic.RESTART_COUNT_ENV, "1")
    restarted = train(tiny_recipe, runs)
    assert restarted.exit_code == 0, restarted.output
    assert "restart 1 of torchrun job job-a: continuing" in " ".join(restarted.output.split())
    assert run_folders(runs) == [run]
    assert metrics(run) == metrics(expected / "tiny" / "straight")  # to the bit
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "finished" and [r["after_epoch"] for r in record["resumes"]] == [1]

    # A new job, or a first attempt of the same one, starts a run of its own.
    monkeypatch.setenv(elastic.RESTART_COUNT_ENV, "0")
    assert train(tiny_recipe, runs).exit_code == 0
    assert len(run_folders(runs)) == 2


def test_a_restart_before_the_first_checkpoint_starts_over(tiny_recipe, tmp_path, monkeypatch):
    every_second = ("--set", "train.checkpoint_every=2")
    expected = tmp_path / "straight"
    assert train(tiny_recipe, expected, "--run-id", "straight", *every_second).exit_code == 0
    runs = tmp_path / "runs"
    torchrun_env(monkeypatch, "job-b", restart=0)
    run = fail_in_second_epoch(tiny_recipe, runs, monkeypatch, "--run-id", "r", *every_second)
    assert not (run / "checkpoint.pt").exists() and (run / "best.pt").is_file()

    monkeypatch.setenv(elastic.RESTART_COUNT_ENV, "1")
    restarted = train(tiny_recipe, runs, "--run-id", "r", *every_second)
    assert restarted.exit_code == 0, restarted.output
    assert "holds no checkpoint yet; the run starts over in it" in " ".join(restarted.output.split())
    assert run_folders(runs) == [run]  # not r-2
    assert metrics(run) == metrics(expected / "tiny" / "straight")
    assert json.loads((run / "result.json").read_text())["resumes"] == []


def test_a_restart_whose_recipe_changed_is_refused(tiny_recipe, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    torchrun_env(monkeypatch, "job-c", restart=0)
    run = fail_in_second_epoch(tiny_recipe, runs, monkeypatch)
    monkeypatch.setenv(elastic.RESTART_COUNT_ENV, "1")
    changed = train(tiny_recipe, runs, "--set", "optimizer.lr=0.1")
    assert changed.exit_code == 2 and "holds another recipe" in changed.output
    assert f"--resume {run}" in " ".join(changed.output.split())


def test_a_damaged_job_note_is_refused(tiny_recipe, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    torchrun_env(monkeypatch, "job-d", restart=1)
    note = elastic.job_file(runs, "tiny")
    note.parent.mkdir(parents=True)
    note.write_text('{"job": "job-d", "run_id": "../../elsewhere"}')
    result = train(tiny_recipe, runs)
    assert result.exit_code == 2 and "must be one folder name" in result.output
    note.write_text("not json")
    result = train(tiny_recipe, runs)
    assert result.exit_code == 2 and "is not the note of torchrun job 'job-d'" in " ".join(result.output.split())


def test_restarts_through_the_store_torchrun_keeps_are_refused(monkeypatch):
    torchrun_env(monkeypatch, "job-e", restart=0)
    monkeypatch.setenv(elastic.AGENT_STORE_ENV, "True")
    monkeypatch.delenv(distributed.FRESH_STORE_ENV, raising=False)
    with pytest.raises(UserError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        elastic.check_store()
    monkeypatch.setenv(distributed.FRESH_STORE_ENV, "1")
    elastic.check_store()
    monkeypatch.delenv(distributed.FRESH_STORE_ENV)
    monkeypatch.setenv(elastic.MAX_RESTARTS_ENV, "0")  # nothing restarts: the shared store is fine
    elastic.check_store()


def test_max_restarts_goes_to_torchrun(tiny_recipe, monkeypatch):
    launched = {}

    class Launched:
        def __init__(self, cmd, env):
            launched.update(cmd=cmd, env=env)

        def wait(self):
            return 0

    monkeypatch.setattr(distributed.subprocess, "Popen", Launched)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = runner.invoke(app, ["train", str(tiny_recipe), "--nproc", "2", "--max-restarts", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cmd = launched["cmd"]
    assert "--max-restarts=3" in cmd and launched["env"][distributed.FRESH_STORE_ENV] == "1"
    workers = cmd[cmd.index("bnnctl"):]
    assert "--max-restarts" not in " ".join(workers) and "--nproc" not in workers

    alone = runner.invoke(app, ["train", str(tiny_recipe), "--max-restarts", "2"])
    assert alone.exit_code == 2 and "give --nproc 2 or more" in alone.output
    negative = runner.invoke(app, ["train", str(tiny_recipe), "--nproc", "2", "--max-restarts", "-1"])
    assert negative.exit_code == 2 and "--max-restarts must be 0 or more" in negative.output


# ---------------------------------------------------------------------------- real processes, SIGKILL

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # see test_resume_with_two_processes_through_the_cli
DEADLINE_S = 240  # for each wait; the whole run takes about a minute on 2 loaded cores


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def workers(*roots: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers among the descendants of roots (read from /proc)."""
    found, stack = {}, list(roots)
    while stack:
        for pid in _children(stack.pop()):
            stack.append(pid)
            try:
                env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
            except OSError:
                continue
            if elastic.JOB_ENV in env and "RANK" in env:
                found[int(env["RANK"])] = pid
    return found


def wait_for(condition, procs: list[subprocess.Popen], what: str) -> None:
    deadline = time.time() + DEADLINE_S
    while not condition():
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a launcher ended (exit {[p.poll() for p in procs]}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_worker(rank: int, roots: list[int], procs: list[subprocess.Popen]) -> None:
    found = {}

    def two_workers() -> bool:
        found.update(workers(*roots))
        return len(found) == 2

    wait_for(two_workers, procs, "two workers")
    os.kill(found[rank], signal.SIGKILL)


def rows(run: Path) -> int:
    try:
        return len(metrics(run))
    except FileNotFoundError:
        return 0


def launch(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **ONE_THREAD, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(procs: list[subprocess.Popen], logs: list[Path]) -> str:
    """Wait for the launchers (killing their sessions past the deadline); their output."""
    try:
        for p in procs:
            p.wait(timeout=DEADLINE_S)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    return "\n".join(" ".join(log.read_text().split()) for log in logs)


@pytest.fixture(scope="module")
def slow_recipe(tmp_path_factory) -> Path:
    """The tiny recipe with epochs long enough (about a second on one thread) to be killed in, and an
    uninterrupted `--nproc 2` run of it: runs/tiny/straight."""
    root = tmp_path_factory.mktemp("elastic")
    write_tiny_recipe(root / "tiny.yaml", write_tiny_npz(root / "slow.npz", n_train=2100), hidden=64, epochs=5,
                      checkpoint_every=2)
    straight = subprocess.run([sys.executable, "-m", "bnnctl", "train", str(root / "tiny.yaml"), "--nproc", "2",
                               "--device", "cpu", "--runs-dir", str(root / "runs"), "--run-id", "straight"],
                              capture_output=True, text=True, timeout=DEADLINE_S, env={**os.environ, **ONE_THREAD})
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-3000:]
    return root / "tiny.yaml"


def assert_like_the_straight_run(run: Path, straight: Path, resumed_after: list[int]) -> None:
    assert metrics(run) == metrics(straight)  # every column but the times, to the bit
    assert {p.name for p in run.iterdir()} == RUN_FILES  # no temporary left behind
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "finished" and record["world_size"] == 2
    assert [r["after_epoch"] for r in record["resumes"]] == resumed_after


@pytest.mark.slow
def test_killed_workers_restart_and_end_with_the_uninterrupted_numbers(slow_recipe, tmp_path):
    """`--nproc 2 --max-restarts 2`: rank 1 killed before the first checkpoint (the run starts over in its
    folder), then rank 0 killed after it (the run resumes from epoch 2); the numbers of the straight run."""
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    run = runs / "tiny" / "k"
    proc = launch([sys.executable, "-m", "bnnctl", "train", str(slow_recipe), "--nproc", "2", "--max-restarts", "2",
                   "--device", "cpu", "--runs-dir", str(runs), "--run-id", "k"], {}, log)
    try:
        wait_for(lambda: rows(run) == 1, [proc], "the first epoch's record")
        assert not (run / "checkpoint.pt").exists()
        kill_worker(1, [proc.pid], [proc])
        wait_for(lambda: (run / "checkpoint.pt").exists() and rows(run) == 2, [proc], "the first checkpoint")
        assert rows(run) == 2  # the third epoch is under way
        kill_worker(0, [proc.pid], [proc])
    finally:
        output = finish([proc], [log])
    assert proc.returncode == 0, output[-3000:]
    assert "holds no checkpoint yet; the run starts over in it" in output
    assert "restart 2 of torchrun job" in output and f"continuing {run} after epoch 2" in output
    assert run_folders(runs) == [run]
    assert_like_the_straight_run(run, slow_recipe.parent / "runs" / "tiny" / "straight", [2])


@pytest.mark.slow
def test_two_nodes_on_this_machine_resume_after_a_killed_worker(slow_recipe, tmp_path):
    """Two torchrun agents meeting through c10d on 127.0.0.1, one process each, as two nodes would; the
    worker of the second is killed after the first checkpoint and both restart."""
    runs, port = tmp_path / "runs", free_port()
    run = runs / "tiny" / "n"
    node_cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "bnnctl-test",
                "--local-addr", "127.0.0.1", "--max-restarts", "1",
                "-m", "bnnctl", "train", str(slow_recipe), "--device", "cpu", "--runs-dir", str(runs), "--run-id", "n"]
    logs = [tmp_path / "node0.txt", tmp_path / "node1.txt"]
    nodes = [launch(node_cmd, {distributed.FRESH_STORE_ENV: "1"}, log) for log in logs]
    try:
        wait_for(lambda: (run / "checkpoint.pt").exists() and rows(run) == 2, nodes, "the first checkpoint")
        assert rows(run) == 2
        second = workers(nodes[1].pid)
        assert len(second) == 1
        os.kill(second.popitem()[1], signal.SIGKILL)
    finally:
        output = finish(nodes, logs)
    assert [n.returncode for n in nodes] == [0, 0], output[-3000:]
    assert "restart 1 of torchrun job bnnctl-test" in output and f"continuing {run} after epoch 2" in output
    assert run_folders(runs) == [run]  # one run, written by rank 0 alone
    assert_like_the_straight_run(run, slow_recipe.parent / "runs" / "tiny" / "straight", [2])
