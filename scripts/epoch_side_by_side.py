#!/usr/bin/env python3
"""Time whole training epochs of two checkouts side by side, and where each epoch's time goes.

Each repeat runs ``bnnctl train RECIPE --fast --device cpu`` for a few short epochs (10,000 training,
1,000 validation and 1,000 test images by default) in a fresh process from each checkout, in alternating
order, so that a machine that gets busier slows both alike. The command is the checkout's own; this
script only wraps its ``Trainer`` (found as ``bnnctl.train.loop.Trainer`` or, in older checkouts,
``bnnctl.train.Trainer``) with clocks around the methods every version has:

* ``step``: ``train_epoch`` less the time in ``inputs`` (the optimizer steps and the batch loop);
* ``data``: ``inputs`` (stored images -> preprocessed network inputs on the device);
* ``evaluation``: ``evaluate`` (validation and test);
* ``records``: ``write_records`` (metrics, result and the checkpoint);
* ``other``: what is left of the epoch (best.pt, the row, bookkeeping).

An epoch is the time from one ``write_records`` end to the next, so the first epoch (warm-up, the
kernel build, data loading) is left out; the record holds every steady epoch of every repeat, the
medians and the ratios old over new (above 1: the new checkout is faster), with the machine's load:

    python3 scripts/epoch_side_by_side.py --old ../old-checkout --new . --data-dir data \\
        --recipe recipes/mnist_torch7.yaml --out results/fast/epoch_side_by_side_torch7.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnnctl.bench_records import measure_load  # noqa: E402
from bnnctl.provenance import git_commit  # noqa: E402
from side_by_side import cpu_description, git_commit_of  # noqa: E402 - this folder is on sys.path

# Run in the checkout's own interpreter process: wraps its Trainer, runs its CLI, prints one JSON line.
_WRAPPER = r"""
import json, sys, time
try:
    from bnnctl.train.loop import Trainer
except ImportError:
    from bnnctl.train import Trainer
spent = {"train_epoch": 0.0, "inputs": 0.0, "evaluate": 0.0, "write_records": 0.0}
epochs = []
def clocked(name):
    inner = getattr(Trainer, name)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            now = time.perf_counter()
            spent[name] += now - start
            if name == "write_records":
                epochs.append({"end": now, **spent})
    return wrapper
for name in spent:
    setattr(Trainer, name, clocked(name))
from bnnctl.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("EPOCHS " + json.dumps(epochs))
"""

PHASES = ("step", "data", "evaluation", "records", "other")


def epoch_phases(ends: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each steady epoch's wall time and phases, from the cumulative clocks at successive record writes."""
    out = []
    for before, after in zip(ends, ends[1:]):
        d = {k: after[k] - before[k] for k in after}
        phases = {"step": d["train_epoch"] - d["inputs"], "data": d["inputs"], "evaluation": d["evaluate"],
                  "records": d["write_records"]}
        phases["other"] = d["end"] - sum(phases.values())
        out.append({"epoch_s": d["end"], **phases})
    return out


def run_epochs(tree: Path, recipe: str, data_dir: Path, epochs: int, sets: list[str]) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as runs:
        overrides = [a for item in [f"train.epochs={epochs}", *sets] for a in ("--set", item)]
        args = ["train", recipe, "--fast", "--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", runs,
                "--run-id", "timed", *overrides]
        env = {**os.environ, "PYTHONPATH": str(tree), "BNNCTL_BUILD_DIR": str(tree / ".build")}
        done = subprocess.run([sys.executable, "-c", _WRAPPER, *args], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=3600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("EPOCHS ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"{tree}: bnnctl {' '.join(args)} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return epoch_phases(json.loads(line[len("EPOCHS "):]))


def median_phases(epochs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(e[k] for e in epochs), 4) for k in ("epoch_s", *PHASES)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True)
    p.add_argument("--new", type=Path, required=True)
    p.add_argument("--recipe", required=True, help="the recipe's path inside both checkouts")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is left out")
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--valid-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the first epoch is left out")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    sets = [f"data.limit_train={args.train_images}", f"data.valid_size={args.valid_images}",
            f"data.limit_test={args.test_images}"]
    epochs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with measure_load(threads=os.cpu_count() or 1, children=True) as load:
        for repeat in range(args.repeats):
            for name in (["old", "new"] if repeat % 2 == 0 else ["new", "old"]):
                got = run_epochs(trees[name], args.recipe, args.data_dir, args.epochs, sets)
                epochs[name].extend(got)
                print(f"repeat {repeat + 1} {name}: " + ", ".join(f"{e['epoch_s']:.2f}" for e in got) + " s/epoch",
                      flush=True)
    medians = {name: median_phases(e) for name, e in epochs.items()}
    record = {
        "kind": "epoch-side-by-side", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "recipe": args.recipe, "switches": ["--fast", "--device cpu", *sets],
        "commits": {n: git_commit_of(t) for n, t in trees.items()},
        "what": "bnnctl train, one steady epoch (the first of each run left out): wall time from one write_records "
                "end to the next, split into step (train_epoch less inputs), data (inputs), evaluation (evaluate), "
                "records (write_records: metrics, result, checkpoint) and other; seconds",
        "epochs": epochs, "medians": medians,
        "old_over_new": {k: round(medians["old"][k] / medians["new"][k], 3) if medians["new"][k] > 0 else None
                         for k in ("epoch_s", *PHASES)},
        "load": load.fields, "hardware": cpu_description(), "recorder_commit": git_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"medians": medians, "old_over_new": record["old_over_new"], "busy": load.fields["busy"]}))


if __name__ == "__main__":
    main()
