"""Restarts under torchrun: the run a restarted group of workers continues by itself.

With ``--max-restarts N`` (torchrun's, or ``bnnctl train --nproc P --max-restarts N``) a worker that
dies (killed, out of memory, a lost node) makes torchrun stop the whole group and start it again,
the same command line on every rank. The restarted workers must continue the run the group began,
not start a second one:

* torchrun tells every worker its job (``TORCHELASTIC_RUN_ID``: a fresh id for each ``--standalone``
  launch, the ``--rdzv-id`` across nodes) and how often its own agent has restarted it
  (``TORCHELASTIC_RESTART_COUNT``). An agent whose workers were healthy restarts them with its count
  unchanged when another node's failed, so a group is a restart when any rank's count is above zero;
* rank 0 of the first attempt, as it creates the run folder, notes the folder's name in a small job
  file beside it (``<runs_dir>/<recipe name>/.torchrun-<digest of the job id>.json``);
* rank 0 of a restart reads that note back. A folder with a checkpoint is resumed from it (the same
  numbers as a run that was never interrupted, on the CPU); a folder the first attempt left before
  its first checkpoint is emptied and the run starts over in it. The killed group's lock on the
  folder went with its processes.

Only rank 0 reads or writes these files; the others receive what it found by broadcast.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..checkpoints import load_run_checkpoint
from ..errors import DamagedFile, UserError
from ..faithful import all_differences
from ..files import atomic_write_text, remove_stale_temporaries
from ..recipe import Recipe, dump_recipe
from ..runs import (BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE, RESULT_FILE, RunLock,
                    check_name)
from . import distributed
from .distributed import FRESH_STORE_ENV, Ranks

JOB_ENV, RESTART_COUNT_ENV, MAX_RESTARTS_ENV = "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"
AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"


def restartable() -> bool:
    """Whether torchrun started this process and may start it again after a fault."""
    return JOB_ENV in os.environ and _env_count(MAX_RESTARTS_ENV) > 0


def check_store() -> None:
    """Refuse a restartable launch whose workers meet through the store torchrun keeps across restarts.

    By default torchrun's agent hosts that store and keeps it from one attempt to the next, and the
    process group of a restarted attempt can read the dead attempt's addresses from it and fail to
    connect (pytorch issue 135712). With TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 every attempt meets
    through a fresh one; ``bnnctl train --nproc N --max-restarts M`` sets it itself.
    """
    if restartable() and os.environ.get(AGENT_STORE_ENV) == "True" and os.environ.get(FRESH_STORE_ENV) != "1":
        raise UserError(f"torchrun may restart these processes (--max-restarts), but a restarted group cannot "
                        f"reliably connect through the store torchrun keeps; set {FRESH_STORE_ENV}=1 in the "
                        f"environment of every torchrun command.")


def _env_count(name: str) -> int:
    try:
        return max(int(os.environ.get(name, "0")), 0)
    except ValueError:
        return 0


def job_file(runs_dir: Path, recipe_name: str) -> Path:
    """Where this torchrun job notes the run folder its first attempt created."""
    digest = hashlib.sha256(os.environ[JOB_ENV].encode()).hexdigest()[:16]
    return runs_dir / recipe_name / f".torchrun-{digest}.json"


def note_run_dir(runs_dir: Path, recipe_name: str, run_dir: Path) -> None:
    """Rank 0, having created run_dir: let a restart of this job find it (nothing to note without restarts)."""
    if restartable():
        atomic_write_text(job_file(runs_dir, recipe_name),
                          json.dumps({"job": os.environ[JOB_ENV], "run_id": run_dir.name}) + "\n")


def _noted_run_dir(runs_dir: Path, recipe_name: str) -> Path | None:
    path = job_file(runs_dir, recipe_name)
    try:
        note = json.loads(path.read_text())
    except FileNotFoundError:
        return None  # the first attempt died before it created a run folder
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        note = None
    if not (isinstance(note, dict) and note.get("job") == os.environ[JOB_ENV] and isinstance(note.get("run_id"), str)):
        raise DamagedFile(f"{path} is not the note of torchrun job {os.environ[JOB_ENV]!r}; delete it and resume the "
                          f"run with --resume.")
    run_dir = runs_dir / recipe_name / check_name(note["run_id"], f"the run id noted in {path}")
    return run_dir if run_dir.is_dir() else None


@dataclass
class Restart:
    """The run a restarted group continues: its folder (locked by rank 0) and the checkpoint to resume from
    (None: the first attempt stopped before its first checkpoint, and the run starts over in the folder)."""

    run_dir: Path
    state: dict[str, Any] | None
    lock: RunLock | None


def _continued_state(run_dir: Path, cfg: Recipe, restart: str, console: Console) -> dict[str, Any] | None:
    """The checkpoint a restart resumes from, or None after emptying a folder that holds none yet (rank 0)."""
    remove_stale_temporaries(run_dir)
    if not (run_dir / CHECKPOINT_FILE).is_file():
        for name in (METRICS_FILE, RESULT_FILE, BEST_FILE):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        atomic_write_text(run_dir / RECIPE_FILE, dump_recipe(cfg))
        console.print(f"{restart}: {run_dir} holds no checkpoint yet; the run starts over in it.", highlight=False)
        return None
    state = load_run_checkpoint(run_dir)  # verified, and this run's own
    # The variant is what the data loader fills in; every other key must be the command's.
    found = [d for d in all_differences(cfg.to_dict(), state["recipe"]) if d.key != "data.variant"]
    if found:
        raise UserError(f"{run_dir}, the run this torchrun job began, now holds another recipe than the command's "
                        f"({'; '.join(d.describe('recorded') for d in found)}); resume it with: "
                        f"bnnctl train {run_dir / RECIPE_FILE} --resume {run_dir}")
    console.print(f"{restart}: continuing {run_dir} after epoch {state['epoch']}", highlight=False)
    return state


def find_restart(runs_dir: Path, cfg: Recipe, ranks: Ranks, console: Console) -> Restart | None:
    """On every rank: the run this group continues when torchrun restarted it, else None (a collective call)."""
    if not restartable():
        return None
    counts = distributed.gather_objects(_env_count(RESTART_COUNT_ENV), ranks)
    if max(counts) == 0:
        return None
    restart, lock = f"restart {max(counts)} of torchrun job {os.environ[JOB_ENV]}", None

    def pick_up() -> tuple[Path, dict[str, Any] | None] | None:
        nonlocal lock
        run_dir = _noted_run_dir(runs_dir, cfg.name)
        if run_dir is None:
            return None
        lock = RunLock(run_dir).acquire()
        return run_dir, _continued_state(run_dir, cfg, restart, console)

    try:
        found = distributed.on_main(ranks, pick_up)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return None if found is None else Restart(found[0], found[1], lock)
