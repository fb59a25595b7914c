"""The training loop: one recipe in, one recorded run out (the run's files: ``bnnctl.runs``).

Every file is written atomically (temporary file, then rename), so Ctrl-C or a kill at any
moment leaves a run that ``--resume`` continues from its last finished epoch. On the CPU a
resumed run ends with exactly the numbers of an uninterrupted one: the checkpoint carries
the random states of dropout, stochastic binarization and the data order.

The step itself (model, forward, loss, optimizer, clipping, the fast switches) is built by
``step.build_step``; the Trainer runs epochs with it and records them. The hot loop keeps to
the device: the dataset can live there, batches are drawn by an on-device permutation, and the
loss is summed on the device and read once per epoch. The ``fast`` section of a recipe
switches on what else removes overhead without touching the paper's semantics (see
``FAST_PRESETS``); ``distributed`` splits a run across processes.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from ..core.evaluation import eval_sums
from ..core.models import count_parameters
from ..data import Splits, load_splits
from ..faithful import all_differences, experiment_fields
from ..errors import (EXIT_DIVERGED, EXIT_INTERRUPTED, EnvironmentFailure, UserError, is_out_of_memory,
                      out_of_memory, out_of_memory_as_failure)
from ..allocator import use_huge_pages
from ..checkpoints import load_run_checkpoint
from ..files import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from ..optim import lr_at, set_lr
from ..progress import progress_bar
from ..provenance import command_line, environment, hardware, resolve_device
from ..recipe import Recipe, check_memory_available, dump_recipe, load_recipe, resolve
from ..runs import (BEST_FILE, CHECKPOINT_FILE, CHECKPOINT_FORMAT, FORMAT_VERSION, METRICS_FILE, MODEL_FORMAT,
                    RECIPE_FILE, RESULT_FILE, RUN_IDENTITY, RunLock, new_run_dir, recipe_for_run, write_result)
from . import distributed, elastic
from .distributed import SINGLE, Ranks
from .fast import pretransformed
from .step import build_step
from .tensorboard_log import TensorBoardLog


class TrainingDiverged(UserError):
    exit_code = EXIT_DIVERGED


@dataclass
class EpochTimes:
    """Where an epoch's wall time went (``perf_counter`` seconds); what an epoch-end hook receives.

    ``training_s`` and ``evaluation_s`` (valid and test, device synchronized) add up to the row's
    ``epoch_time_s``; ``best_save_s`` is the best.pt write (0 when the epoch did not improve),
    ``records_s`` the metrics, result and (where ``checkpointed``) checkpoint writes; ``ended`` is
    the clock when its records were written.
    """

    epoch: int
    training_s: float
    evaluation_s: float
    best_save_s: float
    records_s: float
    checkpointed: bool
    ended: float


# called on every rank after each epoch's records are written, with the epoch's metrics row
EpochEndHook = Callable[["Trainer", dict[str, Any], EpochTimes], None]


class Trainer:
    """Holds a run's state; ``fit`` trains from ``self.epoch`` to the recipe's last epoch.

    The step it runs comes from ``step.build_step``. In a run of several processes (``ranks``)
    every rank builds a Trainer; they train one model through DDP, and rank 0 alone writes files.
    ``on_epoch_end`` hooks see each epoch's row and where its time went (``EpochTimes``).
    """

    def __init__(self, recipe: Recipe, splits: Splits, device: torch.device, run_dir: Path,
                 console: Console, command: str, ranks: Ranks = SINGLE, on_epoch_end: Sequence[EpochEndHook] = ()):
        self.recipe, self.splits, self.device, self.run_dir = recipe, splits, device, run_dir
        self.console, self.command, self.ranks = console, command, ranks
        self.on_epoch_end = list(on_epoch_end)
        self.step = build_step(recipe, splits.input_shape, splits.num_classes, device, ranks)
        self.model, self.optimizer = self.step.model, self.step.optimizer
        # The data order has its own generator so that it is saved and restored with the run. It
        # is seeded alike on every rank: all draw the same permutation and take their slices.
        self.shuffle_gen = torch.Generator(device=device if recipe.fast.data_on_device else "cpu")
        self.shuffle_gen.manual_seed(recipe.seed + 1)
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "valid_error_pct": math.inf, "test_error_pct": None}
        self.wall_time = 0.0
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # Read once: the code this process runs is the commit checked out when it started, not
        # whatever HEAD has moved on to by the time an epoch ends.
        self.environment = environment(device)
        # Whether this run is the shipped recipe's experiment, judged against the recipes this code ships.
        self.experiment = experiment_fields(recipe.to_dict(), splits.dataset, splits.variant)
        # A resumed run keeps the command and environment it started with; each resume is listed.
        self.resumes: list[dict[str, Any]] = []
        # The epoch the run folder's checkpoint.pt holds (None: none written yet), what --resume continues after.
        self.checkpoint_epoch: int | None = None
        # Drawn when the run starts, kept by its resumes: its files carry it, so another run's are told apart.
        self.run_uid: str | None = secrets.token_hex(16)

    # -- state -------------------------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.shuffle_gen.set_state(state["shuffle"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def identity(self) -> dict[str, Any]:
        """What the run's checkpoints carry to be told from another run's (``checkpoints.check_belongs``)."""
        return {"id": self.run_dir.name, "uid": self.run_uid,
                "experiment_sha256": self.experiment["experiment_sha256"]}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint; with several processes a collective call (it gathers every rank's RNG)."""
        state = {
            "format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, RUN_IDENTITY: self.identity(),
            "recipe": self.recipe.to_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "best": self.best, "metrics": self.metrics, "rng": self.rng_state(),
            "wall_time": self.wall_time, "started": self.started,
            "command": self.command, "environment": self.environment, "resumes": self.resumes,
        }
        if self.ranks.active:
            state["rng_ranks"] = distributed.gather_objects(state["rng"], self.ranks)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.metrics = state["epoch"], state["best"], state["metrics"]
        self.checkpoint_epoch = self.epoch
        self.wall_time, self.started = state["wall_time"], state["started"]
        self.run_uid = (state.get(RUN_IDENTITY) or {}).get("uid")  # None: a run started before runs had one
        # A checkpoint without the command and environment fields starts the record here.
        if "command" in state:
            # each resume with its own environment: it may run other code, or on other hardware
            self.resumes = [*state["resumes"], {"after_epoch": self.epoch, "command": self.command,
                                                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                                **self.environment}]
            self.command, self.environment = state["command"], state["environment"]
        per_rank = state.get("rng_ranks")
        if not self.ranks.active:
            self.set_rng_state(state["rng"])
        elif per_rank is not None and len(per_rank) == self.ranks.world_size:
            self.set_rng_state(per_rank[self.ranks.rank])
        else:
            # Resumed on another number of processes: the data order goes on as recorded (rank 0's
            # generator, the same on every rank); each rank's dropout stream starts afresh.
            self.set_rng_state(state["rng"])
            torch.manual_seed(distributed.rank_seed(self.recipe.seed, self.ranks.rank, self.epoch))

    def model_record(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT, "version": FORMAT_VERSION, RUN_IDENTITY: self.identity(),
            "recipe": self.recipe.to_dict(), "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "input_shape": list(self.splits.input_shape), "num_classes": self.splits.num_classes,
            "dataset": self.splits.dataset, "variant": self.splits.variant,
            "epoch": self.best["epoch"], "valid_error_pct": self.best["valid_error_pct"],
            "test_error_pct": self.best["test_error_pct"],
        }

    # -- recording ---------------------------------------------------------------------
    def result(self, status: str) -> dict[str, Any]:
        r, rows = self.recipe, self.metrics
        last = rows[-1] if rows else {}
        return {
            "recipe": r.name, "reproduces": r.reproduces, "paper": r.paper.to_dict(),
            "dataset": self.splits.dataset, "variant": self.splits.variant,
            "status": status, "epochs_run": self.epoch, "epochs_planned": r.train.epochs,
            "best_epoch": self.best["epoch"],
            "best_valid_error_pct": None if self.best["epoch"] is None else self.best["valid_error_pct"],
            "test_error_pct": self.best["test_error_pct"],
            "last_test_error_pct": last.get("test_error_pct"),
            "seed": r.seed, "parameters": count_parameters(self.model),
            "train_size": len(self.splits.x_train), "valid_size": len(self.splits.x_valid),
            "test_size": len(self.splits.x_test),
            "wall_time_s": round(self.wall_time, 2),
            "epoch_time_s": round(sum(m["epoch_time_s"] for m in rows) / len(rows), 3) if rows else None,
            "started": self.started, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": self.command, **self.environment, **self.experiment, "world_size": self.ranks.world_size,
            "resumes": self.resumes, "run_uid": self.run_uid,
        } | ({"hardware": f"{self.ranks.world_size} x {hardware(self.device)}"} if self.ranks.active else {})

    def write_records(self, status: str, checkpoint: bool = True) -> None:
        """Rank 0 writes metrics, checkpoint and result; every rank must call it when ``checkpoint``."""
        state = self.state_dict() if checkpoint else None
        if not self.ranks.is_main:
            return
        if self.metrics:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(self.metrics[0]))
            writer.writeheader()
            writer.writerows(self.metrics)
            atomic_write_text(self.run_dir / METRICS_FILE, out.getvalue())
        if state is not None:
            atomic_torch_save(state, self.run_dir / CHECKPOINT_FILE)
            self.checkpoint_epoch = self.epoch
        # result.json last: it only ever points at files already on disk.
        write_result(self.run_dir / RESULT_FILE, self.result(status))

    # -- training ----------------------------------------------------------------------
    def batches(self) -> tuple[torch.Tensor, ...]:
        """This epoch's batches as index tensors: this rank's slice of each global batch.

        One permutation per epoch from the data-order generator, the same on every rank; the
        authors' loops drop the last partial batch.
        """
        n, bs = len(self.splits.x_train), self.recipe.train.batch_size
        n_batches = n // bs
        if n_batches == 0:
            raise UserError(f"train.batch_size {bs} is larger than the {n} training images.")
        order = torch.randperm(n, device=self.shuffle_gen.device, generator=self.shuffle_gen)
        local = bs // self.ranks.world_size
        mine = slice(self.ranks.rank * local, (self.ranks.rank + 1) * local)
        return order[:n_batches * bs].view(n_batches, bs)[:, mine].unbind(0)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Stored images -> network inputs on the device (preprocessed, in the model's memory format)."""
        return self.step.to_model_format(self.splits.transform(x.to(self.device, non_blocking=True)))

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the images ``idx``; returns the detached loss, still on the device."""
        xb = self.inputs(self.splits.x_train[idx])
        yb = self.splits.y_train[idx].to(self.device, non_blocking=True)
        return self.step(xb, yb)

    def train_epoch(self, progress: Progress | None) -> float:
        """One epoch; the mean training loss over its steps (and over the ranks)."""
        batches = self.batches()
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        task = progress.add_task(f"epoch {self.epoch + 1}", total=len(batches)) if progress else None
        for idx in batches:
            loss_sum += self.train_step(idx)
            if progress is not None:
                progress.advance(task)
        if progress is not None:
            progress.remove_task(task)
        loss_sum = distributed.all_reduce_sum(loss_sum, self.ranks)
        return loss_sum.item() / (len(batches) * self.ranks.world_size)

    def evaluate(self, split: str) -> tuple[float, float]:
        """(mean loss, error in %) on a split; with several processes each rank evaluates its shard."""
        x, y = self.splits.split(split)
        part = self.ranks.shard(len(x))
        loss_sum, errors = eval_sums(self.step.eval_forward, x[part], y[part], self.inputs, self.step.loss_fn,
                                     self.recipe.train.eval_batch_size, self.device, self.step.autocast)
        n = max(len(x), 1)
        if not self.ranks.active:
            return loss_sum.item() / n, 100.0 * errors.item() / n
        sums = distributed.all_reduce_sum(torch.stack([loss_sum.double(), errors.double()]), self.ranks)
        return sums[0].item() / n, 100.0 * sums[1].item() / n

    def fit(self, interactive: bool = True) -> dict[str, Any]:
        r = self.recipe
        epochs = r.train.epochs
        self._print_header()
        progress = progress_bar(self.console, remaining=True) if interactive and self.ranks.is_main else None
        with progress or contextlib.nullcontext():
            while self.epoch < epochs:
                lr = lr_at(self.epoch, r.optimizer.lr, r.schedule, epochs)
                set_lr(self.optimizer, lr)
                t0 = time.perf_counter()
                train_loss = self.train_epoch(progress)
                trained = time.perf_counter()
                if not math.isfinite(train_loss):
                    self.write_records("diverged", checkpoint=False)
                    kept = ("no checkpoint was written before it" if self.checkpoint_epoch is None
                            else f"{self.run_dir} keeps the state after epoch {self.checkpoint_epoch}")
                    raise TrainingDiverged(
                        f"the training loss became {train_loss} in epoch {self.epoch + 1}; the run stopped and {kept}.")
                # Without fast.sync_bn each rank's BN statistics follow its own slices; all evaluate
                # (and rank 0 saves) rank 0's.
                distributed.broadcast_buffers_(self.model, self.ranks)
                valid_loss, valid_err = self.evaluate("valid")
                _, test_err = self.evaluate("test")
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                evaluated = time.perf_counter()
                epoch_time = evaluated - t0
                self.wall_time += epoch_time
                self.epoch += 1
                row = {"epoch": self.epoch, "lr": lr, "train_loss": train_loss, "valid_loss": valid_loss,
                       "valid_error_pct": valid_err, "test_error_pct": test_err,
                       "epoch_time_s": round(epoch_time, 3)}
                self.metrics.append(row)
                improved = valid_err <= self.best["valid_error_pct"]  # '<=' as in the Theano code
                if improved:
                    self.best = {"epoch": self.epoch, "valid_error_pct": valid_err, "test_error_pct": test_err}
                    if self.ranks.is_main:
                        atomic_torch_save(self.model_record(), self.run_dir / BEST_FILE)
                saved_best = time.perf_counter()
                done = self.epoch == epochs
                save = done or self.epoch % r.train.checkpoint_every == 0
                self.write_records("finished" if done else "running", checkpoint=save)
                ended = time.perf_counter()
                times = EpochTimes(self.epoch, trained - t0, evaluated - trained, saved_best - evaluated,
                                   ended - saved_best, save, ended)
                for hook in self.on_epoch_end:
                    hook(self, row, times)
                self._print_row(row, improved)
        return self.result("finished")

    def _print_header(self) -> None:
        self.console.print(f"{'epoch':>7} {'lr':>9} {'train loss':>11} {'valid err %':>11} "
                           f"{'test err %':>10} {'time s':>8}", style="bold", highlight=False)

    def _print_row(self, row: dict[str, Any], improved: bool) -> None:
        mark = " *" if improved else ""
        self.console.print(
            f"{row['epoch']:>7} {row['lr']:>9.2e} {row['train_loss']:>11.4f} {row['valid_error_pct']:>11.2f} "
            f"{row['test_error_pct']:>10.2f} {row['epoch_time_s']:>8.2f}{mark}", highlight=False)


def run_training(recipe: Path, overrides: list[str], device: str, data_dir: Path | None, runs_dir: Path,
                 resume: Path | None, seed: int | None, run_id: str | None,
                 console: Console, fast: bool = False, on_epoch_end: Sequence[EpochEndHook] = (),
                 tensorboard: bool = False) -> dict[str, Any]:
    """Train a recipe, or resume a run, in this process, or as one rank of a torchrun launch.

    ``fast`` switches on ``FAST_PRESETS`` for the device, before ``overrides`` (which win);
    ``on_epoch_end`` hooks are the Trainer's (see ``EpochTimes``); ``tensorboard`` adds the one that
    writes the epochs' curves for TensorBoard (``tensorboard_log``).
    """
    use_huge_pages()
    elastic.check_store()
    board = TensorBoardLog() if tensorboard else None
    ranks, dev = distributed.setup(resolve_device(device))
    try:
        result = _train(recipe, overrides, dev, data_dir, runs_dir, resume, seed, run_id,
                        console if ranks.is_main else Console(quiet=True), fast, ranks,
                        [*on_epoch_end, *([board] if board else [])])
        distributed.finish(ranks)
        return result
    finally:
        if board is not None:
            board.close()
        distributed.shutdown(ranks)


def _check_resume_recipe(recipe: Path, run_dir: Path, recorded: Recipe) -> None:
    """A resume continues exactly as recorded: the recipe named beside --resume must resolve to the one the run's
    checkpoint holds, key for key (seed and checkpoint interval included); each difference is named, and refused.

    The run's own recipe.yaml, unedited, always passes.
    """
    given = load_recipe(recipe)
    own = f"bnnctl train {run_dir / RECIPE_FILE} --resume {run_dir}"
    if given.name != recorded.name:
        raise UserError(f"{run_dir} is a run of recipe {recorded.name!r}, not {given.name!r} ({recipe}); "
                        f"resume with: {own}")
    if not given.data.variant:  # the loader sets the variant; a recipe file leaves it open
        given = replace(given, data=replace(given.data, variant=recorded.data.variant))
    found = all_differences(given.to_dict(), recorded.to_dict())
    if found:
        listed = "; ".join(d.describe("recorded") for d in found)
        if recipe.resolve() == (run_dir / RECIPE_FILE).resolve():
            how = f"restore {recipe} as the run wrote it, then resume"
        else:
            how = f"resume with the run's own recipe: {own}"
        raise UserError(f"{recipe} differs from the recipe the run in {run_dir} was trained with, and a resume "
                        f"goes on exactly as recorded ({listed}); {how}.")


MEMORY_ADVICE = ("use smaller widths or batches (model.*, train.batch_size, train.eval_batch_size), or a machine "
                 "with more free memory")


@torch.no_grad()
def _check_model_takes_the_data(trainer: Trainer) -> None:
    """One eval-mode forward of two training images (no random numbers drawn, no statistics moved),
    so that a model the data's image size cannot feed (too many poolings) fails before a run folder exists."""
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        model(trainer.inputs(trainer.splits.x_train[:2]))
    except RuntimeError as e:
        if is_out_of_memory(e):  # a model too large to run, whatever the images
            raise
        shape = "x".join(map(str, trainer.splits.input_shape))
        raise UserError(f"the recipe's model cannot take the data's {shape} images "
                        f"({str(e).splitlines()[0][:160]}); check model.conv's poolings against the image size.") from None
    finally:
        model.train(was_training)


def _train(recipe: Path, overrides: list[str], dev: torch.device, data_dir: Path | None, runs_dir: Path,
           resume: Path | None, seed: int | None, run_id: str | None, console: Console, fast: bool,
           ranks: Ranks, on_epoch_end: Sequence[EpochEndHook] = ()) -> dict[str, Any]:
    """Resolve the recipe (or the resumed run's), then train; rank 0 holds the run folder's lock."""
    state, lock = None, None
    try:
        if resume is not None:
            if overrides or seed is not None or fast:
                raise UserError("--resume continues a run exactly as recorded; drop --set, --seed and --fast.")
            if ranks.is_main and resume.is_dir():  # a second process resuming the same run stops here
                lock = RunLock(resume).acquire()
                remove_stale_temporaries(resume)

            def checked_checkpoint() -> dict[str, Any]:
                loaded = load_run_checkpoint(resume)
                _check_resume_recipe(Path(recipe), resume, resolve(loaded["recipe"], str(resume / CHECKPOINT_FILE)))
                return loaded
            state = distributed.on_main(ranks, checked_checkpoint)
            cfg = resolve(state["recipe"], str(resume / RECIPE_FILE))
        else:
            cfg = recipe_for_run(recipe, overrides, seed, fast, dev.type, run_id)
            # Restarted by torchrun after a fault: continue the run folder the job's first attempt created.
            restart = elastic.find_restart(runs_dir, cfg, ranks, console)
            if restart is not None:
                resume, state, lock = restart.run_dir, restart.state, restart.lock
        # Rank 0 first: it alone downloads data or fills the preprocessing cache.
        splits = distributed.main_first(ranks, lambda: load_splits(cfg.data, data_dir))
        cfg = replace(cfg, data=replace(cfg.data, variant=splits.variant))
        if cfg.fast.data_on_device:
            splits = splits.to(dev)
        if cfg.fast.pretransform:
            splits = pretransformed(splits, cfg.train.eval_batch_size)
        batch = cfg.train.batch_size
        if len(splits.x_train) < batch:
            raise UserError(f"train.batch_size {batch} is larger than the {len(splits.x_train)} training images "
                            f"left after the validation split; use a smaller batch or data.valid_size.")
        # Model and optimizer exist before a new run folder does: a model too large fails with nothing written.
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else None  # None: this machine's
        check_memory_available(cfg, str(resume / RECIPE_FILE if resume else recipe), splits.input_shape,
                               splits.num_classes, free, "the GPU" if dev.type == "cuda" else "this machine")
        trainer = Trainer(cfg, splits, dev, resume or Path("."), console, command_line(), ranks, on_epoch_end)
        _check_model_takes_the_data(trainer)
        if state is not None:
            trainer.load_state_dict(state)
            del state
            console.print(f"resuming {resume} after epoch {trainer.epoch} of {cfg.train.epochs}")
        else:
            def create_run_dir() -> Path:
                path = new_run_dir(runs_dir, cfg.name, cfg.seed, run_id)
                elastic.note_run_dir(runs_dir, cfg.name, path)
                atomic_write_text(path / RECIPE_FILE, dump_recipe(cfg))
                return path
            # (a torchrun restart before the first checkpoint starts over in the folder it found)
            trainer.run_dir = resume or distributed.on_main(ranks, create_run_dir)
            if ranks.is_main and lock is None:
                lock = RunLock(trainer.run_dir).acquire()
        return _fit(trainer, splits, console, ranks)
    except (MemoryError, RuntimeError) as e:  # before the run: reading the data, building the model
        if not is_out_of_memory(e):
            raise
        raise out_of_memory(e, MEMORY_ADVICE) from None
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (kill, a batch scheduler's stop, the end of a time limit) ends the run as Ctrl-C does: recorded as
    interrupted, resumable from its last checkpoint. Python's default would end the process without a record."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fit(trainer: Trainer, splits: Splits, console: Console, ranks: Ranks) -> dict[str, Any]:
    run_dir, cfg = trainer.run_dir, trainer.recipe
    on = f"{ranks.world_size} processes x {hardware(trainer.device)}" if ranks.active else hardware(trainer.device)
    console.print(f"[bold]{cfg.name}[/] on {splits.variant} ({len(splits.x_train)} train / "
                  f"{len(splits.x_valid)} valid / {len(splits.x_test)} test), {count_parameters(trainer.model):,} "
                  f"parameters, {on}; run directory {run_dir}", highlight=False)
    try:
        with _terminate_as_interrupt(), out_of_memory_as_failure(MEMORY_ADVICE):
            result = trainer.fit(interactive=console.is_terminal)
    except KeyboardInterrupt:
        trainer.write_records("interrupted", checkpoint=False)
        if trainer.checkpoint_epoch is None:
            console.print(f"\ninterrupted in epoch {trainer.epoch + 1}, before the run's first checkpoint: there is "
                          f"nothing to resume; start it again with: {trainer.command} (a new run folder; {run_dir} "
                          f"keeps what this one recorded)", highlight=False, soft_wrap=True)
        else:
            nproc = f" --nproc {ranks.world_size}" if ranks.active else ""
            console.print(f"\ninterrupted; the last checkpoint holds epoch {trainer.checkpoint_epoch}. Continue with: "
                          f"bnnctl train {run_dir / RECIPE_FILE} --resume {run_dir}{nproc}", highlight=False,
                          soft_wrap=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except EnvironmentFailure as e:
        with contextlib.suppress(EnvironmentFailure):  # the disk may still take the small record
            trainer.write_records("failed", checkpoint=False)
        kept = (f"nothing to resume: start it again with: {trainer.command}" if trainer.checkpoint_epoch is None else
                f"{run_dir} keeps the state after epoch {trainer.checkpoint_epoch}: bnnctl train "
                f"{run_dir / RECIPE_FILE} --resume {run_dir}")
        raise EnvironmentFailure(f"{e} The run stopped; {kept}.") from None
    best = result["best_epoch"]
    console.print(f"test error at the best-validation epoch ({best}): [bold]{result['test_error_pct']:.2f}%[/] "
                  f"on {splits.variant}; recorded in {run_dir / RESULT_FILE}", highlight=False)
    return result
