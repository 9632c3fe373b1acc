"""Issue 23: torchdiffeq's default call (dopri5, rtol 1e-7, atol 1e-9), error-controlled."""

import pytest
import torch
import torchdiffeq

import picard
from picard.ode.adaptive import error_ratios
from picard.ode.integrate import ODEProblem

torch.set_num_threads(1)
F64 = torch.float64


def _oscillator(dtype):
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=dtype)
    return lambda t, y: y @ a.T


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_default_call_is_as_accurate_as_torchdiffeqs(dtype):
    """The issue's case: a harmonic oscillator at 11 points over [0, 10], no options
    (Euler on t used to end 32.5 off)."""
    f, t = _oscillator(dtype), torch.linspace(0, 10, 11, dtype=dtype)
    y0 = torch.tensor([1.0, 0.0], dtype=dtype)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    ours = (picard.odeint(f, y0, t) - exact).abs().max()
    theirs = (torchdiffeq.odeint(f, y0, t) - exact).abs().max()
    assert ours <= 2 * theirs  # 2.8e-8 against 1.8e-7 (float64), 4e-7 against 1.5e-6


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "fehlberg2", "adaptive_heun"])
@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
def test_every_adaptive_method_meets_torchdiffeqs_accuracy(method, backwards):
    def f(t, y):
        return -0.5 * y + torch.sin(3 * t) * y.flip(-1)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    t = t.flip(0) if backwards else t
    ref = torchdiffeq.odeint(f, y0, t, method="dopri8", rtol=1e-13, atol=1e-14)
    ours, stats = picard.odeint(f, y0, t, method=method, rtol=1e-6, atol=1e-8, return_stats=True)
    theirs = torchdiffeq.odeint(f, y0, t, method=method, rtol=1e-6, atol=1e-8)
    assert (ours - ref).abs().max() <= 2 * (theirs - ref).abs().max() + 1e-10
    assert stats.num_steps >= len(t) - 1 and stats.iterations > 0


def test_every_step_of_the_answer_passes_the_error_test():
    f = _oscillator(F64)
    t = torch.linspace(0, 4, 5, dtype=F64)
    grids = []
    real = picard.ode.adaptive.regrid

    def spy(grid, index, ratios, order):
        new = real(grid, index, ratios, order)
        grids.append(new[0])
        return new

    picard.ode.adaptive.regrid = spy
    try:
        ys = picard.odeint(f, torch.tensor([1.0, 0.0], dtype=F64), t, rtol=1e-8, atol=1e-10)
    finally:
        picard.ode.adaptive.regrid = real
    grid = grids[-1] if grids else t
    problem = ODEProblem(f, grid, "dopri5", F64)
    on_grid = picard.solve(problem, torch.tensor([1.0, 0.0], dtype=F64), tol=0, save=True).ys
    assert (error_ratios(problem, on_grid, 1e-8, 1e-10) <= 1).all()
    exact = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    assert (ys - exact).abs().max() < 1e-7


def test_gradients_flow_through_the_adaptive_solve():
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    ys = picard.odeint(lambda t, y: -k * y, y0, torch.linspace(0, 1, 3, dtype=F64))
    ys[-1].sum().backward()
    torch.testing.assert_close(y0.grad, torch.exp(-k.detach()).expand(2), rtol=1e-6, atol=0)
    expected = -3 * torch.exp(-k.detach())  # d/dk of (1 + 2) e^{-k}
    torch.testing.assert_close(k.grad, expected, rtol=1e-5, atol=0)


def test_odeint_adjoints_default_call_is_error_controlled_too():
    f, t = _oscillator(F64), torch.linspace(0, 10, 11, dtype=F64)
    ys = picard.odeint_adjoint(f, torch.tensor([1.0, 0.0], dtype=F64), t)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    assert (ys - exact).abs().max() < 1e-6


def test_diverging_sweeps_continue_step_by_step():
    """torchdiffeq's ode_demo field from a spread of states: plain sweeps overflow on the
    first grid; the solve continues step by step there and still meets the test."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)

    def f(t, y):
        return (y**3) @ a

    y0 = torch.randn(4, 1, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.5
    y0 = y0 + torch.tensor([2.0, 0.0], dtype=F64)
    t = torch.linspace(0, 1, 20, dtype=F64)
    ref = torchdiffeq.odeint(f, y0, t, rtol=1e-12, atol=1e-14)
    ours = picard.odeint(f, y0, t)
    theirs = torchdiffeq.odeint(f, y0, t)
    assert (ours - ref).abs().max() <= 10 * (theirs - ref).abs().max() + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tol": 1e-6}, "controls its steps by rtol/atol: give those, not tol"),
        ({"init": torch.zeros(3, 2)}, "not init"),
        ({"method": "dopri8"}, "dopri8.*fixed steps"),
    ],
)
def test_what_the_adaptive_solve_cannot_take_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        picard.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3), **kwargs)


def test_where_sweeps_do_not_pay_it_steps_like_torchdiffeq_and_says_so():
    """A long horizon of a stiff-ish cubic field: sweeps converge about one step per sweep,
    so after a budget of one sweep per 4 steps the solve steps one after another."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)

    def f(t, y):
        return (y**3) @ a

    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 25, 50, dtype=F64)
    ref = torchdiffeq.odeint(f, y0, t, rtol=1e-12, atol=1e-14)
    ours, stats = picard.odeint(f, y0, t, return_stats=True)
    theirs = torchdiffeq.odeint(f, y0, t)
    assert stats.sequential_steps > 0
    assert (ours - ref).abs().max() <= 10 * (theirs - ref).abs().max() + 1e-9
    with pytest.raises(picard.NonFiniteError):  # unless told to raise
        picard.odeint(f, y0, t, on_nonfinite="raise", max_iters=10_000)


def test_times_that_require_grad_are_refused_not_silently_ignored():
    t = torch.linspace(0, 1, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"t requires grad.*t\.detach"):
        picard.odeint(lambda t, y: -y, torch.ones(2), t)
    with torch.no_grad():
        assert picard.odeint(lambda t, y: -y, torch.ones(2), t).shape == (3, 2)
