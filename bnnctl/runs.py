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
import io
import json
import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .core.models import build_model
from .errors import UserError
from .recipe import resolve

RECIPE_FILE, METRICS_FILE, RESULT_FILE = "recipe.yaml", "metrics.csv", "result.json"
CHECKPOINT_FILE, BEST_FILE = "checkpoint.pt", "best.pt"

CHECKPOINT_FORMAT = "bnnctl-checkpoint"
MODEL_FORMAT = "bnnctl-model"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
    base = runs_dir / name
    run_id = run_id or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-s{seed}"
    path, i = base / run_id, 1
    while path.exists():
        i += 1
        path = base / f"{run_id}-{i}"
    path.mkdir(parents=True)
    return path


def load_checkpoint(path: Path, expected: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a broken file is the user's to replace
        raise UserError(f"{path} is not a readable bnnctl file ({type(e).__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != expected:
        raise UserError(f"{path} is not a {expected} file.")
    if state.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {state.get('version')}; this bnnctl reads version {FORMAT_VERSION}.")
    return state


def load_model(run: Path) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """(model record, model in eval mode on the CPU, recorded result or {}) of a run dir or best.pt."""
    path = run / BEST_FILE if run.is_dir() else run
    record = load_checkpoint(path, MODEL_FORMAT)
    recipe = resolve(record["recipe"], str(path))
    model = build_model(recipe["model"], tuple(record["input_shape"]), record["num_classes"])
    model.load_state_dict(record["model"])
    model.eval()
    result_path = path.parent / RESULT_FILE
    recorded = json.loads(result_path.read_text()) if result_path.is_file() else {}
    return record, model, recorded


