"""Memory and energy per model: sizes, multiply-accumulates and the paper's 45 nm energy figures."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import paper
from ..errors import UserError
from ..recipe import Recipe
from .records import Notes, fmt, md_table, write_csv
from .summary import summarize_recipe

MEMORY_LEVELS = paper.ENERGY_MEMORY
FLOAT_MAC_PJ = paper.energy_pj("float32 mult") + paper.energy_pj("float32 add")
# Assumptions, not the paper's: the table has no 1-bit entry. An XNOR-popcount MAC is charged one 8-bit
# integer add, an upper bound (the popcount's adder tree needs about one 1-bit full adder per input bit,
# an 8-bit adder has eight). A real-input MAC of the binarized network (8-bit pixel times a ±1 weight) is
# a signed accumulate: one 32-bit integer add.
BINARY_MAC_PJ = paper.energy_pj("int8 add")
REAL_INPUT_BINARY_WEIGHT_MAC_PJ = paper.energy_pj("int32 add")

ENERGY_MODEL = (
    f"Energy per image, 45 nm figures of the paper's Tables 2 and 3 (Horowitz 2014). Arithmetic: a float32 MAC "
    f"is a float32 multiply and add ({FLOAT_MAC_PJ:g} pJ). In the binarized network an XNOR-popcount MAC is "
    f"charged one 8-bit integer add ({BINARY_MAC_PJ:g} pJ; our assumption, an upper bound: the table has no "
    f"1-bit entry, and a popcount needs about one 1-bit adder per input bit where an 8-bit adder has eight), and "
    f"a first-layer MAC (8-bit pixel, ±1 weight: add or subtract) one 32-bit integer add "
    f"({REAL_INPUT_BINARY_WEIGHT_MAC_PJ:g} pJ). Memory: every stored value (weights, biases, BN statistics) "
    f"read once per image in 64-bit accesses from the smallest memory of Table 3 that holds them all, DRAM "
    f"at 1.3 to 2.6 nJ per access (both ends shown). Activations, BN and max-pooling arithmetic are not counted.")


def memory_level(num_bytes: float) -> tuple[str, float, float]:
    for name, capacity, energy in MEMORY_LEVELS:
        if capacity is None or num_bytes <= capacity:
            return name, energy.pj, energy.pj_high
    raise AssertionError("the last memory level has no capacity limit")


def energy_rows(summary) -> dict[str, Any]:
    """Memory and energy figures of one ModelSummary (see ENERGY_MODEL)."""
    bnn_bits, float_bits = summary.total("bnn_bits"), summary.total("float_bits")
    binary_macs, real_macs = summary.total("binary_macs"), summary.total("real_macs")
    macs = binary_macs + real_macs
    row: dict[str, Any] = {
        "recipe": summary.recipe, "dataset": summary.dataset, "binary_weights": summary.total("binary_weights"),
        "float_values": summary.total("values") - summary.total("binary_weights"),
        "bits_bnn": bnn_bits, "bits_float32": float_bits, "bytes_bnn": bnn_bits / 8, "bytes_float32": float_bits / 8,
        "size_ratio": float_bits / bnn_bits, "macs_binary": binary_macs, "macs_real_input": real_macs,
        "macs_float32_network": macs,
    }
    arithmetic_bnn = binary_macs * BINARY_MAC_PJ + real_macs * REAL_INPUT_BINARY_WEIGHT_MAC_PJ
    arithmetic_float = macs * FLOAT_MAC_PJ
    for net, bits, arithmetic in (("bnn", bnn_bits, arithmetic_bnn), ("float32", float_bits, arithmetic_float)):
        level, low, high = memory_level(bits / 8)
        accesses = math.ceil(bits / 64)
        row[f"memory_{net}"] = level
        row[f"arithmetic_uj_{net}"] = arithmetic * 1e-6
        row[f"memory_uj_low_{net}"] = accesses * low * 1e-6
        row[f"memory_uj_high_{net}"] = accesses * high * 1e-6
        row[f"total_uj_low_{net}"] = (arithmetic + accesses * low) * 1e-6
        row[f"total_uj_high_{net}"] = (arithmetic + accesses * high) * 1e-6
    return row


ENERGY_HEADER = ["recipe", "dataset", "binary_weights", "float_values", "bits_bnn", "bits_float32", "bytes_bnn",
                 "bytes_float32", "size_ratio", "macs_binary", "macs_real_input", "macs_float32_network",
                 "memory_bnn", "arithmetic_uj_bnn", "memory_uj_low_bnn", "memory_uj_high_bnn", "total_uj_low_bnn",
                 "total_uj_high_bnn", "memory_float32", "arithmetic_uj_float32", "memory_uj_low_float32",
                 "memory_uj_high_float32", "total_uj_low_float32", "total_uj_high_float32"]


def _uj_range(low: float, high: float) -> str:
    return f"{low:,.1f}" if abs(high - low) < 0.05 else f"{low:,.1f} – {high:,.1f}"


def memory_energy_section(recipes: dict[str, Recipe], out: Path, notes: Notes,
                          recipe_paths: dict[str, str]) -> str:
    energy_header = ["operation", "bits", "kind", "pj", "pj_high", "source"]
    constants = [[e.operation, e.bits, e.kind, e.pj, e.pj_high, e.source] for e in paper.ENERGY_OPS]
    constants += [[e.operation, e.bits, e.kind, e.pj, e.pj_high, e.source] for _, _, e in MEMORY_LEVELS]
    write_csv(out / "energy_constants.csv", energy_header, constants)

    rows = []
    for name in sorted(recipes):
        try:
            summary = summarize_recipe(recipes[name], recipe_paths[name])
        except UserError as e:
            notes.add(recipe_paths[name], f"no model summary: {e}")
            continue
        rows.append(energy_rows(summary))
    write_csv(out / "memory_energy.csv", ENERGY_HEADER,
              [[fmt(r[k], ".6g") if isinstance(r[k], float) else r[k] for k in ENERGY_HEADER] for r in rows])
    md = md_table(
        ["recipe", "stored values (±1 / 32-bit)", "size BNN / float32", "MACs per image (XNOR / real-input)",
         "memory", "energy per image BNN µJ", "float32 µJ"],
        [[r["recipe"], f"{r['binary_weights']:,} / {r['float_values']:,}",
          f"{r['bytes_bnn'] / 2**20:,.2f} / {r['bytes_float32'] / 2**20:,.2f} MiB ({r['size_ratio']:.1f}x)",
          f"{r['macs_binary']:,} / {r['macs_real_input']:,}", f"{r['memory_bnn']} / {r['memory_float32']}",
          _uj_range(r["total_uj_low_bnn"], r["total_uj_high_bnn"]),
          _uj_range(r["total_uj_low_float32"], r["total_uj_high_float32"])] for r in rows])
    constants_md = md_table(["operation", "energy", "source"],
                            [[e.operation, f"{e.pj:g} pJ" if e.pj == e.pj_high else f"{e.pj:g} – {e.pj_high:g} pJ",
                              e.source] for e in paper.ENERGY_OPS]
                            + [[e.operation, f"{e.pj:g} pJ" if e.pj == e.pj_high else
                                f"{e.pj / 1000:g} – {e.pj_high / 1000:g} nJ", e.source] for _, _, e in MEMORY_LEVELS])
    return "\n\n".join([
        "## Memory and energy per model",
        "From the shipped recipes' model definitions (`bnnctl summary RECIPE` prints the per-layer table behind "
        "each row). A ±1 weight is 1 bit in the binarized network (BNN); biases and BN values stay 32-bit.",
        md, ENERGY_MODEL,
        "The cited constants (the paper's Table 2 has 8- and 32-bit integer and 16- and 32-bit float rows, no "
        "16-bit integer one):", constants_md,
        "CSV: `memory_energy.csv`, `energy_constants.csv`.",
    ])
