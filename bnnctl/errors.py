"""Errors meant for users: the CLI prints their one-sentence message and exits with ``exit_code``.

Exit codes (the README lists them with what each failure leaves behind):
  2  bad input: a recipe, option, data file or run folder bnnctl cannot use, or a damaged file;
  3  the training loss became NaN or infinite (the run is kept as it was after its last good epoch);
  4  the environment failed: a full disk, a read-only or vanished folder, no memory;
  5  another bnnctl process is training in that run folder;
  130  interrupted (Ctrl-C or SIGTERM; the run is recorded as interrupted and resumes from its last checkpoint).
"""
from __future__ import annotations

import contextlib
import difflib
import re
from typing import Iterable

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_ENVIRONMENT = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130


class UserError(Exception):
    exit_code = EXIT_BAD_INPUT


def did_you_mean(word: object, choices: Iterable[object], otherwise: str = ".") -> str:
    """The end of a sentence about an unknown ``word``: "; did you mean 'name'?" with the choice closest to it
    (``difflib.get_close_matches``), or ``otherwise`` where none is close."""
    close = difflib.get_close_matches(str(word), [str(choice) for choice in choices], n=1)
    return suggestion(close[0] if close else None, otherwise)


def suggestion(close: str | None, otherwise: str = ".") -> str:
    """"; did you mean 'close'?", or ``otherwise`` where ``close`` is None."""
    return f"; did you mean {close!r}?" if close is not None else otherwise


class DamagedFile(UserError):
    """A file bnnctl wrote fails its checksum or format check when read back."""


class EnvironmentFailure(UserError):
    """The machine, not the input, stopped the work: a full disk, a read-only folder, no memory."""

    exit_code = EXIT_ENVIRONMENT


class RunBusy(UserError):
    """Another process holds the run folder's lock."""

    exit_code = EXIT_BUSY


# What the allocators say when they fail: torch's CPU allocator raises RuntimeError ("DefaultCPUAllocator:
# can't allocate memory", "not enough memory" on Windows), CUDA torch.cuda.OutOfMemoryError (a RuntimeError).
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory", re.IGNORECASE)
_TRIED = re.compile(r"tried to allocate (\d+) bytes|Tried to allocate ([\d.]+ [KMGT]?i?B)")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed for want of memory (host or device)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and bool(_OUT_OF_MEMORY.search(str(error).split("\n", 1)[0]))


def out_of_memory(error: BaseException, advice: str) -> EnvironmentFailure:
    """The one sentence for a failed allocation: which memory ran out, the size asked for where known, ``advice``."""
    where = "the GPU" if "cuda" in str(error).lower() or type(error).__name__ == "OutOfMemoryError" else "the machine"
    tried = _TRIED.search(str(error))
    asked = ""
    if tried and tried.group(1):
        size = int(tried.group(1))
        shown = f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.0f} MiB"
        asked = f" (an allocation of {shown} failed)"
    elif tried:
        asked = f" (an allocation of {tried.group(2)} failed)"
    return EnvironmentFailure(f"{where} ran out of memory{asked}; {advice}.")


@contextlib.contextmanager
def out_of_memory_as_failure(advice: str):
    """Within: a failed allocation becomes an ``EnvironmentFailure`` (exit 4) saying so, never a traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise out_of_memory(e, advice) from None
