"""torchdiffeq's Adams methods, in parallel: the sequential recursion's answer."""

import warnings

import pytest
import torch
import torchdiffeq

import picard
from picard.ode.adams import AdamsProblem, adams_weights

torch.set_num_threads(1)
F64 = torch.float64


def _field(t, y):
    return torch.stack([y[..., 1], -y[..., 0] * (1 + 0.1 * torch.sin(t))], -1)


def test_weights_are_adams_bashforth_and_moulton():
    assert [round(w * 720) for w in adams_weights(5, False)] == [1901, -2774, 2616, -1274, 251]
    assert [round(w * 720) for w in adams_weights(5, True)] == [251, 646, -264, 106, -19]
    for order in range(1, 13):  # every rule integrates a constant exactly
        assert sum(adams_weights(order, False)) == pytest.approx(1.0, abs=1e-12)
        assert sum(adams_weights(order, True)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams", "fixed_adams"])
@pytest.mark.parametrize("max_order", [4, 7, 12])
def test_tol_zero_is_torchdiffeqs_sequential_answer(method, max_order):
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 3, 61, dtype=F64)
    options = {"max_order": max_order}
    theirs = torchdiffeq.odeint(_field, y0, t, method=method, options=options)
    ours, stats = picard.odeint(
        _field, y0, t, method=method, options=options, tol=0, return_stats=True
    )
    # Bashforth's order 11 is unstable at this step: rounding grows to 1e6 (relative 1e-9)
    unstable = method == "explicit_adams" and max_order == 12
    torch.testing.assert_close(ours, theirs, rtol=1e-8 if unstable else 1e-12, atol=1e-12)
    assert stats.iterations < 60  # fewer sweeps than steps


def test_the_default_tolerance_is_close_to_the_sequential_answer_in_fewer_sweeps():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 3, 201, dtype=F64)
    theirs = torchdiffeq.odeint(_field, y0, t, method="implicit_adams")
    ours, stats = picard.odeint(_field, y0, t, method="implicit_adams", return_stats=True)
    assert (ours - theirs).abs().max() < 1e-5
    assert stats.iterations < 100


def test_gradients_equal_autograd_through_the_sequential_loop():
    w = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 41, dtype=F64)

    def f(t, y):
        return torch.tanh(y @ w.T)

    for method in ("explicit_adams", "implicit_adams"):
        theirs = torchdiffeq.odeint(f, y0, t, method=method)
        g_theirs = torch.autograd.grad(theirs[-1].sum(), (y0, w))
        ours = picard.odeint(f, y0, t, method=method, tol=0)
        g_ours = torch.autograd.grad(ours[-1].sum(), (y0, w))
        for a, b in zip(g_ours, g_theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_an_unconverged_corrector_warns_once_for_the_answer():
    y0 = torch.ones(1, dtype=F64)
    t = torch.linspace(0, 1, 21, dtype=F64)
    with pytest.warns(RuntimeWarning, match="corrector did not converge") as caught:
        picard.odeint(
            lambda t, y: -30 * y, y0, t, method="implicit_adams", options={"max_iters": 1}
        )
    assert len([w for w in caught if "corrector" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning from the sweeps' iterates
        picard.odeint(lambda t, y: -y, y0, t, method="implicit_adams")


def test_the_problem_has_memory_and_batches_samples():
    t = torch.linspace(0, 1, 11, dtype=F64)
    p = AdamsProblem(lambda t, y: -y, t, F64, batch_ndim=1, implicit=True)
    assert p.memory == 10
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    both = picard.solve(p, y0, tol=0).final
    alone = picard.solve(AdamsProblem(lambda t, y: -y, t, F64, implicit=True), y0[1], tol=0).final
    torch.testing.assert_close(both[1], alone, rtol=1e-14, atol=0)


def test_the_runge_kutta_startup_calls_func_once_per_stage():
    # the startup rows' first stage is the slope f(t_n, y_n) the Adams rows need anyway
    from picard.ode.adams import AdamsProblem

    calls = []

    def f(t, y):
        calls.append(y.shape[0])
        return -y

    problem = AdamsProblem(f, torch.linspace(0, 1, 4, dtype=torch.float64), torch.float64)
    sol = picard.solve(problem, torch.ones(1, dtype=torch.float64), tol=0, window=3)
    # f, then rk4's three other stages per sweep (5 per sweep when stage 1 repeated f)
    assert len(calls) <= 4 * sol.stats.iterations + 1
    one = picard.solve(problem, torch.ones(1, dtype=torch.float64), tol=0, window=1)
    torch.testing.assert_close(sol.final, one.final, rtol=1e-14, atol=0)
