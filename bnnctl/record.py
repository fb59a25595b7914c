"""``bnnctl record``: make a run or a bench record part of the committed record, on purpose.

Training writes runs under ``runs/`` and benches under ``runs/bench/`` (both git-ignored), so nothing a
user runs changes the tracked ``results/``. This command copies a finished run's text records
(``recipe.yaml``, ``metrics.csv``, ``result.json``; never checkpoints) into
``results/<recipe>/<run id>/``, or a bench record into ``results/bench/``, after verifying them; it never
replaces a file that is already there. ``bnnctl report`` then counts them.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DamagedFile, UserError
from .runs import (METRICS_FILE, RECIPE_FILE, RESULT_FILE, RunLock, check_metrics, check_name, check_result,
                   read_result)

RUN_FILES = (RECIPE_FILE, METRICS_FILE, RESULT_FILE)
# A bench record is a few kB to a few hundred kB of JSON.
BENCH_BYTES_MAX = 16 << 20


def _copy_run(run: Path, results: Path) -> Path:
    result = read_result(run / RESULT_FILE)  # verified against its checksum
    problem = check_result(result)
    if problem:
        raise DamagedFile(f"{run / RESULT_FILE} {problem}; only a complete run record can be recorded.")
    check_metrics(run, result)  # the metrics.csv written with that record, where it records one
    if result["status"] == "running":
        RunLock(run).acquire().release()  # a run still training holds its lock: this stops with exit 5
    if not (run / RECIPE_FILE).is_file():
        raise UserError(f"{run} has no {RECIPE_FILE}; a run is recorded with the recipe it ran.")
    name = check_name(result["recipe"], "the run's recipe name")
    target = results / name / check_name(run.name, "the run folder's name")
    if target.exists():
        raise UserError(f"{target} already exists; the record keeps what it holds (give the run another folder "
                        f"name to record it beside).")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        for file_name in RUN_FILES:
            if (run / file_name).is_file():
                shutil.copy2(run / file_name, staging / file_name)
        os.rename(staging, target)  # the folder appears whole, or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_bench(path: Path, results: Path) -> Path:
    if path.stat().st_size > BENCH_BYTES_MAX:
        raise UserError(f"{path} is larger than any bench record; not recorded.")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(f"{path} is not readable JSON ({type(e).__name__}); not recorded.") from None
    if not (isinstance(data, dict) and isinstance(data.get("kind"), str)):
        raise UserError(f"{path} is not a bnnctl bench record (no 'kind'); not recorded.")
    target = results / "bench" / check_name(path.name, "the bench record's file name")
    if target.exists():
        raise UserError(f"{target} already exists; the record keeps what it holds.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        shutil.copy2(path, tmp)
        os.link(tmp, target)  # fails rather than replace a file that appeared meanwhile
    finally:
        tmp.unlink(missing_ok=True)
    return target


def record(paths: list[Path], results: Path) -> list[Path]:
    """Copy each run folder or bench JSON into results; returns where each went. Checks all before copying."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist.")
        if not (path.is_dir() or path.suffix == ".json"):
            raise UserError(f"{path} is neither a run folder nor a bench record (.json).")
        if path.resolve().is_relative_to(results.resolve()):
            raise UserError(f"{path} is already inside {results}.")
    return [_copy_run(p, results) if p.is_dir() else _copy_bench(p, results) for p in paths]
