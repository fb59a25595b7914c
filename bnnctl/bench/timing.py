"""What every ``bnnctl bench`` measurement shares: how it times, under which settings, and how it records.

* ``measuring()``: TF32 off (cuBLAS fp32 is compared at full fp32 precision, as in the paper; cuDNN too) and
  inference mode on (no autograd bookkeeping in any timed call); ``time_call`` and ``time_round_robin``
  enter inference mode themselves, so nothing they time can run with autograd on.
* ``time_call``: the median of repeated calls of one function; ``time_round_robin``: several functions
  taking turns, so that a load that comes and goes on a shared machine weighs on all of them alike;
  ``time_model_passes`` whole passes of a model bench's variants, ``time_calls`` every call of them alone
  (the latency mode), both after ``warmed_steps``.
* ``parse_names``: a ``--kernel`` / ``--variant`` list of names against a table of contenders;
  ``select_names`` also refuses a name that cannot run on the device.
* ``refuse_unless_fits``: a bench too large for the device's free memory is refused before allocating.
* ``header`` and ``record``: the fields every record starts with (kind, status, command, date, device with
  its hardware and commit, the machine's load) and the JSON file under ``--out`` it is written
  to, through ``bnnctl.bench_records`` (the schema the report reads).
* ``recorded_cpu_peak``: the XOR+popcount ceiling that ``tools/cpu_peaks/popc_peak.cpp --json`` recorded
  for this very CPU (same hardware string and, where recorded, the same CPU family and model);
  ``recorded_read_bandwidth`` the read bandwidth of each level of its memory hierarchy, and ``weight_floor``
  the floor it puts under a call that reads a model's weights once.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .. import kernels
from ..bench_records import write_bench_record
from ..errors import EnvironmentFailure, UserError, did_you_mean
from ..allocator import reuse_freed_memory
from ..provenance import environment, hardware

MIN_RUNS = 3  # timed runs time_call gives every function, however slow; more up to `repeat` within the budget
RECORDED_BENCHES = Path("results/bench")  # the committed bench records, where a tools/cpu_peaks record is looked for


@functools.cache
def steady_memory() -> bool:
    """Keep freed memory in the process (glibc: no mmap for large blocks, no trimming), once per process,
    before anything is timed: every call then reuses its outputs' pages as a serving process does, instead
    of faulting fresh ones in (on a VM the page faults made single calls many times slower and timings
    jump). It holds for torch's ops and bnnctl's alike. Returns whether it took effect."""
    return reuse_freed_memory()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """cuBLAS fp32 matmuls and cuDNN fp32 convolutions at full fp32 precision (TF32 off) inside; the previous
    settings after. (cuDNN's switch matters to the ConvNet bench only: TF32 would round its float model's
    first-layer inputs, whose predictions the packed engine must reproduce.)"""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def measuring() -> Iterator[None]:
    """The settings a benchmark runs under: TF32 off and inference mode on."""
    with no_tf32(), torch.inference_mode():
        yield


def parse_names(spec: str, known: Iterable[str], what: str, where: str = "") -> list[str]:
    """"all", one name, or a comma-separated list -> names, in the order of ``known``; an unknown name
    is a UserError naming the choices ("unknown {what} NAME{where}; choose from all, ...")."""
    known = list(known)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return known
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"unknown {what} {', '.join(unknown) or repr(spec)}{where}; choose from all, "
                        f"{', '.join(known)}{did_you_mean(unknown[0] if unknown else spec, known)}")
    return [n for n in known if n in names]


def select_names(spec: str, unavailable: dict[str, str | None], what: str, option: str) -> list[str]:
    """``parse_names`` over a table of name -> why it cannot run here (None: it can): "all" keeps those that
    can; a name given explicitly that cannot is a UserError (one sentence)."""
    names = parse_names(spec, unavailable, what, "" if option == "--kernel" else f" for {option}")
    if [s.strip() for s in spec.split(",") if s.strip()] == ["all"]:
        return [n for n in names if unavailable[n] is None]
    refused = [n for n in names if unavailable[n] is not None]
    if refused:
        raise UserError(f"{option} {refused[0]} cannot run here: {unavailable[refused[0]]}; leave it out "
                        f"or choose another {what}.")
    return names


def off_device(devices: tuple[str, ...], device: str) -> str | None:
    """Why something that runs on ``devices`` cannot run on ``device`` (None: it can)."""
    return None if device in devices else f"it runs on {' or '.join(devices)} only, not on {device}"


def available_bytes(device: torch.device) -> int | None:
    """Free memory for a bench on the device: the GPU's free memory, or on the CPU MemAvailable of
    /proc/meminfo (else the available physical pages); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_unless_fits(needed: int, device: torch.device, what: str) -> None:
    """A UserError (one sentence) when ``needed`` bytes exceed the device's free memory."""
    free = available_bytes(device)
    if free is not None and needed > free:
        raise UserError(f"{what} needs about {needed / 2**30:,.1f} GiB of {device.type} memory and "
                        f"{free / 2**30:,.1f} GiB are available; choose a smaller size.")


def check_kernels_usable() -> None:
    """Build or load the kernel extension now, so that an unusable build is its own one-sentence error
    (an unusable build folder: exit 4) before anything is timed, not a failed row."""
    kernels.cpu_isa()


def time_call(fn: Callable[[], object], device: torch.device, repeat: int, budget_s: float) -> tuple[float, int]:
    """Median milliseconds of fn() over up to `repeat` runs (at least MIN_RUNS, more while the budget
    lasts), after one warm-up run, in inference mode; CUDA events on a GPU, perf_counter around a
    synchronised call on CPU. Returns (median ms, runs timed)."""
    steady_memory()
    with torch.inference_mode():
        fn()
        sync(device)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < repeat and (len(times) < MIN_RUNS or time.perf_counter() - started < budget_s):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), len(times)


def _timed_pass(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3, out


def time_round_robin(passes: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeat: int,
                     budget_s: float, on_call: Callable[[str], None] | None = None
                     ) -> dict[str, tuple[float, int, torch.Tensor]]:
    """name -> (median ms of one call, calls timed, the last call's output), in inference mode.

    The functions take turns, one call each per round; rounds go on up to ``repeat`` while ``budget_s``
    per function lasts (at least one round). Each call is timed whole, with perf_counter between device
    synchronisations, so it suits calls long enough to hide the clock's resolution (a test-set pass).
    ``on_call(name)`` after each call (progress)."""
    steady_memory()
    times: dict[str, list[float]] = {name: [] for name in passes}
    outputs: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    with torch.inference_mode():
        for rounds in range(repeat):
            if rounds and time.perf_counter() - started >= budget_s * len(passes):
                break
            for name, fn in passes.items():
                ms, outputs[name] = _timed_pass(fn, device)
                times[name].append(ms)
                if on_call:
                    on_call(name)
    return {name: (statistics.median(t), len(t), outputs[name]) for name, t in times.items()}


def warmed_steps(entries: dict[str, dict], make_step: Callable[[str], Callable[[torch.Tensor], torch.Tensor]],
                 warm_up: torch.Tensor, device: torch.device, calls: int = 1,
                 on_step: Callable[[str], None] | None = None) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each variant whose entry has no status yet, built and run ``calls`` times on ``warm_up`` (untimed).

    One that fails gets its error in its entry and the others go on (the caller fails the command). An unusable
    environment (EnvironmentFailure: no memory, an unusable kernel build folder) ends the bench at once.
    ``on_step(name)`` after each warm-up (progress)."""
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name, entry in entries.items():
        if "status" in entry:
            continue
        try:
            step = make_step(name)
            with measuring():
                for _ in range(calls):
                    step(warm_up)
                sync(device)
        except EnvironmentFailure:
            raise
        except (RuntimeError, UserError) as e:
            entry["status"] = f"failed: {error_line(e)}"
            continue
        finally:
            if on_step:
                on_step(name)
        steps[name] = step
    return steps


def time_model_passes(entries: dict[str, dict], make_step: Callable[[str], Callable[[torch.Tensor], torch.Tensor]],
                      x: torch.Tensor, batch: int, device: torch.device, repeat: int, budget_s: float,
                      on_step: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Time whole passes over x (in batches) of the variants whose entry has no status yet.

    Each variant's step is built and warmed up on one batch first (``warmed_steps``: one that fails gets its
    error in its entry). Fills status, median_ms, runs and images_per_s; returns each timed variant's
    predictions (on the CPU). ``on_step(name)`` after each warm-up and each timed pass (progress).
    """
    steps = warmed_steps(entries, make_step, x[:batch], device, on_step=on_step)
    passes = {name: (lambda s: lambda: torch.cat([s(b) for b in x.split(batch)]))(step) for name, step in steps.items()}
    with no_tf32():  # time_round_robin runs every pass in inference mode
        timed = time_round_robin(passes, device, repeat, budget_s, on_step)
    predictions = {}
    for name, (ms, runs, pred) in timed.items():
        predictions[name] = pred.cpu()
        entries[name].update(status="ok", median_ms=ms, runs=runs, images_per_s=len(x) / (ms / 1e3))
    return predictions


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0 < q < 100) of values, interpolated between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_calls(steps: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, batch: int,
               device: torch.device, rounds: int, budget_s: float, block: int,
               on_call: Callable[[str], None] | None = None) -> dict[str, tuple[list[float], torch.Tensor]]:
    """name -> (milliseconds of every call, the predictions of its first pass over x), in inference mode.

    Each call runs one batch of ``batch`` consecutive images of x (the next ones each call, from the first again
    after the last whole batch) and is timed alone, between device synchronisations. The steps take turns,
    ``block`` calls each per round; rounds go on up to ``rounds`` while ``budget_s`` per step lasts (at least
    one round). The predictions cover the images the step's calls reached, up to one pass over x.
    ``on_call(name)`` after each block (progress)."""
    steady_memory()
    per_pass = len(x) // batch
    times: dict[str, list[float]] = {name: [] for name in steps}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in steps}
    started = time.perf_counter()
    with torch.inference_mode():
        for r in range(rounds):
            if r and time.perf_counter() - started >= budget_s * len(steps):
                break
            for name, step in steps.items():
                for _ in range(block):
                    call = len(times[name])
                    start = (call % per_pass) * batch
                    xb = x[start:start + batch]
                    ms, out = _timed_pass(lambda: step(xb), device)
                    times[name].append(ms)
                    if call < per_pass:
                        seen[name].append(out.cpu())
                if on_call:
                    on_call(name)
    return {name: (times[name], torch.cat(seen[name])) for name in steps}


def error_line(e: Exception) -> str:
    """The first line of an exception's message (its type when it has none), for a table's status cell."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def device_info(device: torch.device) -> dict:
    """The device a result was measured on: environment() (hardware, commit, versions) and what bears on speed."""
    info = {"type": device.type, **environment(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count)
    else:
        info.update(threads=torch.get_num_threads(), cpu_isa=kernels.cpu_isa(), freed_memory_kept=steady_memory())
    return info


def header(kind: str, command: str, device: torch.device, load: dict) -> dict:
    """The fields a bench record starts with (``bench_records.BENCH_FIELDS``); ``load``: the fields of the
    ``bench_records.measure_load`` around its timed region."""
    return {"kind": kind, "status": "ok", "command": command,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_info(device),
            "load": load}


def print_load(result: dict, console) -> None:
    """One line when the machine was busy while the bench ran (``bench_records.busy_reason``)."""
    load = result["load"]
    if load["busy"]:
        console.print(f"[yellow]busy machine[/]: {load['busy_reason']}; these timings are slower than the code is.",
                      highlight=False)


def check_arguments(out_dir: Path, repeat: int, shape: dict[str, int | None] | None = None,
                    popc_peak_tbops: float | None = None) -> None:
    """Refuse, before any timing, what a bench cannot use: one sentence each."""
    for name, value in (shape or {}).items():
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}.")
    if repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {repeat}.")
    if popc_peak_tbops is not None and not (popc_peak_tbops > 0 and popc_peak_tbops < float("inf")):
        raise UserError(f"--popc-peak must be a positive number of T binary-op/s, got {popc_peak_tbops}.")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give the folder the bench record goes into.")


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The first processor's model name, CPU family and model from /proc/cpuinfo, as popc_peak records them
    in its ``machine`` field ({} where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    out: dict = {"model_name": fields.get("model name", "")}
    for key, name in (("cpu family", "cpu_family"), ("model", "model")):
        try:
            out[name] = int(fields.get(key, ""))
        except ValueError:
            out[name] = -1
    return out


def _popc_ceiling_of(rec: dict, threads: int) -> float | None:
    """T binary-op/s of a cpu-peaks record for a thread count: its ``popc_ceiling_tbops`` there, else its best
    xor+popcount row, all threads (G ops/s); None when it has no row for that count."""
    block = rec.get("threads", {}).get(str(threads)) if isinstance(rec.get("threads"), dict) else None
    if not isinstance(block, dict):
        return None
    value = block.get("popc_ceiling_tbops")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"):
        return float(value)
    rows = block.get("rows")
    rates = [r.get("all_threads") for name, r in rows.items() if name.startswith("xor+popc") and isinstance(r, dict)] \
        if isinstance(rows, dict) else []
    rates = [float(r) for r in rates if isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0]
    return max(rates) / 1e3 if rates else None


def _cpu_peaks_records(directories: Iterable[Path | str]) -> Iterator[tuple[Path, dict]]:
    """(path, record) of every readable ``*cpu-peaks*.json`` of kind 'cpu-peaks' in the directories, oldest first
    (their names start with their date)."""
    paths = [p for d in map(Path, directories) if d.is_dir() for p in d.glob("*cpu-peaks*.json")]
    for path in sorted(paths, key=lambda p: p.name):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("kind") == "cpu-peaks":
            yield path, rec


def recorded_cpu_peak(directories: Iterable[Path | str], device: torch.device) -> tuple[float, Path] | None:
    """(XOR+popcount ceiling in T binary-op/s, record path) from the newest ``*cpu-peaks*.json`` in the directories
    measured on this CPU: kind 'cpu-peaks', ``hardware`` equal to this machine's hardware string (model name
    and torch's thread count), ``machine`` (where the record has one) equal to ``cpu_identity()``, and a row
    for torch's thread count. None on a GPU or when no record matches."""
    if device.type != "cpu":
        return None
    want_hardware, want_machine, threads = hardware(device), cpu_identity(), torch.get_num_threads()
    found = None
    for path, rec in _cpu_peaks_records(directories):
        if rec.get("hardware") != want_hardware:
            continue
        if "machine" in rec and rec["machine"] != want_machine:
            continue
        peak = _popc_ceiling_of(rec, threads)
        if peak is not None:
            found = (peak, path)
    return found


def cpu_peak_rows(path: Path | str, threads: int | None = None) -> dict[str, float]:
    """A cpu-peaks record's xor+popcount rows for torch's (or the given) thread count: row name -> T binary-op/s
    on all threads ({} where it has none)."""
    threads = torch.get_num_threads() if threads is None else threads
    try:
        rec = json.loads(Path(path).read_text())
        rows = rec["threads"][str(threads)]["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for name, row in rows.items() if isinstance(rows, dict) else ():
        rate = row.get("all_threads") if isinstance(row, dict) else None
        if name.startswith("xor+popc") and isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            out[name] = float(rate) / 1e3
    return out


@dataclass(frozen=True)
class ReadBandwidth:
    """What a ``tools/cpu_peaks`` record measured of this CPU's memory hierarchy: the per-core L2 and the L3 in
    bytes, the read bandwidth of each level (l2, l3, memory) in GB/s by thread count, and, from records that
    measured the ladder of buffer sizes, by thread count the (buffer bytes, GB/s) pairs in order of size."""
    source: Path
    l2_bytes: int
    l3_bytes: int
    gbs: dict[int, dict[str, float]]
    by_size: dict[int, list[tuple[int, float]]] = field(default_factory=dict)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _read_bandwidth_of(rec: dict, path: Path) -> ReadBandwidth | None:
    """A cpu-peaks record's read bandwidth: 1 thread from each block's one-thread rates, N threads from the
    all-threads rates of block N; None where it measured none."""
    caches, blocks = rec.get("caches"), rec.get("threads")
    if not isinstance(caches, dict) or not isinstance(blocks, dict):
        return None
    gbs: dict[int, dict[str, float]] = {}
    by_size: dict[int, list[tuple[int, float]]] = {}
    for threads, block in blocks.items():
        ladder = block.get("read_bandwidth_by_size_gbs") if isinstance(block, dict) else None
        if isinstance(threads, str) and threads.isdigit() and isinstance(ladder, list):
            for step in ladder:
                size = step.get("bytes") if isinstance(step, dict) else None
                if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
                    continue
                for count, key in ((1, "one_thread"), (int(threads), "all_threads")):
                    if _positive(step.get(key)):
                        by_size.setdefault(count, []).append((size, float(step[key])))
        levels = block.get("read_bandwidth_gbs") if isinstance(block, dict) else None
        if not (isinstance(threads, str) and threads.isdigit()) or not isinstance(levels, dict):
            continue
        for level, rates in levels.items():
            if not isinstance(rates, dict):
                continue
            for count, key in ((1, "one_thread"), (int(threads), "all_threads")):
                if _positive(rates.get(key)):
                    gbs.setdefault(count, {})[level] = float(rates[key])
    sizes = [caches.get(k) for k in ("l2_bytes_per_core", "l3_bytes")]
    if not gbs or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes):
        return None
    return ReadBandwidth(path, sizes[0], sizes[1], gbs, {t: sorted(set(steps)) for t, steps in by_size.items()})


def recorded_read_bandwidth(directories: Iterable[Path | str], device: torch.device) -> ReadBandwidth | None:
    """The read bandwidth of the newest ``*cpu-peaks*.json`` in the directories measured on this CPU (its
    ``machine`` equal to ``cpu_identity()``) that has one; None on a GPU or when none has."""
    if device.type != "cpu":
        return None
    want = cpu_identity()
    found = None
    for path, rec in _cpu_peaks_records(directories):
        if rec.get("machine") == want:
            found = _read_bandwidth_of(rec, path) or found
    return found


def weight_floor(weight_bytes: int, threads: int, bandwidth: ReadBandwidth | None) -> dict:
    """The floor of a call that reads ``weight_bytes`` of weights once on ``threads`` threads: bytes / bandwidth
    in ms, with the level of the memory hierarchy they fit in (the threads' L2s together, the L3, else memory).
    The bandwidth is, where the record has the ladder of buffer sizes for that thread count, the rate of its
    largest buffer not above the weights' bytes (``read_bytes``; its smallest where all are larger): reads slow
    down as a buffer outgrows each cache, so that rate is at least what the weights' own size gets and the floor
    stays a bound, where a level's one figure (a buffer of half the cache) can be half the rate the weights see.
    Else the level's recorded bandwidth. ``why`` instead where no bandwidth is recorded."""
    if bandwidth is None:
        return {"why": "no tools/cpu_peaks record of this CPU with its read bandwidth"}
    capacities = (("l2", bandwidth.l2_bytes * threads), ("l3", bandwidth.l3_bytes))
    level = next((name for name, capacity in capacities if 0 < weight_bytes <= capacity), "memory")
    ladder = bandwidth.by_size.get(threads)
    if ladder:
        size, gbs = next((step for step in reversed(ladder) if step[0] <= weight_bytes), ladder[0])
        return {"level": level, "read_bytes": size, "read_gbs": gbs, "floor_ms": weight_bytes / (gbs * 1e9) * 1e3,
                "source": str(bandwidth.source)}
    gbs = bandwidth.gbs.get(threads, {}).get(level)
    if gbs is None:
        return {"level": level, "why": f"{bandwidth.source} has no {level} read bandwidth for {threads} threads"}
    return {"level": level, "read_gbs": gbs, "floor_ms": weight_bytes / (gbs * 1e9) * 1e3,
            "source": str(bandwidth.source)}


def record(result: dict, out_dir: Path | str, problem: str | None = None) -> Path:
    """Write a bench result as JSON into out_dir (``bench_records.write_bench_record``) and return its path:
    DATE-DEVICE-WHAT.json, WHAT the m x n x k shape or else the record's kind. ``problem``: why the bench
    failed (a variant failed or computed wrongly): recorded with status "failed", never as a good timing."""
    if problem is not None:
        result = {**result, "status": "failed", "problem": problem}
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out_dir} is a file; give the folder the bench record goes into.") from None
    except OSError as e:
        raise EnvironmentFailure(f"could not create {out_dir} ({e.strerror or type(e).__name__}).") from None
    stamp = re.sub(r"[^0-9T]", "", result.get("date", datetime.now(timezone.utc).isoformat()))[:15]
    device = result.get("device", {})
    slug = device.get("type", "device")
    if device.get("type") == "cuda":
        slug = re.sub(r"[^a-z0-9]+", "-", device.get("hardware", "cuda").lower()).strip("-")
    what = "x".join(str(result["shape"][d]) for d in "mnk") if "shape" in result else result.get("kind", "bench")
    path = out_dir / f"{stamp}-{slug}-{what}.json"
    write_bench_record(path, result)
    return path


__all__ = ["MIN_RUNS", "RECORDED_BENCHES", "sync", "no_tf32", "measuring", "parse_names", "select_names", "off_device", "available_bytes",
           "refuse_unless_fits", "check_kernels_usable", "time_call", "time_round_robin", "error_line", "device_info",
           "header", "print_load", "check_arguments", "cpu_identity", "recorded_cpu_peak", "cpu_peak_rows", "record",
           "warmed_steps", "percentile", "time_calls", "ReadBandwidth", "recorded_read_bandwidth", "weight_floor"]
