#!/usr/bin/env python3
"""Time the packed engine's per-layer Python loop against the native plan (one native call per batch), on a CPU.

    python3 scripts/plan_latency.py                       # MNIST MLP 784-4096x3-10, one image per call, 1 and 2 threads
    python3 scripts/plan_latency.py --batch 1000 --calls 10
    python3 scripts/plan_latency.py --model cifar10-convnet --batch 100 --calls 3

The model has random weights (the benches' stand-in: seed 0, BatchNorm statistics from random images); the
images are random 8-bit ones. Each round calls every variant BLOCK times in a row, the variants in turn, so that a
machine busy with other work slows them alike; the table gives each variant's median wall time and process CPU time per call and its predictions'
agreement with the per-layer engine, and the machine's 1-minute load average before and after (timings from a loaded
machine say so).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from bnnctl.bench import convnet, mlp
from bnnctl.infer.engine import PackedEngine

SPECS = {spec.name: spec for spec in (mlp.SPEC, *convnet.SPECS)}
BLOCK = 25  # calls of one variant in a row: back-to-back calls, as a deployment makes them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist-mlp", choices=sorted(SPECS))
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per variant and thread count")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to time, comma-separated")
    args = parser.parse_args()

    spec = SPECS[args.model]
    model = spec.load_model(spec, None, Path("/nonexistent"))  # no results folder: random weights
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, *spec.input_shape), generator=g, dtype=torch.uint8)
    engines = {"layers (bitplane)": PackedEngine(model.exported, first_layer="bitplane")}
    if args.batch <= 8:  # the int8 first layer is the per-layer engine's fastest for a few images on some CPUs
        engines["layers (int8)"] = PackedEngine(model.exported, first_layer="int8")
    engines["plan (bitplane)"] = PackedEngine(model.exported, first_layer="bitplane", variant="plan")
    reference = engines["layers (bitplane)"].logits(x).argmax(1)
    print(f"{spec.name}: {args.batch} image(s) per call, {args.calls} calls per variant; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        wall: dict[str, list[float]] = {name: [] for name in engines}
        cpu: dict[str, list[float]] = {name: [] for name in engines}
        for engine in engines.values():  # warm-up: first-call allocations, caches
            for _ in range(3):
                engine.logits(x)
        block = min(BLOCK, args.calls)
        for _ in range(max(1, args.calls // block)):
            for name, engine in engines.items():
                engine.logits(x)  # the block's first call, untimed: the other variants' data left the caches
                for _ in range(block):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    engine.logits(x)
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        for name, engine in engines.items():
            same = bool(torch.equal(engine.logits(x).argmax(1), reference))
            median = statistics.median(wall[name])
            # CPU seconds of all the process's threads: on a busy machine, less inflated than the wall time by
            # waiting for a core (but it counts the time threads spin waiting for each other)
            print(f"  {threads} thread(s)  {name:18s} median {median * 1e3:8.3f} ms per call"
                  f" ({median * 1e6 / args.batch:8.1f} us per image), CPU time "
                  f"{statistics.median(cpu[name]) * 1e3:8.3f} ms; same predictions: {same}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
