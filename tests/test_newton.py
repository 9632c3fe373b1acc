"""``accelerate="newton"``: Newton steps on the whole trajectory for small states (DEER),
with the sweeps taking over where they stop converging."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import picard
from picard.core import jacobians

F64 = torch.float64


def test_newton_reaches_the_sequential_trajectory_in_fewer_rounds_than_sweeps():
    rule = picard.Recursion(
        lambda i, x: 0.1 * torch.sin(x) - 0.02 * torch.tanh(x), 60, batch_dims=1
    )
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = picard.sequential(rule, x0, save=True).ys
    sol = picard.solve(rule, x0, accelerate="newton", save=True, tol=1e-8)
    sweeps = picard.solve(rule, x0, tol=1e-8).stats.iterations
    assert sol.stats.acceleration["newton_steps"] == sol.stats.iterations - 1  # and the probe
    assert sol.stats.iterations < sweeps
    assert float((sol.ys - exact).abs().max()) < 1e-12 and sol.ys.dtype == F64


def test_diverging_newton_steps_hand_over_to_the_sweeps():
    """A cold start over a long oscillating horizon: the linearisation about a constant
    trajectory sends the corrections off; the sweeps then solve it from their own guesses."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = torch.tensor([[2.0, 0.0]]) + 0.1 * torch.randn(
        16, 1, 2, generator=torch.Generator().manual_seed(0)
    )
    t = torch.linspace(0, 1, 1001)

    def f(t, y):
        return (y**3) @ a

    seq = torchdiffeq.odeint(f, y0, t, method="euler")
    ys, stats = picard.odeint(f, y0, t, method="euler", accelerate="newton", return_stats=True)
    plain, plain_stats = picard.odeint(f, y0, t, method="euler", return_stats=True)
    assert stats.acceleration["newton_fallbacks"] == 1
    assert stats.iterations > plain_stats.iterations  # the Newton rounds are counted
    assert torch.equal(ys, plain) and float((ys - seq).abs().max()) < 1e-3


def test_gradients_through_a_newton_solve_are_autograds():
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(
        F64
    )
    y0 = torch.randn(
        4, 2, generator=torch.Generator().manual_seed(1), dtype=F64, requires_grad=True
    )
    t = torch.linspace(0, 1, 41, dtype=F64)

    def f(t, y):
        return net(y)

    ref = torchdiffeq.odeint(f, y0, t, method="rk4")
    expected = torch.autograd.grad(ref.square().sum(), [y0, *net.parameters()])
    ys, stats = picard.odeint(
        f, y0, t, method="rk4", accelerate="newton", tol=1e-12, return_stats=True
    )
    got = torch.autograd.grad(ys.square().sum(), [y0, *net.parameters()])
    assert "newton_steps" in stats.acceleration
    assert max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True)) < 1e-9


def test_adaptive_rounds_take_newton_steps_and_keep_the_error_test():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.linspace(0, 10, 11, dtype=F64)
    osc = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    ys = picard.odeint(lambda t, y: y @ osc.T, y0, t, accelerate="newton")
    exact = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    assert float((ys - exact).abs().max()) < 1e-6


@pytest.mark.parametrize("case", ["large", "memory"])
def test_other_problems_run_the_sweeps(case):
    if case == "large":
        rule = picard.Recursion(lambda i, x: -0.05 * torch.tanh(x), 20, batch_dims=1)
        x0 = torch.randn(2, jacobians.DENSE_MAX + 1, dtype=F64)
        sol = picard.solve(rule, x0, accelerate="newton")
    else:
        _, stats = picard.odeint(
            lambda t, y: -y, torch.ones(2, dtype=F64), torch.linspace(0, 1, 11, dtype=F64),
            method="explicit_adams", accelerate="newton", return_stats=True,
        )  # fmt: skip
        sol = picard.Solution(final=torch.ones(1), ys=None, steps=None, stats=stats)
    assert "newton_steps" not in sol.stats.acceleration
    assert "newton_fallbacks" not in sol.stats.acceleration


def test_bad_newton_options_name_the_argument():
    with pytest.raises(ValueError, match="max_steps"):
        picard.Newton(max_steps=0)
    with pytest.raises(ValueError, match="accelerate"):
        picard.solve(picard.Recursion(lambda i, x: -x, 3), torch.ones(1), accelerate="newtn")
