"""Table 1 (test error per method and dataset), the summary that opens the report, and the list of runs.

A cell of Table 1 stands for a shipped recipe on the paper's dataset. It admits only *faithful*
runs (``faithful.py``: the run's recorded recipe equals the shipped one on every key that defines the
experiment) that went the recipe's whole schedule; several such runs of different seeds give the mean,
the standard deviation and n. Every other run is listed apart: a modified run with each key in which
it differs, an unfinished one with how far it got.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paper
from ..recipe import Recipe
from .records import Run, fmt, md_table, shipped_epochs, write_csv

SELECTION_RULE = (
    "A cell admits a run only when its recorded recipe equals the shipped recipe on every key that defines the "
    "experiment (keys such as the seed, the data path, the checkpoint interval and the fast switches that tests "
    "show give the plain step's numbers are left out; see `bnnctl/faithful.py`), on the original dataset, and "
    "the run finished the recipe's whole schedule. Each seed counts once (the first run of a seed by path); "
    "the cell shows the mean of those runs' test errors, ± their sample standard deviation, and n. Each run's "
    "test error is the one at its best-validation epoch (the paper's protocol); test error plays no part in "
    "choosing runs. Every run is listed in runs.csv.")


@dataclass
class Cell:
    row: str
    dataset: str
    runs: list[Run] = field(default_factory=list)        # counted: one faithful, complete run per seed
    replicates: list[Run] = field(default_factory=list)  # faithful, complete runs of a seed already counted
    unfinished: list[Run] = field(default_factory=list)  # faithful runs short of the schedule

    @property
    def errors(self) -> list[float]:
        return [r.get("test_error_pct") for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.errors) if self.runs else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.errors) if self.n >= 2 else None

    def value(self) -> str:
        """'1.50 (n=1)' or '1.52 ± 0.05 (n=3)'; 'not run' without a counted run."""
        if not self.runs:
            return "not run"
        spread = "" if self.std is None else f" ± {fmt(self.std)}"
        return f"{fmt(self.mean)}{spread} (n={self.n})"


def in_table1(run: Run) -> bool:
    """Whether a run's recipe reproduces one of the paper's Table 1 cells of the BNN rows."""
    p = run.get("paper")
    return (p.get("table") == "Table 1" and p.get("row") in paper.OUR_ROWS
            and run.get("dataset") in paper.TABLE1_DATASETS)


def complete(run: Run, recipes: dict[str, Recipe]) -> bool:
    """Finished, every epoch of the shipped recipe run, and a test error to show."""
    return (run.get("status") == "finished" and run.get("test_error_pct") is not None
            and run.get("epochs_run") == shipped_epochs(recipes, run.get("recipe")))


def table1_cells(runs: list[Run], recipes: dict[str, Recipe]) -> tuple[list[Cell], list[Run], list[Run]]:
    """(the cells of our rows, the modified runs of Table 1 recipes, the runs of no Table 1 cell)."""
    cells = {(row, d): Cell(row, d) for row in paper.OUR_ROWS for d in paper.TABLE1_DATASETS}
    modified, others = [], []
    for run in sorted(runs, key=lambda r: r.rel):
        if not in_table1(run):
            others.append(run)
        elif not run.faithful:
            modified.append(run)
        else:
            cell = cells[(run.get("paper")["row"], run.get("dataset"))]
            if not complete(run, recipes):
                cell.unfinished.append(run)
            elif any(r.get("seed") == run.get("seed") for r in cell.runs):
                cell.replicates.append(run)
            else:
                cell.runs.append(run)
    return list(cells.values()), modified, others


# ============================================================================ schedule: how much of the recipe ran

def _percent(done: int, full: int) -> str:
    """done / full as a percentage that never reads 100% for a run short of its schedule."""
    share = 100 * done / full
    if share >= 100:
        return f"{share:.0f}%"
    text = f"{share:.3g}"
    return ("99.9" if text == "100" else text) + "%"


def schedule(run: Run, recipes: dict[str, Recipe]) -> str:
    """The schedule column: 'full (200/200)' or '10% (20/200)', epochs run of the recipe's epochs."""
    done, full = run.get("epochs_run"), shipped_epochs(recipes, run.get("recipe"))
    if full is None:
        return f"{done} epochs (recipe not shipped)"
    return f"{'full' if done == full else _percent(done, full)} ({done}/{full})"


def schedule_words(run: Run, recipes: dict[str, Recipe]) -> str:
    """The schedule in a sentence, e.g. '20 of 1000 epochs (2%)' or 'full schedule (200 epochs)'."""
    done, full = run.get("epochs_run"), shipped_epochs(recipes, run.get("recipe"))
    if full is None:
        text = f"{done} epochs (its recipe is not shipped)"
    elif done == full:
        text = f"full schedule ({full} epochs)"
    elif done > full:
        text = f"{done} epochs, more than the recipe's {full}"
    else:
        text = f"{done} of {full} epochs ({_percent(done, full)})"
    status = run.get("status")
    return text if status == "finished" else f"{text}, {status}"


def _seeds(runs: list[Run]) -> str:
    seeds = [str(r.get("seed")) for r in runs]
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)


# ============================================================================ sections

def overview_section(cells: list[Cell], modified: list[Run], recipes: dict[str, Recipe]) -> str:
    """The report's opening: which Table 1 cells are reproduced by faithful runs, beside the paper."""
    done = [c for c in cells if c.runs]
    headline = ("Reproduced with the shipped recipe, on the paper's data and its full schedule: "
                + (", ".join(f"{c.row} on {paper.TABLE1_DATASETS[c.dataset]} (n={c.n})" for c in done)
                   if done else "none")
                + f" (of the {len(cells)} Table 1 cells of the BNN rows).")
    lines = [f"- {c.row} on {paper.TABLE1_DATASETS[c.dataset]}: **{c.value()}** test error % "
             f"({_seeds(c.runs)}; paper: {fmt(paper.table1_value(c.row, c.dataset))}%)." for c in done]
    parts = ["## Summary", headline]
    if lines:
        parts.append("Per reproduced cell, the mean test error of its runs (± the sample standard deviation where "
                     "there are several seeds) beside the paper's:\n\n" + "\n".join(lines))
    in_progress = [(c, r) for c in cells for r in c.unfinished]
    if in_progress:
        parts.append("Runs of a shipped recipe that have not finished its schedule (no cell counts them yet): "
                     + "; ".join(f"`{r.rel}` ({c.row} on {paper.TABLE1_DATASETS[c.dataset]}, "
                                 f"{schedule_words(r, recipes)})" for c, r in in_progress) + ".")
    missing = [c for c in cells if not c.runs]
    if missing:
        parts.append("No faithful run of the full schedule: "
                     + "; ".join(f"{c.row} on {paper.TABLE1_DATASETS[c.dataset]}" for c in missing) + ".")
    if modified:
        parts.append(f"{len(modified)} modified run{'s' if len(modified) != 1 else ''} of these recipes "
                     "(shortened, resized, or on a stand-in dataset) fill no cell; they are listed under "
                     "\"Modified runs\".")
    return "\n\n".join(parts)


def table1_section(cells: list[Cell], recipes: dict[str, Recipe], out: Path) -> str:
    header = ["row", "source", "dataset", "paper_test_error_pct", "ours_mean_test_error_pct", "ours_std_pct", "n",
              "seeds", "runs", "unfinished_runs", "replicate_runs"]
    rows: list[list[Any]] = []
    for c in cells:
        rows.append([c.row, "ours" if c.runs else "not run", c.dataset, fmt(paper.table1_value(c.row, c.dataset)),
                     fmt(c.mean, missing="not run"), fmt(c.std), c.n,
                     " ".join(str(r.get("seed")) for r in c.runs), " ".join(r.rel for r in c.runs),
                     " ".join(r.rel for r in c.unfinished), " ".join(r.rel for r in c.replicates)])
    for cited in paper.TABLE1:
        if cited.ours:
            continue
        for dataset in paper.TABLE1_DATASETS:
            rows.append([cited.method, "cited", dataset, cited.printed[dataset]] + [None] * 7)
    write_csv(out / "table1.csv", header, rows)

    # The paper's layout: methods down, datasets across; our rows show ours and the paper's value.
    wide = []
    for row in paper.OUR_ROWS:
        line = [f"**{row}** (ours / paper)"]
        for d in paper.TABLE1_DATASETS:
            cell = next(c for c in cells if c.row == row and c.dataset == d)
            line.append(f"{cell.value()} / {fmt(paper.table1_value(row, d))}")
        wide.append(line)
    for cited in paper.TABLE1:
        if not cited.ours:
            wide.append([f"{cited.method} (cited)"] + [cited.printed[d] for d in paper.TABLE1_DATASETS])

    detail = []
    for c in cells:
        for r, role in [(r, "counted") for r in c.runs] + [(r, "same seed as a counted run") for r in c.replicates] \
                + [(r, "unfinished") for r in c.unfinished]:
            detail.append([c.row, paper.TABLE1_DATASETS[c.dataset], f"`{r.rel}`", r.get("seed"),
                           fmt(r.get("test_error_pct")), r.get("best_epoch"), schedule(r, recipes), r.get("status"),
                           r.get("hardware", ""), role])
    parts = [
        "## Table 1: test error %",
        f"Paper values: {paper.TABLE1_SOURCE}; rows marked *cited* are the paper's comparison rows, quoted, not "
        "run here. Ours: the mean over faithful runs of the shipped recipe (± the sample standard deviation when "
        "n ≥ 2); *not run* where none finished.",
        md_table(["method"] + list(paper.TABLE1_DATASETS.values()), wide),
        SELECTION_RULE,
    ]
    if detail:
        parts.append("The runs behind the cells:\n\n" + md_table(
            ["row", "dataset", "run", "seed", "test %", "best-valid epoch", "schedule", "status", "hardware",
             "role"], detail))
    parts.append("CSV: `table1.csv`.")
    return "\n\n".join(parts)


def modified_section(modified: list[Run], recipes: dict[str, Recipe]) -> str:
    """The runs of Table 1 recipes that changed the experiment, each with what it changed."""
    if not modified:
        return ""
    rows = [[f"`{r.rel}`", r.get("variant"), fmt(r.get("test_error_pct")), schedule_words(r, recipes),
             "; ".join(r.differences)] for r in modified]
    return "\n\n".join([
        "## Modified runs",
        "Runs of a Table 1 recipe whose recorded recipe differs from the shipped one in a key that defines the "
        "experiment, or that ran on a stand-in dataset. They fill no Table 1 cell; each differing key is "
        "shown with the run's value and the shipped one.",
        md_table(["run", "variant", "test %", "schedule", "differs from the shipped recipe in"], rows),
    ])


def runs_section(runs: list[Run], others: list[Run], out: Path) -> str:
    header = ["run", "recipe", "reproduces", "dataset", "variant", "status", "epochs_run", "epochs_planned",
              "best_epoch", "best_valid_error_pct", "test_error_pct", "last_test_error_pct", "seed", "faithful",
              "differences", "hardware", "torch", "commit", "wall_time_s", "epoch_time_s"]
    rows = [[r.rel, r.get("recipe"), r.get("reproduces"), r.get("dataset"), r.get("variant"), r.get("status"),
             r.get("epochs_run"), r.get("epochs_planned"), r.get("best_epoch"), fmt(r.get("best_valid_error_pct")),
             fmt(r.get("test_error_pct")), fmt(r.get("last_test_error_pct")), r.get("seed"),
             "yes" if r.faithful else "no", "; ".join(r.differences), r.get("hardware"),
             r.get("torch"), r.get("commit"), r.get("wall_time_s"), r.get("epoch_time_s")] for r in runs]
    write_csv(out / "runs.csv", header, rows)
    if not runs:
        return "## Recorded runs\n\nNo run is recorded under the results folder."
    md = md_table(["run", "variant", "faithful", "status", "epochs", "best-valid epoch", "valid %", "test %",
                   "hardware", "s / epoch"],
                  [[f"`{r.rel}`", r.get("variant"), "yes" if r.faithful else "no", r.get("status"),
                    f"{r.get('epochs_run')} of {r.get('epochs_planned')}", r.get("best_epoch"),
                    fmt(r.get("best_valid_error_pct")), fmt(r.get("test_error_pct")), r.get("hardware", ""),
                    fmt(r.get("epoch_time_s"), ".2f")] for r in runs])
    text = ["## Recorded runs", md, "CSV: `runs.csv` (with each modified run's differences)."]
    if others:
        text.insert(1, "Runs that fill no Table 1 cell (another table, row or dataset): "
                    + ", ".join(f"`{r.rel}`" for r in others) + ".")
    return "\n\n".join(text)
