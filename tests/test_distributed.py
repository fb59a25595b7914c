"""Two processes on the CPU (gloo): one run, written once, resumable, and equal to one process with sync BN."""
import copy
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from bnnctl.cli import app
from bnnctl.train.distributed import CrossRankBatchNorm, Ranks, rank_seed, relaunch
from bnnctl.errors import UserError
from tests.conftest import write_tiny_npz, write_tiny_recipe

NO_DROPOUT = ["model.dropout_in=0", "model.dropout_hidden=0", "model.bias=false"]  # bias: see test_fast_path
RUN_FILES = {"recipe.yaml", "metrics.csv", "result.json", "checkpoint.pt", "best.pt", ".lock"}  # .lock: the run folder's lock file, kept for the next trainer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(fh)]


def interrupting_in_second_epoch(train_epoch):
    """Trainer.train_epoch as if Ctrl-C came at the start of the second epoch."""
    def interrupted(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(self, progress)
    return interrupted


def _check_cross_rank_batch_norm(rank: int) -> None:
    """Each rank holds half the batch; outputs, gradients and running statistics are the whole batch's."""
    torch.manual_seed(0)
    x, w = torch.randn(8, 6, 3, 3), torch.randn(8, 6, 3, 3)
    reference = nn.BatchNorm2d(6, eps=1e-4, momentum=0.1)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    synced = CrossRankBatchNorm.convert(nn.Sequential(copy.deepcopy(reference)))[0]
    assert isinstance(synced, CrossRankBatchNorm)
    whole = x.clone().requires_grad_()
    expected = reference(whole)
    (expected * w).sum().backward()
    half = slice(4 * rank, 4 * rank + 4)
    mine = x[half].clone().requires_grad_()
    out = synced(mine)
    (out * w[half]).sum().backward()
    for p in (synced.weight, synced.bias):
        dist.all_reduce(p.grad)  # what DDP does (it also divides by 2, as the loss is then a mean)
    torch.testing.assert_close(out, expected[half])
    torch.testing.assert_close(synced.running_mean, reference.running_mean)
    torch.testing.assert_close(synced.running_var, reference.running_var)
    torch.testing.assert_close(mine.grad, whole.grad[half])
    torch.testing.assert_close(synced.weight.grad, reference.weight.grad)
    torch.testing.assert_close(synced.bias.grad, reference.bias.grad)
    assert int(synced.num_batches_tracked) == 1


def _two_rank_worker(rank: int, recipe: str, runs: str, ports: list[int]) -> None:
    """Rank ``rank`` of the runs the tests below inspect; every run_training call is one torchrun launch."""
    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS=1: the CLI resume must match to the bit
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    from bnnctl.train.loop import Trainer, run_training

    def train(port: int, run_id: str | None, overrides: list[str] = (), resume: Path | None = None) -> None:
        os.environ["MASTER_PORT"] = str(port)
        run_training(recipe=Path(recipe), overrides=list(overrides), device="cpu", data_dir=None,
                     runs_dir=Path(runs), resume=resume, seed=None, run_id=run_id, console=Console(quiet=True))

    train(ports[0], "straight")
    # The global RNG after training: equal on both ranks only if they shared a dropout seed.
    torch.save(torch.rand(4), Path(runs) / f"rng-after-{rank}.pt")

    original = Trainer.train_epoch
    Trainer.train_epoch = interrupting_in_second_epoch(original)
    try:
        train(ports[1], "interrupted")
    except SystemExit as e:
        assert e.code == 130
    else:
        raise AssertionError("the run was not interrupted")
    finally:
        Trainer.train_epoch = original

    train(ports[2], "sync_bn", NO_DROPOUT + ["fast.sync_bn=true"])
    train(ports[4], None, resume=Path(runs) / "tiny" / "solo")  # a one-process run, taken over by two

    os.environ["MASTER_PORT"] = str(ports[3])
    dist.init_process_group("gloo")
    try:
        _check_cross_rank_batch_norm(rank)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> Path:
    """Runs of the tiny recipe by two processes: straight, interrupted after epoch 1, and with sync BN."""
    root = tmp_path_factory.mktemp("distributed")
    write_tiny_recipe(root / "tiny.yaml", write_tiny_npz(root / "tiny.npz"))
    runs = root / "runs"
    runs.mkdir()
    from bnnctl.train.loop import Trainer
    original = Trainer.train_epoch
    Trainer.train_epoch = interrupting_in_second_epoch(original)
    try:
        solo = CliRunner().invoke(app, ["train", str(root / "tiny.yaml"), "--runs-dir", str(runs), "--device", "cpu",
                                        "--run-id", "solo"])
    finally:
        Trainer.train_epoch = original
    assert solo.exit_code == 130, solo.output
    mp.spawn(_two_rank_worker, args=(str(root / "tiny.yaml"), str(runs), [free_port() for _ in range(5)]),
             nprocs=2, join=True)
    return root


def test_two_processes_write_one_run(two_rank_runs):
    runs = two_rank_runs / "runs" / "tiny"
    assert {p.name for p in runs.iterdir()} == {"straight", "interrupted", "sync_bn", "solo"}  # rank 1 made none
    run = runs / "straight"
    assert {p.name for p in run.iterdir()} == RUN_FILES  # and no temporary file was left behind
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "finished" and record["world_size"] == 2 and record["epochs_run"] == 3
    assert record["hardware"].startswith("2 x ")
    rows = metrics(run)
    assert len(rows) == 3 and all(0 <= r["test_error_pct"] <= 100 and r["train_loss"] > 0 for r in rows)
    assert record["test_error_pct"] < 50  # the tiny task is learnable
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["rng_ranks"]) == 2 and checkpoint["epoch"] == 3


def test_two_processes_take_over_a_one_process_run(two_rank_runs):
    """A checkpoint of one process resumed by two: the data order goes on, each rank seeds its dropout afresh."""
    run = two_rank_runs / "runs" / "tiny" / "solo"
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "finished" and record["world_size"] == 2 and len(metrics(run)) == 3
    assert len(torch.load(run / "checkpoint.pt", weights_only=False)["rng_ranks"]) == 2


def test_ranks_draw_their_own_dropout(two_rank_runs):
    runs = two_rank_runs / "runs"
    assert not torch.equal(torch.load(runs / "rng-after-0.pt"), torch.load(runs / "rng-after-1.pt"))
    assert len({rank_seed(0, 0), rank_seed(0, 1), rank_seed(1, 0)}) == 3


def test_resume_with_two_processes_through_the_cli(two_rank_runs, tmp_path):
    """`bnnctl train --resume RUN --nproc 2` finishes the interrupted run with the straight run's numbers."""
    run = two_rank_runs / "runs" / "tiny" / "interrupted"
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert len(metrics(run)) == 1

    # One process can take over a run of two: the data order goes on, dropout restarts its stream.
    alone = shutil.copytree(run, tmp_path / "alone")
    resumed = CliRunner().invoke(app, ["train", str(alone / "recipe.yaml"), "--resume", str(alone), "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((alone / "result.json").read_text())
    assert record["status"] == "finished" and record["world_size"] == 1 and len(metrics(alone)) == 3
    assert metrics(alone)[0] == metrics(run)[0]
    # The straight run's ranks had one thread each, as torchrun gives its workers when OMP_NUM_THREADS is unset; a
    # caller's OMP_NUM_THREADS=2 would reach these workers and round the sums otherwise.
    resumed = subprocess.run([sys.executable, "-m", "bnnctl", "train", str(run / "recipe.yaml"), "--resume", str(run),
                              "--nproc", "2", "--device", "cpu"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(run) == metrics(two_rank_runs / "runs" / "tiny" / "straight")
    assert json.loads((run / "result.json").read_text())["status"] == "finished"


def test_sync_bn_two_processes_take_the_one_process_steps(two_rank_runs, tmp_path):
    """Half of each global batch per rank, sync BN, averaged gradients: the one-process run, to rounding."""
    one = tmp_path / "one"
    result = CliRunner().invoke(app, ["train", str(two_rank_runs / "tiny.yaml"), "--runs-dir", str(one),
                                      "--device", "cpu", "--run-id", "one",
                                      *[a for item in NO_DROPOUT for a in ("--set", item)]])
    assert result.exit_code == 0, result.output
    two = two_rank_runs / "runs" / "tiny" / "sync_bn"
    for a, b in zip(metrics(one / "tiny" / "one"), metrics(two)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    state_one = torch.load(one / "tiny" / "one" / "checkpoint.pt", weights_only=False)["model"]
    state_two = torch.load(two / "checkpoint.pt", weights_only=False)["model"]
    assert state_one.keys() == state_two.keys()
    for key in state_one:
        torch.testing.assert_close(state_one[key], state_two[key], atol=1e-4, rtol=1e-4, msg=key)


def test_batch_must_split_evenly(tiny_recipe, tmp_path):
    from bnnctl.data import load_splits
    from bnnctl.recipe import load_recipe
    from bnnctl.train.loop import Trainer

    cfg = load_recipe(tiny_recipe)
    with pytest.raises(UserError, match="does not split evenly across 3 processes"):
        Trainer(cfg, load_splits(cfg.data), torch.device("cpu"), tmp_path, Console(quiet=True), "t", Ranks(0, 3))


def test_nproc_inside_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="already started by torchrun"):
        relaunch(2, ["train", "x.yaml"], "bnnctl train x.yaml --nproc 2")


def test_shard_covers_every_item_once():
    for n in (0, 1, 7, 100):
        for world in (1, 2, 3):
            parts = [list(range(n))[Ranks(r, world).shard(n)] for r in range(world)]
            assert sum(parts, []) == list(range(n))
