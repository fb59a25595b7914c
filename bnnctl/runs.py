"""A run folder: its files and their formats, the result record's schema, and the lock.

A run lives in ``<runs_dir>/<recipe name>/<run id>/``:

* ``recipe.yaml``  the resolved recipe (every field), the run's single source of truth;
* ``metrics.csv``  one row per finished epoch;
* ``result.json``  the paper's protocol: test error at the best-validation epoch, plus
                    provenance (seed, commit, versions, hardware, wall time, status), the run's
                    random uid and the SHA-256 of ``metrics.csv`` as written with it;
* ``checkpoint.pt`` everything needed to resume after the last finished epoch (git-ignored);
* ``best.pt``      the model at the best-validation epoch, what ``bnnctl eval`` reads.

Every file is written atomically and checksummed (``bnnctl.files``); the checkpoints are read back
through ``bnnctl.checkpoints``. The checkpoints carry their run's identity (``RUN_IDENTITY``: the
folder's name, the uid in result.json and the recipe's experiment digest), so that a file of another
run is refused where this one's is expected. Training, export, eval, bench and report all find a
run's files through this module; none of them imports the training loop.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .errors import DamagedFile, RunBusy, UserError
from .files import atomic_write_text, environment_failure
from .recipe import FAST_PRESETS, Recipe, load_recipe

RECIPE_FILE, METRICS_FILE, RESULT_FILE = "recipe.yaml", "metrics.csv", "result.json"
CHECKPOINT_FILE, BEST_FILE = "checkpoint.pt", "best.pt"

CHECKPOINT_FORMAT = "bnnctl-checkpoint"
MODEL_FORMAT = "bnnctl-model"
RESULT_FORMAT = "bnnctl-result"
# Version 2 torch files carry a checksum; version 1 files are read without one.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# result.json: version 2 carries a checksum, version 3 also the run's uid and metrics.csv's SHA-256;
# records written before versions (no format, version or checksum) are read as they are.
RESULT_VERSION = 3
READABLE_RESULT_VERSIONS = (2, 3)
# Fields only a versioned, checksummed result.json has: a record holding one without a checksum lost it.
CHECKSUMMED_RESULT_FIELDS = ("format", "version", "sha256", "experiment_sha256", "run_uid", "metrics_sha256")
# The key of a checkpoint or model record holding its run's identity: {"id", "uid", "experiment_sha256"}.
RUN_IDENTITY = "run"
TENSORBOARD_DIR = "tensorboard"  # a run's TensorBoard event files, with --tensorboard


# ---------------------------------------------------------------------------- result.json

def _result_digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# The fields of result.json that its readers rely on -> (check, what it must be); the training loop
# writes them, the report reads them, both through this table.
RESULT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "recipe": (lambda v: isinstance(v, str) and v != "", "a recipe name"),
    "status": (lambda v: isinstance(v, str) and v != "", "a status"),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name"),
    "variant": (lambda v: isinstance(v, str) and v != "", "a dataset variant"),
    "paper": (lambda v: isinstance(v, dict), "a mapping {table, row, test_error}"),
    "epochs_run": (is_count, "a count of epochs"),
    "epochs_planned": (lambda v: is_count(v) and v > 0, "a positive count of epochs"),
    "best_epoch": (lambda v: v is None or is_count(v), "an epoch or null"),
    "best_valid_error_pct": (lambda v: v is None or is_number(v), "a number or null"),
    "test_error_pct": (lambda v: v is None or is_number(v), "a number or null"),
}


def check_result(data: dict[str, Any]) -> str | None:
    """The first problem of a result.json for the report, or None."""
    for key, (ok, what) in RESULT_FIELDS.items():
        if key not in data:
            return f"has no '{key}'"
        if not ok(data[key]):
            return f"'{key}' is {data[key]!r}, not {what}"
    if data["epochs_run"] > 0 and data["test_error_pct"] is None:
        return f"records {data['epochs_run']} epochs but no test error"
    return None


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file's bytes, None when there is no such file."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or type(e).__name__}).") from None


def write_result(path: Path, result: dict[str, Any]) -> None:
    """result.json with its format, version, the SHA-256 of the metrics.csv beside it as it is now (write
    that first), and the SHA-256 of its fields (over their sorted JSON).

    A record that fails ``check_result`` is never written as finished: it is written as 'invalid'
    with the problem, and the error raised.
    """
    problem = check_result(result)
    if problem is not None and result.get("status") == "finished":
        result = {**result, "status": "invalid", "problem": problem}
    fields = {k: v for k, v in result.items() if k != "sha256"}
    fields.update(format=RESULT_FORMAT, version=RESULT_VERSION,
                  metrics_sha256=file_sha256(path.parent / METRICS_FILE))
    atomic_write_text(path, json.dumps({**fields, "sha256": _result_digest(fields)}, indent=2) + "\n")
    if problem is not None and fields["status"] == "invalid":
        raise UserError(f"the run's result is not valid ({problem}); {path} records it as invalid.")


def read_result(path: Path) -> dict[str, Any]:
    """A result.json, verified against its checksum; records from before checksums are read as they are, but a
    record of a checksummed version (or with fields only those have) without one is refused."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(f"{path} is not readable JSON ({type(e).__name__}); restore it from a copy.") from None
    if not isinstance(data, dict):
        raise DamagedFile(f"{path} is not a result record.")
    versioned = [key for key in CHECKSUMMED_RESULT_FIELDS if key in data]
    if versioned and "sha256" not in data:
        raise DamagedFile(f"{path} has no checksum although its '{versioned[0]}' field belongs to a checksummed "
                          f"record: it was altered after bnnctl wrote it; restore it from a copy.")
    if versioned and (data.get("format") != RESULT_FORMAT or data.get("version") not in READABLE_RESULT_VERSIONS):
        raise DamagedFile(f"{path} is not a result record this bnnctl reads (format {data.get('format')!r}, version "
                          f"{data.get('version')!r}).")
    if "sha256" in data:
        fields = {k: v for k, v in data.items() if k != "sha256"}
        if _result_digest(fields) != data["sha256"]:
            raise DamagedFile(f"{path} does not match its checksum: it was altered or damaged after bnnctl "
                              f"wrote it.")
    if data.get("version", 0) >= 3 and "metrics_sha256" not in data:
        raise DamagedFile(f"{path} is a version {data['version']} result record without the checksum of its "
                          f"{METRICS_FILE}, which every such record carries; restore it from a copy.")
    return data


def check_metrics(run_dir: Path, result: dict[str, Any]) -> None:
    """metrics.csv against the SHA-256 its result.json records (version 3 records); one sentence when it is not
    the file written with that record. Older records cover no metrics.csv."""
    if "metrics_sha256" not in result:
        return
    path, recorded = run_dir / METRICS_FILE, result["metrics_sha256"]
    actual = file_sha256(path)
    if actual == recorded:
        return
    if recorded is None:
        raise DamagedFile(f"{path} is not the run's: its {RESULT_FILE} was written when the run had no {METRICS_FILE}.")
    if actual is None:
        raise DamagedFile(f"{path} is missing; its {RESULT_FILE} records one: restore it from a copy.")
    raise DamagedFile(f"{path} does not match the checksum its {RESULT_FILE} records: it was altered or damaged "
                      f"after bnnctl wrote it (or a write of the run was cut between the two files).")


# ---------------------------------------------------------------------------- run folders

MAX_NAME_CHARS = 128  # with the run id's "-2" suffix, well within a file system's 255 bytes per folder name
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{MAX_NAME_CHARS - 1}}}")


def check_name(value: str, what: str) -> str:
    """A recipe name or run id is one plain folder name: it cannot climb out of --runs-dir."""
    if isinstance(value, str) and len(value) > MAX_NAME_CHARS:
        raise UserError(f"{what} {value[:24]!r}... is {len(value):,} characters long, too long for a run's folder "
                        f"name (at most {MAX_NAME_CHARS}).")
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise UserError(f"{what} {value!r} must be one folder name of letters, digits and . _ + - (starting with "
                        f"a letter or digit), so that the run stays inside --runs-dir.")
    return value


class RunLock:
    """An exclusive lock on a run folder while a process trains in it (released when the process ends)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.handle = None

    def acquire(self) -> "RunLock":
        try:
            self.handle = open(self.path, "a+")
        except OSError as e:
            raise environment_failure(self.path, e) from None
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            self.handle = None
            raise RunBusy(f"another bnnctl process is training in {self.path.parent}; wait for it to end, or "
                          f"stop it first.") from None
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def free_run_dir(runs_dir: Path, name: str, seed: int, run_id: str | None) -> Path:
    """The folder a run started now gets: runs_dir/name/run_id (default: date-time and seed), or run_id-2, -3,
    ... where that is taken; both names checked. Nothing is created."""
    check_name(name, "the recipe name")
    if run_id is not None:
        check_name(run_id, "--run-id")
    base = runs_dir / name
    run_id = run_id or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-s{seed}"
    path, i = base / run_id, 1
    try:
        while path.exists():
            i += 1
            path = base / f"{run_id}-{i}"
    except OSError as e:
        raise environment_failure(path, e) from None
    return path


def new_run_dir(runs_dir: Path, name: str, seed: int, run_id: str | None) -> Path:
    """A fresh folder ``free_run_dir`` names, created."""
    path = free_run_dir(runs_dir, name, seed, run_id)
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise environment_failure(path, e) from None
    return path


def recipe_for_run(recipe: Path, overrides: list[str], seed: int | None, fast: bool, device_type: str,
                   run_id: str | None) -> Recipe:
    """The recipe a new run trains: the file, then --fast's switches for the device, then --set, then --seed;
    its name and ``run_id`` checked as folder names."""
    preset = FAST_PRESETS["cuda" if device_type == "cuda" else "cpu"] if fast else []
    cfg = load_recipe(recipe, preset + (overrides or []) + ([f"seed={seed}"] if seed is not None else []))
    check_name(cfg.name, "the recipe name")
    if run_id is not None:
        check_name(run_id, "--run-id")
    return cfg
