"""Errors meant for users: the CLI prints their one-sentence message and exits with ``exit_code``.

Exit codes (the README lists them with what each failure leaves behind):
  2  bad input: a recipe, option, data file or run folder bnnctl cannot use, or a damaged file;
  3  the training loss became NaN or infinite (the run is kept as it was after its last good epoch);
  4  the environment failed: a full disk, a read-only or vanished folder, no memory;
  5  another bnnctl process is training in that run folder;
  130  interrupted (Ctrl-C or SIGTERM; the run is recorded as interrupted and resumes from its last checkpoint).
"""

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_ENVIRONMENT = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130


class UserError(Exception):
    exit_code = EXIT_BAD_INPUT


class DamagedFile(UserError):
    """A file bnnctl wrote fails its checksum or format check when read back."""


class EnvironmentFailure(UserError):
    """The machine, not the input, stopped the work: a full disk, a read-only folder, no memory."""

    exit_code = EXIT_ENVIRONMENT


class RunBusy(UserError):
    """Another process holds the run folder's lock."""

    exit_code = EXIT_BUSY
