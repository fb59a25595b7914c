"""Reading back what training saved: a checkpoint or model record, and the trained model in it.

The files themselves (their names, formats and versions) are the run folder's, in ``bnnctl.runs``;
their checksums are ``bnnctl.files``'. Evaluation, export, the benches and the report load a trained
model through ``load_model``; training resumes through ``load_run_checkpoint``. Both refuse a file
that lies in a run folder but was written by another run (``check_belongs``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .core.models import build_model
from .errors import DamagedFile, UserError
from .files import load_torch_file
from .recipe import check_fits_memory, resolve
from .runs import (BEST_FILE, CHECKPOINT_FILE, CHECKPOINT_FORMAT, MODEL_FORMAT, READABLE_VERSIONS, RECIPE_FILE,
                   RESULT_FILE, RUN_IDENTITY, check_metrics, read_result)


def load_checkpoint(path: Path, expected: str) -> dict[str, Any]:
    """A checkpoint or model record bnnctl wrote, its checksum and format verified; else one sentence."""
    state, checked = load_torch_file(path, expected)
    if not isinstance(state, dict) or state.get("format") != expected:
        raise UserError(f"{path} is not a {expected} file.")
    version = state.get("version")
    if version not in READABLE_VERSIONS:
        raise UserError(f"{path} has format version {version}; this bnnctl reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}.")
    if version >= 2 and not checked:
        raise DamagedFile(f"{path} is damaged: a version {version} file must carry a checksum and this one has "
                          f"none; delete it or restore it from a copy.")
    return state


def _identity(state: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The run identity a checkpoint or model record carries, None for files written before they carried one."""
    identity = state.get(RUN_IDENTITY)
    if identity is None:
        return None
    if not (isinstance(identity, dict) and isinstance(identity.get("id"), str)
            and isinstance(identity.get("uid"), (str, type(None)))
            and isinstance(identity.get("experiment_sha256"), str)):
        raise DamagedFile(f"{path} is damaged: its run identity is not the one bnnctl writes; delete it or restore "
                          f"it from a copy.")
    return identity


def check_belongs(state: dict[str, Any], path: Path, run_dir: Path) -> dict[str, Any] | None:
    """Refuse a checkpoint or model record that lies in a run folder (one with a recipe.yaml or result.json) but
    was written by another run; returns the folder's result.json (verified) or None.

    A run is the random uid its result.json records, its recipe's experiment digest and, where no uid is
    recorded to compare with (no result.json yet, or a run started before uids), its folder's name. A whole
    run folder copied or renamed keeps its files together; a file copied in from another run does not pass.
    Files from before runs had a uid match a folder whose result.json records none.
    """
    result_path = run_dir / RESULT_FILE
    result = read_result(result_path) if result_path.is_file() else None
    if result is None and not (run_dir / RECIPE_FILE).is_file():
        return None  # a file on its own, not in a run folder: nothing to belong to
    identity = _identity(state, path)
    recorded_uid = None if result is None else result.get("run_uid")
    problem = None
    if identity is not None and recorded_uid is None and identity["id"] != run_dir.name:
        problem = f"it was written by run {identity['id']!r}"
    elif result is not None and (identity or {}).get("uid") != recorded_uid:
        problem = ("it carries no run uid and the run records one" if identity is None or identity["uid"] is None
                   else f"it was written by run {identity['id']!r} with uid {identity['uid'][:12]}, and this run's "
                        f"uid is {str(recorded_uid)[:12]}")
    elif (identity is not None and result is not None and result.get("experiment_sha256") is not None
          and identity["experiment_sha256"] != result["experiment_sha256"]):
        problem = "it was trained on a recipe of another experiment"
    if problem is not None:
        raise UserError(f"{path} does not belong to the run in {run_dir}: {problem}; bnnctl uses only a run's own "
                        f"files (restore this one, or use the run it came from).")
    return result


def load_run_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The run folder's checkpoint.pt, verified and checked to be this run's, for ``--resume``."""
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path, CHECKPOINT_FORMAT)
    check_belongs(state, path, run_dir)
    return state


def load_model(run: Path) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """(model record, model in eval mode on the CPU, recorded result or {}) of a run dir or best.pt."""
    path = run / BEST_FILE if run.is_dir() else run
    record = load_checkpoint(path, MODEL_FORMAT)
    recorded = check_belongs(record, path, path.parent)
    if recorded is not None:
        check_metrics(path.parent, recorded)
    recipe = resolve(record["recipe"], str(path))
    shape, classes = tuple(record["input_shape"]), record["num_classes"]
    check_fits_memory(recipe, str(path), input_shape=shape, num_classes=classes, training=False)  # before building it
    model = build_model(recipe.model, shape, classes)
    model.load_state_dict(record["model"])
    model.eval()
    return record, model, recorded or {}
