"""The kernel figure (the paper's Figure 3): matmul kernel times per device and shape, the MNIST MLP
timings, and the CPU instruction ceilings, from the ``bnnctl bench`` records under ``results/bench``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paper
from ..bench_records import LATENCY_SUFFIX, is_latency, read_bench_records
from ..runs import is_count, is_number
from .records import Notes, fmt, md_table, write_csv


@dataclass
class KernelRecord:
    rel: str
    data: dict[str, Any]

    @property
    def busy(self) -> bool:
        return is_busy(self.data)

    @property
    def date(self) -> str:
        return str(self.data.get("date", ""))

    @property
    def device(self) -> str:
        d = self.data["device"]
        return f"{d.get('hardware', d['type'])} ({d['type']})"

    @property
    def shape(self) -> str:
        s = self.data["shape"]
        return f"{s['m']}x{s['n']}x{s['k']}"


@dataclass
class MlpRecord:
    """A ``bnnctl bench --model mnist-mlp`` record (``bnnctl.bench.model_bench``): engine variants timed on the
    test images."""

    rel: str
    device: str
    rows: list[dict[str, Any]]   # name, paper_row, label, status, median_ms, test_error_pct, differing
    model: str                   # which weights the accuracies are for
    device_type: str
    date: str
    busy: bool = False
    load: str = "not recorded"

    @property
    def trained(self) -> bool:
        return self.model.startswith("trained")

    def ms(self, name: str) -> float | None:
        return next((r["median_ms"] for r in self.rows if r["name"] == name and r["status"] == "ok"), None)

    def speedup(self, row: dict[str, Any], reference: str) -> float | None:
        """reference variant's time / this variant's time, from the recorded times; None if either did not run."""
        ref = self.ms(reference)
        return ref / row["median_ms"] if ref and row["status"] == "ok" else None

    def best_torch(self) -> str | None:
        """The fastest torch variant that ran (fp32, bf16, int8: the best stock path), or None."""
        ran = [r for r in self.rows if r["name"].startswith("torch") and r["status"] == "ok"]
        return min(ran, key=lambda r: r["median_ms"])["name"] if ran else None


def _mlp_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants of an MNIST MLP bench record (checked by ``bench_records.read_bench_record``).

    ``variants`` maps a name to {status, label, paper_row, median_ms (when ok), test_error_pct,
    predictions_differing_from_torch}; the speed-ups are recomputed here from the times.
    """
    rows = []
    for name, e in data["variants"].items():
        ok = e["status"] == "ok"
        err, differing = e.get("test_error_pct"), e.get("predictions_differing_from_torch")
        rows.append({"name": name, "paper_row": str(e.get("paper_row") or ""), "label": str(e.get("label") or ""),
                     "status": e["status"], "median_ms": e["median_ms"] if ok else None,
                     "test_error_pct": err if ok and is_number(err) else None,
                     "differing": differing if ok and is_count(differing) else None})
    return rows


def _mlp_model(data: dict[str, Any]) -> str:
    """What the accuracies are for, from the record's model section."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    weights = str(model.get("weights", "unknown"))
    if not weights.startswith("trained"):
        # A bench of random weights times the model; its errors say nothing about accuracy and are not shown.
        return "random weights (no trained model): test errors not shown"
    where = f" from `{model['source']}`" if model.get("source") else ""
    epoch = f", epoch {model['epoch']}" if model.get("epoch") is not None else ""
    return f"trained weights{where}{epoch}"


@dataclass
class Benches:
    """The bench records under results/bench, by kind; the last three as (path, data)."""
    kernels: list[KernelRecord]
    mlp: list[MlpRecord]
    cpu_peaks: list[tuple[str, dict[str, Any]]]
    convnets: list[tuple[str, dict[str, Any]]]
    xnor_shares: list[tuple[str, dict[str, Any]]]
    latency: list[tuple[str, dict[str, Any]]]


def is_busy(data: dict[str, Any]) -> bool:
    """Recorded as timed on a busy machine (a record from before load was recorded counts as not known busy)."""
    load = data.get("load")
    return isinstance(load, dict) and load.get("busy") is True


def load_word(data: dict[str, Any]) -> str:
    """The load column: 'busy: <why>', 'quiet', or 'not recorded' for a record older than the load fields."""
    load = data.get("load")
    if not isinstance(load, dict) or not isinstance(load.get("busy"), bool):
        return "not recorded"
    return f"busy: {load.get('busy_reason') or 'yes'}" if load["busy"] else "quiet"


def quiet_then_latest(record: Any) -> tuple:
    """Sort key, largest first: a quiet record before any busy one of its kind, then the latest."""
    return (not record.busy, str(record.date), record.rel)


def find_benches(results: Path, notes: Notes) -> Benches:
    """The bench records under results/bench."""
    kernel_records, mlp_records, cpu_peaks, convnets, xnor_shares, latency = [], [], [], [], [], []
    for path, record in read_bench_records(results / "bench"):
        rel = path.relative_to(results).as_posix()
        if isinstance(record, Exception):
            notes.add(rel, f"{record.why}: skipped")
            continue
        if record.status != "ok":
            notes.add(rel, f"a bench that failed ({record.problem}): skipped")
            continue
        data, kind = record.data, record.kind
        if is_latency(kind):
            latency.append((rel, data))
        elif kind == "kernels":
            kernel_records.append(KernelRecord(rel, data))
        elif kind.endswith("-mlp"):
            device = data["device"]
            mlp_records.append(MlpRecord(rel, f"{device.get('hardware', device['type'])} ({device['type']})",
                                         _mlp_rows(data), _mlp_model(data), device["type"], str(data.get("date", "")),
                                         is_busy(data), load_word(data)))
        elif kind == "cpu-peaks":
            cpu_peaks.append((rel, data))
        elif kind == "cpu-xnor-share":
            xnor_shares.append((rel, data))
        elif kind.endswith("-convnet"):
            if any(e["status"] == "ok" and not is_number(e.get("images_per_s")) for e in data["variants"].values()):
                notes.add(rel, "ConvNet bench record with a variant that ran but has no images_per_s: skipped")
            else:
                convnets.append((rel, data))
        else:
            notes.add(rel, f"bench record of unknown kind {kind!r}: skipped")
    return Benches(kernel_records, mlp_records, cpu_peaks, convnets, xnor_shares, latency)


def convnet_section(records: list[tuple[str, dict[str, Any]]], out: Path) -> str:
    """The ConvNets on the packed engine (``bnnctl bench --model cifar10-convnet|svhn-convnet``): every variant
    that ran, its images/s and its speed-up over torch fp32 and over the fastest torch variant; '' when none."""
    if not records:
        return ""
    header = ["record", "model", "device", "data", "variant", "median_ms", "images_per_s", "x_torch_fp32",
              "x_best_torch", "predictions_differing_from_float", "load"]
    rows, md_rows = [], []
    for rel, data in records:
        d = data["device"]
        device = f"{d.get('hardware', d['type'])} ({d['type']})"
        source = data.get("data", {}).get("dataset") or "random images" if isinstance(data.get("data"), dict) else ""
        ok = {n: e for n, e in data["variants"].items() if e["status"] == "ok"}
        torch_ok = {n: e for n, e in ok.items() if n.startswith("torch")}
        best = min(torch_ok, key=lambda n: torch_ok[n]["median_ms"]) if torch_ok else None
        for name, e in ok.items():
            x_fp32 = ok["torch"]["median_ms"] / e["median_ms"] if "torch" in ok else None
            x_best = torch_ok[best]["median_ms"] / e["median_ms"] if best else None
            differ = e.get("predictions_differing_from_float")
            rows.append([rel, data.get("kind"), device, source, name, fmt(e["median_ms"], ".6g"),
                         fmt(e["images_per_s"], ".6g"), fmt(x_fp32, ".4g"), fmt(x_best, ".4g"),
                         differ if is_count(differ) else None, load_word(data)])
            md_rows.append([data.get("kind", ""), device, source, f"{name}: {e.get('label', '')}",
                            fmt(e["images_per_s"], ",.0f"), fmt(x_fp32, ".2f"), fmt(x_best, ".2f"),
                            fmt(differ if is_count(differ) else None, "d"), load_word(data)])
    write_csv(out / "convnets.csv", header, rows)
    return "\n\n".join([
        "### The ConvNets on packed bits (`bnnctl bench --model cifar10-convnet|svhn-convnet`)",
        md_table(["model", "device", "data", "variant", "images/s", "x torch fp32", "x best torch",
                  "predictions differing from the float model", "load"], md_rows),
        "Every variant that ran; 'best torch' is the fastest of torch fp32, channels-last and bf16 in the same "
        "record. The engine variants must predict the float model's class on every image (the command fails "
        "otherwise); bf16 rounds, so its differences are recorded only. CSV: `convnets.csv`."])


def _number(value: Any) -> float | None:
    return value if is_number(value) else None


def latency_section(records: list[tuple[str, dict[str, Any]]], out: Path) -> str:
    """The latency mode of the model benches (``bnnctl bench --model NAME --batch N``): each variant's median and
    90th percentile of one call per thread count, its speed-ups over torch fp32 and the best stock path, and its
    share of the memory floor; then, per record and thread count, the default engine variant against the fastest
    one measured. '' when no latency record is there."""
    if not records:
        return ""
    header = ["record", "model", "device", "batch", "threads", "variant", "median_ms", "p90_ms", "calls", "x_torch_fp32",
              "x_best_torch", "floor_ms", "floor_level", "share_of_floor", "predictions_differing_from_float", "load"]
    rows, md_rows, choices = [], [], []
    for rel, data in records:
        d = data["device"]
        device = f"{d.get('hardware', d['type'])} ({d['type']})"
        model = data["kind"].removesuffix(LATENCY_SUFFIX)
        floors = data.get("floor", {}).get("threads", {}) if isinstance(data.get("floor"), dict) else {}
        targets = data.get("targets", {}).get("threads", {}) if isinstance(data.get("targets"), dict) else {}
        for name, e in data["variants"].items():
            if e["status"] != "ok":
                continue
            for threads, r in e["threads"].items():
                floor = floors.get(threads) if isinstance(floors.get(threads), dict) else {}
                share, floor_ms = _number(r.get("share_of_floor")), _number(floor.get("floor_ms"))
                differ = next((v for k, v in r.items() if k.startswith("predictions_differing")), None)
                differ = differ if is_count(differ) else None
                rows.append([rel, model, device, data.get("batch_size"), threads, name, fmt(r["median_ms"], ".6g"),
                             fmt(r["p90_ms"], ".6g"), r["calls"], fmt(_number(r.get("x_torch")), ".4g"),
                             fmt(_number(r.get("x_best_torch")), ".4g"), fmt(floor_ms, ".6g"), floor.get("level"),
                             fmt(share, ".4g"), differ, load_word(data)])
                md_rows.append([model, device, data.get("batch_size"), threads, f"{name}: {e.get('label', '')}",
                                fmt(r["median_ms"], ".3f"), fmt(r["p90_ms"], ".3f"),
                                fmt(_number(r.get("x_torch")), ".2f"), fmt(_number(r.get("x_best_torch")), ".2f"),
                                f"{fmt(floor_ms, '.3f')} ({_floor_read(floor)})" if floor_ms else "",
                                f"{100 * share:.0f}%" if share else "", fmt(differ, "d"), load_word(data)])
        for threads, t in sorted(targets.items()):
            if isinstance(t, dict) and t.get("default_engine_variant"):
                choices.append(f"`{rel}`, {threads} thread(s): default {t['default_engine_variant']}, fastest measured "
                               f"{t.get('fastest_engine') or 'none'}")
    write_csv(out / "latency.csv", header, rows)
    parts = ["### Latency: one call of a few images (`bnnctl bench --model NAME --batch N`)",
             md_table(["model", "device", "batch", "threads", "variant", "median ms", "p90 ms", "x torch fp32",
                       "x best torch", "floor ms (level)", "% of floor", "predictions differing from the float model",
                       "load"], md_rows),
             "Each call runs one batch and is timed alone; 'best torch' is the fastest torch variant at that thread "
             "count in the same record. The floor is the model's packed weights over the read bandwidth of a "
             "buffer of at most their size (older records: of the level of the memory hierarchy they fit in; "
             "`tools/cpu_peaks`); '% of floor' is the floor over the median. The exact variants must predict the float model's classes (the command fails otherwise). "
             "CSV: `latency.csv`."]
    if choices:
        parts.append("The default engine variant (`bnnctl.infer.variants`' rule) against the fastest measured: "
                     + "; ".join(choices) + ".")
    return "\n\n".join(parts)


def _floor_read(floor: dict) -> str:
    """What a latency floor's bandwidth was read from: the level, and the ladder's buffer where it has one."""
    size = floor.get("read_bytes")
    return f"{floor.get('level')}, a read of {size / 1e6:.2f} MB" if is_count(size) else str(floor.get("level"))


def _read_bandwidth_rows(rel: str, data: dict[str, Any]) -> list[list[Any]]:
    """A cpu-peaks record's read bandwidth rows: per level, then the ladder of buffer sizes (records from before
    either was measured have none)."""
    rows = []
    for threads, block in sorted(data["threads"].items()):
        for level, r in (block.get("read_bandwidth_gbs") or {}).items():
            rows.append([f"`{rel}`", data["hardware"], threads, level,
                         f"{r['buffer_bytes_one_thread'] / 2**20:.2f} / {r['buffer_bytes_all_threads'] / 2**20:.2f}",
                         fmt(r["one_thread"], ".1f"), fmt(r["all_threads"], ".1f")])
        for r in block.get("read_bandwidth_by_size_gbs") or []:
            rows.append([f"`{rel}`", data["hardware"], threads, "ladder", f"{r['bytes'] / 2**20:.2f}",
                         fmt(r["one_thread"], ".1f"), fmt(r["all_threads"], ".1f")])
    return rows


def cpu_peaks_section(records: list[tuple[str, dict[str, Any]]], notes: Notes) -> str:
    """The CPU ceilings that tools/cpu_peaks/popc_peak.cpp measured (records of kind 'cpu-peaks'), or ''."""
    md_rows, read_rows = [], []
    for rel, data in records:
        rows = []  # all of a record's rows or none of them
        try:
            for threads, block in sorted(data["threads"].items()):
                for name, rate in block["rows"].items():
                    rows.append([f"`{rel}`", data["hardware"], threads, name, fmt(rate["all_threads"], ".0f"), ""])
                rows.append([f"`{rel}`", data["hardware"], threads, "best popcount / fp32 FMA", "",
                             fmt(block["best_popcount_over_fp32_fma"], ".1f") + "x"])
            reads = _read_bandwidth_rows(rel, data)
        except (KeyError, TypeError, AttributeError, ValueError):
            notes.add(rel, "cpu-peaks record in a layout this report does not know: skipped")
            continue
        md_rows += rows
        read_rows += reads
    if not md_rows:
        return ""
    parts = [
        "### CPU instruction ceilings (`tools/cpu_peaks/popc_peak.cpp`)",
        "Rates from registers, all threads together, in G binary-op/s (2 per bit multiply-accumulate) or GFLOP/s: "
        "the best popcount over the FMA rate is the largest XNOR-over-fp32 GEMM speed-up the CPU allows.",
        md_table(["record", "hardware", "threads", "loop", "G ops/s", "ratio"], md_rows)]
    if read_rows:
        parts += ["Read bandwidth, GB/s: a streaming read of a buffer in each level of the memory hierarchy (MiB "
                  "read by one thread / by all threads), then of a ladder of buffer sizes (one buffer, read by one "
                  "thread, and shared by all): the denominator of the latency floor.",
                  md_table(["record", "hardware", "threads", "level", "buffer MiB", "one thread", "all threads"],
                           read_rows)]
    return "\n\n".join(parts)


def xnor_share_section(records: list[tuple[str, dict[str, Any]]], notes: Notes) -> str:
    """The CPU XNOR GEMM's share of its ISA's ceiling, each repeat paired with a ceiling measured a moment before
    it (records of kind 'cpu-xnor-share' from tools/cpu_peaks/xnor_share.cpp), or ''."""
    md_rows = []
    for rel, data in records:
        try:
            shape = " x ".join(str(int(d)) for d in data["shape"])
            commit = data["commit"][:12] + ("+dirty" if data["commit"].endswith("+dirty") else "")
            rows = [[f"`{rel}`", data["hardware"], commit, shape, isa, e["ceiling_row"],
                     fmt(e["ceiling_tbops"], ".2f"), fmt(e["gemm_ms"], ".2f"), fmt(e["gemm_tbops"], ".2f"),
                     f"{fmt(100 * e['share'], '.0f')}% ({fmt(100 * e['share_min'], '.0f')}-"
                     f"{fmt(100 * e['share_max'], '.0f')}%)"]
                    for isa, e in data["isas"].items()]
        except (KeyError, TypeError, ValueError, AttributeError):
            notes.add(rel, "cpu-xnor-share record in a layout this report does not know: skipped")
            continue
        md_rows += rows
    if not md_rows:
        return ""
    return "\n\n".join([
        "### CPU XNOR GEMM against its instruction ceiling, side by side (`tools/cpu_peaks/xnor_share.cpp`)",
        "Each repeat times the instruction set's ceiling loop and then the GEMM forced onto that set, in one "
        "process; the share is the median over the repeats of GEMM / ceiling (range in brackets), in T "
        "binary-op/s. The kernel table divides by a ceiling recorded at another time instead.",
        md_table(["record", "hardware", "commit", "shape", "isa", "ceiling", "ceiling T", "GEMM ms", "GEMM T",
                  "share"], md_rows)])


# The columns of a kernels record entry -> our CSV column; the ratio columns are reference time / time.
KERNEL_COLUMNS = (("median_ms", "median_ms"), ("including_packing_ms", "including_packing_ms"),
                  ("tbops", "t_binary_ops_per_s"), ("x_baseline", "x_baseline"),
                  ("x_baseline_including_packing", "x_baseline_including_packing"),
                  ("x_cublas_fp32", "x_fp32_matmul"), ("x_cublas_fp32_including_packing",
                                                       "x_fp32_matmul_including_packing"),
                  ("x_torch_bf16", "x_torch_bf16"), ("x_torch_int8", "x_torch_int8"),
                  ("x_best_exact_stock", "x_best_exact_stock"), ("share_of_popc_ceiling", "share_of_popc_ceiling"),
                  ("isa", "isa"), ("share_of_isa_ceiling", "share_of_isa_ceiling"),
                  ("isa_ceiling_row", "isa_ceiling_row"))
PAPER_RATIO_FOR = {("xnor", "x_baseline"): "xnor_vs_baseline", ("xnor", "x_cublas_fp32"): "xnor_vs_cublas",
                   ("xnor-paper", "x_baseline"): "xnor_vs_baseline", ("xnor-paper", "x_cublas_fp32"): "xnor_vs_cublas"}


def _paper_ratio(rec: KernelRecord, kernel: str, column: str) -> float | None:
    """The paper's ratio for this kernel and column; only beside GPU records, as the paper timed a GPU."""
    key = PAPER_RATIO_FOR.get((kernel, column))
    return paper.kernel_ratio(key) if key and rec.data["device"]["type"] == "cuda" else None


def latest_runs(records: list[KernelRecord]) -> list[tuple[KernelRecord, str, dict[str, Any]]]:
    """(record, kernel, entry) per (device, shape, kernel) that ran: the latest quiet record in which it ran
    (a busy record only where no quiet one timed that kernel).

    In (device, shape) order, kernels in the order of the newest record for that (device, shape). A
    record that times a few kernels lists the others as not run; those entries say nothing about the
    kernel, so each row comes from the latest record that did time it.
    """
    latest: dict[tuple[str, str, str], tuple[KernelRecord, str, dict[str, Any]]] = {}
    order: dict[tuple[str, str], dict[str, None]] = {}
    for rec in sorted(records, key=quiet_then_latest, reverse=True):
        names = order.setdefault((rec.device, rec.shape), {})
        for name, e in rec.data["kernels"].items():
            names.setdefault(name, None)
            if e["status"] == "ok":
                latest.setdefault((rec.device, rec.shape, name), (rec, name, e))
    return [latest[(*key, name)] for key in sorted(order) for name in order[key] if (*key, name) in latest]


def kernels_section(records: list[KernelRecord], mlp: list[MlpRecord], out: Path) -> str:
    header = ["record", "date", "device", "shape", "kernel", "label", "exact"] + [c for _, c in KERNEL_COLUMNS] \
        + ["paper_x_baseline", "paper_x_cublas", "load"]
    rows = []
    md_rows = []
    ran = latest_runs(records)
    for rec, name, e in ran:
        values = [e.get(key) for key, _ in KERNEL_COLUMNS]
        paper_base, paper_cublas = (_paper_ratio(rec, name, key) for key in ("x_baseline", "x_cublas_fp32"))
        rows.append([rec.rel, rec.date, rec.device, rec.shape, name, e.get("label", ""), e.get("exact")]
                    + [fmt(v, ".6g") if is_number(v) else v for v in values] + [paper_base, paper_cublas,
                                                                                load_word(rec.data)])
        md_rows.append([rec.device, rec.shape, f"{name}: {e.get('label', '')}", fmt(e.get("median_ms"), ".3f"),
                        fmt(e.get("including_packing_ms"), ".3f"), fmt(e.get("x_baseline"), ".2f"),
                        fmt(paper_base, ".0f", "") + ("x" if paper_base else ""),
                        fmt(e.get("x_cublas_fp32"), ".2f"),
                        fmt(paper_cublas, ".1f", "") + ("x" if paper_cublas else ""),
                        fmt(e.get("x_best_exact_stock"), ".2f", ""), _ceiling_cell(e),
                        {True: "yes", False: "NO"}.get(e.get("exact"), "?"), load_word(rec.data)])
    write_csv(out / "kernels.csv", header, rows)

    mlp_header = ["record", "device", "variant", "paper_row", "label", "status", "median_ms", "x_baseline",
                  "x_torch", "x_best_torch", "paper_x_baseline", "test_error_pct", "predictions_differing_from_torch",
                  "model", "load"]
    mlp_rows, mlp_md = [], []
    for rec in sorted(mlp, key=lambda r: (r.device, r.rel)):
        best = rec.best_torch()
        for r in rec.rows:
            if r["status"].startswith("not run"):
                continue  # not selected, or a kernel of another device: says nothing about this one
            x_base, x_torch = rec.speedup(r, "baseline"), rec.speedup(r, "torch")
            x_best = rec.speedup(r, best) if best else None
            # The paper's 7x is (b), the XNOR kernels with the first layer on the baseline kernel, over (a), on a GPU.
            paper_x = paper.kernel_ratio("mlp_xnor_vs_baseline") \
                if r["paper_row"] == "(b)" and rec.device_type == "cuda" else None
            mlp_rows.append([rec.rel, rec.device, r["name"], r["paper_row"], r["label"], r["status"],
                             fmt(r["median_ms"], ".6g"), fmt(x_base, ".4g"), fmt(x_torch, ".4g"), fmt(x_best, ".4g"),
                             paper_x,
                             fmt(r["test_error_pct"]) if rec.trained else "", r["differing"], rec.model, rec.load])
            mlp_md.append([rec.device, f"{r['paper_row']} {r['name']}: {r['label']}".strip(),
                           fmt(r["median_ms"], ".1f") if r["status"] == "ok" else r["status"], fmt(x_base, ".2f"),
                           fmt(paper_x, "g") + ("x" if paper_x else ""), fmt(x_torch, ".2f"), fmt(x_best, ".2f"),
                           fmt(r["test_error_pct"]) if rec.trained else "", fmt(r["differing"], "d"), rec.load])
    if mlp:
        write_csv(out / "mnist_mlp.csv", mlp_header, mlp_rows)

    ratios = "; ".join(f"{r.value:g}x: {r.claim} ({r.source})" for r in paper.KERNEL_RATIOS)
    parts = ["## Kernel timings (the data behind Figure 3)",
             f"Paper: {ratios}. Ours: the `bnnctl bench` records under `bench/`, per device; a ratio is the "
             "reference kernel's time over the kernel's (higher is faster). The paper's ratios stand beside GPU "
             "records only. On a CPU the 'baseline' is a plain C++ loop and the fp32 reference is torch's matmul, not "
             "cuBLAS: the kernel column says which."]
    if ran:
        parts.append(md_table(["device", "m x n x k", "kernel", "ms", "ms incl. packing", "x baseline", "paper",
                               "x fp32 matmul", "paper", "x best exact stock", "% of ceiling", "exact", "load"],
                              md_rows))
        parts.append("One row per kernel, device and shape, from the latest record in which that kernel ran, a "
                     "record timed on a busy machine only where no quiet one timed that kernel (the load column "
                     "says which; records from before the load was recorded say 'not recorded'); a "
                     "kernel no record ran there has no row. A ratio compares times within that one record, so "
                     "it is blank where the record did not time the reference. On a CPU, 'x best exact stock' "
                     "divides by the fastest of torch's exact products (fp32, bf16, int8) in that record, and '% "
                     "of ceiling' is an XNOR row's rate over its own instruction set's XOR+popcount ceiling "
                     "(then over the CPU's best), from the `tools/cpu_peaks` record of that CPU. CSV (with each "
                     "row's record): `kernels.csv`.")
    elif records:
        parts.append("No kernel ran in the recorded benchmarks: not run.")
    else:
        parts.append("No kernel benchmark is recorded (`bnnctl bench --kernel all` writes one): not run.")
    parts.append("### MNIST MLP timings (Figure 3's right half)")
    if mlp:
        parts.append(md_table(["device", "variant", "ms (all test images)", "x baseline (a)", "paper",
                               "x torch fp32 (d)", "x best torch", "test error %", "predictions differing from torch",
                               "load"],
                              mlp_md))
        parts.append("Accuracies are for: " + "; ".join(f"`{rec.rel}`: {rec.model}" for rec in mlp) + ". "
                     f"Paper: {paper.kernel_ratio('mlp_xnor_vs_baseline'):g}x for (b) over (a), at the same accuracy. "
                     "'x best torch' divides by the fastest torch variant of the record (fp32, bf16 or int8: the "
                     "best stock path). CSV: `mnist_mlp.csv`.")
    else:
        parts.append("No MNIST MLP benchmark is recorded (`bnnctl bench --model mnist-mlp` writes one): not run.")
    return "\n\n".join(parts)


def _ceiling_cell(e: dict[str, Any]) -> str:
    """'87% (avx2 ceiling); 31% (best)' for a CPU XNOR row with recorded ceilings, else ''."""
    parts = []
    if is_number(e.get("share_of_isa_ceiling")):
        parts.append(f"{100 * e['share_of_isa_ceiling']:.0f}% ({e.get('isa', '?')})")
    if is_number(e.get("share_of_popc_ceiling")):
        parts.append(f"{100 * e['share_of_popc_ceiling']:.0f}% (best)")
    return "; ".join(parts)
