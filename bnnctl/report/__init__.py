"""``bnnctl report``: the paper's tables and figures, regenerated from what is recorded.

Reads the runs under ``results/`` (``<recipe>/<run-id>/result.json`` and ``metrics.csv``, see
``bnnctl/runs.py``), the benchmark records under ``results/bench/*.json`` (see ``bnnctl/bench/``), the
shipped recipes' model definitions and, where present, the runs' ``best.pt``. Writes into ``--out``
(default ``results/report/``):

* ``REPORT.md``            a summary, then everything below, with the rules used to pick and compute each number;
* ``table1.csv``           Table 1: per cell the mean ± standard deviation of the faithful runs of the
                           shipped recipe (``faithful.py``) beside the paper, and the cited rows;
* ``runs.csv``             every recorded run, faithful or with the keys in which it differs;
* ``figure1_<variant>.png`` training loss and validation error against epochs, one per dataset variant;
* ``kernels.csv``          every kernel timing per device and shape;
* ``figure3_<device>.png`` the paper's Figure 3 (product time, MLP time, MLP test error) per device;
* ``mnist_mlp.csv``        the MNIST MLP timings of ``bnnctl bench --model mnist-mlp``, where recorded;
* ``latency.csv``          one call's latency per variant and thread count (``bench --model ... --batch N``) and its
                           share of the memory floor, where recorded;
* ``memory_energy.csv``, ``energy_constants.csv``   per model, from the model definitions;
* ``filter_repetition.csv``  unique binary 3x3 filters per conv layer of trained ConvNets.

The only typed-in numbers are the paper's (``paper.py``). Output is deterministic: no dates, sorted
orders, fixed number formats and PNG metadata, so running it twice gives identical files. The report
owns only the files it wrote (listed in ``.bnnctl-report.json`` in ``--out``): it replaces or removes
those, and refuses to replace any other file. A file that
cannot be read, or lacks what the report needs, is listed by path under "Skipped" and left out.

One module per section, each built on ``records`` (reading the records, writing tables and figures);
this module puts the sections together.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .. import paper
from .curves import figure1_section
from .figure3 import figure3_section
from .filters import filter_section, random_unique_share, unique_filters
from .kernels import (convnet_section, cpu_peaks_section, find_benches, kernels_section, latency_section,
                      xnor_share_section)
from .memory import memory_energy_section
from .records import Notes, ReportError, Run, find_runs, judge_runs, load_recipes
from .table1 import modified_section, overview_section, runs_section, table1_cells, table1_section

__all__ = ["MANIFEST_FILE", "Notes", "REPORT_FILE", "ReportError", "Run", "build_report", "random_unique_share",
           "run_report", "unique_filters"]

REPORT_FILE = "REPORT.md"
# The files the report wrote into its folder, by name with their SHA-256: a later report replaces or
# removes only these, never a file it did not write.
MANIFEST_FILE = ".bnnctl-report.json"
MANIFEST_FORMAT = "bnnctl-report-files"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def owned_files(out: Path) -> dict[str, str]:
    """{name: sha256} of the files an earlier report wrote into out (empty without a manifest)."""
    path = out / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"] if data.get("format") == MANIFEST_FORMAT else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        files = None
    if not (isinstance(files, dict) and all(isinstance(k, str) and "/" not in k and k not in ("", ".", "..")
                                            for k in files)):
        raise ReportError(f"{path} is not a bnnctl report's list of its files; remove it only if the folder holds "
                          f"no file of yours, or choose another --out.")
    return files


def publish(staged: Path, out: Path) -> list[str]:
    """Move the staged report into out: refuses before touching anything if a file of the same name there
    was not written by a report; removes the files an earlier report wrote that this one does not."""
    owned = owned_files(out)
    names = sorted(p.name for p in staged.iterdir())
    foreign = [n for n in names if (out / n).exists() and n not in owned]
    if foreign:
        raise ReportError(f"{out / foreign[0]} was not written by bnnctl report, and the report would replace it; "
                          f"move it away or choose another --out.")
    for name in names:
        os.replace(staged / name, out / name)
    for name in sorted(set(owned) - set(names)):
        # Only a file still as the report wrote it: the list is data, and never a reason to delete a user's file.
        if (out / name).is_file() and _digest(out / name) == owned[name]:
            (out / name).unlink()
    manifest = {"format": MANIFEST_FORMAT, "files": {n: _digest(out / n) for n in names}}
    tmp = out / f".{MANIFEST_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST_FILE)
    return names


def build_report(results: Path, out: Path, recipes_dir: Path | None = None) -> tuple[Path, Notes]:
    """Write the report into out; returns (REPORT.md path, notes of what was skipped)."""
    if not results.is_dir():
        raise ReportError(f"the results folder {results} does not exist.")
    out.mkdir(parents=True, exist_ok=True)
    owned_files(out)  # a damaged manifest is refused before any work
    with tempfile.TemporaryDirectory(prefix=".report-", dir=out) as tmp:
        staged = Path(tmp)
        notes = _write_sections(results, out, staged, recipes_dir)
        publish(staged, out)
    return out / REPORT_FILE, notes


def _write_sections(results: Path, out: Path, staged: Path, recipes_dir: Path | None) -> Notes:
    notes = Notes()
    recipes, recipe_paths = load_recipes(recipes_dir, notes)
    runs = find_runs(results, notes, exclude=[out, results / "bench"])
    judge_runs(runs, recipes)
    benches = find_benches(results, notes)
    cells, modified, others = table1_cells(runs, recipes)

    sections = [
        "# bnnctl report",
        overview_section(cells, modified, recipes),
        f"Regenerated by `bnnctl report` from the runs and benchmarks recorded under the results folder and from "
        f"the shipped recipes' models; the paper's numbers ({paper.PAPER}) are cited beside ours, each with its "
        f"place in the paper, and are the only numbers not computed here.",
        table1_section(cells, recipes, staged),
        modified_section(modified, recipes),
        figure1_section(runs, staged),
        kernels_section(benches.kernels, benches.mlp, staged),
        figure3_section(benches.kernels, benches.mlp, staged),
        convnet_section(benches.convnets, staged),
        latency_section(benches.latency, staged),
        cpu_peaks_section(benches.cpu_peaks, notes),
        xnor_share_section(benches.xnor_shares, notes),
        memory_energy_section(recipes, staged, notes, recipe_paths),
        filter_section(runs, staged, notes),
        runs_section(runs, others, staged),
    ]
    skipped = notes.sorted()
    sections.append("## Skipped or questioned files\n\n" + (
        "\n".join(f"- `{path}`: {why}" for path, why in skipped) if skipped else "None."))
    (staged / REPORT_FILE).write_text("\n\n".join(section for section in sections if section) + "\n")
    return notes


def run_report(results: Path, out: Path, recipes: Path | None, console) -> Path:
    report, notes = build_report(results, out, recipes)
    written = sorted(owned_files(out))
    console.print(f"wrote {report} and {len(written) - 1} more files in {out}: {', '.join(written)}",
                  highlight=False)
    for path, why in notes.sorted():
        console.print(f"[yellow]skipped or questioned:[/] {path}: {why}", highlight=False)
    return report
