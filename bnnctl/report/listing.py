"""``bnnctl runs``: every run under the given folders, a line each, judged as the report judges it."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .records import Notes, Run, find_runs, fmt, judge_runs, load_recipes


def verdict(run: Run) -> str:
    """'faithful', or 'modified:' and the keys in which the run differs from its shipped recipe."""
    if run.faithful:
        return "faithful"
    keys = [d.split(":", 1)[0] for d in run.differences]
    return "modified: " + ", ".join(keys)


def runs_tables(folders: list[Path]) -> tuple[list[Table], Notes]:
    """Per folder, a table of its runs (status, epochs, best-validation and test error, faithful to the shipped
    recipe or the keys in which it differs), and the files that could not be read."""
    notes = Notes()
    recipes, _ = load_recipes(None, notes)
    tables = []
    for folder in folders:
        runs = find_runs(folder, notes, exclude=[folder / "bench", folder / "report"])
        judge_runs(runs, recipes)
        table = Table(title=f"runs in {folder}/", title_justify="left")
        for column in ("run", "status", "epochs", "valid %", "test %", "shipped recipe"):
            table.add_column(column, overflow="fold")
        for run in runs:
            table.add_row(run.rel, run.get("status"), f"{run.get('epochs_run')}/{run.get('epochs_planned')}",
                          fmt(run.get("best_valid_error_pct")), fmt(run.get("test_error_pct")), verdict(run))
        tables.append(table)
    return tables, notes
