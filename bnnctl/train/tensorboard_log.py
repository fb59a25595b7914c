"""``bnnctl train --tensorboard``: each epoch's curves as TensorBoard events in the run folder.

An epoch-end hook (``loop.EpochEndHook``) writes the numbers of the epoch's ``metrics.csv`` row (training
and validation loss, validation and test error, LR) at step = epoch into ``<run>/tensorboard/``, on rank 0
only, flushed every epoch so that a stopped run keeps them. A resumed run's first epoch is its writer's
purge step: what a stopped process logged after the checkpoint the run resumes from is hidden, so every
epoch shows once, as ``metrics.csv`` has it. The log is no part of the experiment: it is an option of the
command, not a recipe key, so the recorded recipe and its experiment digest are the same with it or without.
"""
from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..runs import TENSORBOARD_DIR

# TensorBoard tag -> the metrics.csv column it plots
SCALARS = {"loss/train": "train_loss", "loss/valid": "valid_loss", "error_pct/valid": "valid_error_pct",
           "error_pct/test": "test_error_pct", "lr": "lr"}
INSTALL = "pip install 'bnnctl[tensorboard]' (or pip install tensorboard)"


def summary_writer_class() -> type:
    """torch's SummaryWriter; a UserError naming the install command where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"--tensorboard writes TensorBoard event files, which needs the tensorboard package; "
                        f"install it with {INSTALL}, or leave --tensorboard out.") from None
    return SummaryWriter


class TensorBoardLog:
    """The epoch-end hook; ``close`` when training ends, however it ends."""

    def __init__(self) -> None:
        self.writer_class = summary_writer_class()  # before the run starts: a missing package stops it there
        self.writer = None

    def __call__(self, trainer, row: dict[str, Any], times) -> None:
        if not trainer.ranks.is_main:
            return
        if self.writer is None:
            self.writer = self.writer_class(log_dir=str(trainer.run_dir / TENSORBOARD_DIR), purge_step=row["epoch"])
        for tag, column in SCALARS.items():
            self.writer.add_scalar(tag, row[column], global_step=row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
