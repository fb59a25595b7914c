"""What the report reads (run directories, shipped recipes) and how it writes tables and figures.

Every other module of the report builds on this one; it imports none of them.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import UserError
from ..faithful import differences, variant_difference
from ..recipe import Recipe, RecipeError, load_recipe, recipes_dir, resolve
from ..runs import METRICS_FILE, RECIPE_FILE, RESULT_FILE, check_metrics, check_result, read_result


class ReportError(UserError):
    pass


# ============================================================================ reading the records

@dataclass
class Notes:
    """Files skipped or questioned, by path, for the report's last section."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, why: str) -> None:
        self.items.append((path, why))

    def sorted(self) -> list[tuple[str, str]]:
        return sorted(set(self.items))


@dataclass
class Run:
    rel: str                      # run directory relative to the results folder, posix
    path: Path
    result: dict[str, Any]
    curve: list[dict[str, float]] = field(default_factory=list)  # epoch, train_loss, valid_error_pct
    # Set by judge_runs: whether the run is the shipped recipe's experiment, else how it differs.
    faithful: bool = False
    differences: list[str] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)


def read_json(path: Path, rel: str, notes: Notes) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.add(rel, f"not readable JSON ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None
    if not isinstance(data, dict):
        notes.add(rel, "JSON is not an object")
        return None
    try:  # verified against its checksum; one of a checksummed version without it is never used
        read_result(path)
    except UserError as e:
        notes.add(rel, str(e))
        return None
    return data


def read_curve(path: Path, rel: str, notes: Notes) -> list[dict[str, float]]:
    """metrics.csv rows as {epoch, train_loss, valid_error_pct, test_error_pct?}; [] with a note if malformed."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        notes.add(rel, f"not readable ({type(e).__name__})")
        return []
    reader = csv.DictReader(io.StringIO(text))
    needed = ("epoch", "train_loss", "valid_error_pct")
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        notes.add(rel, f"no column {', '.join(missing)}: no training curve")
        return []
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            parsed = {"epoch": int(row["epoch"]), "train_loss": float(row["train_loss"]),
                      "valid_error_pct": float(row["valid_error_pct"])}
            if row.get("test_error_pct") not in (None, ""):
                parsed["test_error_pct"] = float(row["test_error_pct"])
        except (TypeError, ValueError):
            notes.add(rel, f"line {line} is not a row of numbers: no training curve")
            return []
        if not all(math.isfinite(v) for v in parsed.values()):
            notes.add(rel, f"line {line} holds a value that is not a finite number: no training curve")
            return []
        rows.append(parsed)
    return rows


def find_runs(results: Path, notes: Notes, exclude: Iterable[Path] = ()) -> list[Run]:
    """Every run directory under results (any depth): one holding its result, its recipe or its metrics."""
    excluded = [p.resolve() for p in exclude]
    run_dirs: set[Path] = set()
    for name in (RESULT_FILE, RECIPE_FILE, METRICS_FILE):
        for f in results.rglob(name):
            if not any(f.resolve().is_relative_to(x) for x in excluded):
                run_dirs.add(f.parent)
    runs = []
    for run_dir in sorted(run_dirs):
        rel = run_dir.relative_to(results).as_posix()
        result_path = run_dir / RESULT_FILE
        if not result_path.is_file():
            notes.add(rel, f"no {RESULT_FILE} (not started, or still in its first epoch): not reported")
            continue
        data = read_json(result_path, f"{rel}/{RESULT_FILE}", notes)
        if data is None:
            continue
        problem = check_result(data)
        if problem:
            notes.add(f"{rel}/{RESULT_FILE}", f"{problem}: run skipped")
            continue
        try:
            check_metrics(run_dir, data)
        except UserError as e:
            notes.add(f"{rel}/{METRICS_FILE}", f"{e} The run is skipped.")
            continue
        run = Run(rel, run_dir, data)
        metrics = run_dir / METRICS_FILE
        if metrics.is_file():
            run.curve = read_curve(metrics, f"{rel}/{METRICS_FILE}", notes)
            _check_agreement(run, notes)
        elif data["epochs_run"] > 0:
            notes.add(rel, f"no {METRICS_FILE}: no training curve")
        runs.append(run)
    return runs


def _check_agreement(run: Run, notes: Notes) -> None:
    """result.json's test error must be the metrics row of its best epoch; say so where it is not."""
    best, test = run.get("best_epoch"), run.get("test_error_pct")
    rows = {r["epoch"]: r for r in run.curve}
    if best is None or not rows:
        return
    row = rows.get(best)
    if row is None:
        notes.add(f"{run.rel}/{METRICS_FILE}", f"has no row for the best epoch {best} of {RESULT_FILE}")
    elif "test_error_pct" in row and abs(row["test_error_pct"] - test) > 1e-9:
        notes.add(f"{run.rel}/{RESULT_FILE}", f"test error {test} differs from {METRICS_FILE}'s "
                                              f"{row['test_error_pct']} at epoch {best}")


def load_recipes(directory: Path | None, notes: Notes) -> tuple[dict[str, Recipe], dict[str, str]]:
    """(recipe name -> resolved recipe, recipe name -> file name) of the recipes in directory (default: shipped)."""
    directory = directory or recipes_dir()
    if not directory.is_dir():
        raise ReportError(f"the recipes folder {directory} does not exist.")
    recipes, paths = {}, {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            recipe = load_recipe(path)
        except RecipeError as e:
            notes.add(path.name, f"recipe not loaded: {e}")
            continue
        recipes[recipe.name] = recipe
        paths[recipe.name] = path.name
    return recipes, paths


# A recorded recipe.yaml is a few kB; anything far larger is not one.
RECIPE_BYTES_MAX = 1 << 20


def recorded_recipe(run: Run) -> tuple[Recipe | None, str | None]:
    """(the run's resolved recipe.yaml, None) or (None, why it cannot be read)."""
    path = run.path / RECIPE_FILE
    try:
        if path.stat().st_size > RECIPE_BYTES_MAX:
            return None, f"its {RECIPE_FILE} is larger than a recipe"
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None, f"no {RECIPE_FILE} recorded"
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        return None, f"its {RECIPE_FILE} is not readable ({type(e).__name__})"
    if not isinstance(raw, dict):
        return None, f"its {RECIPE_FILE} is not a recipe"
    try:
        return resolve(raw, f"{run.rel}/{RECIPE_FILE}"), None
    except RecipeError as e:
        return None, f"its {RECIPE_FILE} does not load ({e})"


def judge_runs(runs: list[Run], recipes: dict[str, Recipe]) -> None:
    """Mark each run faithful to its shipped recipe, or list how it differs (``bnnctl/faithful.py``)."""
    for run in runs:
        shipped = recipes.get(run.get("recipe"))
        if shipped is None:
            run.faithful, run.differences = False, ["its recipe is not a shipped one"]
            continue
        recorded, problem = recorded_recipe(run)
        if recorded is None:
            run.faithful, run.differences = False, [problem]
            continue
        found = differences(recorded.to_dict(), shipped.to_dict())
        variant = variant_difference(run.get("dataset"), run.get("variant"))
        found = ([variant] if variant else []) + found
        run.faithful, run.differences = not found, [d.describe() for d in found]


def shipped_epochs(recipes: dict[str, Recipe], name: str) -> int | None:
    """The epochs of the recipe's full schedule, or None for a recipe that is not shipped."""
    recipe = recipes.get(name)
    return None if recipe is None else recipe.train.epochs


# ============================================================================ writing tables and figures

def fmt(value: Any, spec: str = ".2f", missing: str = "") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    path.write_text(out.getvalue())


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def new_figure(width: float, height: float):
    # matplotlib is imported here, not at the top: only the sections that draw pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> None:
    # No 'Software' (matplotlib version) or date in the PNG: the same data gives the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})
