"""odeint: parity with torchdiffeq and scipy, convergence orders, the front-end options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq
from helpers import RandomMLP, euler_loop, random_grid
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import picard
from picard.ode.integrate import METHODS


def scalar_t(f):
    """torchdiffeq calls func with a scalar t; our batched drifts take t of shape (M,)."""
    return lambda t, y: f(t.reshape(1), y[None])[0]


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
@pytest.mark.parametrize("decreasing", [False, True])
def test_matches_torchdiffeq_on_the_same_grid(method, decreasing):
    f = RandomMLP(dim=3, width=16, seed=1, gain=2.0)
    t = random_grid(40, seed=2, decreasing=decreasing)
    y0 = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    expected = torchdiffeq.odeint(scalar_t(f), y0, t, method=method)
    ys = picard.odeint(f, y0, t, method=method, tol=0, window=16)
    torch.testing.assert_close(ys, expected, rtol=1e-12, atol=1e-12)
    ys = picard.odeint(f, y0, t, method=method, tol=1e-10)
    torch.testing.assert_close(ys, expected, rtol=0, atol=1e-8)


@given(
    n=st.integers(1, 50),
    dim=st.integers(1, 4),
    seed=st.integers(0, 10**6),
    gain=st.floats(0.1, 4.0),
    window=st.integers(1, 60),
    tol=st.floats(1e-9, 1e-3),
    decreasing=st.booleans(),
)
def test_nonlinear_euler_error_is_bounded_by_tol(n, dim, seed, gain, window, tol, decreasing):
    """Random MLP drifts, random grids: tol = 0 is the Euler loop; tol > 0 stays within
    tol * (prod(1 + h_i L) - 1), L the MLP's Lipschitz bound."""
    f = RandomMLP(dim=dim, width=8, seed=seed, gain=gain)
    t = random_grid(n, seed=seed + 1, decreasing=decreasing)
    y0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = euler_loop(f, y0, t)
    exact, stats = picard.odeint(f, y0, t, window=window, tol=0, return_stats=True, method="euler")
    torch.testing.assert_close(exact, expected, rtol=1e-12, atol=1e-12)
    assert stats.iterations <= n
    ys = picard.odeint(f, y0, t, window=window, tol=tol, method="euler")
    lip = f.lipschitz()
    bound = tol * (math.prod(1 + abs(float(h)) * lip for h in t.diff()) - 1)
    rms = (ys - expected).square().mean(-1).sqrt()
    assert float(rms.max()) <= bound * (1 + 1e-6) + 1e-12


def lotka_volterra(t, y):
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], dim=-1)


def test_agrees_with_scipy_within_discretisation_error():
    t = torch.linspace(0.0, 5.0, 2001, dtype=torch.float64)
    y0 = torch.tensor([10.0, 5.0], dtype=torch.float64)
    ref = solve_ivp(
        lambda s, y: lotka_volterra(None, torch.from_numpy(y)).numpy(),
        (0.0, 5.0),
        y0.numpy(),
        t_eval=t.numpy(),
        rtol=1e-11,
        atol=1e-11,
        method="DOP853",
    )
    ys, stats = picard.odeint(
        lotka_volterra, y0, t, method="rk4", tol=1e-10, window=200, return_stats=True
    )
    err = float((ys - torch.from_numpy(ref.y.T)).abs().max())
    assert err < 1e-6  # rk4 with h = 2.5e-3: discretisation error ~1e-8 here
    assert stats.iterations < 2000 / 4


@pytest.mark.parametrize("method", sorted(METHODS))
def test_convergence_order(method):
    """Fit the slope of log(error) against log(h) on y' = cos(t) y (y = exp(sin t))."""

    def f(t, y):
        return torch.cos(t)[:, None] * y

    y0 = torch.ones(1, dtype=torch.float64)
    exact = math.exp(math.sin(2.0))
    hs, errs = [], []
    for n in (32, 64, 128, 256):
        t = torch.linspace(0.0, 2.0, n + 1, dtype=torch.float64)
        ys = picard.odeint(f, y0, t, method=method, tol=1e-14)
        hs.append(2.0 / n)
        errs.append(abs(float(ys[-1, 0]) - exact))
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - METHODS[method].order) < 0.25, slope


def test_unbatched_functions_work_through_vmap():
    def f(t, y):  # torchdiffeq style: scalar t
        return -t * y + torch.sin(t)

    t = torch.linspace(0, 2, 30, dtype=torch.float64)
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    expected = torchdiffeq.odeint(f, y0, t, method="midpoint")
    ys = picard.odeint(f, y0, t, method="midpoint", batched=False, tol=0)
    torch.testing.assert_close(ys, expected, rtol=1e-12, atol=1e-12)


def test_unbatchable_function_gets_a_clear_error():
    def f(t, y):
        return y * float(t.item())

    with pytest.raises(TypeError, match="batched=True"):
        picard.odeint(f, torch.ones(2), torch.linspace(0, 1, 5), batched=False, method="euler")


def test_modules_and_multidimensional_states():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    seen = []

    def f(t, y):
        seen.append((tuple(t.shape), tuple(y.shape)))
        return net(y)

    y0 = torch.randn(3, 4)
    ys = picard.odeint(f, y0, torch.linspace(0, 1, 11), window=4, tol=0, method="euler")
    assert ys.shape == (11, 3, 4)
    # batched="auto" probes five rows one at a time, vmapped (vmap shows one row) and
    # together, then solves batched
    assert seen[:7] == [((), (3, 4))] * 6 + [((5,), (5, 3, 4))]
    # with autograd on, one traced row finds what gradients flow to; then the windows
    assert seen[7:9] == [((1,), (1, 3, 4)), ((4,), (4, 3, 4))]
    with torch.no_grad():
        expected = torchdiffeq.odeint(
            lambda t, y: net(y), y0, torch.linspace(0, 1, 11), method="euler"
        )
    torch.testing.assert_close(ys, expected, rtol=1e-5, atol=1e-6)


def test_step_size_puts_output_exactly_on_t():
    f = RandomMLP(dim=2, width=8, seed=3)
    t = torch.tensor([0.0, 0.1, 0.35, 1.0], dtype=torch.float64)
    y0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    ys, stats = picard.odeint(f, y0, t, step_size=0.05, tol=0, return_stats=True, method="euler")
    assert ys.shape == (4, 2)
    assert stats.num_steps == 2 + 5 + 13  # ceil(0.1/0.05), ceil(0.25/0.05), ceil(0.65/0.05)
    d = torch.float64
    fine = torch.cat(
        [
            torch.linspace(0.0, 0.1, 3, dtype=d),
            torch.linspace(0.1, 0.35, 6, dtype=d)[1:],
            torch.linspace(0.35, 1.0, 14, dtype=d)[1:],
        ]
    )
    expected = euler_loop(f, y0, fine)[[0, 2, 7, 20]]
    torch.testing.assert_close(ys, expected, rtol=1e-12, atol=1e-12)


def test_step_size_matches_torchdiffeq_on_an_aligned_grid():
    f = RandomMLP(dim=2, width=8, seed=4)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    y0 = torch.tensor([0.1, 0.2], dtype=torch.float64)
    expected = torchdiffeq.odeint(scalar_t(f), y0, t, method="rk4", options={"step_size": 0.05})
    ys = picard.odeint(f, y0, t, method="rk4", step_size=0.05, tol=0)
    torch.testing.assert_close(ys, expected, rtol=1e-10, atol=1e-10)


def test_half_precision_drift_gets_half_inputs_and_float32_accumulation():
    dtypes = []

    def f(t, y):
        dtypes.append(y.dtype)
        return -y

    y0 = torch.ones(2, dtype=torch.bfloat16)
    ys = picard.odeint(f, y0, torch.linspace(0, 1, 101), tol=0, method="euler")
    assert ys.dtype == torch.bfloat16 and set(dtypes) == {torch.bfloat16}
    assert abs(float(ys[-1, 0]) - 0.99**100) < 1e-2


def test_batch_dims_take_the_worst_sample():
    """99 constant samples and one decaying one. With batch_dims=0 the RMS runs over all
    100 samples, diluting the moving one tenfold; with batch_dims=1 its own RMS counts:
    exactly the same test as batch_dims=0 at a tenth of the tolerance."""
    k = torch.zeros(100, 1, dtype=torch.float64)
    k[-1] = 6.0

    def f(t, y):
        return -k * y

    y0 = torch.ones(100, 1, dtype=torch.float64)
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    per_sample, s1 = picard.odeint(
        f, y0, t, tol=1e-4, window=50, batch_dims=1, return_stats=True, method="euler"
    )
    pooled, s0 = picard.odeint(f, y0, t, tol=1e-5, window=50, return_stats=True, method="euler")
    assert s1.window_starts == s0.window_starts
    torch.testing.assert_close(per_sample, pooled, rtol=0, atol=0)
    _loose, s2 = picard.odeint(f, y0, t, tol=1e-4, window=50, return_stats=True, method="euler")
    assert s2.iterations < s1.iterations
    assert s1.evaluations == 100 * s0.evaluations  # evaluations count samples


def test_return_stats_reports_sweeps_and_stages():
    f = RandomMLP(dim=2, width=8, seed=5)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    _ys, stats = picard.odeint(
        f, torch.zeros(2, dtype=torch.float64), t, method="rk4", window=20, return_stats=True
    )
    assert isinstance(stats, picard.Stats)
    assert stats.stages == 4 and stats.nfe == 4 * stats.evaluations
    assert stats.iterations < 100


class _Field(torch.nn.Module):
    """A torchdiffeq-style drift with parameters: ``func(t, y)`` on the whole batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        ).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_a_repeated_fixed_grid_call_tries_the_sweeps_then_the_steps(method):
    """picard.ode.paths for fixed grids: the first call sweeps, the second steps (the
    sequential result itself, with autograd's gradients, as torchdiffeq), the third runs
    Newton's method on the trajectory (a small state), later calls the fastest; a call
    that sets a sweep's option (window=) always sweeps; under deterministic algorithms
    nothing is learned."""
    from picard.ode.paths import path_choice
    from picard.ode.tableaus import tableau_for

    f, t = _Field(), random_grid(60, seed=4)
    y0 = torch.tensor([[0.3, -0.2, 1.0], [1.0, 0.5, -0.7]], dtype=torch.float64)
    x = y0.clone().requires_grad_(True)
    theirs = torchdiffeq.odeint(f, x, t, method=method)
    theirs.square().sum().backward()
    expected = [x.grad.clone(), *(p.grad.clone() for p in f.parameters())]
    runs, grads = [], []
    for _ in range(4):
        f.zero_grad()
        x = y0.clone().requires_grad_(True)
        ys, stats = picard.odeint(f, x, t, method=method, return_stats=True)
        ys.square().sum().backward()
        runs.append((ys.detach(), stats))
        grads.append([x.grad, *(p.grad for p in f.parameters())])
    assert runs[0][1].sequential_steps == 0  # the sweeps
    assert runs[1][1].sequential_steps == runs[1][1].iterations == 60  # the steps
    assert runs[2][1].acceleration["newton_steps"] > 0  # Newton's method
    choice = path_choice(f, y0, t, tableau_for(method, True), (None, None, False))
    assert set(choice.seconds) == set(choice.backward) == {"sweeps", "steps", "newton"}
    torch.testing.assert_close(runs[1][0], theirs.detach(), rtol=1e-13, atol=1e-13)
    for g, e in zip(grads[1], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    for ys, _ in (runs[0], runs[2], runs[3]):  # the sweeps and Newton at the tolerance
        torch.testing.assert_close(ys, theirs.detach(), rtol=1e-6, atol=1e-8)
    for g, e in zip(grads[2], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-9)
    for _ in range(2):
        _, stats = picard.odeint(f, y0, t, method=method, window=16, return_stats=True)
        assert stats.sequential_steps == 0
    torch.use_deterministic_algorithms(True)
    try:
        g = _Field()  # a new drift: nothing learned, every call the sweeps, bitwise equal
        again = [picard.odeint(g, y0, t, method=method, return_stats=True) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(ys, again[0][0]) and s.sequential_steps == 0 for ys, s in again)


def test_fixed_grid_steps_name_the_first_step_that_overflows():
    """The stepped path raises as the sweeps do, naming the step whose state is Inf."""
    from picard.ode.runge_kutta import ODEProblem

    t = torch.linspace(0, 3, 31)
    with pytest.raises(picard.NonFiniteError, match=r"step 11 \(t = 1.1\)"):
        picard.odeint(lambda t, y: y**3, torch.ones(2), t, method="euler")
    problem = ODEProblem(lambda t, y: y**3, t, "euler", torch.float32)
    with pytest.raises(picard.NonFiniteError, match=r"step 11 \(t = 1.1\): NaN or Inf"):
        problem.step_by_step(torch.ones(2))  # state 12 = 5.4e29 + 0.1 · (5.4e29)³ = Inf


def test_timing_the_backward_pass_leaves_the_call_as_it_was():
    """The learned way's clock marks nothing where no gradient may flow (the output does
    not require grad), and torch.autograd.grad to the parameters alone works on both ways,
    equal to torchdiffeq's."""
    f, t = _Field(), random_grid(30, seed=6)
    y0 = torch.tensor([[0.3, -0.2, 1.0]], dtype=torch.float64)
    params = list(f.parameters())
    expected = torch.autograd.grad(torchdiffeq.odeint(f, y0, t, method="rk4").sum(), params)
    for _ in range(3):  # the sweeps, the steps, the faster
        ys = picard.odeint(f, y0, t, method="rk4")
        for g, e in zip(torch.autograd.grad(ys.sum(), params), expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert not picard.odeint(f, y0, t, method="rk4").requires_grad
    g = lambda t, y: -y  # noqa: E731
    for _ in range(3):
        assert not picard.odeint(g, y0, t, method="rk4").requires_grad


def test_a_fixed_grid_call_without_tolerances_converges_to_torchdiffeqs_rtol_and_atol():
    """No rtol/atol/tol: the sweeps stop at torchdiffeq's defaults (mixed, 1e-7 and 1e-9),
    so a small decaying state keeps its relative precision (at picard's absolute 1e-5 the
    states near t = 7, 9e-4, were 1e-3 off relatively, and an event on them 2.2e-4 late)."""
    from picard.ode.paths import sweeps_only

    t = torch.linspace(0, 7, 701, dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    theirs = torchdiffeq.odeint(lambda t, y: -y, y0, t, method="rk4")
    with sweeps_only():
        ours, stats = picard.odeint(lambda t, y: -y, y0, t, method="rk4", return_stats=True)
    assert stats.sequential_steps == 0 and stats.iterations < 700  # the sweeps
    assert ((ours - theirs).abs() / theirs.abs()).max() < 1e-6


def test_a_stepped_call_with_step_size_returns_the_output_times():
    """step_size= refines the grid between the output times; every way returns the states
    at t alone (the stepped way once returned every state of the grid)."""
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    y0 = torch.ones(2, dtype=torch.float64)
    f = lambda t, y: -y  # noqa: E731  (one drift: its calls learn)
    ways = []
    for _ in range(4):  # the sweeps, the steps, Newton, the sweeps
        ys, stats = picard.odeint(f, y0, t, method="rk4", step_size=0.05, return_stats=True)
        ways.append(stats.sequential_steps > 0)
        assert ys.shape == (5, 2)
        torch.testing.assert_close(ys, torch.exp(-t)[:, None].expand(5, 2), rtol=1e-6, atol=0)
    assert ways[1]  # the steps were among them
