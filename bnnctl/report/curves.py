"""Figure 1: training loss and validation error against epochs, one figure per dataset variant."""
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


def figure1_section(runs: list[Run], out: Path) -> str:
    from matplotlib.ticker import MaxNLocator

    with_curves = [r for r in runs if r.curve]
    if not with_curves:
        return f"## Figure 1: training curves\n\nNo recorded run has a training curve ({METRICS_FILE}) yet."
    variants = sorted({r.get("variant") for r in with_curves}, key=variant_order)
    parts = ["## Figure 1: training curves",
             f"The paper's Figure 1 ({paper.FIGURE1_SOURCE}) shows a CIFAR-10 ConvNet's training cost (dotted) and "
             "validation error (solid) against epochs. Here: one figure per dataset variant, every recorded run "
             f"with a {METRICS_FILE}, CIFAR-10 first."]
    for variant in variants:
        group = [r for r in with_curves if r.get("variant") == variant]
        fig = new_figure(11, 4.2)
        loss_ax, err_ax = fig.subplots(1, 2)
        for i, run in enumerate(group):
            color = f"C{i % 10}"
            epochs = [row["epoch"] for row in run.curve]
            marker = "o" if len(epochs) <= 30 else None  # a run of one epoch is a point, not a line
            loss_ax.plot(epochs, [row["train_loss"] for row in run.curve], ":", color=color, label=run.rel,
                         marker=marker, markersize=3)
            err_ax.plot(epochs, [row["valid_error_pct"] for row in run.curve], "-", color=color, label=run.rel,
                        marker=marker, markersize=3)
        loss_ax.set(xlabel="epoch", ylabel="training loss", title=f"{variant}: training loss (dotted)")
        err_ax.set(xlabel="epoch", ylabel="validation error %", title=f"{variant}: validation error (solid)")
        for ax in (loss_ax, err_ax):
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        err_ax.legend(fontsize=7, loc="upper right")
        # Fixed margins: tight_layout would cost more than the drawing itself.
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.22)
        name = f"figure1_{_safe(variant)}.png"
        save_png(fig, out / name)
        parts.append(f"### {variant}\n\n![training curves on {variant}]({name})\n\n"
                     + ", ".join(f"`{r.rel}` ({_epochs(len(r.curve))})" for r in group))
    return "\n\n".join(parts)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _safe(text: str) -> str:
    """text as a file-name part: a variant name cannot reach outside the output folder."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
