"""Table 1 (test error per method and dataset), the summary that opens the report, and the list of runs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paper
from .records import Run, fmt, md_table, shipped_epochs, write_csv

SELECTION_RULE = (
    "Each cell shows one run: among the runs recorded for that recipe row and dataset variant, the one "
    "with the most epochs run, ties broken by the lower best-validation error, then by run path. Test error "
    "plays no part in the choice (picking the lowest test error would select on the test set). Its test "
    "error is the one at its best-validation epoch (the paper's protocol). Every run is listed in runs.csv.")


@dataclass
class Cell:
    row: str
    dataset: str
    variant: str
    run: Run | None
    candidates: int


def cell_key(run: Run) -> tuple[int, float, str]:
    valid = run.get("best_valid_error_pct")
    return (-run.get("epochs_run"), math.inf if valid is None else valid, run.rel)


def table1_cells(runs: list[Run]) -> tuple[list[Cell], list[Run]]:
    """(cells of our rows, the runs that belong to no Table 1 cell)."""
    by_cell: dict[tuple[str, str, str], list[Run]] = {}
    others = []
    for run in runs:
        p = run.get("paper")
        if not (p.get("table") == "Table 1" and p.get("row") in paper.OUR_ROWS
                and run.get("dataset") in paper.TABLE1_DATASETS):
            others.append(run)
        elif run.get("test_error_pct") is not None:  # a run with no finished epoch has nothing to show
            by_cell.setdefault((p["row"], run.get("dataset"), run.get("variant")), []).append(run)
    cells = []
    for row in paper.OUR_ROWS:
        for dataset in paper.TABLE1_DATASETS:
            variants = sorted({v for (r, d, v) in by_cell if r == row and d == dataset} | {dataset},
                              key=lambda v: (v != dataset, v))
            for variant in variants:
                found = sorted(by_cell.get((row, dataset, variant), []), key=cell_key)
                if found or variant == dataset:
                    cells.append(Cell(row, dataset, variant, found[0] if found else None, len(found)))
    return cells, others


# ============================================================================ schedule: how much of the recipe ran

def _percent(done: int, full: int) -> str:
    """done / full as a percentage that never reads 100% for a run short of its schedule."""
    share = 100 * done / full
    if share >= 100:
        return f"{share:.0f}%"
    text = f"{share:.3g}"
    return ("99.9" if text == "100" else text) + "%"


def schedule(run: Run, recipes: dict[str, dict[str, Any]]) -> str:
    """Table 1's schedule column: 'full (200/200)' or '10% (20/200)', epochs run of the recipe's epochs."""
    done, full = run.get("epochs_run"), shipped_epochs(recipes, run.get("recipe"))
    if full is None:
        return f"{done} epochs (recipe not shipped)"
    return f"{'full' if done == full else _percent(done, full)} ({done}/{full})"


def schedule_words(run: Run, recipes: dict[str, dict[str, Any]]) -> str:
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


def _short_of(run: Run, recipes: dict[str, dict[str, Any]]) -> str:
    """How a run falls short of its own plan or of its recipe's schedule, e.g. ' (interrupted, 2 of 500 epochs)'."""
    done, planned, status = run.get("epochs_run"), run.get("epochs_planned"), run.get("status")
    full = shipped_epochs(recipes, run.get("recipe"))
    if status != "finished" or done < planned:
        also = f"; the recipe plans {full}" if full and full != planned else ""
        return f" ({status}, {done} of {planned} epochs{also})"
    if full and done < full:
        return f" ({done} of the recipe's {full} epochs)"
    return ""


def _data_words(cell: Cell) -> str:
    """The data a cell's run saw, named so that a stand-in is never read as the paper's dataset."""
    original = paper.TABLE1_DATASETS[cell.dataset]
    if cell.variant == cell.dataset:
        return original
    return f"`{cell.variant}`, a stand-in, not the original {original}"


# ============================================================================ sections

def overview_section(cells: list[Cell], recipes: dict[str, dict[str, Any]]) -> str:
    """The report's opening: which Table 1 cells are reproduced, how far, on what data, beside the paper."""
    originals = [c for c in cells if c.variant == c.dataset]
    full = [c for c in originals if c.run is not None
            and (shipped_epochs(recipes, c.run.get("recipe")) or math.inf) <= c.run.get("epochs_run")]
    headline = ("Reproduced on the paper's data with the recipe's full schedule: "
                + (", ".join(f"{c.row} on {paper.TABLE1_DATASETS[c.dataset]}" for c in full) if full else "none")
                + f" (of the {len(originals)} Table 1 cells of the BNN rows).")
    lines = []
    for c in cells:
        if c.run is None:
            continue
        paper_value = fmt(paper.table1_value(c.row, c.dataset))
        paper_words = (f"paper: {paper_value}%" if c.variant == c.dataset
                       else f"paper, on {paper.TABLE1_DATASETS[c.dataset]}: {paper_value}%")
        lines.append(f"- {c.row} on {_data_words(c)}: **{fmt(c.run.get('test_error_pct'))}%** test error "
                     f"({paper_words}), {schedule_words(c.run, recipes)}.")
    parts = ["## Summary", headline]
    if lines:
        parts.append("Per Table 1 cell with a recorded run (the run Table 1 shows), our test error beside the "
                     "paper's, and how much of the recipe's schedule ran:\n\n" + "\n".join(lines))
    missing = [c for c in originals if c.run is None]
    if missing:
        parts.append("Not run on the paper's data: "
                     + "; ".join(f"{c.row} on {paper.TABLE1_DATASETS[c.dataset]}" for c in missing) + ".")
    return "\n\n".join(parts)


def table1_section(cells: list[Cell], recipes: dict[str, dict[str, Any]], out: Path) -> str:
    header = ["row", "source", "dataset", "variant", "paper_test_error_pct", "ours_test_error_pct",
              "epochs_run", "epochs_planned", "recipe_epochs", "schedule", "status", "best_epoch",
              "best_valid_error_pct", "run", "runs_in_cell"]
    rows: list[list[Any]] = []
    for c in cells:
        r = c.run
        rows.append([c.row, "ours" if r else "not run", c.dataset, c.variant,
                     fmt(paper.table1_value(c.row, c.dataset)),
                     fmt(r.get("test_error_pct")) if r else "not run",
                     r.get("epochs_run") if r else None, r.get("epochs_planned") if r else None,
                     shipped_epochs(recipes, r.get("recipe")) if r else None,
                     schedule(r, recipes) if r else None,
                     r.get("status") if r else None, r.get("best_epoch") if r else None,
                     fmt(r.get("best_valid_error_pct")) if r else None, r.rel if r else None, c.candidates])
    for cited in paper.TABLE1:
        if cited.ours:
            continue
        for dataset in paper.TABLE1_DATASETS:
            rows.append([cited.method, "cited", dataset, dataset, cited.printed[dataset]] + [None] * 10)
    write_csv(out / "table1.csv", header, rows)

    # The paper's layout: methods down, datasets across; our rows show ours and the paper's value.
    stand_ins = sorted({(c.dataset, c.variant) for c in cells if c.variant != c.dataset},
                       key=lambda dv: (list(paper.TABLE1_DATASETS).index(dv[0]), dv[1]))
    columns = [(d, d) for d in paper.TABLE1_DATASETS] + stand_ins
    titles = [paper.TABLE1_DATASETS[d] if d == v else f"{v} (not the original {paper.TABLE1_DATASETS[d]})"
              for d, v in columns]
    wide = []
    for row in paper.OUR_ROWS:
        line = [f"**{row}** (ours / paper)"]
        for d, v in columns:
            cell = next((c for c in cells if c.row == row and c.dataset == d and c.variant == v), None)
            paper_value = fmt(paper.table1_value(row, d))
            if cell is None or cell.run is None:
                line.append(f"not run / {paper_value}")
            else:
                line.append(f"{fmt(cell.run.get('test_error_pct'))}{_short_of(cell.run, recipes)} / {paper_value}")
        wide.append(line)
    for cited in paper.TABLE1:
        if not cited.ours:
            wide.append([f"{cited.method} (cited)"] + [cited.printed[d] if d == v else "" for d, v in columns])

    detail = []
    for c in cells:
        r = c.run
        if r is None:
            detail.append([c.row, c.variant, fmt(paper.table1_value(c.row, c.dataset)), "not run", "", "", "", "",
                           ""])
            continue
        planned = f"{r.get('epochs_run')} of {r.get('epochs_planned')}"
        recipe_epochs = shipped_epochs(recipes, r.get("recipe"))
        if recipe_epochs is not None and recipe_epochs != r.get("epochs_planned"):
            planned += f" (the recipe plans {recipe_epochs})"
        detail.append([c.row, c.variant, fmt(paper.table1_value(c.row, c.dataset)), fmt(r.get("test_error_pct")),
                       schedule(r, recipes), planned, r.get("status"), f"`{r.rel}`", c.candidates])

    return "\n\n".join([
        "## Table 1: test error %",
        f"Paper values: {paper.TABLE1_SOURCE}; rows marked *cited* are the paper's comparison rows, quoted, not "
        "run here. A cell with no recorded run says *not run*. A run on a stand-in dataset (e.g. `cifar10-jpeg`) "
        "has its own column and is never shown as the original dataset.",
        md_table(["method"] + titles, wide),
        SELECTION_RULE,
        "Schedule: epochs run of the shipped recipe's epochs, *full* when the run went the recipe's whole "
        "schedule, else the share it ran.",
        md_table(["row", "variant", "paper %", "ours %", "schedule", "epochs run of planned", "status", "run",
                  "runs in cell"], detail),
        "CSV: `table1.csv`.",
    ])


def runs_section(runs: list[Run], others: list[Run], out: Path) -> str:
    header = ["run", "recipe", "reproduces", "dataset", "variant", "status", "epochs_run", "epochs_planned",
              "best_epoch", "best_valid_error_pct", "test_error_pct", "last_test_error_pct", "seed", "hardware",
              "torch", "commit", "wall_time_s", "epoch_time_s"]
    rows = [[r.rel, r.get("recipe"), r.get("reproduces"), r.get("dataset"), r.get("variant"), r.get("status"),
             r.get("epochs_run"), r.get("epochs_planned"), r.get("best_epoch"), fmt(r.get("best_valid_error_pct")),
             fmt(r.get("test_error_pct")), fmt(r.get("last_test_error_pct")), r.get("seed"), r.get("hardware"),
             r.get("torch"), r.get("commit"), r.get("wall_time_s"), r.get("epoch_time_s")] for r in runs]
    write_csv(out / "runs.csv", header, rows)
    if not runs:
        return "## Recorded runs\n\nNo run is recorded under the results folder."
    md = md_table(["run", "variant", "status", "epochs", "best-valid epoch", "valid %", "test %", "hardware",
                   "s / epoch"],
                  [[f"`{r.rel}`", r.get("variant"), r.get("status"),
                    f"{r.get('epochs_run')} of {r.get('epochs_planned')}", r.get("best_epoch"),
                    fmt(r.get("best_valid_error_pct")), fmt(r.get("test_error_pct")), r.get("hardware", ""),
                    fmt(r.get("epoch_time_s"), ".2f")] for r in runs])
    text = ["## Recorded runs", md, "CSV: `runs.csv`."]
    if others:
        text.insert(1, "Runs that fill no Table 1 cell (another table, row or dataset): "
                    + ", ".join(f"`{r.rel}`" for r in others) + ".")
    return "\n\n".join(text)
