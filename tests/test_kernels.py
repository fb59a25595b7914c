"""bnnctl.kernels: bit packing and the XNOR-popcount GEMMs against the float +/-1 product, exactly.

CPU tests run every instruction set this CPU supports (scalar, AVX2, AVX-512 VPOPCNTDQ where
present). CUDA tests run where the CUDA kernels are built and a GPU is visible, and skip otherwise;
their shapes are chosen to cross every tile edge of the CUDA kernels (16x16 tiles of 16 words for
the paper-style kernels, 128x128 blocks and 8-word k tiles for the tuned one, 64-float pack words).
"""
from __future__ import annotations

import pytest
import torch

from bnnctl import kernels
from bnnctl.errors import UserError
from bnnctl.kernels import KernelError, words_for

# Decided without building the extension, so collecting the tests stays instant; on a GPU machine
# the CUDA kernels must build, and a failed build fails these tests rather than skipping them.
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def pm1(x: torch.Tensor) -> torch.Tensor:
    """The contract's sign: +1 where x >= 0 (0 and -0.0 included), -1 elsewhere (NaN included)."""
    return torch.where(x >= 0, 1.0, -1.0)


def reference_pack(x: torch.Tensor) -> torch.Tensor:
    """Bit-by-bit packing in Python: element j -> bit j % 64 of word j // 64, padding zero."""
    rows, k = x.shape
    bits = torch.zeros(rows, words_for(k) * 64, dtype=torch.int64)
    bits[:, :k] = (x.cpu() >= 0).to(torch.int64)
    bits = bits.reshape(rows, -1, 64)
    words = torch.zeros(rows, bits.shape[1], dtype=torch.int64)
    for i in range(64):
        words |= bits[:, :, i] << i  # bit 63 wraps to the sign bit of int64, as in the packed words
    return words


def signed_inputs(rows: int, k: int, seed: int, device="cpu") -> torch.Tensor:
    """Random floats with exact zeros and negative zeros sprinkled in (both pack as +1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[torch.rand(rows, k, generator=g) < 0.1] = 0.0
    x[torch.rand(rows, k, generator=g) < 0.1] = -0.0
    return x.to(device)


def expected_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (pm1(a).double() @ pm1(b).double().T).to(torch.int32).cpu()


# (m, n, k): single rows and columns, k around the 32/64-bit word edges, the AVX2 vector (256 bits),
# several tiles of the CPU blocking in both dimensions, and k long enough for the AVX2 byte counters to be flushed.
CPU_SHAPES = [(1, 1, 1), (1, 9, 31), (7, 1, 32), (3, 5, 33), (9, 3, 63), (2, 8, 64), (5, 6, 65), (4, 4, 100),
              (6, 10, 128), (11, 13, 129), (17, 5, 255), (3, 4, 257), (70, 300, 300), (530, 420, 200), (25, 50, 4097), (3, 5, 20000)]


@pytest.mark.parametrize("m,n,k", CPU_SHAPES)
def test_cpu_xnor_gemm_is_the_exact_pm1_product(isa, m, n, k):
    a, b = signed_inputs(m, k, seed=m * 1000 + k), signed_inputs(n, k, seed=n * 1000 + k + 1)
    pa, pb = kernels.pack(a), kernels.pack(b)
    out = kernels.xnor_gemm(pa, pb, k)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, expected_product(a, b))
    assert torch.equal(kernels.xnor_gemm(pa, pb, k, impl="paper"), out)


@pytest.mark.parametrize("rows,k", [(1, 1), (3, 31), (2, 64), (5, 65), (4, 127), (3, 200), (2, 1000)])
def test_cpu_pack_matches_bit_by_bit_reference_and_round_trips(isa, rows, k):
    x = signed_inputs(rows, k, seed=k)
    packed = kernels.pack(x)
    assert packed.dtype == torch.int64 and packed.shape == (rows, words_for(k))
    assert torch.equal(packed, reference_pack(x))
    assert torch.equal(kernels.unpack(packed, k), pm1(x))


def test_zero_negative_zero_and_nan_signs(isa):
    x = torch.tensor([[0.0, -0.0, float("nan"), -1e-30, 1e-30, float("inf"), -float("inf")] * 10])
    assert kernels.unpack(kernels.pack(x), x.shape[1]).tolist() == [[1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0] * 10]


def test_pack_dim0_packs_columns():
    w = signed_inputs(100, 7, seed=3)  # (k, cols), the right-hand side of x @ w
    assert torch.equal(kernels.pack(w, dim=0), reference_pack(w.T.contiguous()))
    x = signed_inputs(4, 100, seed=4)
    assert torch.equal(kernels.xnor_gemm(kernels.pack(x), kernels.pack(w, dim=0), 100),
                       (pm1(x) @ pm1(w)).to(torch.int32))


def test_pack_accepts_other_float_dtypes_and_non_contiguous_views():
    x = signed_inputs(6, 90, seed=5)
    assert torch.equal(kernels.pack(x.double()), reference_pack(x))
    view = signed_inputs(6, 180, seed=6)[:, ::2]
    assert torch.equal(kernels.pack(view), reference_pack(view))


def test_junk_in_padding_bits_is_ignored(isa):
    k = 70  # 6 padding bits in the last word
    a, b = signed_inputs(5, k, seed=7), signed_inputs(4, k, seed=8)
    pa, pb = kernels.pack(a), kernels.pack(b)
    junk = torch.tensor(-1 << k % 64, dtype=torch.int64)  # every bit past k set
    pa[:, -1] |= junk
    pb[:1, -1] |= junk
    assert torch.equal(kernels.xnor_gemm(pa, pb, k), expected_product(a, b))


def test_empty_shapes():
    assert kernels.pack(torch.randn(0, 5)).shape == (0, 1)
    assert kernels.pack(torch.randn(3, 0)).shape == (3, 0)
    assert kernels.xnor_gemm(kernels.pack(torch.randn(0, 5)), kernels.pack(torch.randn(2, 5)), 5).shape == (0, 2)
    assert torch.equal(kernels.xnor_gemm(kernels.pack(torch.randn(2, 0)), kernels.pack(torch.randn(3, 0)), 0),
                       torch.zeros(2, 3, dtype=torch.int32))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 3), (9, 70, 65), (66, 5, 130)])
def test_cpu_baseline_gemm(m, n, k):
    a, b = signed_inputs(m, k, seed=9), signed_inputs(n, k, seed=10)
    assert torch.equal(kernels.baseline_gemm(pm1(a), pm1(b)), expected_product(a, b).float())
    torch.testing.assert_close(kernels.baseline_gemm(a, b), a @ b.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call,message", [
    (lambda: kernels.pack(torch.randn(3)), "2-D floating-point tensor"),
    (lambda: kernels.pack(torch.ones(2, 3, dtype=torch.int32)), "2-D floating-point tensor"),
    (lambda: kernels.pack([[1.0]]), "got a list"),
    (lambda: kernels.pack(torch.randn(2, 3), dim=2), "not dim 2"),
    (lambda: kernels.xnor_gemm(torch.randn(2, 1), torch.randn(2, 1), 10), "int64 tensor from pack()"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64), 64),
     "but b has 2"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.int64), 65),
     "needs 2 words"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.int64), -1),
     "int >= 0"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.int64), 5,
                               impl="fast"), "unknown xnor_gemm impl 'fast'"),
    (lambda: kernels.baseline_gemm(torch.randn(2, 3), torch.randn(2, 4)), "k = 3"),
    (lambda: kernels.unpack(torch.zeros(2, 1, dtype=torch.int64), 200), "needs 4 words"),
    (lambda: kernels.use_cpu_isa("neon"), "cannot run the 'neon' kernels"),
])
def test_bad_arguments_raise_one_clear_user_error(call, message):
    with pytest.raises(KernelError, match=message) as info:
        call()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_available_reports_the_cpu_kernels():
    info = kernels.available()
    assert info["cpu"] is True and info["cpu_isa"] == kernels.supported_cpu_isas()[-1]
    assert kernels.supported_cpu_isas()[0] == "scalar"
    assert info["cuda"] == CUDA


# ---- CUDA ------------------------------------------------------------------------------------------

# Crossing the tuned kernel's 128-row blocks and 8-word (512-bit) k tiles, the paper kernels' 16-row
# and 16-word (512-bit) tiles, odd n (scalar instead of paired int2 stores), and m or n = 1.
CUDA_SHAPES = [(1, 1, 1), (1, 300, 777), (129, 1, 513), (2, 3, 64), (17, 33, 31), (130, 257, 4097),
               (128, 128, 512), (200, 131, 1000), (255, 129, 96), (64, 640, 8192), (513, 500, 2048)]


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("impl", list(kernels.XNOR_IMPLS))
@pytest.mark.parametrize("m,n,k", CUDA_SHAPES)
def test_cuda_xnor_gemm_is_the_exact_pm1_product(impl, m, n, k):
    a, b = signed_inputs(m, k, seed=m + k, device="cuda"), signed_inputs(n, k, seed=n + k + 1, device="cuda")
    pa, pb = kernels.pack(a), kernels.pack(b)
    out = kernels.xnor_gemm(pa, pb, k, impl=impl)
    assert out.device.type == "cuda" and out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out.cpu(), expected_product(a, b))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("rows,k", [(1, 1), (3, 31), (2, 64), (5, 65), (33, 1000), (70000, 3), (4, 70000)])
def test_cuda_pack_equals_cpu_pack(rows, k):
    x = signed_inputs(rows, k, seed=rows + k)
    x[0, : min(k, 3)] = torch.tensor([0.0, -0.0, float("nan")])[: min(k, 3)]
    packed = kernels.pack(x.cuda())
    assert packed.device.type == "cuda"
    assert torch.equal(packed.cpu(), kernels.pack(x))
    assert torch.equal(kernels.unpack(packed, k).cpu(), pm1(x))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["tuned", "csa", "paper"])  # these ignore junk in both (xnor-tc: in one)
def test_cuda_junk_in_padding_bits_is_ignored(impl):
    k = 70  # 6 padding bits in the last 64-bit word; the second 32-bit word is 26 padding bits
    a, b = signed_inputs(50, k, seed=11, device="cuda"), signed_inputs(40, k, seed=12, device="cuda")
    pa, pb = kernels.pack(a), kernels.pack(b)
    junk = torch.tensor(-1 << k % 64, dtype=torch.int64, device="cuda")
    pa[:, -1] |= junk
    pb[:, -1] |= junk
    assert torch.equal(kernels.xnor_gemm(pa, pb, k, impl=impl).cpu(), expected_product(a, b))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 15), (100, 70, 1000), (1, 130, 17)])
def test_cuda_baseline_gemm(m, n, k):
    a, b = signed_inputs(m, k, seed=13, device="cuda"), signed_inputs(n, k, seed=14, device="cuda")
    assert torch.equal(kernels.baseline_gemm(pm1(a), pm1(b)).cpu(), expected_product(a, b).float())
    torch.testing.assert_close(kernels.baseline_gemm(a, b), (a.double() @ b.double().T).float(), rtol=1e-4,
                               atol=1e-3)


@needs_cuda
@pytest.mark.cuda
def test_cuda_empty_shapes_and_device_mismatch():
    empty = kernels.xnor_gemm(kernels.pack(torch.randn(0, 5, device="cuda")), kernels.pack(torch.randn(2, 5, device="cuda")), 5)
    assert empty.shape == (0, 2) and empty.device.type == "cuda"
    zero_k = kernels.xnor_gemm(kernels.pack(torch.randn(2, 0, device="cuda")), kernels.pack(torch.randn(3, 0, device="cuda")), 0)
    assert torch.equal(zero_k.cpu(), torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(KernelError, match="same device"):
        kernels.xnor_gemm(kernels.pack(torch.randn(2, 5)), kernels.pack(torch.randn(2, 5, device="cuda")), 5)


# ---- exact signs for every dtype ------------------------------------------------------------------------

# Values whose sign float32 cannot keep: a float64 negative too small for float32 became -0.0, i.e. +1.
F64_EDGES = [0.0, -0.0, float("nan"), -float("nan"), -1e-300, 1e-300, -5e-324, 5e-324, -1e-40, 1e-40,
             float("inf"), -float("inf"), -1.0, 1.0]


def test_pack_float64_takes_the_sign_in_float64(isa):
    x = torch.tensor([F64_EDGES * 9], dtype=torch.float64)  # 126 columns: a full word and a ragged one
    expected = [1.0 if v >= 0 else -1.0 for v in F64_EDGES] * 9  # Python's own float64 test; NaN >= 0 is False
    assert kernels.unpack(kernels.pack(x), x.shape[1]).tolist() == [expected]
    assert torch.equal(kernels.pack(x), reference_pack(x))
    assert kernels.pack(torch.tensor([[-1e-300]], dtype=torch.float64)).item() == 0  # was +1 through float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_pack_is_exact_for_every_float_dtype(isa, dtype):
    g = torch.Generator().manual_seed(21)
    x = (torch.randn(5, 200, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-40, 5, (5, 200), generator=g))
    x = x.to(dtype)
    tiny = torch.finfo(dtype).smallest_normal
    x[0, :8] = torch.tensor([0.0, -0.0, float("nan"), -tiny / 4, tiny / 4, -tiny, float("inf"), -float("inf")],
                            dtype=torch.float64).to(dtype)
    assert torch.equal(kernels.pack(x), reference_pack(x))  # the reference compares x >= 0 in x's dtype
    assert torch.equal(kernels.pack(x.T, dim=0), reference_pack(x))


def test_pack_signs_ignore_the_flush_denormal_mode(isa):
    """Denormals-are-zero would make a negative denormal compare equal to 0 (+1); the sign comes from the bits."""
    x = torch.tensor([[-1e-40, 1e-40, -1e-45, 0.0, -0.0, -1e-38] * 20], dtype=torch.float32)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-denormal mode")
    try:
        got = kernels.unpack(kernels.pack(x), x.shape[1])
    finally:
        torch.set_flush_denormal(False)
    assert got.tolist() == [[-1.0, 1.0, -1.0, 1.0, 1.0, -1.0] * 20]


def test_pack_takes_views_and_tensors_that_require_grad():
    x = signed_inputs(4, 130, seed=22).double().requires_grad_()
    assert torch.equal(kernels.pack(x), reference_pack(x.detach()))
    wide = signed_inputs(4, 260, seed=23)
    assert torch.equal(kernels.pack(wide[:, 1::2]), reference_pack(wide[:, 1::2]))
    assert torch.equal(kernels.pack(wide.T[::2], dim=0), reference_pack(wide.T[::2].T))


# ---- integer thresholds ------------------------------------------------------------------------------------

def test_threshold_bounds_are_the_exact_ceilings_in_float64():
    k = 2 ** 26
    # float64 thresholds whose float32 rounding falls on the other side of an integer
    t = torch.tensor([2 ** 24 + 0.5, 3.0000000001, -2.9999999999, 2 ** 25 + 2, 7.0, -7.0, 0.0, -0.0,
                      1e30, -1e30, k + 0.5, -k - 0.5], dtype=torch.float64)
    bounds = kernels.threshold_bounds(t, k)
    assert bounds.dtype == torch.int32
    assert bounds.tolist() == [2 ** 24 + 1, 4, -2, 2 ** 25 + 2, 7, -7, 0, 0, k + 1, -k, k + 1, -k]
    assert kernels.threshold_bounds(t.float(), k)[:3].tolist() == [2 ** 24, 3, -3]  # what float32 makes of them
    ints = torch.tensor([5, -5, 2 ** 40, -2 ** 40], dtype=torch.int64)
    assert kernels.threshold_bounds(ints, 100).tolist() == [5, -5, 101, -100]
    assert kernels.threshold_bounds(torch.tensor([2.5], dtype=torch.float16), 10).tolist() == [3]
    assert kernels.threshold_bounds(torch.zeros(0), 3).shape == (0,)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_thresholds_are_one_kernel_error(bad):
    with pytest.raises(KernelError, match="threshold 1 is .*finite") as info:
        kernels.threshold_bounds(torch.tensor([0.0, bad], dtype=torch.float64), 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("n", [1, 8, 63, 64, 65, 130, 200])
def test_pack_ge_int32_matches_the_reference_on_every_isa(isa, n):
    """Values equal to, one above and one below their bounds, near both ends of the int32 range."""
    g = torch.Generator().manual_seed(n)
    for base in (0, 2 ** 31 - 8, -2 ** 31 + 8):
        bound = torch.randint(-3, 4, (n,), generator=g, dtype=torch.int32) + base
        value = bound + torch.randint(-1, 2, (5, n), generator=g, dtype=torch.int32)
        assert torch.equal(kernels.pack_ge(value, bound), reference_pack((value.long() - bound.long()).double()))


def test_pack_ge_compares_exactly():
    g = torch.Generator().manual_seed(24)
    big = 2 ** 30
    value = torch.randint(-3, 4, (9, 130), generator=g, dtype=torch.int32) + big
    bound = torch.randint(-3, 4, (130,), generator=g, dtype=torch.int32) + big
    assert torch.equal(kernels.pack_ge(value, bound), reference_pack((value.long() - bound.long()).double()))
    # past 2^24, float32 cannot tell 2^24 from 2^24 + 1: the int32 comparison can
    assert kernels.pack_ge(torch.tensor([[2 ** 24, 2 ** 24 + 1]], dtype=torch.int32),
                           torch.tensor([2 ** 24 + 1, 2 ** 24 + 1], dtype=torch.int32)).item() == 0b10
    v = torch.tensor([[1.5, float("nan"), -0.0, 2.0, -1e-40]])
    b = torch.tensor([1.5, 0.0, 0.0, float("inf"), 0.0])
    assert kernels.unpack(kernels.pack_ge(v, b), 5).tolist() == [[1.0, -1.0, 1.0, -1.0, -1.0]]
    assert kernels.pack_ge(torch.zeros(0, 70, dtype=torch.int32), torch.zeros(70, dtype=torch.int32)).shape == (0, 2)
    assert kernels.pack_ge(torch.zeros(3, 0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)).shape == (3, 0)
    strided = value.T.contiguous().T  # a non-contiguous view
    assert torch.equal(kernels.pack_ge(strided, bound), kernels.pack_ge(value, bound))


def _all_plus(rows: int, k: int, minus: list[list[int]] | None = None) -> torch.Tensor:
    """Packed rows of k entries, all +1 except the listed columns of each row; built as words directly, so
    k can pass 2^24 without a float matrix."""
    words = torch.full((rows, words_for(k)), -1, dtype=torch.int64)
    if k % 64:
        words[:, -1] = (1 << (k % 64)) - 1
    for r, cols in enumerate(minus or []):
        for c in cols:
            words[r, c // 64] &= ~(1 << (c % 64))
    return words


@pytest.mark.parametrize("k", [1, 64, 576, 1023, 1024, 1088, 4096, 15872, 15873, 20000])
def test_counters_hold_the_largest_counts(isa, k):
    """Rows that differ in every bit (each byte of every XOR word has all its bits set, the most a byte
    counter takes per step) and rows that agree, at k around the AVX2 kernel's edges: below and at 32
    half-words (lookup only / Harley-Seal), and past 31 blocks of 16 half-words (15872 bits), where its byte
    counters are summed before they overflow."""
    words = words_for(k)
    plus = _all_plus(1, k)
    minus = torch.zeros(1, words, dtype=torch.int64)  # every bit clear: all -1
    half = plus.clone()
    half[:, :] &= 0x5555555555555555  # every other column -1
    b = torch.cat([minus, plus, half, minus])
    out = kernels.xnor_gemm(torch.cat([plus, minus, plus]), b, k)
    evens = (k + 1) // 2
    expected = torch.tensor([[-k, k, 2 * evens - k, -k],
                             [k, -k, k - 2 * evens, k],
                             [-k, k, 2 * evens - k, -k]], dtype=torch.int32)
    assert torch.equal(out, expected)


def test_threshold_form_is_exact_past_two_to_the_24():
    """dot products 2^25 + 3, 2^25 + 1 and 2^25 - 1 (no float32 holds the odd ones) against thresholds that
    float32 would round onto them."""
    k = 2 ** 25 + 3
    a = _all_plus(1, k)
    b = _all_plus(3, k, [[], [5], [7, 2 ** 25]])
    dots = kernels.xnor_gemm(a, b, k)
    assert dots.tolist() == [[k, k - 2, k - 4]]
    thresh = torch.tensor([k, 2 ** 25 + 2, 2 ** 25 - 0.5], dtype=torch.float64)
    assert (dots.float() >= thresh.float()).tolist() == [[True, True, True]]  # the old float32 answer
    expected = [[1.0, -1.0, -1.0]]
    for t in (thresh, kernels.threshold_bounds(thresh, k)):
        bits = torch.ops.bnnctl.xnor_tc_gemm(a, b, k, t)
        assert kernels.unpack(bits, 3).tolist() == expected
    assert kernels.unpack(kernels.pack_ge(dots, kernels.threshold_bounds(thresh, k)), 3).tolist() == expected
    with pytest.raises(RuntimeError, match="thresholds must be finite"):
        torch.ops.bnnctl.xnor_tc_gemm(a, b, k, torch.tensor([0.0, float("nan"), 1.0], dtype=torch.float64))


def test_threshold_form_on_small_products_matches_the_reference(isa):
    m, n, k = 9, 70, 300
    a, b = signed_inputs(m, k, seed=25), signed_inputs(n, k, seed=26)
    dots = expected_product(a, b)
    thresh = (torch.randn(n, generator=torch.Generator().manual_seed(27), dtype=torch.float64) * 20).round() / 2
    thresh[:3] = torch.tensor([-1e9, 1e9, 0.0])
    bits = torch.ops.bnnctl.xnor_tc_gemm(kernels.pack(a), kernels.pack(b), k, thresh)
    assert torch.equal(bits, reference_pack((dots.double() - thresh).where(dots.double() < thresh, 0.0)))


# ---- argument edge cases --------------------------------------------------------------------------------------

def test_k_beyond_the_int32_products_is_refused_without_allocating():
    k = 2 ** 31
    empty = torch.zeros(0, words_for(k), dtype=torch.int64)
    with pytest.raises(KernelError, match="more than 2147483646") as info:
        kernels.xnor_gemm(empty, empty, k)
    assert "\n" not in str(info.value)
    with pytest.raises(KernelError, match="more than"):
        kernels.threshold_bounds(torch.zeros(1), k)


def test_k_may_be_any_integer_type_and_operands_any_layout():
    np = pytest.importorskip("numpy")
    a, b = signed_inputs(5, 100, seed=28), signed_inputs(6, 100, seed=29)
    pa, pb = kernels.pack(a), kernels.pack(b)
    expected = expected_product(a, b)
    assert torch.equal(kernels.xnor_gemm(pa, pb, np.int64(100)), expected)
    assert torch.equal(kernels.xnor_gemm(pa, pb, torch.tensor(100)), expected)
    wide = torch.zeros(5, 4, dtype=torch.int64)
    wide[:, ::2] = pa
    assert not wide[:, ::2].is_contiguous()
    assert torch.equal(kernels.xnor_gemm(wide[:, ::2], pb.T.contiguous().T, 100), expected)
    assert torch.equal(kernels.unpack(wide[:, ::2], 100), pm1(a))
    x = torch.randn(3, 4, requires_grad=True)
    torch.testing.assert_close(kernels.baseline_gemm(x, x), (x @ x.T).detach())


@pytest.mark.parametrize("call,message", [
    (lambda: kernels.pack(torch.randn(2, 3).to_sparse()), "2-D floating-point tensor"),
    (lambda: kernels.pack(torch.randn(2, 3), dim=True), "not dim True"),
    (lambda: kernels.pack(torch.randn(2, 3, dtype=torch.complex64)), "2-D floating-point tensor"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.int64), 3.0),
     "as an int >= 0"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.int64), True),
     "as an int >= 0"),
    (lambda: kernels.xnor_gemm(torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 1, dtype=torch.int64), 3),
     "int64 tensor from pack"),
    (lambda: kernels.pack_ge(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3)), "of one dtype"),
    (lambda: kernels.pack_ge(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)),
     "int32 or float32"),
    (lambda: kernels.pack_ge(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(4, dtype=torch.int32)),
     "one bound per column"),
    (lambda: kernels.pack_ge(torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)), "2-D"),
    (lambda: kernels.threshold_bounds(torch.zeros(2, 2), 4), "1-D tensor of thresholds"),
    (lambda: kernels.threshold_bounds([1.0], 4), "got a list"),
    (lambda: kernels.threshold_bounds(torch.zeros(2), -1), "int >= 0"),
])
def test_more_bad_arguments_raise_one_clear_user_error(call, message):
    with pytest.raises(KernelError, match=message) as info:
        call()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


# ---- CUDA: the same exactness on the GPU --------------------------------------------------------------------

@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_pack_is_exact_for_every_float_dtype(dtype):
    x = torch.tensor([F64_EDGES * 9], dtype=torch.float64).to(dtype)
    x = torch.cat([x, signed_inputs(3, x.shape[1], seed=30).to(dtype)])
    assert torch.equal(kernels.pack(x.cuda()).cpu(), kernels.pack(x))
    assert torch.equal(kernels.pack(x.cuda()).cpu(), reference_pack(x))


@needs_cuda
@pytest.mark.cuda
def test_cuda_pack_ge_equals_cpu():
    g = torch.Generator().manual_seed(31)
    value = torch.randint(-5, 6, (70, 130), generator=g, dtype=torch.int32) + 2 ** 30
    bound = torch.randint(-5, 6, (130,), generator=g, dtype=torch.int32) + 2 ** 30
    assert torch.equal(kernels.pack_ge(value.cuda(), bound.cuda()).cpu(), kernels.pack_ge(value, bound))
    fv, fb = value.float() - 2 ** 30, bound.float() - 2 ** 30
    assert torch.equal(kernels.pack_ge(fv.cuda(), fb.cuda()).cpu(), kernels.pack_ge(fv, fb))


@needs_cuda
@pytest.mark.cuda
def test_cuda_threshold_form_is_exact_past_two_to_the_24():
    k = 2 ** 25 + 3
    a, b = _all_plus(1, k).cuda(), _all_plus(3, k, [[], [5], [7, 2 ** 25]]).cuda()
    thresh = torch.tensor([k, 2 ** 25 + 2, 2 ** 25 - 0.5], dtype=torch.float64)
    for t in (thresh.cuda(), kernels.threshold_bounds(thresh, k).cuda()):
        bits = torch.ops.bnnctl.xnor_tc_gemm(a, b, k, t)
        assert kernels.unpack(bits.cpu(), 3).tolist() == [[1.0, -1.0, -1.0]]


@pytest.mark.parametrize("channels", [5, 64, 70, 130])
@pytest.mark.parametrize("pool", [1, 2, 3])
def test_conv_threshold_is_the_separate_steps_in_one_pass(isa, channels, pool):
    """Subtract the border correction, max-pool (dropping a ragged edge), multiply by the direction,
    compare with the bound and pack: against the same steps in torch, with values on their bounds."""
    g = torch.Generator().manual_seed(channels * 10 + pool)
    n, h, w = 3, 7, 8
    products = torch.randint(-6, 7, (n, h, w, channels), generator=g, dtype=torch.int32)
    bound = torch.randint(-3, 4, (channels,), generator=g, dtype=torch.int32)
    for correction in (None, torch.randint(-2, 3, (h * w, channels), generator=g, dtype=torch.int32)):
        for direction in (None, torch.randint(0, 2, (channels,), generator=g, dtype=torch.int32) * 2 - 1):
            d = products if correction is None else products - correction.view(h, w, channels)
            h2, w2 = h // pool, w // pool
            pooled = d[:, :h2 * pool, :w2 * pool].reshape(n, h2, pool, w2, pool, channels).amax(dim=(2, 4))
            pre = pooled if direction is None else pooled * direction
            expected = reference_pack((pre.long() - bound.long()).double().reshape(-1, channels))
            got = kernels.conv_threshold(products, bound, pool, correction, direction)
            assert got.shape == (n, h2, w2, kernels.words_for(channels))
            assert torch.equal(got.reshape(-1, got.shape[-1]), expected)


def test_conv_threshold_refuses_what_it_cannot_use():
    products = torch.zeros(1, 4, 4, 3, dtype=torch.int32)
    with pytest.raises(kernels.KernelError, match="int32 CPU tensor"):
        kernels.conv_threshold(products.float(), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="3 values"):
        kernels.conv_threshold(products, torch.zeros(4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="does not fit"):
        kernels.conv_threshold(products, torch.zeros(3, dtype=torch.int32), pool=5)


@pytest.mark.parametrize("channels,kernel,padding", [(5, 3, 1), (64, 3, 1), (70, 3, 0), (130, 1, 0), (3, 5, 2)])
def test_xnor_conv_is_the_gemm_of_the_im2col_words(isa, channels, kernel, padding):
    """The gathered panels give what im2col on words then xnor_gemm gives (ragged rows, borders, taps)."""
    g = torch.Generator().manual_seed(channels + kernel)
    n, h, w, out = 3, 5, 7, 11
    words = kernels.words_for(channels)
    x = kernels.pack(torch.randn(n * h * w, channels, generator=g)).view(n, h, w, words)
    b = kernels.pack(torch.randn(out, kernel * kernel * words * 64, generator=g))
    padded = torch.nn.functional.pad(x, (0, 0, padding, padding, padding, padding))
    h_out, w_out = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    if (h_out, w_out) != (h, w):
        with pytest.raises(RuntimeError):
            kernels.xnor_conv(x, b, kernel, padding)  # stride 1, same size only
        return
    taps = [padded[:, i:i + h, j:j + w] for i in range(kernel) for j in range(kernel)]
    im2col = torch.stack(taps, dim=3).reshape(n * h * w, -1)
    expected = kernels.xnor_gemm(im2col, b, kernel * kernel * words * 64)
    assert torch.equal(kernels.xnor_conv(x, b, kernel, padding), expected)


def test_every_native_source_is_compiled_under_its_own_object_name():
    from bnnctl.kernels import build
    compiled = build.sources("cuda")
    c_library = set((build.SOURCE_DIR / "c").rglob("*.cpp"))  # the C library's API, built by CMake only
    assert set(compiled) == set(build.SOURCE_DIR.rglob("*.cpp")) - c_library | set(build.SOURCE_DIR.glob("*.cu"))
    # torch's build names each object file after its source's stem, whatever folder the source is in
    assert len({path.stem for path in compiled}) == len(compiled)
    assert set(build.sources("cpu")) == {build.SOURCE_DIR / name for name in build.CPU_SOURCES}
