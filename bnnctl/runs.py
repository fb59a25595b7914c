"""A run directory: its files, how they are written and read back, and where a run comes from.

A run lives in ``<runs_dir>/<recipe name>/<run id>/``:

* ``recipe.yaml``  the resolved recipe (every field), the run's single source of truth;
* ``metrics.csv``  one row per finished epoch;
* ``result.json``  the paper's protocol: test error at the best-validation epoch, plus
                    provenance (seed, commit, versions, hardware, wall time, status);
* ``checkpoint.pt`` everything needed to resume after the last finished epoch (git-ignored);
* ``best.pt``      the model at the best-validation epoch, what ``bnnctl eval`` reads.

Every file is written atomically (temporary file, then rename). Training, export, eval, bench
and report all read and write runs through this module; none of them imports the training loop.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import shlex
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .core.models import build_model
from .errors import DamagedFile, EnvironmentFailure, RunBusy, UserError
from .recipe import resolve

RECIPE_FILE, METRICS_FILE, RESULT_FILE = "recipe.yaml", "metrics.csv", "result.json"
# A --nproc relaunch hands each worker the user's own command line through this variable.
COMMAND_ENV = "BNNCTL_COMMAND"
CHECKPOINT_FILE, BEST_FILE = "checkpoint.pt", "best.pt"

CHECKPOINT_FORMAT = "bnnctl-checkpoint"
MODEL_FORMAT = "bnnctl-model"
RESULT_FORMAT = "bnnctl-result"
# Version 2 files carry a checksum; version 1 files (written before) are read without one.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# A temporary file is .<name>.tmp<pid> beside its target until the rename.
TEMPORARY_GLOB = ".*.tmp*"


def _environment_failure(path: Path, e: OSError) -> EnvironmentFailure:
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
              errno.EROFS: "the folder is on a read-only file system", errno.EACCES: "permission was denied",
              errno.EPERM: "permission was denied", errno.ENOENT: "its folder no longer exists"}
    why = reason.get(e.errno, e.strerror or type(e).__name__)
    return EnvironmentFailure(f"could not write {path}: {why}.")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so that path is always whole; on failure the
    temporary is removed and the error is one sentence (EnvironmentFailure)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _environment_failure(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries an interrupted write left in folder (call with the folder's lock held)."""
    removed = []
    for tmp in folder.glob(TEMPORARY_GLOB):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------- checksummed files
#
# A torch file (checkpoint.pt, best.pt) is a zip archive; its end-of-central-directory record may
# carry a comment, which torch.load ignores. bnnctl writes "bnnctl-sha256:<hex>" there: the SHA-256
# of every byte before the comment's length field. torch.load still reads the file as it is.

_EOCD = b"PK\x05\x06"
_CHECKSUM_TAG = b"bnnctl-sha256:"


def _with_checksum(data: bytes) -> bytes:
    end = data.rfind(_EOCD)
    if end < 0 or len(data) - end != 22:  # torch writes no comment of its own
        raise ValueError("not a zip archive without a comment")
    body = data[:end + 20]
    comment = _CHECKSUM_TAG + hashlib.sha256(body).hexdigest().encode()
    return body + struct.pack("<H", len(comment)) + comment


def _verify_checksum(data: bytes, path: Path) -> bool:
    """True when data carries a checksum and it matches; False when it carries none (an older file)."""
    end = data.rfind(_EOCD)
    if end < 0 or len(data) < end + 22:
        raise DamagedFile(f"{path} is not a readable bnnctl file: it is no complete torch archive (cut short, "
                          f"damaged, or another kind of file).")
    (length,) = struct.unpack("<H", data[end + 20:end + 22])
    comment = data[end + 22:]
    if length == 0 and not comment:
        return False
    if len(comment) != length or not comment.startswith(_CHECKSUM_TAG):
        raise DamagedFile(f"{path} is damaged: its checksum record is cut or altered; delete it or restore it "
                          f"from a copy.")
    if hashlib.sha256(data[:end + 20]).hexdigest().encode() != comment[len(_CHECKSUM_TAG):]:
        raise DamagedFile(f"{path} is damaged: its content does not match its checksum; delete it or restore "
                          f"it from a copy.")
    return True


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save with a checksum (see above), written atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, _with_checksum(buffer.getvalue()))


def load_checkpoint(path: Path, expected: str) -> dict[str, Any]:
    """A checkpoint or model record bnnctl wrote, its checksum and format verified; else one sentence."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {expected} file.")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or type(e).__name__}).") from None
    checked = _verify_checksum(data, path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a broken file is the user's to replace
        raise DamagedFile(f"{path} is not a readable bnnctl file ({type(e).__name__}); delete it or restore it "
                          f"from a copy.") from None
    if not isinstance(state, dict) or state.get("format") != expected:
        raise UserError(f"{path} is not a {expected} file.")
    version = state.get("version")
    if version not in READABLE_VERSIONS:
        raise UserError(f"{path} has format version {version}; this bnnctl reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}.")
    if version >= 2 and not checked:
        raise DamagedFile(f"{path} is damaged: a version {version} file must carry a checksum and this one has "
                          f"none; delete it or restore it from a copy.")
    return state


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


def write_result(path: Path, result: dict[str, Any]) -> None:
    """result.json with its format, version and the SHA-256 of its fields (over their sorted JSON).

    A record that fails ``check_result`` is never written as finished: it is written as 'invalid'
    with the problem, and the error raised.
    """
    problem = check_result(result)
    if problem is not None and result.get("status") == "finished":
        result = {**result, "status": "invalid", "problem": problem}
    fields = {k: v for k, v in result.items() if k != "sha256"}
    fields.update(format=RESULT_FORMAT, version=FORMAT_VERSION)
    atomic_write_text(path, json.dumps({**fields, "sha256": _result_digest(fields)}, indent=2) + "\n")
    if problem is not None and fields["status"] == "invalid":
        raise UserError(f"the run's result is not valid ({problem}); {path} records it as invalid.")


def read_result(path: Path) -> dict[str, Any]:
    """A result.json, verified when it carries a checksum (older records carry none)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(f"{path} is not readable JSON ({type(e).__name__}); restore it from a copy.") from None
    if not isinstance(data, dict):
        raise DamagedFile(f"{path} is not a result record.")
    if "sha256" in data:
        fields = {k: v for k, v in data.items() if k != "sha256"}
        if _result_digest(fields) != data["sha256"]:
            raise DamagedFile(f"{path} does not match its checksum: it was altered or damaged after bnnctl "
                              f"wrote it.")
    return data


# ---------------------------------------------------------------------------- run folders

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(value: str, what: str) -> str:
    """A recipe name or run id is one plain folder name: it cannot climb out of --runs-dir."""
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
            raise _environment_failure(self.path, e) from None
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


def git_commit() -> str:
    """HEAD of the repository bnnctl runs from, with '+dirty' when tracked files differ.

    $BNNCTL_COMMIT wins: a copy of the tree without its git history (a lent GPU machine) is told
    its commit by whoever copied it there.
    """
    if os.environ.get("BNNCTL_COMMIT"):
        return os.environ["BNNCTL_COMMIT"]
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = head.stdout.strip()
    if head.returncode != 0 or not sha:
        return "unknown"
    return sha + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


_invocation: list[str] | None = None


def set_invocation(args: list[str]) -> None:
    """The arguments bnnctl's command line was called with (the CLI records them as it starts)."""
    global _invocation
    _invocation = list(args)


def invocation() -> list[str]:
    """The arguments of this bnnctl invocation, as given (sys.argv's when the CLI did not record any)."""
    return list(_invocation) if _invocation is not None else sys.argv[1:]


def command_line() -> str:
    """The command that started this run, as the user typed it; every record names it this one way.

    Outside bnnctl's command line (a script calling the library) it is that script's command.
    """
    if os.environ.get(COMMAND_ENV):
        return os.environ[COMMAND_ENV]
    started_as_bnnctl = Path(sys.argv[0]).name == "bnnctl" or Path(sys.argv[0]).parent.name == "bnnctl"
    if _invocation is None and not started_as_bnnctl:
        return shlex.join([Path(sys.executable).name, *sys.argv])
    return shlex.join(["bnnctl", *invocation()])


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "bnnctl": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "device": str(device), "hardware": hardware(device),
        "commit": git_commit(),
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU on this machine.")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}.")
    return torch.device(name)


def new_run_dir(runs_dir: Path, name: str, seed: int, run_id: str | None) -> Path:
    """A fresh folder runs_dir/name/run_id (run_id-2, -3, ... when taken); both names checked."""
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
        path.mkdir(parents=True)
    except OSError as e:
        raise _environment_failure(path, e) from None
    return path


def load_model(run: Path) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """(model record, model in eval mode on the CPU, recorded result or {}) of a run dir or best.pt."""
    path = run / BEST_FILE if run.is_dir() else run
    record = load_checkpoint(path, MODEL_FORMAT)
    recipe = resolve(record["recipe"], str(path))
    model = build_model(recipe.model, tuple(record["input_shape"]), record["num_classes"])
    model.load_state_dict(record["model"])
    model.eval()
    result_path = path.parent / RESULT_FILE
    recorded = read_result(result_path) if result_path.is_file() else {}
    return record, model, recorded


