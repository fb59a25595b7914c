"""``bnnctl report``: the paper's tables and figures, regenerated from what is recorded.

Reads the runs under ``results/`` (``<recipe>/<run-id>/result.json`` and ``metrics.csv``, see
``train.py``), the benchmark records under ``results/bench/*.json`` (see ``bench.py``), the shipped
recipes' model definitions and, where present, the runs' ``best.pt``. Writes into ``--out``
(default ``results/report/``):

* ``REPORT.md``            everything below, with the rules used to pick and compute each number;
* ``table1.csv``           Table 1, our best run per cell beside the paper, and the cited rows;
* ``runs.csv``             every recorded run;
* ``figure1_<variant>.png`` training loss and validation error against epochs, one per dataset variant;
* ``kernels.csv``, ``kernels.png``   the kernel figure (the paper's Figure 3) per device recorded;
* ``mnist_mlp.csv``        the MNIST MLP timings of ``bnnctl bench --model mnist-mlp``, where recorded;
* ``memory_energy.csv``, ``energy_constants.csv``   per model, from the model definitions;
* ``filter_repetition.csv``  unique binary 3x3 filters per conv layer of trained ConvNets.

The only typed-in numbers are the paper's (``paper.py``). Output is deterministic: no dates, sorted
orders, fixed number formats and PNG metadata, so running it twice gives identical files. A file that
cannot be read, or lacks what the report needs, is listed by path under "Skipped" and left out.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import paper
from ..errors import UserError

REPORT_FILE = "REPORT.md"
# Files this command writes (or wrote before): cleared first, so that a figure of a run that no longer
# exists does not linger; nothing else in the output folder is touched.
OWNED_PATTERNS = ("REPORT.md", "*.csv", "figure1_*.png", "kernels.png")


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

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# result.json field -> (check, what it must be)
RESULT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "recipe": (lambda v: isinstance(v, str) and v != "", "a recipe name"),
    "status": (lambda v: isinstance(v, str) and v != "", "a status"),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name"),
    "variant": (lambda v: isinstance(v, str) and v != "", "a dataset variant"),
    "paper": (lambda v: isinstance(v, dict), "a mapping {table, row, test_error}"),
    "epochs_run": (_is_count, "a count of epochs"),
    "epochs_planned": (lambda v: _is_count(v) and v > 0, "a positive count of epochs"),
    "best_epoch": (lambda v: v is None or _is_count(v), "an epoch or null"),
    "best_valid_error_pct": (lambda v: v is None or _is_number(v), "a number or null"),
    "test_error_pct": (lambda v: v is None or _is_number(v), "a number or null"),
}


def read_json(path: Path, rel: str, notes: Notes) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.add(rel, f"not readable JSON ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None
    if not isinstance(data, dict):
        notes.add(rel, "JSON is not an object")
        return None
    return data


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
        rows.append(parsed)
    return rows


def find_runs(results: Path, notes: Notes, exclude: Iterable[Path] = ()) -> list[Run]:
    """Every run directory under results (any depth): one holding result.json, recipe.yaml or metrics.csv."""
    excluded = [p.resolve() for p in exclude]
    run_dirs: set[Path] = set()
    for name in ("result.json", "recipe.yaml", "metrics.csv"):
        for f in results.rglob(name):
            if not any(f.resolve().is_relative_to(x) for x in excluded):
                run_dirs.add(f.parent)
    runs = []
    for run_dir in sorted(run_dirs):
        rel = run_dir.relative_to(results).as_posix()
        result_path = run_dir / "result.json"
        if not result_path.is_file():
            notes.add(rel, "no result.json (not started, or still in its first epoch): not reported")
            continue
        data = read_json(result_path, f"{rel}/result.json", notes)
        if data is None:
            continue
        problem = check_result(data)
        if problem:
            notes.add(f"{rel}/result.json", f"{problem}: run skipped")
            continue
        run = Run(rel, run_dir, data)
        metrics = run_dir / "metrics.csv"
        if metrics.is_file():
            run.curve = read_curve(metrics, f"{rel}/metrics.csv", notes)
            _check_agreement(run, notes)
        elif data["epochs_run"] > 0:
            notes.add(rel, "no metrics.csv: no training curve")
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
        notes.add(f"{run.rel}/metrics.csv", f"has no row for the best epoch {best} of result.json")
    elif "test_error_pct" in row and abs(row["test_error_pct"] - test) > 1e-9:
        notes.add(f"{run.rel}/result.json", f"test error {test} differs from metrics.csv's {row['test_error_pct']} "
                                             f"at epoch {best}")


# ============================================================================ formatting helpers

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


# ============================================================================ Table 1

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


def shipped_epochs(recipes: dict[str, dict[str, Any]], name: str) -> int | None:
    recipe = recipes.get(name)
    return None if recipe is None else recipe["train"]["epochs"]


def _short_of(run: Run, recipes: dict[str, dict[str, Any]]) -> str:
    """How a run falls short of its own plan or of its recipe's schedule, e.g. ' (interrupted, 2 of 500 epochs)'."""
    done, planned, status = run.get("epochs_run"), run.get("epochs_planned"), run.get("status")
    schedule = shipped_epochs(recipes, run.get("recipe"))
    if status != "finished" or done < planned:
        also = f"; the recipe plans {schedule}" if schedule and schedule != planned else ""
        return f" ({status}, {done} of {planned} epochs{also})"
    if schedule and done < schedule:
        return f" ({done} of the recipe's {schedule} epochs)"
    return ""


def table1_section(cells: list[Cell], recipes: dict[str, dict[str, Any]], out: Path) -> str:
    header = ["row", "source", "dataset", "variant", "paper_test_error_pct", "ours_test_error_pct",
              "epochs_run", "epochs_planned", "recipe_epochs", "status", "best_epoch", "best_valid_error_pct",
              "run", "runs_in_cell"]
    rows: list[list[Any]] = []
    for c in cells:
        r = c.run
        rows.append([c.row, "ours" if r else "not run", c.dataset, c.variant,
                     fmt(paper.table1_value(c.row, c.dataset)),
                     fmt(r.get("test_error_pct")) if r else "not run",
                     r.get("epochs_run") if r else None, r.get("epochs_planned") if r else None,
                     shipped_epochs(recipes, r.get("recipe")) if r else None,
                     r.get("status") if r else None, r.get("best_epoch") if r else None,
                     fmt(r.get("best_valid_error_pct")) if r else None, r.rel if r else None, c.candidates])
    for cited in paper.TABLE1:
        if cited.ours:
            continue
        for dataset in paper.TABLE1_DATASETS:
            rows.append([cited.method, "cited", dataset, dataset, cited.printed[dataset], None, None, None, None,
                         None, None, None, None, None])
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
            detail.append([c.row, c.variant, fmt(paper.table1_value(c.row, c.dataset)), "not run", "", "", "", ""])
            continue
        planned = f"{r.get('epochs_run')} of {r.get('epochs_planned')}"
        recipe_epochs = shipped_epochs(recipes, r.get("recipe"))
        if recipe_epochs is not None and recipe_epochs != r.get("epochs_planned"):
            planned += f" (the recipe plans {recipe_epochs})"
        detail.append([c.row, c.variant, fmt(paper.table1_value(c.row, c.dataset)), fmt(r.get("test_error_pct")),
                       planned, r.get("status"), f"`{r.rel}`", c.candidates])

    return "\n\n".join([
        "## Table 1: test error %",
        f"Paper values: {paper.TABLE1_SOURCE}; rows marked *cited* are the paper's comparison rows, quoted, not "
        "run here. A cell with no recorded run says *not run*. A run on a stand-in dataset (e.g. `cifar10-jpeg`) "
        "has its own column and is never shown as the original dataset.",
        md_table(["method"] + titles, wide),
        SELECTION_RULE,
        md_table(["row", "variant", "paper %", "ours %", "epochs run of planned", "status", "run", "runs in cell"],
                 detail),
        "CSV: `table1.csv`.",
    ])


# ============================================================================ runs and Figure 1

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


def variant_order(variant: str) -> tuple[int, str]:
    """The paper's Figure 1 is CIFAR-10: its variants first, then SVHN, MNIST and anything else."""
    for rank, dataset in enumerate((paper.FIGURE1_DATASET, "svhn", "mnist")):
        if variant == dataset or variant.startswith(dataset + "-"):
            return rank, variant
    return 3, variant


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> None:
    # No 'Software' (matplotlib version) or date in the PNG: the same data gives the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})


def figure1_section(runs: list[Run], out: Path) -> str:
    from matplotlib.ticker import MaxNLocator

    with_curves = [r for r in runs if r.curve]
    if not with_curves:
        return "## Figure 1: training curves\n\nNo recorded run has a training curve (metrics.csv) yet."
    variants = sorted({r.get("variant") for r in with_curves}, key=variant_order)
    parts = ["## Figure 1: training curves",
             f"The paper's Figure 1 ({paper.FIGURE1_SOURCE}) shows a CIFAR-10 ConvNet's training cost (dotted) and "
             "validation error (solid) against epochs. Here: one figure per dataset variant, every recorded run "
             "with a metrics.csv, CIFAR-10 first."]
    for variant in variants:
        group = [r for r in with_curves if r.get("variant") == variant]
        fig = _new_figure(11, 4.2)
        loss_ax, err_ax = fig.subplots(1, 2)
        for i, run in enumerate(group):
            color = f"C{i % 10}"
            epochs = [row["epoch"] for row in run.curve]
            marker = "o" if len(epochs) <= 30 else None  # a run of one epoch is a point, not a line
            loss_ax.plot(epochs, [row["train_loss"] for row in run.curve], ":", color=color, label=run.rel,
                         marker=marker, markersize=3)
            err_ax.plot(epochs, [row["valid_error_pct"] for row in run.curve], "-", color=color, label=run.rel,
                        marker=marker, markersize=3)
        loss_ax.set(xlabel="epoch", ylabel="training loss", title=f"{variant}: training loss (dotted)")
        err_ax.set(xlabel="epoch", ylabel="validation error %", title=f"{variant}: validation error (solid)")
        for ax in (loss_ax, err_ax):
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        err_ax.legend(fontsize=7, loc="upper right")
        # Fixed margins: tight_layout would cost more than the drawing itself.
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.22)
        name = f"figure1_{_safe(variant)}.png"
        save_png(fig, out / name)
        parts.append(f"### {variant}\n\n![training curves on {variant}]({name})\n\n"
                     + ", ".join(f"`{r.rel}` ({_epochs(len(r.curve))})" for r in group))
    return "\n\n".join(parts)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


# ============================================================================ kernel figure

@dataclass
class KernelRecord:
    rel: str
    data: dict[str, Any]

    @property
    def date(self) -> str:
        return str(self.data.get("date", ""))

    @property
    def device(self) -> str:
        d = self.data["device"]
        return f"{d.get('hardware', d['type'])} ({d['type']})"

    @property
    def shape(self) -> str:
        s = self.data["shape"]
        return f"{s['m']}x{s['n']}x{s['k']}"


@dataclass
class MlpRecord:
    """A ``bnnctl bench --model mnist-mlp`` record (bench_mlp.py): engine variants timed on the test images."""

    rel: str
    device: str
    rows: list[dict[str, Any]]   # name, paper_row, label, status, median_ms, test_error_pct, differing
    model: str                   # which weights the accuracies are for
    device_type: str = "cpu"
    date: str = ""

    def ms(self, name: str) -> float | None:
        return next((r["median_ms"] for r in self.rows if r["name"] == name and r["status"] == "ok"), None)

    def speedup(self, row: dict[str, Any], reference: str) -> float | None:
        """reference variant's time / this variant's time, from the recorded times; None if either did not run."""
        ref = self.ms(reference)
        return ref / row["median_ms"] if ref and row["status"] == "ok" else None


def _check_kernels_record(data: dict[str, Any]) -> str | None:
    device, shape, kernel_map = data.get("device"), data.get("shape"), data.get("kernels")
    if not isinstance(device, dict) or not isinstance(device.get("type"), str):
        return "no device type"
    if not isinstance(shape, dict) or not all(_is_count(shape.get(d)) for d in "mnk"):
        return "no shape {m, n, k}"
    if not isinstance(kernel_map, dict) or not kernel_map:
        return "no kernels"
    for name, entry in kernel_map.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str):
            return f"kernel {name!r} has no status"
        if entry["status"] == "ok" and not _is_number(entry.get("median_ms")):
            return f"kernel {name!r} ran but has no median_ms"
    return None


def _mlp_rows(data: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The variants of an MNIST MLP bench record, or None when its layout is not bench_mlp.py's.

    ``variants`` maps a name to {status, label, paper_row, median_ms (when ok), test_error_pct,
    predictions_differing_from_torch}; the speed-ups are recomputed here from the times.
    """
    raw = data.get("variants")
    if not isinstance(raw, dict) or not raw:
        return None
    rows = []
    for name, e in raw.items():
        if not isinstance(e, dict) or not isinstance(e.get("status"), str):
            return None
        ok = e["status"] == "ok"
        if ok and not _is_number(e.get("median_ms")):
            return None
        err, differing = e.get("test_error_pct"), e.get("predictions_differing_from_torch")
        rows.append({"name": name, "paper_row": str(e.get("paper_row") or ""), "label": str(e.get("label") or ""),
                     "status": e["status"], "median_ms": e["median_ms"] if ok else None,
                     "test_error_pct": err if ok and _is_number(err) else None,
                     "differing": differing if ok and _is_count(differing) else None})
    return rows


def _mlp_model(data: dict[str, Any]) -> str:
    """What the accuracies are for, from the record's model section."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    weights = model.get("weights", "unknown")
    where = f" from `{model['source']}`" if model.get("source") else ""
    epoch = f", epoch {model['epoch']}" if model.get("epoch") is not None else ""
    return f"{weights} weights{where}{epoch}"


def find_benches(results: Path, notes: Notes
                 ) -> tuple[list[KernelRecord], list[MlpRecord], list[tuple[str, dict[str, Any]]]]:
    """(kernel records, MNIST MLP records, (path, data) of the CPU ceiling records) under results/bench."""
    kernel_records, mlp_records, cpu_peaks = [], [], []
    bench_dir = results / "bench"
    for path in sorted(bench_dir.rglob("*.json")) if bench_dir.is_dir() else []:
        rel = path.relative_to(results).as_posix()
        data = read_json(path, rel, notes)
        if data is None:
            continue
        kind = data.get("kind")
        if kind == "kernels":
            problem = _check_kernels_record(data)
            if problem:
                notes.add(rel, f"kernel bench record with {problem}: skipped")
            else:
                kernel_records.append(KernelRecord(rel, data))
        elif isinstance(kind, str) and "mlp" in kind.lower():
            rows = _mlp_rows(data)
            device = data.get("device")
            if rows is None or not isinstance(device, dict) or not isinstance(device.get("type"), str):
                notes.add(rel, f"bench record of kind {kind!r} in a layout this report does not know: skipped")
            else:
                mlp_records.append(MlpRecord(rel, f"{device.get('hardware', device['type'])} ({device['type']})",
                                             rows, _mlp_model(data), device["type"], str(data.get("date", ""))))
        elif kind == "cpu-peaks":
            cpu_peaks.append((rel, data))
        else:
            notes.add(rel, f"bench record of unknown kind {kind!r}: skipped")
    return kernel_records, mlp_records, cpu_peaks


def cpu_peaks_section(records: list[tuple[str, dict[str, Any]]], notes: Notes) -> str:
    """The CPU ceilings that tools/cpu_peaks/popc_peak.cpp measured (records of kind 'cpu-peaks'), or ''."""
    md_rows = []
    for rel, data in records:
        rows = []  # all of a record's rows or none of them
        try:
            for threads, block in sorted(data["threads"].items()):
                for name, rate in block["rows"].items():
                    rows.append([data["hardware"], threads, name, fmt(rate["all_threads"], ".0f"), ""])
                rows.append([data["hardware"], threads, "best popcount / fp32 FMA", "",
                             fmt(block["best_popcount_over_fp32_fma"], ".1f") + "x"])
        except (KeyError, TypeError, AttributeError):
            notes.add(rel, "cpu-peaks record in a layout this report does not know: skipped")
            continue
        md_rows += rows
    if not md_rows:
        return ""
    return "\n\n".join([
        "### CPU instruction ceilings (`tools/cpu_peaks/popc_peak.cpp`)",
        "Rates from registers, all threads together, in G binary-op/s (2 per bit multiply-accumulate) or GFLOP/s: "
        "the best popcount over the FMA rate is the largest XNOR-over-fp32 GEMM speed-up the CPU allows.",
        md_table(["hardware", "threads", "loop", "G ops/s", "ratio"], md_rows)])


# The columns of a kernels record entry -> our CSV column; the ratio columns are reference time / time.
KERNEL_COLUMNS = (("median_ms", "median_ms"), ("including_packing_ms", "including_packing_ms"),
                  ("tbops", "t_binary_ops_per_s"), ("x_baseline", "x_baseline"),
                  ("x_baseline_including_packing", "x_baseline_including_packing"),
                  ("x_cublas_fp32", "x_fp32_matmul"), ("x_cublas_fp32_including_packing",
                                                       "x_fp32_matmul_including_packing"),
                  ("x_torch_bf16", "x_torch_bf16"))
PAPER_RATIO_FOR = {("xnor", "x_baseline"): "xnor_vs_baseline", ("xnor", "x_cublas_fp32"): "xnor_vs_cublas",
                   ("xnor-paper", "x_baseline"): "xnor_vs_baseline", ("xnor-paper", "x_cublas_fp32"): "xnor_vs_cublas"}


def _paper_ratio(rec: KernelRecord, kernel: str, column: str) -> float | None:
    """The paper's ratio for this kernel and column; only beside GPU records, as the paper timed a GPU."""
    key = PAPER_RATIO_FOR.get((kernel, column))
    return paper.kernel_ratio(key) if key and rec.data["device"]["type"] == "cuda" else None


def kernels_section(records: list[KernelRecord], mlp: list[MlpRecord], out: Path) -> str:
    header = ["record", "device", "shape", "kernel", "label", "status", "exact"] + [c for _, c in KERNEL_COLUMNS] \
        + ["paper_x_baseline", "paper_x_cublas"]
    rows = []
    md_rows = []
    for rec in sorted(records, key=lambda r: (r.device, r.shape, r.rel)):
        for name, e in rec.data["kernels"].items():
            ok = e["status"] == "ok"
            values = [e.get(key) if ok else None for key, _ in KERNEL_COLUMNS]
            paper_base, paper_cublas = (_paper_ratio(rec, name, key) for key in ("x_baseline", "x_cublas_fp32"))
            rows.append([rec.rel, rec.device, rec.shape, name, e.get("label", ""), e["status"],
                         e.get("exact") if ok else None] + [fmt(v, ".6g") if _is_number(v) else None for v in values]
                        + [paper_base, paper_cublas])
            md_rows.append([rec.device, rec.shape, f"{name}: {e.get('label', '')}",
                            fmt(e.get("median_ms"), ".3f") if ok else e["status"],
                            fmt(e.get("including_packing_ms"), ".3f") if ok else "",
                            fmt(e.get("x_baseline"), ".2f") if ok else "",
                            fmt(paper_base, ".0f", "") + ("x" if paper_base else ""),
                            fmt(e.get("x_cublas_fp32"), ".2f") if ok else "",
                            fmt(paper_cublas, ".1f", "") + ("x" if paper_cublas else ""),
                            {True: "yes", False: "NO"}.get(e.get("exact"), "?") if ok else ""])
    write_csv(out / "kernels.csv", header, rows)

    mlp_header = ["record", "device", "variant", "paper_row", "label", "status", "median_ms", "x_baseline",
                  "x_torch", "paper_x_baseline", "test_error_pct", "predictions_differing_from_torch", "model"]
    mlp_rows, mlp_md = [], []
    for rec in sorted(mlp, key=lambda r: (r.device, r.rel)):
        for r in rec.rows:
            x_base, x_torch = rec.speedup(r, "baseline"), rec.speedup(r, "torch")
            # The paper's 7x is (b), the XNOR kernels with the first layer on the baseline kernel, over (a), on a GPU.
            paper_x = paper.kernel_ratio("mlp_xnor_vs_baseline") \
                if r["paper_row"] == "(b)" and rec.device_type == "cuda" else None
            mlp_rows.append([rec.rel, rec.device, r["name"], r["paper_row"], r["label"], r["status"],
                             fmt(r["median_ms"], ".6g"), fmt(x_base, ".4g"), fmt(x_torch, ".4g"), paper_x,
                             fmt(r["test_error_pct"]), r["differing"], rec.model])
            mlp_md.append([rec.device, f"{r['paper_row']} {r['name']}: {r['label']}".strip(),
                           fmt(r["median_ms"], ".1f") if r["status"] == "ok" else r["status"], fmt(x_base, ".2f"),
                           fmt(paper_x, "g") + ("x" if paper_x else ""), fmt(x_torch, ".2f"),
                           fmt(r["test_error_pct"]), fmt(r["differing"], "d")])
    if mlp:
        write_csv(out / "mnist_mlp.csv", mlp_header, mlp_rows)

    ratios = "; ".join(f"{r.value:g}x: {r.claim} ({r.source})" for r in paper.KERNEL_RATIOS)
    parts = ["## Kernel figure (the paper's Figure 3)",
             f"Paper: {ratios}. Ours: the `bnnctl bench` records under `bench/`, per device; a ratio is the "
             "reference kernel's time over the kernel's (higher is faster). The paper's ratios stand beside GPU records "
             "only. On a CPU the 'baseline' is a plain C++ loop and the fp32 reference is torch's matmul, not "
             "cuBLAS: the kernel column says which."]
    if records:
        parts.append(md_table(["device", "m x n x k", "kernel", "ms", "ms incl. packing", "x baseline", "paper",
                               "x fp32 matmul", "paper", "exact"], md_rows))
        parts.append("CSV: `kernels.csv`.")
    else:
        parts.append("No kernel benchmark is recorded (`bnnctl bench --kernel all` writes one): not run.")
    parts.append("### MNIST MLP (the figure's right half)")
    if mlp:
        parts.append(md_table(["device", "variant", "ms (all test images)", "x baseline (a)", "paper",
                               "x torch (d)", "test error %", "predictions differing from torch"], mlp_md))
        parts.append("Accuracies are for: " + "; ".join(f"`{rec.rel}`: {rec.model}" for rec in mlp) + ". "
                     f"Paper: {paper.kernel_ratio('mlp_xnor_vs_baseline'):g}x for (b) over (a), at the same accuracy. "
                     "CSV: `mnist_mlp.csv`.")
    else:
        parts.append("No MNIST MLP benchmark is recorded (`bnnctl bench --model mnist-mlp` writes one): not run.")
    if records or mlp:
        parts.append(_bench_chart(records, mlp, out))
    return "\n\n".join(parts)


def _most_complete(records: list, key: Callable[[Any], Any], ran: Callable[[Any], int]) -> list:
    """Per key, the record in which the most kernels ran, the latest (by date, then path) on ties; in key order."""
    best: dict[Any, Any] = {}
    for rec in sorted(records, key=lambda r: (ran(r), str(r.date), r.rel)):
        best[key(rec)] = rec
    return [best[k] for k in sorted(best)]


def _bars(ax, names: list[str], times: list[float], labels: list[str], title: str,
          colors: dict[str, str] | None = None) -> None:
    colors = colors or {name: f"C{i % 10}" for i, name in enumerate(names)}
    bars = ax.bar(range(len(names)), times, color=[colors[name] for name in names])
    ax.set_yscale("log")
    if times:  # room below the fastest bar, so that its height still reads as a time
        ax.set_ylim(bottom=min(times) / 4, top=max(times) * 2)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("median ms (log scale)")
    ax.set_title(title, fontsize=9)
    for bar, label in zip(bars, labels):
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=6)
    ax.grid(True, axis="y", alpha=0.3)


def _bench_chart(records: list[KernelRecord], mlp: list[MlpRecord], out: Path) -> str:
    """kernels.png: one panel per (device, shape) of matmul times, then one per device of MNIST MLP times."""
    kernel_panels = _most_complete(records, key=lambda r: (r.device, r.shape),
                                   ran=lambda r: sum(e["status"] == "ok" for e in r.data["kernels"].values()))
    mlp_panels = _most_complete(mlp, key=lambda r: r.device, ran=lambda r: sum(x["status"] == "ok" for x in r.rows))
    panels = len(kernel_panels) + len(mlp_panels)
    cols = min(panels, 3)
    rows = -(-panels // cols)
    width, height = max(8.0, 5.0 * cols), 1.0 + 3.9 * rows
    fig = _new_figure(width, height)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    # One color per kernel across the device panels.
    kernel_names = dict.fromkeys(name for rec in kernel_panels for name in rec.data["kernels"])
    colors = {name: f"C{i % 10}" for i, name in enumerate(kernel_names)}
    for ax, rec in zip(axes, kernel_panels):
        ran = [(name, e) for name, e in rec.data["kernels"].items() if e["status"] == "ok"]
        ratio, reference = ("x_baseline", "baseline") if any(n == "baseline" for n, _ in ran) else \
            ("x_cublas_fp32", "fp32 matmul")
        _bars(ax, [name for name, _ in ran], [e["median_ms"] for _, e in ran],
              [f"{e[ratio]:.1f}x" if _is_number(e.get(ratio)) else "" for _, e in ran],
              f"{rec.device}\nmatmul {rec.shape} (label: x {reference})", colors)
    for ax, rec in zip(axes[len(kernel_panels):], mlp_panels):
        ran = [r for r in rec.rows if r["status"] == "ok"]
        reference = "baseline" if rec.ms("baseline") else "torch"
        _bars(ax, [r["name"] for r in ran], [r["median_ms"] for r in ran],
              [f"{fmt(rec.speedup(r, reference), '.1f', '?')}x\n{fmt(r['test_error_pct'], '.2f', '?')}%" for r in ran],
              f"{rec.device}\nMNIST MLP, test images (label: x {reference}, test error)")
    fig.suptitle("median time per kernel; bar label: speed-up over the reference in the panel's title (MLP: "
                 "and the test error)\npaper, GTX750: XNOR 23x the baseline kernel and 3.4x cuBLAS at "
                 "8192^3; MNIST MLP 7x the baseline kernel", fontsize=8)
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.15 / width, bottom=0.7 / height, top=1 - 1.1 / height,
                        wspace=0.3, hspace=1.4 / 3.9)
    save_png(fig, out / "kernels.png")
    used = ", ".join(f"`{rec.rel}`" for rec in [*kernel_panels, *mlp_panels])
    return (f"![kernel times](kernels.png)\n\nChart: per device (and shape) the record in which the most kernels "
            f"ran, the latest on ties: {used}.")


# ============================================================================ memory and energy

MEMORY_LEVELS = paper.ENERGY_MEMORY
FLOAT_MAC_PJ = paper.energy_pj("float32 mult") + paper.energy_pj("float32 add")
# Assumptions, not the paper's: the table has no 1-bit entry. An XNOR-popcount MAC is charged one 8-bit
# integer add, an upper bound (the popcount's adder tree needs about one 1-bit full adder per input bit,
# an 8-bit adder has eight). A real-input MAC of the binarized network (8-bit pixel times a ±1 weight) is
# a signed accumulate: one 32-bit integer add.
BINARY_MAC_PJ = paper.energy_pj("int8 add")
REAL_INPUT_BINARY_WEIGHT_MAC_PJ = paper.energy_pj("int32 add")

ENERGY_MODEL = (
    f"Energy per image, 45 nm figures of the paper's Tables 2 and 3 (Horowitz 2014). Arithmetic: a float32 MAC "
    f"is a float32 multiply and add ({FLOAT_MAC_PJ:g} pJ). In the binarized network an XNOR-popcount MAC is "
    f"charged one 8-bit integer add ({BINARY_MAC_PJ:g} pJ; our assumption, an upper bound: the table has no "
    f"1-bit entry, and a popcount needs about one 1-bit adder per input bit where an 8-bit adder has eight), and "
    f"a first-layer MAC (8-bit pixel, ±1 weight: add or subtract) one 32-bit integer add "
    f"({REAL_INPUT_BINARY_WEIGHT_MAC_PJ:g} pJ). Memory: every stored value (weights, biases, BN statistics) "
    f"read once per image in 64-bit accesses from the smallest memory of Table 3 that holds them all, DRAM "
    f"at 1.3 to 2.6 nJ per access (both ends shown). Activations, BN and max-pooling arithmetic are not counted.")


def memory_level(num_bytes: float) -> tuple[str, float, float]:
    for name, capacity, energy in MEMORY_LEVELS:
        if capacity is None or num_bytes <= capacity:
            return name, energy.pj, energy.pj_high
    raise AssertionError("the last memory level has no capacity limit")


def energy_rows(summary) -> dict[str, Any]:
    """Memory and energy figures of one ModelSummary (see ENERGY_MODEL)."""
    bnn_bits, float_bits = summary.total("bnn_bits"), summary.total("float_bits")
    binary_macs, real_macs = summary.total("binary_macs"), summary.total("real_macs")
    macs = binary_macs + real_macs
    row: dict[str, Any] = {
        "recipe": summary.recipe, "dataset": summary.dataset, "binary_weights": summary.total("binary_weights"),
        "float_values": summary.total("values") - summary.total("binary_weights"),
        "bits_bnn": bnn_bits, "bits_float32": float_bits, "bytes_bnn": bnn_bits / 8, "bytes_float32": float_bits / 8,
        "size_ratio": float_bits / bnn_bits, "macs_binary": binary_macs, "macs_real_input": real_macs,
        "macs_float32_network": macs,
    }
    arithmetic_bnn = binary_macs * BINARY_MAC_PJ + real_macs * REAL_INPUT_BINARY_WEIGHT_MAC_PJ
    arithmetic_float = macs * FLOAT_MAC_PJ
    for net, bits, arithmetic in (("bnn", bnn_bits, arithmetic_bnn), ("float32", float_bits, arithmetic_float)):
        level, low, high = memory_level(bits / 8)
        accesses = math.ceil(bits / 64)
        row[f"memory_{net}"] = level
        row[f"arithmetic_uj_{net}"] = arithmetic * 1e-6
        row[f"memory_uj_low_{net}"] = accesses * low * 1e-6
        row[f"memory_uj_high_{net}"] = accesses * high * 1e-6
        row[f"total_uj_low_{net}"] = (arithmetic + accesses * low) * 1e-6
        row[f"total_uj_high_{net}"] = (arithmetic + accesses * high) * 1e-6
    return row


ENERGY_HEADER = ["recipe", "dataset", "binary_weights", "float_values", "bits_bnn", "bits_float32", "bytes_bnn",
                 "bytes_float32", "size_ratio", "macs_binary", "macs_real_input", "macs_float32_network",
                 "memory_bnn", "arithmetic_uj_bnn", "memory_uj_low_bnn", "memory_uj_high_bnn", "total_uj_low_bnn",
                 "total_uj_high_bnn", "memory_float32", "arithmetic_uj_float32", "memory_uj_low_float32",
                 "memory_uj_high_float32", "total_uj_low_float32", "total_uj_high_float32"]


def _uj_range(low: float, high: float) -> str:
    return f"{low:,.1f}" if abs(high - low) < 0.05 else f"{low:,.1f} – {high:,.1f}"


def memory_energy_section(recipes: dict[str, dict[str, Any]], out: Path, notes: Notes,
                          recipe_paths: dict[str, str]) -> str:
    from .summary import summarize_recipe

    energy_header = ["operation", "bits", "kind", "pj", "pj_high", "source"]
    constants = [[e.operation, e.bits, e.kind, e.pj, e.pj_high, e.source] for e in paper.ENERGY_OPS]
    constants += [[e.operation, e.bits, e.kind, e.pj, e.pj_high, e.source] for _, _, e in MEMORY_LEVELS]
    write_csv(out / "energy_constants.csv", energy_header, constants)

    rows = []
    for name in sorted(recipes):
        try:
            summary = summarize_recipe(recipes[name], recipe_paths[name])
        except UserError as e:
            notes.add(recipe_paths[name], f"no model summary: {e}")
            continue
        rows.append(energy_rows(summary))
    write_csv(out / "memory_energy.csv", ENERGY_HEADER,
              [[fmt(r[k], ".6g") if isinstance(r[k], float) else r[k] for k in ENERGY_HEADER] for r in rows])
    md = md_table(
        ["recipe", "stored values (±1 / 32-bit)", "size BNN / float32", "MACs per image (XNOR / real-input)",
         "memory", "energy per image BNN µJ", "float32 µJ"],
        [[r["recipe"], f"{r['binary_weights']:,} / {r['float_values']:,}",
          f"{r['bytes_bnn'] / 2**20:,.2f} / {r['bytes_float32'] / 2**20:,.2f} MiB ({r['size_ratio']:.1f}x)",
          f"{r['macs_binary']:,} / {r['macs_real_input']:,}", f"{r['memory_bnn']} / {r['memory_float32']}",
          _uj_range(r["total_uj_low_bnn"], r["total_uj_high_bnn"]),
          _uj_range(r["total_uj_low_float32"], r["total_uj_high_float32"])] for r in rows])
    constants_md = md_table(["operation", "energy", "source"],
                            [[e.operation, f"{e.pj:g} pJ" if e.pj == e.pj_high else f"{e.pj:g} – {e.pj_high:g} pJ",
                              e.source] for e in paper.ENERGY_OPS]
                            + [[e.operation, f"{e.pj:g} pJ" if e.pj == e.pj_high else
                                f"{e.pj / 1000:g} – {e.pj_high / 1000:g} nJ", e.source] for _, _, e in MEMORY_LEVELS])
    return "\n\n".join([
        "## Memory and energy per model",
        "From the shipped recipes' model definitions (`bnnctl summary RECIPE` prints the per-layer table behind "
        "each row). A ±1 weight is 1 bit in the binarized network (BNN); biases and BN values stay 32-bit.",
        md, ENERGY_MODEL,
        "The cited constants (the paper's Table 2 has 8- and 32-bit integer and 16- and 32-bit float rows, no "
        "16-bit integer one):", constants_md,
        "CSV: `memory_energy.csv`, `energy_constants.csv`.",
    ])


# ============================================================================ filter repetition

def unique_filters(weight) -> tuple[int, int]:
    """(unique up to sign, unique exactly) 2-D kernels of a conv weight (out, in, kh, kw), summed over inputs.

    The paper's dedup applies each distinct 2-D binary kernel once per input feature map and combines the
    results per output filter; a kernel and its negation count as one, the negation being a sign flip.
    """
    import torch

    from ..core.binarize import sign_pm1

    signs = sign_pm1(weight.detach().float()) > 0          # (out, in, kh, kw) bools, sign(0) = +1
    out_c, in_c = signs.shape[:2]
    flat = signs.reshape(out_c, in_c, -1).permute(1, 0, 2)  # (in, out, k*k)
    weights = 2 ** torch.arange(flat.shape[-1], dtype=torch.int64)
    codes = (flat.to(torch.int64) * weights).sum(-1)        # (in, out) kernel codes
    full = int(weights.sum())
    canonical = torch.minimum(codes, full - codes)          # a kernel and its negation share a code
    exact = sum(len(torch.unique(codes[i])) for i in range(in_c))
    up_to_sign = sum(len(torch.unique(canonical[i])) for i in range(in_c))
    return up_to_sign, exact


def random_unique_share(out_channels: int, kernel_elements: int) -> float:
    """Expected unique-up-to-sign share of out_channels uniformly random ±1 kernels of kernel_elements bits."""
    classes = 2 ** (kernel_elements - 1)
    return classes * (1 - (1 - 1 / classes) ** out_channels) / out_channels


FILTER_HEADER = ["run", "variant", "layer", "in_channels", "out_channels", "kernel", "input", "kernels_2d",
                 "unique_up_to_sign", "unique_pct", "unique_exact", "unique_exact_pct", "random_weights_unique_pct",
                 "xnor_popcount_ops", "ops_with_dedup", "ops_saved"]


def filter_rows(run: Run, notes: Notes) -> list[list[Any]] | None:
    """One row per binary conv layer of the run's best.pt; None (with a note) if it cannot be read."""
    from torch import nn

    from ..core.layers import BinaryLayer
    from .summary import summarize_model
    from ..runs import load_model

    try:
        record, model, _ = load_model(run.path)
        infos = summarize_model(model, tuple(record["input_shape"]))
    except Exception as e:  # noqa: BLE001 - a broken checkpoint is reported, never fatal
        notes.add(f"{run.rel}/best.pt", f"not a readable bnnctl model ({type(e).__name__}): no filter count")
        return None
    rows = []
    for info, module in zip(infos, model):
        if not (isinstance(module, BinaryLayer) and isinstance(module, nn.Conv2d)):
            continue
        out_c, in_c, kh, kw = module.weight.shape
        up_to_sign, exact = unique_filters(module.weight)
        total = out_c * in_c
        spatial = info.macs // (total * kh * kw)  # output positions per image
        dedup = up_to_sign * kh * kw * spatial
        rows.append([run.rel, run.get("variant"), info.index, in_c, out_c, f"{kh}x{kw}",
                     "±1" if info.binary_input else "real", total, up_to_sign, fmt(100 * up_to_sign / total),
                     exact, fmt(100 * exact / total), fmt(100 * random_unique_share(out_c, kh * kw)),
                     info.macs, dedup, info.macs - dedup])
    return rows


def filter_section(runs: list[Run], out: Path, notes: Notes) -> str:
    convnets = [r for r in runs if _arch(r) == "convnet"]
    rows, md, missing = [], [], []
    for run in convnets:
        if not (run.path / "best.pt").is_file():
            missing.append(run.rel)
            continue
        layer_rows = filter_rows(run, notes)
        if layer_rows is None:
            missing.append(run.rel)
            continue
        rows += layer_rows
        shares = [100 * r[8] / r[7] for r in layer_rows]
        binary = [r for r in layer_rows if r[6] == "±1"]
        saved, ops = sum(r[15] for r in binary), sum(r[13] for r in binary)
        md.append([f"`{run.rel}`", run.get("variant"), len(layer_rows), fmt(sum(shares) / len(shares)),
                   ", ".join(r[9] for r in layer_rows), f"{ops:,}", f"{saved:,}",
                   fmt(ops / (ops - saved) if ops > saved else None, ".2f")])
    write_csv(out / "filter_repetition.csv", FILTER_HEADER, rows)
    parts = ["## Filter repetition",
             f"Paper ({paper.UNIQUE_FILTERS_SOURCE}): {paper.UNIQUE_FILTERS_PCT:g}% unique filters per layer on "
             f"average in the CIFAR-10 ConvNet, so {paper.UNIQUE_FILTERS_OPS_FACTOR:g}x fewer XNOR-popcount "
             "operations. Ours, from each trained ConvNet's `best.pt`: per conv layer, the 2-D 3x3 binary kernels "
             "applied to each input feature map, counted once per distinct kernel up to sign (a kernel and its "
             "negation are one), summed over input maps, as a share of out x in kernels. Dedup runs each distinct "
             "kernel once per input map; the additions that combine the results are not counted (nor are they "
             "in the paper's factor). `filter_repetition.csv` also has the exact-match count and the share that "
             "uniformly random ±1 kernels would give."]
    if md:
        parts.append(md_table(["run", "variant", "conv layers", "unique % (mean over layers)", "unique % per layer",
                               "XNOR-popcount ops per image (±1-input layers)", "saved by dedup",
                               "factor"], md))
    if missing:
        parts.append("No checkpoint (best.pt is git-ignored and was not found, or unreadable) for: "
                     + ", ".join(f"`{m}`" for m in missing) + ".")
    if not convnets:
        parts.append("No trained ConvNet is recorded: not run.")
    parts.append("CSV: `filter_repetition.csv`.")
    return "\n\n".join(parts)


def _arch(run: Run) -> str | None:
    """The model architecture of a run, from its recipe.yaml (None if unreadable)."""
    import yaml

    try:
        recipe = yaml.safe_load((run.path / "recipe.yaml").read_text())
        return recipe["model"]["arch"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


# ============================================================================ the report

def load_recipes(directory: Path | None, notes: Notes) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    from ..recipe import RecipeError, load_recipe, recipes_dir

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
        recipes[recipe["name"]] = recipe
        paths[recipe["name"]] = path.name
    return recipes, paths


def clear_owned(out: Path) -> None:
    for pattern in OWNED_PATTERNS:
        for path in out.glob(pattern):
            if path.is_file():
                path.unlink()


def build_report(results: Path, out: Path, recipes_dir: Path | None = None) -> tuple[Path, Notes]:
    """Write the report into out; returns (REPORT.md path, notes of what was skipped)."""
    if not results.is_dir():
        raise ReportError(f"the results folder {results} does not exist.")
    out.mkdir(parents=True, exist_ok=True)
    clear_owned(out)
    notes = Notes()
    recipes, recipe_paths = load_recipes(recipes_dir, notes)
    runs = find_runs(results, notes, exclude=[out, results / "bench"])
    kernel_records, mlp_records, cpu_peak_records = find_benches(results, notes)
    cells, others = table1_cells(runs)

    sections = [
        "# bnnctl report",
        f"Regenerated by `bnnctl report` from the runs and benchmarks recorded under the results folder and from "
        f"the shipped recipes' models; the paper's numbers ({paper.PAPER}) are cited beside ours, each with its "
        f"place in the paper, and are the only numbers not computed here.",
        table1_section(cells, recipes, out),
        figure1_section(runs, out),
        kernels_section(kernel_records, mlp_records, out),
        cpu_peaks_section(cpu_peak_records, notes),
        memory_energy_section(recipes, out, notes, recipe_paths),
        filter_section(runs, out, notes),
        runs_section(runs, others, out),
    ]
    skipped = notes.sorted()
    sections.append("## Skipped or questioned files\n\n" + (
        "\n".join(f"- `{path}`: {why}" for path, why in skipped) if skipped else "None."))
    report = out / REPORT_FILE
    report.write_text("\n\n".join(section for section in sections if section) + "\n")
    return report, notes


def run_report(results: Path, out: Path, recipes: Path | None, console) -> Path:
    report, notes = build_report(results, out, recipes)
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    console.print(f"wrote {report} and {len(written) - 1} more files in {out}: {', '.join(written)}",
                  highlight=False)
    for path, why in notes.sorted():
        console.print(f"[yellow]skipped or questioned:[/] {path}: {why}", highlight=False)
    return report
