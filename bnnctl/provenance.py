"""Where a record comes from: the commit, the command, the hardware and the device it ran on.

Every record bnnctl writes (a run's result, a bench, an export) names its origin through this
module, one way.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import UserError, did_you_mean

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: the command line records its invocation here before it
# parses its arguments, and ``bnnctl --help`` should not wait seconds for torch.

# A --nproc relaunch hands each worker the user's own command line through this variable.
COMMAND_ENV = "BNNCTL_COMMAND"


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
    """The GPU's name, or the CPU's model name and torch's thread count."""
    import torch
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
    """The versions, device, hardware and commit a record was made with."""
    import torch
    return {
        "bnnctl": __version__, "torch": str(torch.__version__), "cuda": torch.version.cuda,
        "python": platform.python_version(), "device": str(device), "hardware": hardware(device),
        "commit": git_commit(),
    }


DEVICES = ("auto", "cpu", "cuda")  # what --device takes (cuda also as cuda:N)


def resolve_device(name: str) -> torch.device:
    """The torch device for a --device option (auto: a CUDA GPU when torch sees one, else the CPU)."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU on this machine.")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}{did_you_mean(name, DEVICES)}")
    return torch.device(name)
