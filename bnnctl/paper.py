"""The paper's numbers, typed in once, each labelled with where in the paper it comes from.

Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, "Binarized Neural Networks: Training Deep Neural
Networks with Weights and Activations Constrained to +1 or -1", arXiv:1602.02830 (2016).

These are the only typed-in numbers of ``bnnctl report``: everything else it shows is computed from
``results/`` and from the model definitions. Nothing here is a result of ours.
"""
from __future__ import annotations

from dataclasses import dataclass

PAPER = "Courbariaux et al. 2016, arXiv:1602.02830"

# Table 1's columns, in the paper's order: recipe dataset key -> column title.
TABLE1_DATASETS: dict[str, str] = {"mnist": "MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10"}


@dataclass(frozen=True)
class CitedRow:
    """One row of the paper's Table 1: test error % per dataset, as printed (None where '–')."""

    method: str
    group: str           # the paper's section heading of the row within Table 1
    errors: dict[str, float | None]
    printed: dict[str, str]  # the cell text as printed, e.g. '1.29 ± 0.08'
    ours: bool = False   # True for the rows bnnctl's recipes reproduce


def _row(method: str, group: str, mnist: str | None, svhn: str | None, cifar10: str | None,
         ours: bool = False) -> CitedRow:
    printed = {"mnist": mnist, "svhn": svhn, "cifar10": cifar10}
    errors = {k: None if v is None else float(v.split("±")[0]) for k, v in printed.items()}
    return CitedRow(method, group, errors, {k: v or "–" for k, v in printed.items()}, ours)


# Table 1 of the paper: "Classification test error rates of DNNs trained on MNIST (MLP architecture
# without unsupervised pretraining), CIFAR-10 (without data augmentation) and SVHN."
TABLE1: tuple[CitedRow, ...] = (
    _row("BNN (Torch7)", "Binarized activations+weights, during training and test", "1.40", "2.53", "10.15", ours=True),
    _row("BNN (Theano)", "Binarized activations+weights, during training and test", "0.96", "2.80", "11.40", ours=True),
    _row("Committee Machines' Array (Baldassi et al., 2015)",
         "Binarized activations+weights, during training and test", "1.35", None, None),
    _row("BinaryConnect (Courbariaux et al., 2015)", "Binarized weights, during training and test",
         "1.29 ± 0.08", "2.30", "9.90"),
    _row("EBP (Cheng et al., 2015)", "Binarized activations+weights, during test", "2.2 ± 0.1", None, None),
    _row("Bitwise DNNs (Kim & Smaragdis, 2016)", "Binarized activations+weights, during test", "1.33", None, None),
    _row("(Hwang & Sung, 2014)", "Ternary weights, binary activations, during test", "1.45", None, None),
    _row("Maxout Networks (Goodfellow et al., 2013)", "No binarization (standard results)", "0.94", "2.47", "11.68"),
    _row("Network in Network (Lin et al., 2013)", "No binarization (standard results)", None, "2.35", "10.41"),
    _row("Gated pooling (Lee et al., 2015)", "No binarization (standard results)", None, "1.69", "7.62"),
)
TABLE1_SOURCE = f"{PAPER}, Table 1"

# The rows our recipes fill, by the recipe's ``paper.row``.
OUR_ROWS: tuple[str, ...] = tuple(r.method for r in TABLE1 if r.ours)


def table1_value(row: str, dataset: str) -> float | None:
    for r in TABLE1:
        if r.method == row:
            return r.errors.get(dataset)
    return None


# Figure 1: "Training curves of a ConvNet on CIFAR-10 depending on the method. The dotted lines
# represent the training costs (square hinge losses) and the continuous lines the corresponding
# validation error rates."
FIGURE1_SOURCE = f"{PAPER}, Figure 1"
FIGURE1_DATASET = "cifar10"


@dataclass(frozen=True)
class CitedRatio:
    key: str
    value: float
    claim: str
    source: str


# Figure 3 and its section ("Seven times faster on GPU at run-time"), measured on a GTX750.
KERNEL_RATIOS: tuple[CitedRatio, ...] = (
    CitedRatio("xnor_vs_baseline", 23.0,
               "8192x8192x8192 binary matmul: XNOR kernel vs the unoptimized baseline kernel (GTX750)",
               f"{PAPER}, Figure 3 and section 'Seven times faster on GPU at run-time'"),
    CitedRatio("xnor_vs_cublas", 3.4,
               "8192x8192x8192 binary matmul: XNOR kernel vs cuBLAS (GTX750)",
               f"{PAPER}, Figure 3 and section 'Seven times faster on GPU at run-time'"),
    CitedRatio("mlp_xnor_vs_baseline", 7.0,
               "MNIST MLP on the 10,000 test images: XNOR kernel vs baseline kernel, first layer on the "
               "baseline kernel, same accuracy (GTX750)",
               f"{PAPER}, abstract, Figure 3 and section 'Seven times faster on GPU at run-time'"),
)


def kernel_ratio(key: str) -> float:
    return next(r.value for r in KERNEL_RATIOS if r.key == key)


# Section "Exploiting filter repetitions": "in our ConvNet architecture trained on the CIFAR-10
# benchmark, there are only 42% unique filters per layer on average", with an inverse filter
# counted as a repetition, "hence we can reduce the number of the XNOR-popcount operations by 3".
UNIQUE_FILTERS_PCT = 42.0
UNIQUE_FILTERS_OPS_FACTOR = 3.0
UNIQUE_FILTERS_SOURCE = f"{PAPER}, section 'Exploiting filter repetitions'"


@dataclass(frozen=True)
class Energy:
    operation: str
    bits: int
    kind: str        # 'int' | 'float' | 'memory'
    pj: float        # energy in picojoules (for DRAM: the low end of the printed range)
    pj_high: float   # the high end where the paper prints a range, else == pj
    source: str


_ENERGY_MAC = f"{PAPER}, Table 2 (Horowitz 2014, 45 nm): energy of multiply-accumulations"
_ENERGY_MEM = f"{PAPER}, Table 3 (Horowitz 2014, 45 nm): energy of a 64-bit memory access"

# The paper's Table 2 lists 8- and 32-bit integer and 16- and 32-bit float MUL and ADD; it has no
# 16-bit integer or 8-bit float row, so neither has one here.
ENERGY_OPS: tuple[Energy, ...] = (
    Energy("int8 mult", 8, "int", 0.2, 0.2, _ENERGY_MAC),
    Energy("int8 add", 8, "int", 0.03, 0.03, _ENERGY_MAC),
    Energy("int32 mult", 32, "int", 3.1, 3.1, _ENERGY_MAC),
    Energy("int32 add", 32, "int", 0.1, 0.1, _ENERGY_MAC),
    Energy("float16 mult", 16, "float", 1.1, 1.1, _ENERGY_MAC),
    Energy("float16 add", 16, "float", 0.4, 0.4, _ENERGY_MAC),
    Energy("float32 mult", 32, "float", 3.7, 3.7, _ENERGY_MAC),
    Energy("float32 add", 32, "float", 0.9, 0.9, _ENERGY_MAC),
)

# Memory sizes in bytes; a 64-bit access each.
ENERGY_MEMORY: tuple[tuple[str, int | None, Energy], ...] = (
    ("8K cache", 8 * 1024, Energy("64-bit access, 8K memory", 64, "memory", 10.0, 10.0, _ENERGY_MEM)),
    ("32K cache", 32 * 1024, Energy("64-bit access, 32K memory", 64, "memory", 20.0, 20.0, _ENERGY_MEM)),
    ("1M cache", 1024 * 1024, Energy("64-bit access, 1M memory", 64, "memory", 100.0, 100.0, _ENERGY_MEM)),
    ("DRAM", None, Energy("64-bit access, DRAM", 64, "memory", 1300.0, 2600.0, _ENERGY_MEM)),
)


def energy_pj(operation: str) -> float:
    return next(e.pj for e in ENERGY_OPS if e.operation == operation)
