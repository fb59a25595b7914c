"""Reading back what training saved: a checkpoint or model record, and the trained model in it.

The files themselves (their names, formats and versions) are the run folder's, in ``bnnctl.runs``;
their checksums are ``bnnctl.files``'. Evaluation, export, the benches and the report load a trained
model through ``load_model``; training resumes through ``load_checkpoint``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .core.models import build_model
from .errors import DamagedFile, UserError
from .files import load_torch_file
from .recipe import check_fits_memory, resolve
from .runs import BEST_FILE, MODEL_FORMAT, READABLE_VERSIONS, RESULT_FILE, read_result


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


def load_model(run: Path) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """(model record, model in eval mode on the CPU, recorded result or {}) of a run dir or best.pt."""
    path = run / BEST_FILE if run.is_dir() else run
    record = load_checkpoint(path, MODEL_FORMAT)
    recipe = resolve(record["recipe"], str(path))
    shape, classes = tuple(record["input_shape"]), record["num_classes"]
    check_fits_memory(recipe, str(path), input_shape=shape, num_classes=classes, training=False)  # before building it
    model = build_model(recipe.model, shape, classes)
    model.load_state_dict(record["model"])
    model.eval()
    result_path = path.parent / RESULT_FILE
    recorded = read_result(result_path) if result_path.is_file() else {}
    return record, model, recorded
