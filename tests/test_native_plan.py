"""The few-row XNOR kernels (GEMV-shaped, with the threshold and the packing of the next layer's bits on their
outputs), held to the many-row GEMM bit for bit, on each instruction set this CPU has (the isa fixture of
tests/conftest.py forces each; AVX-512 skips on a CPU without it).
"""
from __future__ import annotations

import pytest
import torch

from bnnctl import kernels
from tests.test_kernels import expected_product, signed_inputs


# ---------------------------------------------------------------------------- the few-row kernels

# (n, k): outputs around the panel widths (4, 8, 32) and the 64-bit words; k around the words and past the AVX2
# kernel's Harley-Seal threshold (1024) and byte-counter flush (31 blocks of 16 half-words).
FEW_ROW_SHAPES = [(1, 1), (7, 63), (33, 64), (64, 65), (100, 200), (130, 1100), (65, 4096), (9, 20000)]


@pytest.mark.parametrize("rows", range(1, kernels.MAX_FEW_ROWS + 1))
def test_few_rows_products_equal_the_gemm(isa, rows):
    for n, k in FEW_ROW_SHAPES:
        a, b = signed_inputs(rows, k, seed=rows * 100 + k), signed_inputs(n, k, seed=n + k)
        pa, pb = kernels.pack(a), kernels.pack(b)
        expected = expected_product(a, b)
        for words_per_call in (1, 3):
            assert torch.equal(kernels.xnor_few_rows(pa, pb, k, words_per_call=words_per_call), expected), (n, k)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
def test_few_rows_threshold_packs_the_next_layers_bits(isa, rows):
    g = torch.Generator().manual_seed(rows)
    for n, k in FEW_ROW_SHAPES:
        a, b = signed_inputs(rows, k, seed=rows + k), signed_inputs(n, k, seed=2 * n + k)
        pa, pb = kernels.pack(a), kernels.pack(b)
        products = expected_product(a, b)
        # bounds on and around the products, and the never/always ends
        bound = products[0] + torch.randint(-1, 2, (n,), generator=g, dtype=torch.int32)
        bound[::7] = k + 1
        bound[1::7] = -k
        bits = kernels.xnor_few_rows(pa, pb, k, bound=bound, words_per_call=2)
        assert torch.equal(bits, kernels.pack_ge(products, bound)), (n, k)


@pytest.mark.parametrize("rows", [1, 4, 8])
def test_few_rows_planes_sum_each_row_times_its_power_of_two(isa, rows):
    for n, k in FEW_ROW_SHAPES[:6]:
        a, b = signed_inputs(rows, k, seed=3 * rows + k), signed_inputs(n, k, seed=n * k)
        pa, pb = kernels.pack(a), kernels.pack(b)
        weights = torch.tensor([1 << r for r in range(rows)], dtype=torch.int64)
        total = (expected_product(a, b).long() * weights[:, None]).sum(0, keepdim=True).to(torch.int32)
        assert torch.equal(kernels.xnor_few_rows(pa, pb, k, planes=True), total), (n, k)
        bound = total[0] + 1 - 2 * (torch.arange(n, dtype=torch.int32) % 2)
        assert torch.equal(kernels.xnor_few_rows(pa, pb, k, bound=bound, planes=True), kernels.pack_ge(total, bound))


def test_few_rows_refuses_what_it_cannot_take():
    p = kernels.pack(torch.randn(9, 64))
    with pytest.raises(kernels.KernelError, match="1 to 8 rows"):
        kernels.xnor_few_rows(p, p, 64)
    with pytest.raises(kernels.KernelError, match="bound as 9 int32"):
        kernels.xnor_few_rows(p[:2], p, 64, bound=torch.zeros(3, dtype=torch.int32))
