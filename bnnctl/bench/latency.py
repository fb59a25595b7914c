"""``bnnctl bench --model NAME --batch N``: the model benches' latency mode (``model_bench`` is the throughput mode).

Each call runs N images (``--batch 1``: single-image latency) from 8-bit images on the device to predicted
classes, and is timed alone (``timing.time_calls``); the variants take turns, ``LATENCY_BLOCK`` calls each, at
each thread count of ``--threads`` in turn (on a CPU 1 and all the cores the process may use by default). The
record holds, per variant and thread count, the median and the 90th percentile of one call's milliseconds. The
engine's variants, torch fp32 and torch's other stock paths are timed in the same run, and each variant's
speed-up is recorded over torch fp32 and over the best stock path (the fastest torch variant at that thread count).

Predictions are checked as in the throughput mode: every exact variant must predict, in its timed calls, the
classes the fp32 float model predicts for the same images in calls of the same size (run untimed, at the same
thread count, over every image the timed calls reached); one that differs, or fails, fails the command.

The floor: a call reads the model's packed weights at least once, so it takes at least their bytes over the read
bandwidth of a buffer their size, or of the level of the memory hierarchy they fit in where the record has no
ladder of sizes (``timing.weight_floor``, from the newest ``tools/cpu_peaks`` record of this CPU in ``--out`` or
``results/bench``). Each latency's ``share_of_floor`` is floor / median: 1 at the floor. The default engine
variant for the batch (``infer.variants.default_variant``) is named per thread count beside the fastest one
measured, so a record shows where the rule and the clock part.
"""
from __future__ import annotations

from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from ..bench_records import LATENCY_SUFFIX, cores, measure_load
from ..errors import UserError
from ..infer.engine import torch_int8_is_fast
from ..infer.variants import default_variant
from .model_bench import SPECS, failure, model_arguments, prepare
from .specs import ModelSpec
from .timing import (RECORDED_BENCHES, header, measuring, no_tf32, percentile, print_load, record,
                     recorded_read_bandwidth, time_calls, warmed_steps, weight_floor)

LATENCY_BUDGET_S = 3.0  # seconds per variant and thread count for its rounds together (at least one round)
LATENCY_BLOCK = 25  # calls a variant makes in a row when its turn comes
WARM_UP_CALLS = 3


def thread_counts(spec: str | None, device: torch.device) -> list[int]:
    """The thread counts to time: ``--threads`` (a comma list), by default 1 and all the cores this process may
    use; on a GPU only torch's present count (threads do not run the kernels there)."""
    if device.type != "cpu":
        if spec is not None:
            raise UserError("--threads sets the CPU threads of the latency mode; on a GPU leave it out.")
        return [torch.get_num_threads()]
    if spec is None:
        return sorted({1, cores()})
    try:
        counts = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--threads takes thread counts separated by commas, e.g. 1,2; got {spec!r}.") from None
    if not counts or counts[0] < 1:
        raise UserError(f"--threads takes thread counts of at least 1, got {spec!r}.")
    if counts[-1] > cores():
        raise UserError(f"--threads {counts[-1]} is more than the {cores()} cores this process may run on.")
    return counts


def _latency_of(times_ms: list[float]) -> dict:
    return {"median_ms": percentile(times_ms, 50), "p90_ms": percentile(times_ms, 90), "calls": len(times_ms)}


def bench_latency(model_name: str, run: Path | None = None, device: str = "auto", data_dir: Path | None = None,
                  batch: int = 1, threads: str | None = None, repeat: int = 20, images: int | None = None,
                  results: Path = Path("results"), peaks_dirs: tuple[Path, ...] = (), command: str = "",
                  console: Console | None = None, names: list[str] | None = None, budget_s: float = LATENCY_BUDGET_S,
                  block: int = LATENCY_BLOCK) -> dict:
    """The latency record of the named variants (default: all that run the model on the device)."""
    p = prepare(model_name, run, device, data_dir, images, results, names)
    spec, dev, x = p.spec, p.device, p.x
    if batch > len(x):
        raise UserError(f"--batch {batch} is more than the {len(x):,} test images the bench has.")
    counts = thread_counts(threads, dev)
    section = p.model_section()
    bandwidth = recorded_read_bandwidth(peaks_dirs, dev)
    floors = {t: weight_floor(section["packed_weight_bytes"], t, bandwidth) if dev.type == "cpu"
              else {"why": "the floor is measured on CPUs only"} for t in counts}
    if console is not None:
        console.print(f"bench {spec.name}, latency: {batch:,} image{'s' if batch > 1 else ''} per call over "
                      f"{len(x):,} images ({p.data.info['source']}); model {p.model.info['source'] or 'random weights'};"
                      f" {dev.type}, threads {', '.join(map(str, counts))}", highlight=False)
    variants = p.entries()
    steps = warmed_steps(variants, p.step, x[:batch], dev, calls=WARM_UP_CALLS)
    timed, references = {}, {}
    previous = torch.get_num_threads()
    try:
        with measure_load(max(counts), on_cpu=dev.type == "cpu") as load:
            for t in counts:
                if dev.type == "cpu":
                    torch.set_num_threads(t)
                with measuring():  # at this thread count: its thread pool up, its caches warm
                    for step in steps.values():
                        step(x[:batch])
                with no_tf32():  # time_calls runs in inference mode
                    timed[t] = time_calls(steps, x, batch, dev, repeat, budget_s, block)
                covered = max((len(pred) for _, pred in timed[t].values()), default=0)
                reference = p.step(spec.reference)
                with measuring():
                    references[t] = torch.cat([reference(x[i:i + batch]) for i in range(0, covered, batch)]).cpu() \
                        if covered else torch.empty(0, dtype=torch.long)
    finally:
        torch.set_num_threads(previous)
    for name in steps:
        variants[name].update(status="ok", threads={})
        for t in counts:
            times, pred = timed[t][name]
            variants[name]["threads"][str(t)] = {
                **_latency_of(times), "images_checked": len(pred),
                spec.differing_key: int((pred != references[t][:len(pred)]).sum())}
    targets = latency_comparisons(spec, variants, counts, floors)
    exported = p.model.exported
    chosen = default_variant(exported, dev.type, batch, torch_int8_is_fast())
    for t in counts:
        row = targets["threads"][str(t)]
        row.update(default_engine_variant=chosen, default_engine_variant_ran=chosen in steps,
                   default_is_fastest_engine=chosen is not None and chosen == row.get("fastest_engine"))
    return {
        **header(f"{spec.name}{LATENCY_SUFFIX}", command, dev, load.fields),
        "mode": "latency", "batch_size": batch, "threads": counts, "repeat": repeat, "block": block,
        "model": section, "data": p.data.info,
        "reference": {"variant": spec.reference,
                      "predictions": f"the fp32 float model at each thread count, untimed, in calls of {batch} "
                                     "image(s), over every image the timed calls reached"},
        "floor": {"packed_weight_bytes": section["packed_weight_bytes"], "threads": {str(t): floors[t] for t in counts}},
        "variants": variants, "targets": targets,
    }


def latency_comparisons(spec: ModelSpec, variants: dict, counts: list[int], floors: dict[int, dict]) -> dict:
    """Per thread count: each variant's speed-ups over torch fp32 and the best stock path, and its share of the
    floor; the fastest engine and torch variants. Then which exact variants disagreed with the float model."""
    ok = {name: e for name, e in variants.items() if e["status"] == "ok"}
    per_threads: dict[str, dict] = {}
    for t in map(str, counts):
        ms = {name: e["threads"][t]["median_ms"] for name, e in ok.items()}
        torch_ok = [n for n in ok if not spec.variants[n].engine]
        engines = [n for n in ok if spec.variants[n].packed]
        best_torch = min(torch_ok, key=ms.get) if torch_ok else None
        floor_ms = floors[int(t)].get("floor_ms")
        for name, e in ok.items():
            row = e["threads"][t]
            row["x_torch"] = ms["torch"] / ms[name] if "torch" in ms else None
            row["x_best_torch"] = ms[best_torch] / ms[name] if best_torch else None
            row["share_of_floor"] = floor_ms / ms[name] if floor_ms else None
        fastest = min(engines, key=ms.get) if engines else None
        per_threads[t] = {"best_torch": best_torch, "fastest_engine": fastest,
                          "fastest_engine_median_ms": ms[fastest] if fastest else None,
                          "fastest_engine_x_torch": ok[fastest]["threads"][t]["x_torch"] if fastest else None,
                          "fastest_engine_x_best_torch": ok[fastest]["threads"][t]["x_best_torch"] if fastest else None}
    checked = [name for name in ok if spec.variants[name].exact]
    wrong = [name for name in checked if any(row[spec.differing_key] for row in ok[name]["threads"].values())]
    return {"threads": per_threads, "exact_variants_same_predictions": not wrong, "exact_variants_checked": checked,
            "exact_variants_differing": wrong}


# ---------------------------------------------------------------------------- output

def _cell(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_latency_table(result: dict, console: Console) -> None:
    """One table per thread count (fits 80 columns), the legend, the floor and the default against the fastest."""
    spec = SPECS[result["kind"].removesuffix(LATENCY_SUFFIX)]
    ran = {name: e for name, e in result["variants"].items() if e["status"] == "ok"}
    for t in map(str, result["threads"]):
        table = Table(title=f"{spec.title} ({result['model']['architecture']}), {result['batch_size']} image(s) per "
                            f"call, {t} thread{'s' if t != '1' else ''}, {result['device']['hardware']}",
                      title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for col in ("variant", "median ms", "p90 ms", "x torch", "x best torch", "% floor", "differ"):
            table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
        for name, e in ran.items():
            row = e["threads"][t]
            differ = row[spec.differing_key]
            share = row.get("share_of_floor")
            table.add_row(name, f"{row['median_ms']:.3f}", f"{row['p90_ms']:.3f}", _cell(row["x_torch"], ".2f"),
                          _cell(row["x_best_torch"], ".2f"), "" if share is None else f"{100 * share:.0f}%",
                          f"[bold red]{differ}[/]" if differ and e.get("exact", True) else str(differ))
        console.print(table)
        floor = result["floor"]["threads"][t]
        if "floor_ms" in floor:
            read = (f"a read of {floor['read_bytes'] / 1e6:.2f} MB" if "read_bytes" in floor
                    else f"{floor['level']} read")
            console.print(f"floor at {t} thread(s): {result['floor']['packed_weight_bytes'] / 1e6:.2f} MB of packed "
                          f"weights / {floor['read_gbs']:.1f} GB/s ({read}, {floor['source']}) = "
                          f"{floor['floor_ms']:.3f} ms", highlight=False)
        else:
            console.print(f"floor at {t} thread(s): not known ({floor['why']})", highlight=False)
        targets = result["targets"]["threads"][t]
        if targets.get("default_engine_variant"):
            fastest = targets.get("fastest_engine")
            console.print(f"default engine variant for {result['batch_size']} image(s) per call: "
                          f"{targets['default_engine_variant']}; fastest measured: {fastest or 'none ran'}",
                          highlight=False)
    for name, e in ran.items():
        console.print(f"  {name}: {e['label']}", highlight=False)
    console.print(f"'differ': predictions other than the fp32 float model's ({result['reference']['predictions']}); "
                  "'% floor': the floor over the median.", highlight=False)
    for name, e in result["variants"].items():
        if e["status"].startswith("failed"):
            console.print(f"[bold red]{name} failed[/]: {e['status'][len('failed: '):]}", highlight=False)
    print_load(result, console)


def run_latency(model: str, run: Path | None, device: str, data_dir: Path | None, repeat: int, out: Path,
                command: str, console: Console, variants: str, images: int | None, batch: int,
                threads: str | None) -> Path:
    """``bnnctl bench --model NAME --batch N``: bench, print, record; an error when a variant failed or an exact
    variant predicted other classes than the float model."""
    names = model_arguments(model, device, out, repeat, variants, images, {"batch": batch})
    result = bench_latency(model, run, device, data_dir, batch, threads, repeat, images, command=command,
                           console=console, names=names, peaks_dirs=(Path(out), RECORDED_BENCHES),
                           budget_s=LATENCY_BUDGET_S, block=LATENCY_BLOCK)
    print_latency_table(result, console)
    problem = failure(result, SPECS[model])
    path = record(result, out, problem)
    console.print(f"recorded {path}", highlight=False, soft_wrap=True)
    if problem:
        raise UserError(f"{problem} (recorded as failed in {path}).")
    return path


__all__ = ["LATENCY_BLOCK", "LATENCY_BUDGET_S", "bench_latency", "latency_comparisons", "print_latency_table",
           "run_latency", "thread_counts"]
