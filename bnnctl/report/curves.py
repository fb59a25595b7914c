"""Figure 1: training cost and validation error rate against epochs, one log-scale axes per dataset variant."""
from __future__ import annotations

from pathlib import Path

from .. import paper
from ..runs import METRICS_FILE
from .records import Run, new_figure, save_png


def variant_order(variant: str) -> tuple[int, str]:
    """The paper's Figure 1 is CIFAR-10: its variants first, then SVHN, MNIST and anything else."""
    for rank, dataset in enumerate((paper.FIGURE1_DATASET, "svhn", "mnist")):
        if variant == dataset or variant.startswith(dataset + "-"):
            return rank, variant
    return 3, variant


def run_colors(count: int) -> list:
    """A distinct colour per run: the 10 tab10 colours, then tab20's, then evenly spread hues."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["hsv"](i / count) for i in range(count)]


def figure1_section(runs: list[Run], out: Path) -> str:
    with_curves = [r for r in runs if r.curve]
    if not with_curves:
        return f"## Figure 1: training curves\n\nNo recorded run has a training curve ({METRICS_FILE}) yet."
    variants = sorted({r.get("variant") for r in with_curves}, key=variant_order)
    parts = ["## Figure 1: training curves",
             f"As in the paper's Figure 1 ({paper.FIGURE1_SOURCE}, a CIFAR-10 ConvNet): on one log-scale axes per "
             "dataset, each run's training cost (its loss, dotted) and validation error rate (a fraction, solid) "
             f"against epochs, one colour per run. Every recorded run with a {METRICS_FILE}; runs faithful to a "
             "shipped recipe are drawn thick, modified ones thin and faded. CIFAR-10 first."]
    for variant in variants:
        group = sorted((r for r in with_curves if r.get("variant") == variant), key=lambda r: (not r.faithful, r.rel))
        name = f"figure1_{_safe(variant)}.png"
        _draw_curves(group, variant, out / name)
        parts.append(f"### {variant}\n\n![training curves on {variant}]({name})\n\n"
                     + ", ".join(f"`{r.rel}` ({_epochs(len(r.curve))}{'' if r.faithful else ', modified'})"
                                 for r in group))
    return "\n\n".join(parts)


def _draw_curves(group: list[Run], variant: str, path: Path) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(9, 5.6)
    ax = fig.subplots()
    for run, color in zip(group, run_colors(len(group))):
        epochs = [row["epoch"] for row in run.curve]
        marker = "o" if len(epochs) <= 30 else None  # a run of one epoch is a point, not a line
        width, alpha = (2.0, 1.0) if run.faithful else (1.0, 0.55)
        style = dict(color=color, linewidth=width, alpha=alpha, marker=marker, markersize=3)
        # A loss of 0 has no place on a log axis; such points are left out rather than drawn at the edge.
        ax.plot(epochs, [row["train_loss"] if row["train_loss"] > 0 else float("nan") for row in run.curve], ":",
                **style)
        ax.plot(epochs, [row["valid_error_pct"] / 100 if row["valid_error_pct"] > 0 else float("nan")
                         for row in run.curve], "-", label=run.rel + ("" if run.faithful else " (modified)"), **style)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="training cost (dotted), validation error rate (solid)",
           title=f"{variant}: training curves")
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    keys = [Line2D([], [], color="0.3", linestyle=":", label="training cost"),
            Line2D([], [], color="0.3", linestyle="-", label="validation error rate")]
    handles, _ = ax.get_legend_handles_labels()
    # The legend sits below the axes, where no curve runs, however many runs there are.
    rows = (len(handles) + len(keys) + 1) // 2
    fig.legend(handles=keys + handles, loc="lower center", bbox_to_anchor=(0.5, 0.01), ncol=2, fontsize=7,
               frameon=False)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=min(0.6, 0.14 + 0.036 * rows))
    save_png(fig, path)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _safe(text: str) -> str:
    """text as a file-name part: a variant name cannot reach outside the output folder."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
