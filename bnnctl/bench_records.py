"""Bench and timing records: their one schema, how the machine's load is measured into them, their
writer and their reader.

A bench record is one JSON file (``results/bench/*.json``) that ``bnnctl bench`` writes and the report
reads, both through this module (as ``runs.RESULT_FIELDS`` serves result.json). Every record bnnctl
writes carries:

* ``format`` ``"bnnctl-bench"``, ``version`` 2, and ``sha256``, the SHA-256 of its other fields (over
  their sorted JSON): a record altered after it was written is refused when read;
* ``BENCH_FIELDS``: kind, status ("ok", or "failed" with a ``problem``), command, date, device;
* ``load``: ``LOAD_FIELDS``, the machine's load around the timed region and the ``busy`` verdict;
* its timed entries (``kernels`` for the kernel bench, ``variants`` for a model bench), each with a
  status and, when "ok", its median milliseconds (``TIMED_ENTRY_FIELDS``); a model bench's latency mode
  (kind ``<model>-latency``, ``bench --model ... --batch N``) times each variant per thread count instead:
  an "ok" entry has ``threads``, thread count -> ``LATENCY_FIELDS`` (median and 90th percentile of one call's
  milliseconds, the calls timed; ``share_of_floor`` where the floor is known).

Records written before this schema (no ``format``) are still read, as legacy: their load is unknown
(``busy`` None). Records of other tools in the same folder (``tools/cpu_peaks`` writes kind
``cpu-peaks`` and ``cpu-xnor-share``) are read as legacy records of their kind.

Busy: a timing taken while other work ran on the machine is slower than the code is. ``busy_reason``
is the one rule (see there); ``measure_load`` records what it needs around the timed region, for the
benches and for ``scripts/fast_timing.py`` alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DamagedFile
from .files import atomic_write_text
from .runs import is_number

BENCH_FORMAT = "bnnctl-bench"
BENCH_VERSION = 2  # version 1: the records written before this schema (no format, no load, no checksum)

# ---------------------------------------------------------------------------- the machine's load

# Busy when the load of other work exceeds this share of the cores, before or after the timed region.
BUSY_LOAD_SHARE = 0.25
# Busy when a CPU-bound timed region got less than this share of a CPU second per wall second per
# thread it runs (another process took the cores), over at least BUSY_MIN_WALL_S.
BUSY_CPU_SHARE = 0.25
BUSY_MIN_WALL_S = 1.0
LOADAVG_TIME_CONSTANT_S = 60.0  # the kernel's 1-minute load average is an exponential average over 60 s


def cores() -> int:
    """The cores this process may run on."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loadavg_1min() -> float | None:
    with contextlib.suppress(AttributeError, OSError):
        return round(os.getloadavg()[0], 2)
    return None


def _process_cpu_s(children: bool = False) -> float:
    t = os.times()
    return t.user + t.system + (t.children_user + t.children_system if children else 0.0)


def busy_reason(load: dict[str, Any]) -> str | None:
    """Why the machine was busy during a timed region (one phrase), or None when it was quiet; the one rule.

    Busy when (1) the 1-minute load average before the region exceeds BUSY_LOAD_SHARE of the cores; or
    (2) after it, less the region's own share (its CPU seconds per wall second, weighted by how much of
    the exponential 1-minute average the region's wall time fills), it does; or (3) the region ran on
    the CPU for at least BUSY_MIN_WALL_S and got under BUSY_CPU_SHARE of a CPU second per wall second
    for each of its threads. Where the load average is unknown only (3) is judged."""
    limit = BUSY_LOAD_SHARE * load["cores"]
    before, after = load.get("loadavg_1min_before"), load.get("loadavg_1min_after")
    if before is not None and before > limit:
        return f"the 1-minute load average was {before:.2f} before timing, over {limit:g} ({load['cores']} cores)"
    wall, per_wall = load["wall_s"], load["cpu_per_wall"]
    if after is not None:
        own = per_wall * (1 - math.exp(-wall / LOADAVG_TIME_CONSTANT_S))
        if after - own > limit:
            return (f"the 1-minute load average was {after:.2f} after timing ({after - own:.2f} without this "
                    f"process), over {limit:g} ({load['cores']} cores)")
    if load["on_cpu"] and wall >= BUSY_MIN_WALL_S and per_wall < BUSY_CPU_SHARE * load["threads"]:
        return (f"the timed process got {per_wall:.2f} CPU seconds per second for its {load['threads']} "
                f"threads")
    return None


class LoadWatch:
    """The machine's load around one timed region (see ``measure_load``); ``fields`` once it is over."""

    def __init__(self, threads: int, on_cpu: bool, children: bool = False):
        self.threads, self.on_cpu, self.children = threads, on_cpu, children
        self.fields: dict[str, Any] = {}

    def __enter__(self) -> "LoadWatch":
        self._before = loadavg_1min()
        self._wall0, self._cpu0 = time.perf_counter(), _process_cpu_s(self.children)
        return self

    def __exit__(self, *exc) -> None:
        wall, cpu = time.perf_counter() - self._wall0, _process_cpu_s(self.children) - self._cpu0
        load = {"cores": cores(), "threads": self.threads, "on_cpu": self.on_cpu,
                "loadavg_1min_before": self._before, "loadavg_1min_after": loadavg_1min(),
                "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "cpu_per_wall": round(cpu / wall, 3) if wall > 0 else 0.0}
        reason = busy_reason(load)
        self.fields = {**load, "busy": reason is not None, "busy_reason": reason}


def measure_load(threads: int, on_cpu: bool = True, children: bool = False) -> LoadWatch:
    """``with measure_load(threads) as load: <timed region>``; then ``load.fields`` holds LOAD_FIELDS.
    ``threads``: the threads the region runs (torch's); ``on_cpu``: whether its work runs on the CPU (on a
    GPU the process's CPU time says little); ``children``: count the CPU time of child processes the
    region waited for (work timed in subprocesses)."""
    return LoadWatch(threads, on_cpu, children)


def _optional_number(v: Any) -> bool:
    return v is None or is_number(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


LOAD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "cores": (_count, "a count of cores"),
    "threads": (_count, "a count of threads"),
    "on_cpu": (lambda v: isinstance(v, bool), "true or false"),
    "loadavg_1min_before": (_optional_number, "a load average or null"),
    "loadavg_1min_after": (_optional_number, "a load average or null"),
    "wall_s": (lambda v: is_number(v) and v >= 0, "seconds"),
    "cpu_s": (lambda v: is_number(v) and v >= 0, "seconds"),
    "cpu_per_wall": (lambda v: is_number(v) and v >= 0, "CPU seconds per wall second"),
    "busy": (lambda v: isinstance(v, bool), "true or false"),
    "busy_reason": (lambda v: v is None or isinstance(v, str), "a phrase or null"),
}

# ---------------------------------------------------------------------------- the schema

BENCH_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str) and v != "", "a kind of bench"),
    "status": (lambda v: v in ("ok", "failed"), "ok or failed"),
    "command": (lambda v: isinstance(v, str), "a command line"),
    "date": (lambda v: isinstance(v, str) and v != "", "a date"),
    "device": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str), "a mapping with a device type"),
    "load": (lambda v: isinstance(v, dict), "a mapping of load fields"),
}
# Each timed entry (a kernel, a model variant): a status, and when it is "ok" its median time.
TIMED_ENTRY_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "status": (lambda v: isinstance(v, str) and v != "", "a status"),
}
MODEL_KIND_SUFFIXES = ("-mlp", "-convnet")  # model benches: their timed entries are "variants"
LATENCY_SUFFIX = "-latency"  # a model bench's latency mode: "<model>-latency", variants timed per thread count
# Each thread count of an "ok" latency entry: one call's milliseconds, median and 90th percentile, over `calls`.
LATENCY_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "median_ms": (lambda v: is_number(v) and v > 0, "milliseconds"),
    "p90_ms": (lambda v: is_number(v) and v > 0, "milliseconds"),
    "calls": (_count, "a count of calls"),
}


def timed_section(kind: Any) -> str | None:
    """The key of a record's timed entries: "kernels" for the kernel bench, "variants" for a model bench,
    None for other kinds (tools' records)."""
    if kind == "kernels":
        return "kernels"
    if isinstance(kind, str) and kind.removesuffix(LATENCY_SUFFIX).endswith(MODEL_KIND_SUFFIXES):
        return "variants"
    return None


def is_latency(kind: Any) -> bool:
    """Whether a record's kind is a model bench's latency mode (``<model>-latency``)."""
    return isinstance(kind, str) and kind.endswith(LATENCY_SUFFIX) and timed_section(kind) == "variants"


def _latency_problem(name: str, entry: dict[str, Any]) -> str | None:
    per_threads = entry.get("threads")
    if not isinstance(per_threads, dict) or not per_threads:
        return f"variant {name!r} ran but has no latency per thread count"
    for threads, row in per_threads.items():
        if not (isinstance(threads, str) and threads.isdigit() and int(threads) >= 1) or not isinstance(row, dict):
            return f"variant {name!r} has a latency for {_excerpt(threads)} threads that is not one"
        problem = _field_problem(row, LATENCY_FIELDS, f" of variant {name!r} at {threads} threads")
        if problem:
            return problem
    return None


def _field_problem(data: dict[str, Any], fields: dict, where: str = "") -> str | None:
    for key, (ok, what) in fields.items():
        if key not in data:
            return f"has no '{key}'{where}"
        if not ok(data[key]):
            return f"'{key}'{where} is {_excerpt(data[key])}, not {what}"
    return None


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _timed_problem(data: dict[str, Any]) -> str | None:
    section = timed_section(data.get("kind"))
    if section is None:
        return None
    device = data.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("type"), str):
        return "has no device type"
    if section == "kernels":
        shape = data.get("shape")
        if not isinstance(shape, dict) or not all(_count(shape.get(d)) for d in "mnk"):
            return "has no shape {m, n, k}"
    entries = data.get(section)
    if not isinstance(entries, dict) or not entries:
        return f"has no {section}"
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            return f"{section[:-1]} {name!r} is not a mapping"
        problem = _field_problem(entry, TIMED_ENTRY_FIELDS, f" of {section[:-1]} {name!r}")
        if problem:
            return problem
        if entry["status"] != "ok":
            continue
        if is_latency(data.get("kind")):
            problem = _latency_problem(name, entry)
            if problem:
                return problem
        elif not is_number(entry.get("median_ms")):
            return f"{section[:-1]} {name!r} ran but has no median_ms"
    return None


def check_bench_record(data: dict[str, Any]) -> str | None:
    """The first problem of a bench record (one phrase), or None. Records of this schema are checked in
    full; legacy ones (no ``format``) for a kind and, where their kind has them, their timed entries."""
    if data.get("format") == BENCH_FORMAT:
        problem = _field_problem(data, BENCH_FIELDS) or _field_problem(data["load"], LOAD_FIELDS, " of its load")
        if problem:
            return problem
        if data["status"] == "failed" and not isinstance(data.get("problem"), str):
            return "failed but says not why"
    elif not BENCH_FIELDS["kind"][0](data.get("kind")):
        return "has no kind"
    return _timed_problem(data)


# ---------------------------------------------------------------------------- writing and reading

def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def write_bench_record(path: Path, record: dict[str, Any]) -> None:
    """Write a bench record (atomically) with its format, version and checksum. A record that does not
    satisfy the schema is a bug of its writer: ValueError, nothing written."""
    fields = {k: v for k, v in record.items() if k != "sha256"}
    fields.update(format=BENCH_FORMAT, version=BENCH_VERSION)
    problem = check_bench_record(fields)
    if problem:
        raise ValueError(f"bench record {problem}")
    atomic_write_text(path, json.dumps({**fields, "sha256": _digest(fields)}, indent=2) + "\n")


class UnreadableBenchRecord(DamagedFile):
    """A bench record that cannot be used: "PATH WHY." for the user, ``why`` alone for the report's notes."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} {why}.")
        self.why = why


@dataclass(frozen=True)
class BenchRecord:
    path: Path
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def legacy(self) -> bool:
        """Written before this schema: no load, no checksum, no status."""
        return self.data.get("format") != BENCH_FORMAT

    @property
    def status(self) -> str:
        return self.data.get("status", "ok")

    @property
    def problem(self) -> str | None:
        return self.data.get("problem")

    @property
    def load(self) -> dict[str, Any] | None:
        return None if self.legacy else self.data["load"]

    @property
    def busy(self) -> bool | None:
        """Whether the machine was busy while it was timed (None: unknown, a legacy record)."""
        return None if self.legacy else self.data["load"]["busy"]


def read_bench_record(path: Path) -> BenchRecord:
    """A bench record, its checksum verified and its fields checked; else UnreadableBenchRecord."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UnreadableBenchRecord(path, "does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnreadableBenchRecord(path, f"is not readable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UnreadableBenchRecord(path, "is not a bench record (its JSON is not an object)")
    ours = data.get("format") == BENCH_FORMAT
    if ours and data.get("version") != BENCH_VERSION:
        raise UnreadableBenchRecord(path, f"has bench record version {_excerpt(data.get('version'))}; this bnnctl "
                                          f"reads version {BENCH_VERSION} and older records without a version")
    if ours and "sha256" not in data:
        raise UnreadableBenchRecord(path, f"carries no checksum, which every version {BENCH_VERSION} bench record has")
    if "sha256" in data and _digest({k: v for k, v in data.items() if k != "sha256"}) != data["sha256"]:
        raise UnreadableBenchRecord(path, "does not match its checksum: it was altered or damaged after bnnctl "
                                          "wrote it")
    problem = check_bench_record(data)
    if problem:
        raise UnreadableBenchRecord(path, f"is not a bench record this bnnctl can read: it {problem}")
    return BenchRecord(Path(path), data)


def read_bench_records(folder: Path) -> Iterator[tuple[Path, BenchRecord | UnreadableBenchRecord]]:
    """Every ``*.json`` under folder (sorted), read: (path, record) or (path, the error saying why not)."""
    for path in sorted(Path(folder).rglob("*.json")) if Path(folder).is_dir() else []:
        try:
            yield path, read_bench_record(path)
        except UnreadableBenchRecord as e:
            yield path, e


__all__ = ["BENCH_FORMAT", "BENCH_VERSION", "BENCH_FIELDS", "LATENCY_FIELDS", "LATENCY_SUFFIX", "LOAD_FIELDS",
           "TIMED_ENTRY_FIELDS", "BenchRecord", "UnreadableBenchRecord", "LoadWatch", "busy_reason", "check_bench_record",
           "cores", "is_latency", "loadavg_1min", "measure_load", "read_bench_record", "read_bench_records",
           "timed_section", "write_bench_record"]
