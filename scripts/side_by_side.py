#!/usr/bin/env python3
"""Time two checkouts of bnnctl side by side on this machine: the CPU training step and the MNIST MLP engine.

For a change that must not make either slower (a refactoring, say), each repeat runs, in fresh processes
and in alternating order, the fused Torch7 MNIST training step (``fast_timing.py steps-one`` with the CPU
``--fast`` switches) and the packed engine on the MNIST MLP (``bnnctl bench --model mnist-mlp``) from each
checkout, so a machine that gets busier slows both alike; the record holds every repeat, the medians,
their ratios (new over old: below 1 is faster) and the machine's load around it all:

    python3 scripts/side_by_side.py --old /path/to/old-checkout --new . --data-dir data \\
        --out results/fast/side_by_side.json
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

FAST_CPU = ["fast.data_on_device=true", "fast.fused_step=true", "fast.int8_forward=true", "fast.reuse_memory=true",
            "fast.foreach_clip=false"]


def _run(tree: Path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def step_ms(tree: Path, data_dir: Path, steps: int) -> float:
    sets = [a for item in FAST_CPU for a in ("--set", item)]
    out = _run(tree, ["scripts/fast_timing.py", "steps-one", "recipes/mnist_torch7.yaml", "--device", "cpu",
                      "--steps", str(steps), "--warmup", "3", "--data-dir", str(data_dir), "--out", "-", *sets])
    return 1000 * json.loads(out.strip().splitlines()[-1])["step_s"]


def engine_ms(tree: Path, data_dir: Path, variant: str, option: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        _run(tree, ["-m", "bnnctl", "bench", "--model", "mnist-mlp", "--device", "cpu", option, f"torch,{variant}",
                    "--repeat", "3", "--data-dir", str(data_dir), "--out", out])
        (path,) = Path(out).glob("*.json")
        return json.loads(path.read_text())["variants"][variant]["median_ms"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True)
    p.add_argument("--new", type=Path, required=True)
    p.add_argument("--old-variant-option", default="--kernel", help="how the old checkout names bench variants")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variant", default="xnor-bitplane")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    options = {"old": args.old_variant_option, "new": "--variant"}
    steps: dict[str, list[float]] = {"old": [], "new": []}
    engine: dict[str, list[float]] = {"old": [], "new": []}
    with measure_load(threads=os.cpu_count() or 1, children=True) as load:
        for repeat in range(args.repeats):
            order = ["old", "new"] if repeat % 2 == 0 else ["new", "old"]
            for name in order:
                steps[name].append(step_ms(trees[name], args.data_dir, args.steps))
                engine[name].append(engine_ms(trees[name], args.data_dir, args.variant, options[name]))
            print(f"repeat {repeat + 1}: step ms " + ", ".join(f"{n} {steps[n][-1]:.1f}" for n in order)
                  + "; engine ms " + ", ".join(f"{n} {engine[n][-1]:.1f}" for n in order), flush=True)
    medians = {k: {n: statistics.median(v[n]) for n in v} for k, v in (("step_ms", steps), ("engine_ms", engine))}
    record = {
        "kind": "side-by-side", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commits": {n: git_commit_of(t) for n, t in trees.items()},
        "what": {"step_ms": "Torch7 MNIST training step, CPU --fast switches, fresh process, ms per step",
                 "engine_ms": f"bnnctl bench --model mnist-mlp, variant {args.variant}, 10,000 test images, ms"},
        "repeats": {"step_ms": steps, "engine_ms": engine}, "medians": medians,
        "new_over_old": {k: m["new"] / m["old"] for k, m in medians.items()}, "load": load.fields,
        "hardware": cpu_description(), "recorder_commit": git_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"medians": medians, "new_over_old": record["new_over_old"], "busy": load.fields["busy"]}))


def cpu_description() -> str:
    """The CPU's model name and the instruction sets that decide which kernels run."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isas = [f for f in ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_vnni", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(isas) or 'no AVX2'}"


def git_commit_of(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


if __name__ == "__main__":
    main()
