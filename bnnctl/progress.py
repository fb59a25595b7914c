"""Progress of long work on a terminal: a transient bar, and nothing at all where the output is a file or a
pipe (a log then holds the results only). Training, ``eval``, ``export`` and ``bench --model`` show it."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# advance(count=1, description=None, total=None): count more steps done, and where they changed, what is being
# done now and how many steps there are
Advance = Callable[..., None]


def progress_bar(console: Console | None, remaining: bool = False) -> Progress | None:
    """A transient bar (description, bar, done/total, time elapsed or, with ``remaining``, time left) on
    ``console`` where it is a terminal; None where it is not."""
    if console is None or not console.is_terminal:
        return None
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn() if remaining else TimeElapsedColumn(), console=console, transient=True)


@contextlib.contextmanager
def counting(console: Console | None, description: str, total: int | None) -> Iterator[Advance]:
    """Within: ``advance`` moves one bar of ``total`` steps (None: not known yet) on a terminal; elsewhere it
    does nothing."""
    bar = progress_bar(console)
    if bar is None:
        yield lambda count=1, description=None, total=None: None
        return
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda count=1, description=None, total=None: bar.update(task, advance=count, description=description,
                                                                       total=total)
