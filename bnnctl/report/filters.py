"""Filter repetition: unique binary 3x3 kernels per conv layer of the trained ConvNets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import paper
from ..checkpoints import load_model
from ..core.binarize import sign_pm1
from ..core.layers import BinaryLayer
from ..recipe import RecipeError, load_recipe
from ..runs import BEST_FILE, RECIPE_FILE
from .records import Notes, Run, fmt, md_table, write_csv
from .summary import summarize_model


def unique_filters(weight) -> tuple[int, int]:
    """(unique up to sign, unique exactly) 2-D kernels of a conv weight (out, in, kh, kw), summed over inputs.

    The paper's dedup applies each distinct 2-D binary kernel once per input feature map and combines the
    results per output filter; a kernel and its negation count as one, the negation being a sign flip.
    """
    signs = sign_pm1(weight.detach().float()) > 0          # (out, in, kh, kw) bools, sign(0) = +1
    out_c, in_c = signs.shape[:2]
    flat = signs.reshape(out_c, in_c, -1).permute(1, 0, 2)  # (in, out, k*k)
    weights = 2 ** torch.arange(flat.shape[-1], dtype=torch.int64)
    codes = (flat.to(torch.int64) * weights).sum(-1)        # (in, out) kernel codes
    full = int(weights.sum())
    canonical = torch.minimum(codes, full - codes)          # a kernel and its negation share a code
    exact = sum(len(torch.unique(codes[i])) for i in range(in_c))
    up_to_sign = sum(len(torch.unique(canonical[i])) for i in range(in_c))
    return up_to_sign, exact


def random_unique_share(out_channels: int, kernel_elements: int) -> float:
    """Expected unique-up-to-sign share of out_channels uniformly random ±1 kernels of kernel_elements bits."""
    classes = 2 ** (kernel_elements - 1)
    return classes * (1 - (1 - 1 / classes) ** out_channels) / out_channels


FILTER_HEADER = ["run", "variant", "layer", "in_channels", "out_channels", "kernel", "input", "kernels_2d",
                 "unique_up_to_sign", "unique_pct", "unique_exact", "unique_exact_pct", "random_weights_unique_pct",
                 "xnor_popcount_ops", "ops_with_dedup", "ops_saved"]


def filter_rows(run: Run, notes: Notes) -> list[list[Any]] | None:
    """One row per binary conv layer of the run's best.pt; None (with a note) if it cannot be read."""
    try:
        record, model, _ = load_model(run.path)
        infos = summarize_model(model, tuple(record["input_shape"]))
    except Exception as e:  # noqa: BLE001 - a broken checkpoint is reported, never fatal
        notes.add(f"{run.rel}/{BEST_FILE}", f"not a readable bnnctl model ({type(e).__name__}): no filter count")
        return None
    rows = []
    for info, module in zip(infos, model):
        if not (isinstance(module, BinaryLayer) and isinstance(module, nn.Conv2d)):
            continue
        out_c, in_c, kh, kw = module.weight.shape
        up_to_sign, exact = unique_filters(module.weight)
        total = out_c * in_c
        spatial = info.macs // (total * kh * kw)  # output positions per image
        dedup = up_to_sign * kh * kw * spatial
        rows.append([run.rel, run.get("variant"), info.index, in_c, out_c, f"{kh}x{kw}",
                     "±1" if info.binary_input else "real", total, up_to_sign, fmt(100 * up_to_sign / total),
                     exact, fmt(100 * exact / total), fmt(100 * random_unique_share(out_c, kh * kw)),
                     info.macs, dedup, info.macs - dedup])
    return rows


def filter_section(runs: list[Run], out: Path, notes: Notes) -> str:
    convnets = [r for r in runs if _arch(r) == "convnet"]
    rows, md, missing = [], [], []
    for run in convnets:
        if not (run.path / BEST_FILE).is_file():
            missing.append(run.rel)
            continue
        layer_rows = filter_rows(run, notes)
        if layer_rows is None:
            missing.append(run.rel)
            continue
        rows += layer_rows
        shares = [100 * r[8] / r[7] for r in layer_rows]
        binary = [r for r in layer_rows if r[6] == "±1"]
        saved, ops = sum(r[15] for r in binary), sum(r[13] for r in binary)
        md.append([f"`{run.rel}`", run.get("variant"), len(layer_rows), fmt(sum(shares) / len(shares)),
                   ", ".join(r[9] for r in layer_rows), f"{ops:,}", f"{saved:,}",
                   fmt(ops / (ops - saved) if ops > saved else None, ".2f")])
    write_csv(out / "filter_repetition.csv", FILTER_HEADER, rows)
    parts = ["## Filter repetition",
             f"Paper ({paper.UNIQUE_FILTERS_SOURCE}): {paper.UNIQUE_FILTERS_PCT:g}% unique filters per layer on "
             f"average in the CIFAR-10 ConvNet, so {paper.UNIQUE_FILTERS_OPS_FACTOR:g}x fewer XNOR-popcount "
             f"operations. Ours, from each trained ConvNet's `{BEST_FILE}`: per conv layer, the 2-D 3x3 binary "
             "kernels applied to each input feature map, counted once per distinct kernel up to sign (a kernel and its "
             "negation are one), summed over input maps, as a share of out x in kernels. Dedup runs each distinct "
             "kernel once per input map; the additions that combine the results are not counted (nor are they "
             "in the paper's factor). `filter_repetition.csv` also has the exact-match count and the share that "
             "uniformly random ±1 kernels would give."]
    if md:
        parts.append(md_table(["run", "variant", "conv layers", "unique % (mean over layers)", "unique % per layer",
                               "XNOR-popcount ops per image (±1-input layers)", "saved by dedup",
                               "factor"], md))
    if missing:
        parts.append(f"No checkpoint ({BEST_FILE} is git-ignored and was not found, or unreadable) for: "
                     + ", ".join(f"`{m}`" for m in missing) + ".")
    if not convnets:
        parts.append("No trained ConvNet is recorded: not run.")
    parts.append("CSV: `filter_repetition.csv`.")
    return "\n\n".join(parts)


def _arch(run: Run) -> str | None:
    """The model architecture of a run, from its recipe.yaml (None if unreadable)."""
    try:
        return load_recipe(run.path / RECIPE_FILE).model.arch
    except RecipeError:
        return None
