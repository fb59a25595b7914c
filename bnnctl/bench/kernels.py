"""``bnnctl bench``: the paper's kernel figure on today's hardware.

The paper (Figure 3 and its section "Seven times faster on GPU at run-time") multiplies two
8192 x 8192 binary matrices on a GTX 750 and reports its XNOR kernel 23x faster than an unoptimised
float kernel and 3.4x faster than cuBLAS. ``bench_kernels`` times the same contenders -- the XNOR
kernels on packed bits, the paper's float baseline, cuBLAS fp32 (TF32 off) and torch bf16 -- on +/-1
operands, checks every output against the exact float64 product, and ``timing.record``
writes the result as JSON under ``runs/bench/`` (``--out``).

On a CPU the bench also times torch's best stock paths for an exact +/-1 product, which on current
Xeons are not fp32: ``bf16`` (oneDNN, AMX where present) and ``int8``, ``torch._int_mm`` on int8 +/-1
operands (VNNI / AMX, exact int32 sums). A bf16 product is exact only with a float32 output: its sums
past 256 do not fit bf16's 8-bit significand. Where this torch has ``torch.mm(..., out_dtype=float32)``
on the CPU the bf16 row uses it; otherwise the bf16 result is cast to float32, the row says so
(``output``) and is marked inexact whenever one of its sums was rounded (bf16 holds every integer only
up to 256), which does not fail the command: it is a stock reference, not one of our kernels. ``x_best_exact_stock`` divides by the fastest of
torch fp32, bf16 and int8 that came out exact. The XNOR kernels' share of the CPU's XOR+popcount
ceiling comes from ``--popc-peak`` or, without it, from a ``tools/cpu_peaks`` record of this very CPU
in the output folder (``timing.recorded_cpu_peak``). On a GPU the bench is as before (the int8 row is
CPU-only).

The contenders are the ``KERNELS`` table (name -> BenchKernel), so a new kernel is one entry.
Nothing is filled in: a kernel that was not run, or failed, says so in the table and the JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from .. import kernels
from ..bench_records import measure_load
from ..errors import EnvironmentFailure, UserError
from ..paper import KERNEL_RATIOS
from ..provenance import resolve_device

# The committed record's benches: its tools/cpu_peaks records of a CPU serve a user's bench on that CPU.
from .timing import (RECORDED_BENCHES, check_arguments, check_kernels_usable, cpu_peak_rows, error_line, header,
                     measuring, off_device,
                     print_load, record, recorded_cpu_peak, refuse_unless_fits, select_names, sync, time_call)

DEFAULT_SHAPES = {"cuda": (8192, 8192, 8192), "cpu": (1024, 1024, 4096)}  # the CPU one runs in seconds
# The paper's ratios (cited, not measured here), recorded beside ours.
PAPER = {"gpu": "GTX 750", "shape": [8192, 8192, 8192],
         **{r.key: r.value for r in KERNEL_RATIOS if r.key in ("xnor_vs_baseline", "xnor_vs_cublas")},
         "source": next(r.source for r in KERNEL_RATIOS if r.key == "xnor_vs_baseline")}


@dataclass
class Operands:
    """One benchmark problem: (m, k) and (n, k) floats, their signs, bits and exact product."""
    a: torch.Tensor
    b: torch.Tensor
    a_pm1: torch.Tensor
    b_pm1: torch.Tensor
    a_bits: torch.Tensor
    b_bits: torch.Tensor
    k: int
    exact: torch.Tensor  # float32 (m, n): the +/-1 product, computed in float64 (exact) and cast
    bf16: tuple = field(default=(), repr=False)  # (a_pm1, b_pm1) as bfloat16, made on first use
    int8: tuple = field(default=(), repr=False)  # (a_pm1, b_pm1) as int8, made on first use


@dataclass(frozen=True)
class BenchKernel:
    label: str
    run: Callable[[Operands], torch.Tensor]  # the timed call on prepared operands
    packed: bool = False  # takes packed bits: also timed with the packing of both operands included
    devices: tuple[str, ...] = ("cpu", "cuda")
    cpu_label: str | None = None  # label on CPU, where the kernel behind the name differs
    unavailable: str = ""  # why it does not run on the devices it lacks
    stock: bool = False  # torch's own product, not ours: may be rounded (recorded, not a failure of the command)
    note: Callable[[str], str | None] | None = None  # device type -> what the row's output is, for the record
    isa: str | None = None  # a CPU XNOR row forced onto this instruction set (None: the one the CPU dispatches to)

    def label_on(self, device: str) -> str:
        return self.cpu_label if device == "cpu" and self.cpu_label else self.label


def _bf16_matmul(o: Operands) -> torch.Tensor:
    if not o.bf16:
        o.bf16 = (o.a_pm1.bfloat16(), o.b_pm1.bfloat16())
    return o.bf16[0] @ o.bf16[1].T


_BF16_FP32_OUT: dict[str, bool] = {}  # device type -> whether torch.mm(bf16, bf16, out_dtype=float32) runs there


def bf16_fp32_output(device_type: str) -> bool:
    """Whether this torch computes a bf16 product with a float32 output on the device (``aten::mm.dtype``)."""
    if device_type not in _BF16_FP32_OUT:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
        try:
            ok = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError):  # NotImplementedError is a RuntimeError; TypeError: no such argument
            ok = False
        _BF16_FP32_OUT[device_type] = ok
    return _BF16_FP32_OUT[device_type]


def _bf16_cpu(o: Operands) -> torch.Tensor:
    """The bf16 product as float32: exact where torch has a float32 output for it, else bf16 sums cast."""
    if not o.bf16:
        o.bf16 = (o.a_pm1.bfloat16(), o.b_pm1.bfloat16())
    if bf16_fp32_output("cpu"):
        return torch.mm(o.bf16[0], o.bf16[1].T, out_dtype=torch.float32)
    return (o.bf16[0] @ o.bf16[1].T).float()


def _bf16_note(device_type: str) -> str | None:
    if device_type != "cpu":
        return None  # on a GPU the product stays bf16 and is checked in bf16
    if bf16_fp32_output("cpu"):
        return "float32 output (torch.mm out_dtype=float32): exact"
    return ("bfloat16 output cast to float32 (this torch has no float32 output for a bf16 product on the CPU): "
            "sums past 256 may be rounded")


def _int8_matmul(o: Operands) -> torch.Tensor:
    if not o.int8:
        o.int8 = (o.a_pm1.to(torch.int8), o.b_pm1.to(torch.int8))
    return torch._int_mm(o.int8[0], o.int8[1].T)


def _cpu_xnor_on(isa: str) -> Callable[[Operands], torch.Tensor]:
    def run(o: Operands) -> torch.Tensor:
        with kernels.use_cpu_isa(isa):
            return kernels.xnor_gemm(o.a_bits, o.b_bits, o.k)
    return run


def _cpu_xnor(isa: str, method: str) -> BenchKernel:
    """The CPU XNOR kernel forced onto one instruction set (where this CPU has it)."""
    return BenchKernel(f"XNOR, CPU, {isa} path ({method})", _cpu_xnor_on(isa), packed=True, devices=("cpu",),
                       unavailable="CPU-only (one instruction-set path of the CPU kernel)", isa=isa)


def _cuda_xnor(name: str, label: str, impl: str) -> BenchKernel:
    """A CUDA-only XNOR kernel behind kernels.xnor_gemm(impl=...)."""
    return BenchKernel(label, lambda o: kernels.xnor_gemm(o.a_bits, o.b_bits, o.k, impl=impl), packed=True,
                       devices=("cuda",), unavailable=f"CUDA-only kernel (on CPU {name} is the xnor kernel)")


KERNELS: dict[str, BenchKernel] = {
    "xnor": BenchKernel("XNOR, tuned CUDA cores (64-bit, 8x8 per thread)",
                        lambda o: kernels.xnor_gemm(o.a_bits, o.b_bits, o.k), packed=True,
                        cpu_label="XNOR, CPU (vectorised popcount)"),
    "xnor-avx2": _cpu_xnor("avx2", "Harley-Seal carry-save popcount"),
    "xnor-scalar": _cpu_xnor("scalar", "64-bit POPCNT"),
    "xnor-csa": _cuda_xnor("xnor-csa", "XNOR, CUDA cores, carry-save popcounts", "csa"),
    "xnor-paper": _cuda_xnor("xnor-paper", "XNOR, paper-style 16x16 tiles", "paper"),
    "xnor-tc": _cuda_xnor("xnor-tc", "XNOR, tensor cores (mma.sync b1 AND+POPC)", "tc"),
    "baseline": BenchKernel("paper's float baseline, 16x16 tiles", lambda o: kernels.baseline_gemm(o.a_pm1, o.b_pm1),
                            cpu_label="float baseline, plain C++ loop"),
    "cublas": BenchKernel("cuBLAS fp32 (TF32 off)", lambda o: o.a_pm1 @ o.b_pm1.T, cpu_label="torch fp32 matmul"),
    "bf16": BenchKernel("torch bf16 matmul", lambda o: _bf16_matmul(o) if o.a_pm1.is_cuda else _bf16_cpu(o),
                        cpu_label="torch bf16 matmul, float32 result (oneDNN; AMX where present)", stock=True,
                        note=_bf16_note),
    "int8": BenchKernel("torch._int_mm on int8 +/-1 operands, int32 sums (exact)", _int8_matmul, devices=("cpu",),
                        cpu_label="torch._int_mm on int8 +/-1 operands, int32 sums (oneDNN; VNNI / AMX where present)",
                        stock=True, unavailable="timed on CPU only (the GPU bench is unchanged)"),
}
# The references the ratio columns divide by: JSON key -> kernel name (on the devices that kernel runs on).
RATIO_REFERENCES = {"x_baseline": "baseline", "x_cublas_fp32": "cublas", "x_torch_bf16": "bf16",
                    "x_torch_int8": "int8"}
# torch's own exact products on a CPU: the best of them is the stock path an XNOR kernel has to beat.
STOCK_EXACT = ("cublas", "bf16", "int8")
# Each CPU instruction set's own XOR+popcount ceiling: the best of these tools/cpu_peaks rows.
ISA_CEILING_ROWS = {"avx512vpopcntdq": ("xor+popcount avx512 vpopcntdq",),
                    "avx2": ("xor+popcount avx2 harley-seal", "xor+popcount avx2 lookup"),
                    "scalar": ("xor+popcnt scalar",)}


def unavailable(device: str) -> dict[str, str | None]:
    """Kernel -> why it cannot run on the device (None: it can): another device, or an instruction set this CPU
    lacks."""
    isas = kernels.supported_cpu_isas() if device == "cpu" else ()
    out = {}
    for name, spec in KERNELS.items():
        why = off_device(spec.devices, device)
        if why is None and device == "cpu" and spec.isa is not None and spec.isa not in isas:
            why = f"this CPU has no {spec.isa} instruction set"
        out[name] = why
    return out


def operand_bytes(m: int, n: int, k: int) -> int:
    """Peak bytes of ``make_operands``: A, B and their signs in float32, with the exact product computed from
    float64 copies (the float32 outputs of the timed kernels fit in what the float64 copies free)."""
    return 16 * (m + n) * k + 12 * m * n


def make_operands(m: int, n: int, k: int, device: torch.device, seed: int = 0) -> Operands:
    g = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(m, k, device=device, generator=g)
    b = torch.randn(n, k, device=device, generator=g)
    a_pm1, b_pm1 = torch.where(a >= 0, 1.0, -1.0), torch.where(b >= 0, 1.0, -1.0)
    exact = (a_pm1.double() @ b_pm1.double().T).float()  # integers below 2^24: exact in float32
    return Operands(a, b, a_pm1, b_pm1, kernels.pack(a), kernels.pack(b), k, exact)


def _matches(out: torch.Tensor, exact: torch.Tensor) -> bool:
    """Equal to the exact product in the output's own dtype (bf16 outputs are the rounded integers)."""
    return out.shape == exact.shape and bool(torch.equal(out, exact.to(out.dtype)))


def bench_kernels(names: list[str], m: int | None = None, n: int | None = None, k: int | None = None,
                  repeat: int = 20, device: str = "auto", budget_s: float = 5.0, popc_peak_tbops: float | None = None,
                  command: str = "", console: Console | None = None, peaks_dirs: list[Path] = ()) -> dict:
    """Time the named kernels on one (m, n, k) product and return the result record (``timing.record`` writes it).

    ``popc_peak_tbops``: the device's XOR+popcount ceiling; on a CPU without it, the one recorded for this
    CPU in ``peaks_dirs`` (``timing.recorded_cpu_peak``), if any."""
    dev = resolve_device(device)
    if dev.type == "cuda" and not kernels.available()["cuda"]:
        raise UserError("the CUDA kernels are not available on this machine, so there is nothing to bench on the GPU.")
    dm, dn, dk = DEFAULT_SHAPES[dev.type]
    m, n, k = m or dm, n or dn, k or dk
    if min(m, n, k) < 1 or repeat < 1:
        raise UserError(f"--m, --n, --k and --repeat must be positive, got {m}, {n}, {k} and {repeat}.")
    refuse_unless_fits(operand_bytes(m, n, k), dev, f"a {m} x {n} x {k} product")
    check_kernels_usable()
    say = console.print if console else (lambda *a, **kw: None)
    say(f"bench: {m} x {n} x {k} on {dev.type}, kernels {', '.join(names)}")
    popc_source = "--popc-peak" if popc_peak_tbops else None
    ceiling_rows: dict[str, float] = {}
    if not popc_peak_tbops:
        found = recorded_cpu_peak(peaks_dirs, dev)
        if found:
            popc_peak_tbops, popc_source = found[0], str(found[1])
            ceiling_rows = cpu_peak_rows(found[1])
            say(f"  XOR+popcount ceiling {popc_peak_tbops:.3f} T binary-op/s, recorded for this CPU in {found[1]}")
    with measuring(), measure_load(torch.get_num_threads(), on_cpu=dev.type == "cpu") as load:
        ops = make_operands(m, n, k, dev)
        results = {name: _run_kernel(name, ops, dev, repeat, budget_s, selected=name in names)
                   for name in KERNELS}
        packing = {}
        if any(KERNELS[nm].packed and results[nm]["status"] == "ok" for nm in names):
            ms, runs = time_call(lambda: (kernels.pack(ops.a), kernels.pack(ops.b)), dev, repeat, budget_s)
            packing = {"median_ms": ms, "runs": runs, "what": "pack(A) and pack(B), float32 -> bits"}
    _add_rates(results, 2 * m * n * k, popc_peak_tbops, dev.type)
    if dev.type == "cpu":
        _add_isa_shares(results, ceiling_rows)
    extra = {}
    if dev.type == "cpu":
        extra["best_exact_stock"] = _add_best_stock(results)
        if popc_peak_tbops:
            extra["popc_ceiling_source"] = popc_source
    return {
        **header("kernels", command, dev, load.fields), "shape": {"m": m, "n": n, "k": k}, "binary_ops": 2 * m * n * k,
        "repeat": repeat, "budget_s_per_kernel": budget_s, "kernels": results, "packing": packing,
        "popc_ceiling_tbops": popc_peak_tbops, **extra, "paper": PAPER,
    }


def _run_kernel(name: str, ops: Operands, dev: torch.device, repeat: int, budget_s: float, selected: bool) -> dict:
    spec = KERNELS[name]
    entry = {"label": spec.label_on(dev.type), "packed": spec.packed}
    if dev.type not in spec.devices:
        return {**entry, "status": f"not run: {spec.unavailable or off_device(spec.devices, dev.type)}"}
    if not selected:
        return {**entry, "status": "not run: not selected"}
    try:
        out = spec.run(ops)
        sync(dev)
        exact = _matches(out, ops.exact)
        del out
        ms, runs = time_call(lambda: spec.run(ops), dev, repeat, budget_s)
        entry.update(status="ok", median_ms=ms, runs=runs, exact=exact)
        note = spec.note(dev.type) if spec.note else None
        if note:
            entry["output"] = note
        if spec.packed:
            def with_packing():
                return spec.run(replace(ops, a_bits=kernels.pack(ops.a), b_bits=kernels.pack(ops.b)))
            entry["including_packing_ms"], entry["including_packing_runs"] = time_call(with_packing, dev, repeat,
                                                                                       budget_s)
    except EnvironmentFailure:
        raise
    except (RuntimeError, UserError) as e:  # the row says so, the others still run; the command then fails
        entry.update(status=f"failed: {error_line(e)}")
    return entry


def _add_rates(results: dict, binary_ops: int, popc_peak_tbops: float | None, device: str = "cuda") -> None:
    """T binary-op/s and speed-up ratios (reference time / kernel time) for the kernels that ran; ratios
    only to references that run on the device."""
    for entry in results.values():
        if entry["status"] != "ok":
            continue
        entry["tbops"] = binary_ops / (entry["median_ms"] * 1e-3) / 1e12
        if popc_peak_tbops and entry["packed"]:
            entry["share_of_popc_ceiling"] = entry["tbops"] / popc_peak_tbops
        for key, ref in RATIO_REFERENCES.items():
            if device not in KERNELS[ref].devices:
                continue
            ref_entry = results[ref]
            if ref_entry["status"] == "ok":
                entry[key] = ref_entry["median_ms"] / entry["median_ms"]
                if "including_packing_ms" in entry:
                    entry[key + "_including_packing"] = ref_entry["median_ms"] / entry["including_packing_ms"]
            else:
                entry[key] = None  # the reference was not timed: the table says "not run"


def _add_isa_shares(results: dict, ceiling_rows: dict[str, float]) -> None:
    """Each CPU XNOR row's instruction set and its share of that instruction set's own ceiling (the best of
    its tools/cpu_peaks rows, named in ``isa_ceiling_row``), beside its share of the CPU's best ceiling."""
    for name, entry in results.items():
        spec = KERNELS[name]
        if entry["status"] != "ok" or not spec.packed or "cpu" not in spec.devices:
            continue
        isa = spec.isa or kernels.cpu_isa()
        entry["isa"] = isa
        rows = {row: ceiling_rows[row] for row in ISA_CEILING_ROWS.get(isa, ()) if row in ceiling_rows}
        if rows:
            row = max(rows, key=rows.get)
            entry.update(isa_ceiling_row=row, isa_ceiling_tbops=rows[row], share_of_isa_ceiling=entry["tbops"] / rows[row])


def _add_best_stock(results: dict) -> dict | None:
    """The fastest of torch's exact products (STOCK_EXACT) that ran and came out exact, and every kernel's
    speed-up over it (``x_best_exact_stock``); None when none did."""
    exact = [name for name in STOCK_EXACT if results[name]["status"] == "ok" and results[name]["exact"]]
    if not exact:
        return None
    best = min(exact, key=lambda name: results[name]["median_ms"])
    best_ms = results[best]["median_ms"]
    for entry in results.values():
        if entry["status"] == "ok":
            entry["x_best_exact_stock"] = best_ms / entry["median_ms"]
            if "including_packing_ms" in entry:
                entry["x_best_exact_stock_including_packing"] = best_ms / entry["including_packing_ms"]
    return {"kernel": best, "label": results[best]["label"], "median_ms": best_ms}


def _exact_cell(entry: dict, stock: bool) -> str:
    if entry["exact"]:
        return "yes"
    return "[yellow]rounded[/]" if stock else "[bold red]NO[/]"


def _fmt(value, spec: str, missing: str = "") -> str:
    return missing if value is None else format(value, spec)


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def print_table(result: dict, console: Console) -> None:
    """The kernels that ran, one line each (fits 80 columns), then a legend and a few sentences; every other
    ratio is in the record."""
    dev = result["device"]["type"]
    cpu = dev == "cpu"
    shape = result["shape"]
    share = bool(result.get("popc_ceiling_tbops"))
    table = Table(title=f"{shape['m']} x {shape['n']} x {shape['k']} +/-1 product, {result['device']['hardware']}",
                  title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    # x stock: over the fastest exact product of torch on a CPU (best_exact_stock); x cuBLAS on a GPU
    columns = ["kernel", "ms", "ms+pack", "Tbop/s", "x base", "x stock" if cpu else "x cuBLAS"]
    columns += ["% peak"] if share else []
    for col in columns + ["exact"]:
        table.add_column(col, justify="left" if col == "kernel" else "right", no_wrap=True)
    ran = {name: e for name, e in result["kernels"].items() if e["status"] == "ok"}
    for name, e in ran.items():
        cells = [name, f"{e['median_ms']:.3f}", _fmt(e.get("including_packing_ms"), ".3f"), _rate(e["tbops"]),
                 _fmt(e.get("x_baseline"), ".2f"),
                 _fmt(e.get("x_best_exact_stock") if cpu else e.get("x_cublas_fp32"), ".2f")]
        if share:
            cells.append(_fmt(None if "share_of_popc_ceiling" not in e else 100 * e["share_of_popc_ceiling"], ".0f"))
        spec = KERNELS.get(name)
        table.add_row(*cells, _exact_cell(e, bool(spec and spec.stock)))
    console.print(table)
    for name, e in ran.items():
        console.print(f"  {name}: {e['label']}" + (f" ({e['output']})" if e.get("output") else ""), highlight=False)
    for name, e in result["kernels"].items():
        if e["status"].startswith("failed"):
            console.print(f"[bold red]{name} failed[/]: {e['status'][len('failed: '):]}", highlight=False)
    best = result.get("best_exact_stock")
    if cpu:
        console.print(f"x stock: over the best exact stock product, {best['kernel']} ({best['median_ms']:.3f} ms)."
                      if best else "x stock: none of torch fp32, bf16 and int8 ran exact.", highlight=False)
    if result["packing"]:
        console.print(f"packing A and B: {result['packing']['median_ms']:.3f} ms (median of "
                      f"{result['packing']['runs']}).", highlight=False)
    if share:
        where = "CUDA-core XOR+POPC" if dev == "cuda" else "CPU XOR+popcount"
        for name, e in ran.items():
            if "share_of_popc_ceiling" in e:
                console.print(f"{name}: {100 * e['share_of_popc_ceiling']:.0f}% of the measured {where} "
                              f"ceiling ({result['popc_ceiling_tbops']:.2f} T binary-op/s)", highlight=False)
        for name, e in ran.items():
            if "share_of_isa_ceiling" in e:
                console.print(f"{name} ({e['isa']}): {100 * e['share_of_isa_ceiling']:.0f}% of its own instruction "
                              f"set's ceiling ({e['isa_ceiling_row']}: {e['isa_ceiling_tbops']:.2f} T binary-op/s)",
                              highlight=False)
        if result.get("popc_ceiling_source") not in (None, "--popc-peak"):
            console.print(f"(ceiling recorded for this CPU in {result['popc_ceiling_source']})", highlight=False)
    console.print(f"paper ({PAPER['gpu']}, 8192^3): XNOR {PAPER['xnor_vs_baseline']}x the baseline, "
                  f"{PAPER['xnor_vs_cublas']}x cuBLAS.", highlight=False)
    print_load(result, console)


def failure(result: dict) -> str | None:
    """Why the bench failed (without the final period): a kernel of ours inexact, or any kernel failed; a
    stock torch product that rounds (bf16 without a float32 output) is recorded as such, not a failure."""
    wrong = [name for name, e in result["kernels"].items()
             if e["status"] == "ok" and not e["exact"] and not (name in KERNELS and KERNELS[name].stock)]
    failed = [name for name, e in result["kernels"].items() if e["status"].startswith("failed")]
    parts = [f"kernels inexact: {', '.join(wrong)}"] if wrong else []
    if failed:
        parts.append(f"kernels failed: {', '.join(failed)} ({result['kernels'][failed[0]]['status'][8:]})")
    return "; ".join(parts) or None


def run_bench(kernel: str, m: int | None, n: int | None, k: int | None, repeat: int, device: str, out: Path,
              popc_peak_tbops: float | None, command: str, console: Console) -> Path:
    """The ``bnnctl bench --kernel ...`` command: bench, print the table, record the JSON; an error when a
    kernel of ours is inexact or any kernel failed (recorded as failed)."""
    check_arguments(Path(out), repeat, {"m": m, "n": n, "k": k}, popc_peak_tbops)
    dev = resolve_device(device)
    check_kernels_usable()
    names = select_names(kernel, unavailable(dev.type), "kernel", "--kernel")
    result = bench_kernels(names, m, n, k, repeat=repeat, device=device, popc_peak_tbops=popc_peak_tbops,
                           command=command, console=console,
                           peaks_dirs=[Path(out), RECORDED_BENCHES])
    print_table(result, console)
    problem = failure(result)
    path = record(result, out, problem)
    console.print(f"recorded {path}", highlight=False, soft_wrap=True)
    if problem:
        raise UserError(f"{problem} (recorded as failed in {path}).")
    return path


__all__ = ["KERNELS", "BenchKernel", "Operands", "STOCK_EXACT", "bench_kernels", "bf16_fp32_output", "print_table",
           "run_bench", "make_operands"]
