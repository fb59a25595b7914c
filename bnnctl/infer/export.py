"""``bnnctl export``: a trained run as a deployable 1-bit model, written as a ``.bnnx`` file.

The folding is ``fold``'s, the file ``bnnx``'s; this module is the command: it loads the run, adds the
model's fitted input preprocessing (refitted from the training split exactly as training fitted it, so
that the file runs on raw images alone), writes and reads back the file, and records its size against
the float32 checkpoint. It replaces only what an
export wrote: an existing file at ``-o`` must be a readable bnnctl export (and the record beside it an
export record), never a run's checkpoint, best model, metrics or result, nor any file of the user's.
"""
from __future__ import annotations

import json
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoints import load_model
from rich.console import Console

from ..data import DataError, exported_preprocessing
from ..errors import EnvironmentFailure
from ..files import atomic_write_text, remove_stale_temporaries
from ..progress import counting
from ..recipe import resolve_data
from ..provenance import git_commit
from .bnnx import EXPORT_SUFFIX, EXPORT_VERSION, load_export, save_export
from .exported import ExportedModel, ExportedPreprocessing, ExportError
from .fold import export_model


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _output_path(out: Path) -> Path:
    """The file to write: ``out``, or ``out/model.bnnx`` when out is a folder; missing folders are created."""
    if out.is_dir():
        out = out / f"model{EXPORT_SUFFIX}"
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ExportError(f"cannot write {out}: a file stands where its folder {folder} (or one above it) "
                          "should be.") from None
    except OSError as e:
        raise EnvironmentFailure(f"could not create the folder {folder} for {out.name}: "
                                 f"{e.strerror or type(e).__name__}.") from None
    return out


def _is_export_record(path: Path) -> bool:
    with suppress(OSError, UnicodeDecodeError, ValueError):
        data = json.loads(path.read_text())
        return isinstance(data, dict) and {"export", "export_bytes", "format_version"} <= data.keys()
    return False


def _is_export(path: Path) -> bool:
    with suppress(ExportError):
        load_export(path, Console(quiet=True))
        return True
    return False


def _check_replaceable(out: Path, record_path: Path) -> None:
    """Refuse, before anything is written, to replace a file that no export wrote."""
    checks = ((out, "a bnnctl export", _is_export), (record_path, "an export record", _is_export_record))
    for path, what, ours in checks:
        if path.is_dir():
            raise ExportError(f"cannot write {path}: it is a folder.")
        if path.exists() and not ours(path):
            raise ExportError(f"{path} exists and is not {what}, so export does not replace it; choose another -o "
                              f"(or move that file away).")


def _preprocessing(exported: ExportedModel, data_dir: Path | None, console) -> ExportedPreprocessing | None:
    """The model's fitted preprocessing for its export, or None (with a note) where the training images it is
    fitted on are not at hand: such an export runs only where its preprocessing is given."""
    if exported.data is None:
        return None
    cfg = resolve_data(exported.data, "the run's recipe")
    try:
        return ExportedPreprocessing(cfg.preprocess, exported_preprocessing(cfg, data_dir))
    except DataError as e:
        console.print(f"[yellow]note:[/] the export carries no {cfg.preprocess} preprocessing, which is fitted on the "
                      f"training images ({e}); engines will need it given, so export again with --data-dir naming "
                      "them.", highlight=False, soft_wrap=True)
        return None


def run_export(run: Path, out: Path | None, console, data_dir: Path | None = None) -> dict[str, Any]:
    """``bnnctl export RUN [-o FILE] [--data-dir DIR]``: export, write, print and record the size against best.pt.

    ``-o`` may name a file in a folder that does not exist yet (it is created) or a folder (the export
    goes there as model.bnnx). ``data_dir`` holds the training images a fitted preprocessing is refitted on."""
    record, model, _ = load_model(run)
    checkpoint = run / "best.pt" if run.is_dir() else run
    out = _output_path(Path(out)) if out is not None else checkpoint.parent / f"model{EXPORT_SUFFIX}"
    record_path = out.parent / f"{out.stem}.export.json"
    _check_replaceable(out, record_path)
    remove_stale_temporaries(out.parent, [out.name, record_path.name])  # of an export killed while writing
    with counting(console, "folding layer 1", None) as advance:  # then writing and reading back: 2 more steps
        exported = export_model(record, model, on_layer=lambda done, layers: advance(
            description=f"folding layer {done + 1}" if done < layers else f"writing {out.name}", total=layers + 2))
        exported.preprocessing = _preprocessing(exported, data_dir, console)
        size = save_export(exported, out)
        advance(description=f"reading {out.name} back")
        load_export(out)  # what was written reads back
        advance()
    float_params = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    binary_layer_float_bytes = 4 * exported.binary_weights
    summary = {
        "export": str(out), "export_bytes": size, "format_version": EXPORT_VERSION,
        "float32_checkpoint": str(checkpoint), "float32_checkpoint_bytes": checkpoint.stat().st_size,
        "times_smaller_than_checkpoint": checkpoint.stat().st_size / size,
        "float32_model_bytes": 4 * float_params, "times_smaller_than_float32_model": 4 * float_params / size,
        "binary_weights": exported.binary_weights,
        "binary_weights_bytes_packed": sum(layer.weight_bits.numel() * 8 for layer in exported.layers),
        "binary_weights_bytes_float32": binary_layer_float_bytes,
        "input_encoding": exported.input_encoding,
        "preprocessing": exported.preprocessing.kind if exported.preprocessing is not None else None,
        "layers": [layer.describe() for layer in exported.layers],
        "epoch": record.get("epoch"), "bnnctl": __version__, "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(record_path, json.dumps(summary, indent=2) + "\n")
    console.print(f"exported {checkpoint} (epoch {record.get('epoch')}) to {out}: {_megabytes(size)}, "
                  f"[bold]{summary['times_smaller_than_checkpoint']:.1f}x smaller[/] than the float32 checkpoint "
                  f"({_megabytes(summary['float32_checkpoint_bytes'])}); binary weights "
                  f"{_megabytes(summary['binary_weights_bytes_packed'])} packed vs "
                  f"{_megabytes(binary_layer_float_bytes)} as float32; recorded in {record_path}", highlight=False)
    return summary
