"""picard.ode.scipy_solver: torchdiffeq's method="scipy_solver" (scipy's solve_ivp)."""

import math
import warnings

import pytest
import torch
import torchdiffeq

import picard
from picard.ode.scipy_solver import DEFAULT_SOLVER, SOLVERS, solve_scipy

torch.set_num_threads(1)

F64 = torch.float64
TOL = {"rtol": 1e-7, "atol": 1e-9}


def decay(t, y):
    return -y


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def solve(func, y0, t, options=None, rtol=1e-7, atol=1e-9):
    return solve_scipy(func, y0, t, rtol, atol, options)


def grid(reverse, n=6, dtype=F64):
    t = torch.linspace(0.0, 2.0, n, dtype=dtype)
    return t.flip(0) if reverse else t


def td_scipy(func, y0, t, solver=None, min_step=0.0, max_step=math.inf, **kw):
    """torchdiffeq's scipy_solver (it passes min_step to every method: scipy warns)."""
    assert torchdiffeq.odeint.__module__.startswith("torchdiffeq")  # not picard's drop-in
    options = {"min_step": min_step, "max_step": max_step}
    if solver is not None:
        options["solver"] = solver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchdiffeq.odeint(func, y0, t, method="scipy_solver", options=options, **kw)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_exact_solutions(solver, reverse):
    t = grid(reverse)
    y0 = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], dtype=F64)
    ys, _ = solve(decay, y0, t, options={"solver": solver})
    exact = torch.exp(-(t - t[0]))[:, None, None] * y0  # reversed: grows to e² y0
    assert ys.shape == (len(t), 2, 3) and ys.dtype == F64
    assert torch.equal(ys[0], y0)
    assert ((ys - exact) / exact.abs().clamp_min(1)).abs().max() < 1e-5

    start = torch.tensor([1.0, 0.0], dtype=F64)
    ys, _ = solve(oscillator, start, t, options={"solver": solver})
    s = t - t[0]
    exact = torch.stack([torch.cos(s), -torch.sin(s)], dim=1)
    assert (ys - exact).abs().max() < 1e-5


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_torchdiffeq(solver, reverse):
    t = grid(reverse)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    ys, _ = solve(oscillator, y0, t, options={"solver": solver})
    ref = td_scipy(oscillator, y0, t, solver)
    assert (ys - ref).abs().max() < 1e-6


def test_default_solver_is_torchdiffeqs():
    assert DEFAULT_SOLVER == "LSODA"  # torchdiffeq's ScipyWrapperODESolver default
    t = grid(False)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    ys, _ = solve(oscillator, y0, t, options={})
    assert (ys - td_scipy(oscillator, y0, t)).abs().max() < 1e-12
    none, _ = solve(oscillator, y0, t, options=None)
    assert torch.equal(ys, none)


def test_float32_in_float32_out():
    y0 = torch.tensor([1.0, -0.25, 3.0])
    seen = []

    def func(t, y):
        seen.append((t.dtype, t.shape, y.dtype, y.shape))
        return -y

    t = torch.linspace(0, 1, 4)
    ys, _ = solve(func, y0, t, options={"solver": "RK45"})
    assert ys.dtype == torch.float32 and ys.device == y0.device
    assert torch.equal(ys[0], y0)
    assert (ys[-1] - y0 * math.exp(-1)).abs().max() < 1e-6
    assert set(seen) == {(torch.float32, torch.Size([]), torch.float32, torch.Size([3]))}
    ref = td_scipy(decay, y0, t, "RK45")
    assert (ys - ref).abs().max() < 1e-6


def test_func_called_without_grad_on_a_copy():
    modes = []

    def func(t, y):
        modes.append(torch.is_grad_enabled())
        out = -y.clone()
        y.zero_()  # in place on the state it was given: scipy's own arrays are untouched
        return out

    with torch.no_grad():
        ys, _ = solve(func, torch.ones(2, dtype=F64), grid(False), None)
    assert not any(modes)
    assert abs(float(ys[-1, 0]) - math.exp(-2)) < 1e-6
    modes.clear()
    solve(func, torch.ones(2, dtype=F64), grid(False), None)
    assert modes[0] and not any(modes[1:])  # the first call shows whether grads would flow


def test_stats():
    calls = []

    def func(t, y):
        calls.append(float(t))
        return -y

    for solver in SOLVERS:
        calls.clear()
        _, stats = solve(func, torch.ones(3, dtype=F64), grid(False), {"solver": solver})
        assert isinstance(stats, picard.Stats)
        assert stats.num_steps == stats.sequential_steps > 0
        assert stats.iterations == stats.evaluations == stats.nfe == len(calls)
        assert stats.window == 1 and stats.stages == 1 and stats.tol == TOL["rtol"]
        starts = stats.window_starts
        assert len(starts) == stats.iterations == len(stats.residuals)
        assert list(starts) == sorted(starts) and starts[-1] <= stats.num_steps


def test_more_steps_with_max_step():
    t = grid(False)
    _, free = solve(decay, torch.ones(1, dtype=F64), t, {"solver": "RK45"})
    ys, capped = solve(decay, torch.ones(1, dtype=F64), t, {"max_step": 0.01})
    assert capped.num_steps >= 200 > free.num_steps
    assert abs(float(ys[-1, 0]) - math.exp(-2)) < 1e-6


def test_lsoda_step_bounds_pass_through():
    # torchdiffeq's TestMinMaxStep passes min_step and max_step to LSODA. (scipy 1.17's
    # LSODA takes min_step but does not change its steps, with torchdiffeq too.)
    u = torch.randn(10, 10, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.1
    a = u - u.T  # a rotation, as torchdiffeq's LinearODE

    def func(t, y):
        return a @ y

    y0 = torch.ones(10, dtype=F64)
    t = torch.linspace(1, 8, 10, dtype=F64)
    options = {"solver": "LSODA", "min_step": 2.0, "max_step": 5.0}
    ys, _ = solve(func, y0, t, options)
    assert (ys - td_scipy(func, y0, t, **options)).abs().max() < 1e-12
    _, free = solve(func, y0, t, {"solver": "LSODA"})
    _, capped = solve(func, y0, t, {"solver": "LSODA", "max_step": 0.05})
    assert capped.num_steps >= 140 > free.num_steps
    with pytest.raises(ValueError, match="min_step"):  # scipy's own check, surfaced
        solve(func, y0, t, {"min_step": -1.0})


def test_bad_solver_name():
    with pytest.raises(ValueError, match=r"options\['solver'\].*'RK45'.*'LSODA'.*'rk45'"):
        solve(decay, torch.ones(1), grid(False), {"solver": "rk45"})
    with pytest.raises(ValueError, match=r"options\['solver'\]"):
        solve(decay, torch.ones(1), grid(False), {"solver": None})


@pytest.mark.parametrize("key", ["t_span", "y0", "t_eval", "method", "rtol", "atol", "fun"])
def test_reserved_option_keys(key):
    with pytest.raises(ValueError, match=rf"options\['{key}'\]"):
        solve(decay, torch.ones(1), grid(False), {key: 1})


@pytest.mark.parametrize("key", ["events", "vectorized", "args", "dense_output"])
def test_unsupported_option_keys(key):
    with pytest.raises(ValueError, match=rf"options\['{key}'\] is not supported"):
        solve(decay, torch.ones(1), grid(False), {key: True})


def test_torchdiffeq_generic_options_ignored_with_a_warning():
    t = grid(False)
    y0 = torch.ones(2, dtype=F64)
    plain, _ = solve(decay, y0, t, {})
    with pytest.warns(UserWarning, match="ignores options.*norm"):
        ys, _ = solve(decay, y0, t, {"norm": lambda x: x.abs().max()})
    assert torch.equal(ys, plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(decay, y0, t, {"norm": None})  # None: nothing asked, no warning


@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_everywhere_is_a_clear_error(solver):
    # scipy alone: RK45/RK23/DOP853 loop forever, Radau/BDF fail in an LU check,
    # LSODA "succeeds" with NaN.
    with pytest.raises(picard.NonFiniteError, match="NaN or Inf at the initial time"):
        solve(lambda t, y: y * math.nan, torch.ones(2, dtype=F64), grid(False),
                    {"solver": solver})  # fmt: skip


@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_later_is_a_clear_error(solver):
    def func(t, y):
        return -y if float(t) < 0.5 else y * math.nan

    with pytest.raises(picard.NonFiniteError, match="NaN or Inf") as info:
        solve(func, torch.ones(2, dtype=F64), grid(False), {"solver": solver})
    assert "0.5" in str(info.value)


def test_lsoda_stepping_in_place_is_a_clear_error():
    # LSODA alone, with Inf past t = 0.5, steps in place (and calls func) forever.
    def func(t, y):
        return torch.full_like(y, math.inf) if float(t) > 0.5 else -y

    with pytest.raises(picard.NonFiniteError, match="too small to change t"):
        solve(func, torch.ones(2, dtype=F64), grid(False), {"solver": "LSODA"}, 1e-3, 1e-6)


def test_nan_in_rejected_trials_recovers():
    # A too-large first step evaluates where func is NaN; RK45 rejects it and shrinks.
    def func(t, y):
        return -10 * y if float(y[0]) >= 0 else y * math.nan

    options = {"solver": "RK45", "first_step": 1.0}  # LSODA alone ends with NaN: raises
    ys, _ = solve(func, torch.ones(1, dtype=F64), grid(False), options)
    assert abs(float(ys[-1, 0]) - math.exp(-20)) < 1e-9


def test_scipy_failure_is_a_runtime_error():
    for solver in ("RK45", "LSODA"):  # blow-up at t = 1; LSODA alone steps in place forever
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow in y**2
            with pytest.raises(RuntimeError, match=rf"scipy_solver \({solver}\) failed"):
                solve(lambda t, y: y**2, torch.ones(1, dtype=F64), grid(False, 3),
                            {"solver": solver})  # fmt: skip


def test_gradient_requests_warn_and_detach():
    t = grid(False)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.warns(UserWarning, match="scipy_solver gives no gradients"):
        ys, _ = solve(decay, y0, t, {})
    assert not ys.requires_grad
    with pytest.warns(UserWarning, match="scipy_solver gives no gradients"):
        solve(decay, y0.detach(), t.clone().requires_grad_(), {})

    scale = torch.nn.Parameter(torch.tensor(-1.0, dtype=F64))
    with pytest.warns(UserWarning, match="scipy_solver gives no gradients"):
        ys, _ = solve(lambda t, y: scale * y, y0.detach(), t, {})
    assert not ys.requires_grad

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            solve(lambda t, y: scale * y, y0, t, {})
        unused = torch.nn.Linear(2, 2)  # parameters that func does not use: no warning
        solve(lambda t, y, m=unused: -y, y0.detach(), t, {})


def test_torchdiffeq_detaches_too():
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    assert not td_scipy(decay, y0, grid(False)).requires_grad


@pytest.mark.parametrize("solver", ["RK45", "RK23", "DOP853", "BDF"])
def test_complex_state(solver):
    t = grid(False)
    y0 = torch.tensor([1.0 + 0.5j, -2.0j], dtype=torch.complex128)
    times = []

    def func(t, y):
        times.append(t.dtype)
        return -1j * y

    ys, _ = solve(func, y0, t, {"solver": solver})
    assert ys.dtype == torch.complex128 and torch.equal(ys[0], y0)
    assert set(times) == {torch.float64}
    exact = torch.exp(-1j * t)[:, None] * y0
    assert (ys - exact).abs().max() < 1e-5
    ref = td_scipy(lambda t, y: -1j * y, y0, t, solver)
    assert (ys - ref).abs().max() < 1e-6

    y32 = y0.to(torch.complex64)
    ys, _ = solve(func, y32, t.float(), {"solver": solver})
    assert ys.dtype == torch.complex64 and torch.equal(ys[0], y32)


@pytest.mark.parametrize("solver", ["Radau", "LSODA"])
def test_complex_state_refused_where_scipy_cannot(solver):
    y0 = torch.ones(2, dtype=torch.complex128)
    with pytest.raises(TypeError, match=rf"y0 is complex.*{solver}"):
        solve(decay, y0, grid(False), {"solver": solver})


def test_bad_inputs():
    with pytest.raises(TypeError, match="y0"):
        solve(decay, torch.ones(2, dtype=torch.int64), grid(False), {})
    with pytest.raises(ValueError, match="strictly"):
        solve(decay, torch.ones(2), torch.tensor([0.0, 1.0, 0.5]), {})
    with pytest.raises(ValueError, match="func returned shape"):
        solve(lambda t, y: y[:1], torch.ones(2), grid(False), {})


def test_one_time_point():
    y0 = torch.ones(2, 3)
    ys, stats = solve(decay, y0, torch.zeros(1), {})
    assert ys.shape == (1, 2, 3) and torch.equal(ys[0], y0)
    assert stats.num_steps == stats.evaluations == 0
