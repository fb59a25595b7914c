#!/usr/bin/env python3
"""Time training on this machine and record the numbers as JSON (under results/fast/).

steps: the plain loop against the fast switches, the same N training steps each (no evaluation),
       on one copy of the data, repeated and interleaved so that a busy machine slows both alike:

    python3 scripts/fast_timing.py steps recipes/mnist.yaml --steps 50 --out results/fast/cpu_mnist_steps.json

epochs: a few epochs of `bnnctl train` with the given switches, through the real command path
        (run directory, evaluation, records, checkpoints); the epoch time, what records and
        checkpoints cost, and the recipe's full schedule projected from them:

    python3 scripts/fast_timing.py epochs recipes/mnist.yaml --epochs 3 --fast --data-dir .data \\
        --out results/fast/gpu_mnist_epochs.json

Every record holds the command, the hardware, the commit, the date and the machine's load around the
timing (``load``: 1-minute load average before and after, CPU seconds per wall second, and the busy
verdict of ``bnnctl.bench_records``, the same as the bench records'): timings from a machine busy with
other work say so there.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bnnctl.allocator import use_huge_pages  # noqa: E402
from bnnctl.bench_records import measure_load  # noqa: E402
from bnnctl.data import load_splits  # noqa: E402
from bnnctl.recipe import load_recipe  # noqa: E402
from bnnctl.provenance import environment, resolve_device  # noqa: E402
from bnnctl.recipe import FAST_PRESETS  # noqa: E402
from bnnctl.train.fast import pretransformed  # noqa: E402
from bnnctl.train.loop import EpochTimes, Trainer, run_training  # noqa: E402

use_huge_pages()  # as bnnctl's commands do, before the first tensor: the steps timed here get the same pages


def provenance(device: torch.device) -> dict[str, Any]:
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **environment(device), "load_average_before": os.getloadavg()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(recipe: Path, overrides: list[str], splits, device: torch.device, steps: int,
               warmup: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per training step of a fresh Trainer, after ``warmup`` steps.

    The CPU time counts what this process computed, which another busy process on the machine
    changes far less than the wall time (exactly so with one thread, which never spin-waits).
    """
    cfg = load_recipe(recipe, overrides)
    if cfg.fast.pretransform:
        splits = pretransformed(splits, cfg.train.eval_batch_size)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, splits, device, Path(run_dir), Console(quiet=True), "fast_timing")
        trainer.model.train()
        batches = trainer.batches()
        if len(batches) < warmup + steps:
            raise SystemExit(f"an epoch has {len(batches)} steps, fewer than {warmup} + {steps}")
        for idx in batches[:warmup]:
            trainer.train_step(idx)
        synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        for idx in batches[warmup:warmup + steps]:
            trainer.train_step(idx)
        synchronize(device)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    del trainer
    gc.collect()
    return elapsed / steps, elapsed_cpu / steps


def time_in_subprocess(args: argparse.Namespace, overrides: list[str]) -> tuple[float, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "steps-one", str(args.recipe), "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", "-"]
    command += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    command += ["--threads", str(args.threads)] if args.threads else []
    command += [arg for item in overrides for arg in ("--set", item)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return timing["step_s"], timing["step_cpu_s"]


def steps_one_command(args: argparse.Namespace) -> dict[str, Any]:
    """One variant's steps in this process (what steps runs once per variant and repeat)."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_recipe(args.recipe, args.set)
    splits = load_splits(cfg.data, args.data_dir)
    if cfg.fast.data_on_device:
        splits = splits.to(device)
    step_wall, step_cpu = time_steps(args.recipe, args.set, splits, device, args.steps, args.warmup)
    return {"step_s": step_wall, "step_cpu_s": step_cpu}


def steps_command(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = provenance(device)
    preset = FAST_PRESETS["cuda" if device.type == "cuda" else "cpu"]
    variants = {"plain": [], "fast": preset}
    if args.compile:
        variants["fast+compile"] = preset + ["fast.compile=true"]
    cfg = load_recipe(args.recipe)
    splits = load_splits(cfg.data, args.data_dir)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, overrides in variants.items():
            # Each variant in a process of its own: some switches (fast.reuse_memory) change the whole
            # process, and would otherwise speed up the plain variant timed after them.
            step_wall, step_cpu = time_in_subprocess(args, overrides)
            wall[name].append(step_wall)
            cpu[name].append(step_cpu)
            print(f"{name:>14}: {step_wall * 1e3:8.1f} ms per step, {step_cpu * 1e3:8.1f} ms CPU", flush=True)
    steps_per_epoch = len(splits.x_train) // cfg.train.batch_size
    record.update({
        "recipe": str(args.recipe), "threads": torch.get_num_threads(), "steps_timed": args.steps,
        "warmup_steps": args.warmup, "repeats": args.repeats, "batch_size": cfg.train.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "variants": {name: {"overrides": variants[name], "step_s": [round(t, 5) for t in wall[name]],
                            "step_cpu_s": [round(t, 5) for t in cpu[name]],
                            "best_step_s": round(min(wall[name]), 5), "best_step_cpu_s": round(min(cpu[name]), 5),
                            "training_s_per_epoch": round(min(wall[name]) * steps_per_epoch, 2)}
                     for name in variants},
        "speedup_vs_plain": {name: round(min(wall["plain"]) / min(wall[name]), 3) for name in variants},
        "cpu_time_speedup_vs_plain": {name: round(min(cpu["plain"]) / min(cpu[name]), 3) for name in variants},
        "load_average_after": os.getloadavg(),
        "note": "training steps only (no evaluation, no records); best of the interleaved repeats, each variant "
                "in a fresh process; CPU time is that process's (all its threads)",
    })
    return record


def epochs_command(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    record = provenance(device)
    planned = load_recipe(args.recipe).train.epochs
    # Where each epoch's time went, as the Trainer reports it at the epoch's end.
    times: list[EpochTimes] = []
    overrides = [f"train.epochs={args.epochs}", *args.set]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as runs:
        result = run_training(recipe=args.recipe, overrides=overrides, device=args.device, data_dir=args.data_dir,
                              runs_dir=Path(runs), resume=None, seed=None, run_id="timing", console=Console(),
                              fast=args.fast, on_epoch_end=[lambda trainer, row, epoch: times.append(epoch)])
        run_dir = Path(runs) / result["recipe"] / "timing"
        with open(run_dir / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        recipe = load_recipe(run_dir / "recipe.yaml")
    total = time.perf_counter() - started
    epoch_times = [float(r["epoch_time_s"]) for r in rows]
    # An epoch's own cost: from the previous epoch's end to its end, less its records and best.pt.
    compute = [times[i].ended - times[i - 1].ended - times[i].records_s - times[i].best_save_s
               for i in range(1, len(times))]
    steady = statistics.median(compute) if compute else epoch_times[0]
    best_saves = [t.best_save_s for t in times if t.best_save_s]
    best_mean = statistics.mean(best_saves) if best_saves else 0.0
    checkpoint_s = statistics.median([t.records_s for t in times if t.checkpointed])
    plain_records = [t.records_s for t in times if not t.checkpointed]
    records_s = statistics.median(plain_records) if plain_records else 0.0

    def projected(every: int) -> float:
        return round(epoch_times[0] + (planned - 1) * steady + planned / every * checkpoint_s
                     + planned * (1 - 1 / every) * records_s, 1)

    record.update({
        "recipe": str(args.recipe), "fast_flag": args.fast, "overrides": overrides, "fast": recipe.fast.to_dict(),
        "epochs_timed": len(rows), "epoch_time_s": epoch_times, "first_epoch_s": epoch_times[0],
        "steady_epoch_s": round(steady, 3),
        "checkpoint_write_s": round(checkpoint_s, 3), "records_write_s": round(records_s, 3),
        "best_pt_write_s": round(best_mean, 3),
        "process_wall_s": round(total, 1), "planned_epochs": planned,
        "projected_full_schedule_s": projected(recipe.train.checkpoint_every),
        "projected_full_schedule_s_by_checkpoint_every": {every: projected(every) for every in (1, 10, 50)},
        "last_test_error_pct": float(rows[-1]["test_error_pct"]),
        "metrics": [{k: float(v) for k, v in row.items()} for row in rows],  # did it learn?
        "load_average_after": os.getloadavg(),
        "note": ("epoch_time_s: training + evaluation of an epoch, synchronized (the first includes warm-up or "
                 "compilation). steady_epoch_s: median time from one epoch's end to the next, less its records "
                 "and best.pt writes. The projection adds a checkpoint every train.checkpoint_every epochs and "
                 "the cheap records (metrics, result) every other epoch, not the best.pt writes (one per "
                 "validation improvement, best_pt_write_s each). train.epochs is cut, which compresses the LR "
                 "schedule; the timing does not depend on it."),
    })
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("steps", "steps-one", "epochs"):
        p = sub.add_parser(name)
        p.add_argument("recipe", type=Path)
        p.add_argument("--out", type=Path, required=True, help="JSON file to write")
        p.add_argument("--device", default="auto")
        p.add_argument("--data-dir", type=Path, default=None)
    for name in ("steps", "steps-one"):
        steps = sub.choices[name]
        steps.add_argument("--steps", type=int, default=50)
        steps.add_argument("--warmup", type=int, default=3)
        steps.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    steps = sub.choices["steps"]
    steps.add_argument("--repeats", type=int, default=2)
    steps.add_argument("--compile", action="store_true", help="also time the fast switches with fast.compile")
    sub.choices["steps-one"].add_argument("--set", action="append", default=[], help="recipe override")
    epochs = sub.choices["epochs"]
    epochs.add_argument("--epochs", type=int, default=3)
    epochs.add_argument("--fast", action="store_true", help="as bnnctl train --fast")
    epochs.add_argument("--set", action="append", default=[], help="recipe override, as bnnctl train --set")
    args = parser.parse_args()
    if args.mode == "steps-one":
        print(json.dumps(steps_one_command(args)))
        return
    threads = getattr(args, "threads", None) or torch.get_num_threads()
    with measure_load(threads, on_cpu=resolve_device(args.device).type == "cpu", children=True) as load:
        record = steps_command(args) if args.mode == "steps" else epochs_command(args)
    record["load"] = load.fields
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("variants",)}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
