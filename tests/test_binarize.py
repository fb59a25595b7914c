import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnctl.core.binarize import ap2, binarize_ste, binarize_weight, hard_sigmoid, sign_pm1, stochastic_sign


def test_sign_of_zero_and_negative_zero_is_plus_one():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0, -2.0])
    assert sign_pm1(x).tolist() == [1, 1, 1, -1, 1, -1]


@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=50))
def test_sign_matches_definition(values):
    x = torch.tensor(values, dtype=torch.float32)
    expected = [1.0 if v >= 0 else -1.0 for v in x.tolist()]
    assert sign_pm1(x).tolist() == expected


def test_sign_keeps_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.tensor([0.0, -0.0, -1.0], dtype=dtype)
        out = sign_pm1(x)
        assert out.dtype == dtype and out.tolist() == [1, 1, -1]


def test_activation_ste_masks_gradient_outside_unit_interval():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 3.0], requires_grad=True)
    y = binarize_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    y.backward(torch.arange(1.0, 9.0))
    # 1_{|x| <= 1}: the boundary points +-1 pass, everything beyond is cancelled
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0, 0]


def test_weight_ste_passes_gradient_straight():
    w = torch.tensor([-1.0, -0.3, 0.0, 0.7, 1.0], requires_grad=True)
    out = binarize_weight(w)
    assert out.tolist() == [-1, -1, 1, 1, 1]
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert w.grad.tolist() == [1, 2, 3, 4, 5]


def test_stochastic_sign_has_hard_sigmoid_probability():
    torch.manual_seed(0)
    x = torch.tensor([-1.5, -0.5, 0.0, 0.6, 2.0]).repeat(20000, 1)
    p_plus = (stochastic_sign(x) == 1).float().mean(0)
    expected = hard_sigmoid(x[0])
    assert torch.allclose(p_plus, expected, atol=0.015), (p_plus, expected)
    assert set(stochastic_sign(x).unique().tolist()) <= {-1.0, 1.0}


def test_stochastic_ste_only_while_training():
    from bnnctl.core.layers import SignActivation
    act = SignActivation(stochastic=True)
    x = torch.full((1000,), 0.2)
    act.eval()
    assert (act(x) == 1).all()  # deterministic at test time
    act.train()
    torch.manual_seed(0)
    assert (act(x) == -1).any()


@settings(max_examples=50)
@given(st.floats(min_value=1e-6, max_value=1e6), st.booleans())
def test_ap2_is_nearest_power_of_two_in_log_space(magnitude, negative):
    x = torch.tensor([-magnitude if negative else magnitude], dtype=torch.float64)
    out = ap2(x).item()
    assert abs(out) > 0 and (out < 0) == negative
    exponent = torch.log2(torch.tensor(abs(out))).item()
    assert exponent == round(exponent)
    assert abs(exponent - torch.log2(torch.tensor(magnitude, dtype=torch.float64)).item()) <= 0.5 + 1e-9


def test_ap2_of_zero_is_zero():
    assert ap2(torch.tensor([0.0, 0.75, -3.0])).tolist() == [0.0, 1.0, -4.0]
