"""Figure 3 as the paper draws it: three panels (matrix product time, MNIST MLP time, MNIST MLP test error),
three bars each, one figure per device recorded.

On a GPU the bars are the paper's: the baseline kernel, cuBLAS and the XNOR kernel (for the MLP: every
layer on the baseline kernel (a), the float model in torch (d), and the XNOR kernels with the first layer
on the baseline kernel (b)), with the paper's GTX750 ratios beside ours. The paper gives its times as
ratios only, so both are drawn as time relative to the baseline kernel. On a CPU the counterpart bars are
torch fp32, torch's fastest exact stock product (fp32, bf16 or int8) and the XNOR kernel (the MLP: the
fastest exact packed-engine variant), relative to torch fp32; the paper has no CPU figure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paper
from ..runs import is_number
from .kernels import KernelRecord, MlpRecord, load_word, quiet_then_latest
from .records import fmt, md_table, new_figure, save_png

PAPER_SHAPE = "8192x8192x8192"
STOCK_PRODUCTS = ("cublas", "bf16", "int8")  # torch's exact products of +-1 matrices, as the kernel bench names them


@dataclass
class Bar:
    label: str
    ms: float | None
    test_error_pct: float | None = None
    paper_relative: float | None = None  # the paper's time over its baseline's


@dataclass
class Figure3:
    device: str
    device_type: str
    matmul: list[Bar]
    matmul_source: str
    shape: str
    mlp: list[Bar]
    mlp_source: str

    @property
    def file_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.device.lower()).strip("-")
        return f"figure3_{slug}.png"


def _ok(entries: dict[str, Any], name: str) -> dict[str, Any] | None:
    e = entries.get(name)
    return e if isinstance(e, dict) and e.get("status") == "ok" and is_number(e.get("median_ms")) else None


def _gpu_matmul(rec: KernelRecord) -> list[Bar] | None:
    k = rec.data["kernels"]
    if not all(_ok(k, n) for n in ("baseline", "cublas", "xnor")):
        return None
    base, cublas = 1.0, 1 / (paper.kernel_ratio("xnor_vs_baseline") / paper.kernel_ratio("xnor_vs_cublas"))
    return [Bar("baseline kernel", k["baseline"]["median_ms"], paper_relative=base),
            Bar("cuBLAS", k["cublas"]["median_ms"], paper_relative=cublas),
            Bar("XNOR kernel", k["xnor"]["median_ms"], paper_relative=1 / paper.kernel_ratio("xnor_vs_baseline"))]


def _cpu_matmul(rec: KernelRecord) -> list[Bar] | None:
    k = rec.data["kernels"]
    stock = [n for n in STOCK_PRODUCTS if _ok(k, n)]
    if not (_ok(k, "cublas") and _ok(k, "xnor")):
        return None
    best = min(stock, key=lambda n: k[n]["median_ms"])
    return [Bar("torch fp32", k["cublas"]["median_ms"]),
            Bar(f"best torch ({'fp32' if best == 'cublas' else best})", k[best]["median_ms"]),
            Bar("XNOR kernel", k["xnor"]["median_ms"])]


def _row(rec: MlpRecord, name: str) -> dict[str, Any] | None:
    return next((r for r in rec.rows if r["name"] == name and r["status"] == "ok"), None)


def _gpu_mlp(rec: MlpRecord) -> list[Bar] | None:
    rows = [_row(rec, n) for n in ("baseline", "torch", "xnor")]
    if not all(rows):
        return None
    a, d, b = rows
    return [Bar("baseline kernel (a)", a["median_ms"], _error(rec, a), 1.0),
            Bar("cuBLAS (d)", d["median_ms"], _error(rec, d)),
            Bar("XNOR kernel (b)", b["median_ms"], _error(rec, b), 1 / paper.kernel_ratio("mlp_xnor_vs_baseline"))]


def _error(rec: MlpRecord, row: dict[str, Any]) -> float | None:
    """A variant's test error, only where the record ran trained weights (random ones say nothing)."""
    return row["test_error_pct"] if rec.trained else None


def _cpu_mlp(rec: MlpRecord) -> list[Bar] | None:
    ok = [r for r in rec.rows if r["status"] == "ok"]
    torch_rows = [r for r in ok if r["name"].startswith("torch")]
    # Exact engine variants only: one that disagrees with torch on some prediction is not the same model.
    xnor_rows = [r for r in ok if r["name"].startswith("xnor") and r["differing"] == 0]
    fp32 = _row(rec, "torch")
    if fp32 is None or not xnor_rows:
        return None
    best = min(torch_rows, key=lambda r: r["median_ms"])
    xnor = min(xnor_rows, key=lambda r: r["median_ms"])
    return [Bar("torch fp32", fp32["median_ms"], _error(rec, fp32)),
            Bar(f"best torch ({best['name']})", best["median_ms"], _error(rec, best)),
            Bar(f"XNOR ({xnor['name']})", xnor["median_ms"], _error(rec, xnor))]


def _latest(records: list, bars_of) -> tuple[Any, list[Bar]] | None:
    """The latest quiet record from which all three bars can be drawn; a busy one only where no quiet one can."""
    for rec in sorted(records, key=quiet_then_latest, reverse=True):
        bars = bars_of(rec)
        if bars:
            return rec, bars
    return None


def figures(kernel_records: list[KernelRecord], mlp_records: list[MlpRecord]) -> list[Figure3]:
    devices = sorted({(r.device, r.data["device"]["type"]) for r in kernel_records}
                     | {(r.device, r.device_type) for r in mlp_records})
    found = []
    for device, kind in devices:
        gpu = kind == "cuda"
        kernels = [r for r in kernel_records if r.device == device]
        # The paper's product is 8192^3; a GPU record of that shape is preferred over any other.
        if gpu and any(r.shape == PAPER_SHAPE for r in kernels):
            kernels = [r for r in kernels if r.shape == PAPER_SHAPE]
        matmul = _latest(kernels, _gpu_matmul if gpu else _cpu_matmul)
        mlp = _latest([r for r in mlp_records if r.device == device], _gpu_mlp if gpu else _cpu_mlp)
        if matmul or mlp:
            found.append(Figure3(device, kind, matmul[1] if matmul else [],
                                 f"`{matmul[0].rel}` ({matmul[0].shape}; load: {load_word(matmul[0].data)})"
                                 if matmul else "",
                                 matmul[0].shape.replace("x", " x ") if matmul else "",
                                 mlp[1] if mlp else [], f"`{mlp[0].rel}` ({mlp[0].model}; load: {mlp[0].load})" if mlp else ""))
    return found


def _ms(ms: float) -> str:
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def _relative(bars: list[Bar]) -> list[float | None]:
    ref = bars[0].ms if bars else None
    return [b.ms / ref if ref and b.ms else None for b in bars]


def _time_panel(ax, bars: list[Bar], title: str, reference: str, with_paper: bool) -> None:
    import numpy as np

    if not bars:
        ax.set_title(title + "\n(not recorded)", fontsize=9)
        ax.set_axis_off()
        return
    x = np.arange(len(bars))
    width = 0.38 if with_paper else 0.6
    ours = _relative(bars)
    drawn = ax.bar(x - (width / 2 if with_paper else 0), ours, width, color="C0", label="ours")
    for bar, b in zip(drawn, bars):
        ax.annotate(_ms(b.ms), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)
    heights = [v for v in ours if v]
    if with_paper:
        cited = [(i, b.paper_relative) for i, b in enumerate(bars) if b.paper_relative]
        paper_bars = ax.bar([i + width / 2 for i, _ in cited], [v for _, v in cited], width, color="white",
                            edgecolor="C1", hatch="//", label="paper (GTX750)")
        for bar, (_, v) in zip(paper_bars, cited):
            ax.annotate(f"1/{1 / v:.3g}" if v < 1 else "1", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, color="C1")
        heights += [v for _, v in cited]
        ax.legend(fontsize=7, loc="upper right")
    ax.set_yscale("log")
    ax.set_ylim(min(heights) / 3, max(heights) * 4)
    ax.set_xticks(x, [b.label for b in bars], fontsize=7)
    ax.set_ylabel(f"time relative to {reference} (log)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def _error_panel(ax, bars: list[Bar], gpu: bool) -> None:
    errors = [b.test_error_pct for b in bars]
    if not bars or not all(is_number(e) for e in errors):
        ax.set_title("MNIST MLP test error\n(no trained model recorded)", fontsize=9)
        ax.set_axis_off()
        return
    drawn = ax.bar(range(len(bars)), errors, 0.6, color="C2")
    for bar, e in zip(drawn, errors):
        ax.annotate(f"{e:.2f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=7)
    ax.set_ylim(0, max(errors) * 1.3 or 1)
    ax.set_xticks(range(len(bars)), [b.label for b in bars], fontsize=7)
    ax.set_ylabel("test error %", fontsize=8)
    ax.set_title("MNIST MLP test error" + ("\n(paper: the same for all three)" if gpu else ""), fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def draw(fig3: Figure3, path: Path) -> None:
    gpu = fig3.device_type == "cuda"
    reference = "the baseline kernel" if gpu else "torch fp32"
    fig = new_figure(14, 4.8)
    axes = fig.subplots(1, 3)
    _time_panel(axes[0], fig3.matmul, f"binary matrix product, {fig3.shape}", reference, gpu)
    _time_panel(axes[1], fig3.mlp, "MNIST MLP, 10,000 test images", reference, gpu)
    _error_panel(axes[2], fig3.mlp, gpu)
    fig.suptitle(f"Figure 3 on {fig3.device}", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.1, top=0.83, wspace=0.3)
    save_png(fig, path)


def figure3_section(kernel_records: list[KernelRecord], mlp_records: list[MlpRecord], out: Path) -> str:
    parts = ["## Figure 3",
             f"The paper's Figure 3 ({paper.KERNEL_RATIOS[0].source}): on a GTX750, the time of an 8192 x 8192 x "
             "8192 binary matrix product and of the MNIST MLP on its 10,000 test images with the baseline kernel, "
             "cuBLAS and the XNOR kernel, and the MLP's test error with each. Ours, from the `bnnctl bench` "
             "records: the same three bars on a GPU, with the paper's ratios beside ours (the paper states "
             "times only as ratios; the MLP's cuBLAS ratio is not stated); on a CPU, torch fp32, torch's "
             "fastest exact stock path and the XNOR kernel. Each panel draws the latest record holding all "
             "three bars, a record timed on a quiet machine before any busy one."]
    found = figures(kernel_records, mlp_records)
    if not found:
        parts.append("No record holds the figure's bars yet (`bnnctl bench --kernel all` and `bnnctl bench "
                     "--model mnist-mlp` write them): not run.")
        return "\n\n".join(parts)
    for fig3 in found:
        draw(fig3, out / fig3.file_name)
        rows = []
        for panel, bars in (("matrix product", fig3.matmul), ("MNIST MLP", fig3.mlp)):
            for b, rel in zip(bars, _relative(bars)):
                rows.append([panel, b.label, fmt(b.ms, ".3g"), fmt(rel, ".3g"),
                             fmt(b.paper_relative, ".3g") if b.paper_relative else "",
                             fmt(b.test_error_pct) if panel == "MNIST MLP" else ""])
        sources = "; ".join(s for s in (f"matrix product: {fig3.matmul_source}" if fig3.matmul_source else "",
                                        f"MLP: {fig3.mlp_source}" if fig3.mlp_source else "") if s)
        parts.append(f"### {fig3.device}\n\n![Figure 3 on {fig3.device}]({fig3.file_name})\n\n"
                     + md_table(["panel", "bar", "ms", "relative time", "paper relative time", "test error %"],
                                rows)
                     + f"\n\nRecords: {sources}.")
    return "\n\n".join(parts)
