"""Benchmarks of the tensor-core XNOR GEMM (``bnnctl.kernels.tensorcore``) beyond ``bnnctl bench``'s table.

* ``bench_configs``: every configuration of the mma.sync kernel beside torch bf16, in one process,
  taking turns, so the default can be chosen on timings (``scripts/gpu_check.sh``, step ``tc_configs``);
* ``bench_wgmma``: ``bnnctl bench`` with the sm_90a wgmma kernel added (step ``tc_wgmma``);
* ``report_peak_shares``: each tensor-core kernel's rate in bench records as a share of the card's b1
  ceiling that matches its instruction, from ``tools/gpu_peaks/b1_peak.cu``'s output (step ``tc_share``).
"""
from __future__ import annotations

import json
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console

from ..bench_records import BenchRecord, read_bench_records
from ..kernels.tensorcore import CONFIGS, DEFAULT_CONFIG, xnor_gemm_tc
from ..files import atomic_write_text
from .kernels import KERNELS, BenchKernel, make_operands, run_bench
from .timing import time_call

# ---- reporting against the card's b1 ceilings (tools/gpu_peaks/b1_peak.cu) ------------------------

def parse_b1_peaks(log: str) -> dict[str, float]:
    """The T ops/s column of b1_peak's output, by line name ("mma.sync m16n8k256 AND", ...)."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S.*?)\s+([0-9.]+) T ops/s", log, re.MULTILINE)}


# The b1_peak line each tensor-core kernel is held to.
MATCHING_PEAK = {"mma": "mma.sync m16n8k256 AND", "wgmma": "wgmma m64n128k256 b1 AND"}


def peak_share_lines(results: list[dict], peaks: dict[str, float]) -> list[str]:
    """One line per tensor-core kernel run in bench records: its rate as a share of the matching b1 peak."""
    lines = []
    for result in results:
        shape = "x".join(str(result["shape"][d]) for d in "mnk")
        for name, entry in result.get("kernels", {}).items():
            instruction = "wgmma" if "wgmma" in name else "mma" if name.startswith("xnor-tc") else None
            if instruction is None or entry.get("status") != "ok":
                continue
            peak_name = MATCHING_PEAK[instruction]
            peak = peaks.get(peak_name)
            share = f"{100 * entry['tbops'] / peak:.0f}% of {peak_name} ({peak:.0f} T ops/s)" if peak else \
                f"no '{peak_name}' line in the b1_peak log"
            ratios = ", ".join(f"{key} {entry[key]:.2f}" for key in ("x_torch_bf16", "x_cublas_fp32")
                               if entry.get(key) is not None)
            lines.append(f"{name} {shape}: {entry['median_ms']:.3f} ms, {entry['tbops']:.0f} T binary-op/s = {share}"
                         f"{'; ' + ratios if ratios else ''}; exact: {entry['exact']}")
    return lines


def report_peak_shares(out_dir: str) -> None:
    """Print peak_share_lines for every bench JSON in out_dir, against out_dir/gpu_peaks.log."""
    out = Path(out_dir)
    log = out / "gpu_peaks.log"
    peaks = parse_b1_peaks(log.read_text()) if log.exists() else {}
    print(f"b1 peaks ({log}): {peaks or 'none found'}")
    results = [rec.data for _, rec in read_bench_records(out) if isinstance(rec, BenchRecord) and rec.status == "ok"]
    for line in peak_share_lines([r for r in results if r["kind"] == "kernels"], peaks):
        print(line)


WGMMA_BENCH_NAME = "xnor-tc-wgmma"


def bench_wgmma(out_dir: str, m: int, n: int, k: int, others: str = "xnor-tc,bf16,cublas") -> None:
    """``bnnctl bench`` with the wgmma kernel added to its table for this run only (it exists only in
    sm_90a builds, so ``--kernel all`` leaves it out): times it beside ``others`` and records the JSON."""
    KERNELS.setdefault(WGMMA_BENCH_NAME, BenchKernel(
        "XNOR, tensor cores (wgmma m64n256k256 b1 AND+POPC, sm_90a)",
        lambda o: xnor_gemm_tc(o.a_bits, o.b_bits, o.k, wgmma=True), packed=True, devices=("cuda",),
        unavailable="CUDA-only kernel"))
    run_bench(f"{WGMMA_BENCH_NAME},{others}", m, n, k, repeat=20, device="cuda", out=Path(out_dir),
              popc_peak_tbops=None, command=f"bnnctl.bench.tensorcore.bench_wgmma({m}, {n}, {k})",
              console=Console())


# ---- the configurations side by side ----------------------------------------------------------------

# The paper's kernel product, and the MNIST MLP's hidden layers on the 10,000 test images.
CONFIG_BENCH_SHAPES = ((8192, 8192, 8192), (10000, 4096, 4096))


def config_lines(record: dict) -> list[str]:
    """One line per configuration and shape of a bench_configs record: ms, rate, x torch bf16, x the default
    configuration, share of the mma.sync b1 peak (when the record has one), exactness."""
    peak = record.get("mma_peak_tbops")
    lines = []
    for shape in record["shapes"]:
        dims = "x".join(str(shape["shape"][d]) for d in "mnk")
        fastest = min(shape["configs"], key=lambda name: shape["configs"][name]["median_ms"])
        lines.append(f"{dims}: torch bf16 {shape['bf16_ms']:.3f} ms")
        for name, entry in shape["configs"].items():
            share = f", {100 * entry['tbops'] / peak:.0f}% of the mma.sync AND peak" if peak else ""
            mark = "  <- fastest" if name == fastest else ""
            default = " (default)" if name == record["default_config"] else ""
            lines.append(f"  {name + default:16s} {entry['median_ms']:.3f} ms, {entry['tbops']:5.0f} T binary-op/s, "
                         f"x bf16 {entry['x_torch_bf16']:.2f}, x default {entry['x_default']:.3f}{share}, "
                         f"exact {'yes' if entry['exact'] else 'NO'}{mark}")
    return lines


def bench_configs(out_dir: str, shapes=CONFIG_BENCH_SHAPES, rounds: int = 5, runs_per_round: int = 10,
                  device: str = "cuda") -> dict:
    """Time every configuration of the mma.sync kernel beside torch bf16 in one process, check each output
    against the exact product, print config_lines and write the record as JSON into out_dir.

    The contenders take turns, round after round (median of each round's median), so clock and temperature
    drift over the run weighs on all of them alike and configurations a few percent apart can be told
    apart. The share of the peak uses out_dir/gpu_peaks.log when it is there.
    On ``device="cpu"`` every configuration is the one CPU kernel: that only exercises this function.
    """
    out = Path(out_dir)
    log = out / "gpu_peaks.log"
    peak = parse_b1_peaks(log.read_text()).get(MATCHING_PEAK["mma"]) if log.exists() else None
    dev = torch.device(device)
    record = {"kind": "tc_configs", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
              "default_config": DEFAULT_CONFIG,
              "mma_peak_tbops": peak, "rounds": rounds, "runs_per_round": runs_per_round,
              "configs": {name: cfg.describe() for name, cfg in CONFIGS.items()}, "shapes": []}
    for m, n, k in shapes:
        ops = make_operands(m, n, k, dev)
        a16, b16 = ops.a_pm1.bfloat16(), ops.b_pm1.bfloat16()
        contenders = {"bf16": lambda: a16 @ b16.T}
        for name in CONFIGS:
            contenders[name] = lambda name=name: xnor_gemm_tc(ops.a_bits, ops.b_bits, k, config=name)
        exact = {}
        for name, run in contenders.items():
            result = run()
            exact[name] = bool(torch.equal(result, ops.exact.to(result.dtype)))
            del result
        round_ms: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, run in contenders.items():
                round_ms[name].append(time_call(run, dev, runs_per_round, budget_s=60.0)[0])
        ms = {name: statistics.median(times) for name, times in round_ms.items()}
        configs = {name: {"median_ms": ms[name], "round_ms": round_ms[name], "tbops": 2 * m * n * k / ms[name] / 1e9,
                          "x_torch_bf16": ms["bf16"] / ms[name], "x_default": ms[DEFAULT_CONFIG] / ms[name],
                          "share_of_mma_peak": 2 * m * n * k / ms[name] / 1e9 / peak if peak else None,
                          "exact": exact[name]} for name in CONFIGS}
        record["shapes"].append({"shape": {"m": m, "n": n, "k": k}, "bf16_ms": ms["bf16"],
                                 "bf16_round_ms": round_ms["bf16"], "configs": configs})
        del ops, a16, b16
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for line in config_lines(record):
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tc_configs-{record['date'][:19].replace(':', '')}.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return record
