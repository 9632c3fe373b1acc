"""Bad input: every case raises ValueError/TypeError/NonFiniteError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import picard

T = torch.linspace(0, 1, 11)
Y0 = torch.ones(2)


def ok(t, y):
    return -y


def rule(n=5, **kw):
    return picard.Recursion(lambda i, x: -0.1 * x, n, **kw)


class Returns(picard.Problem):
    """A problem whose increments return a fixed value (for malformed-return cases)."""

    num_steps = 3

    def __init__(self, value):
        self.value = value

    def increments(self, x, start, state, history):
        return self.value(x), None


class Forgetful(picard.Problem):
    """A multistep problem that forgets to return its outputs."""

    num_steps = 3
    memory = 1

    def increments(self, x, start, state, history):
        return -x, None


CASES = [
    # solve
    (
        "solve-problem",
        lambda: picard.solve("nope", Y0),
        TypeError,
        "problem must be a picard.Problem",
    ),
    ("solve-x0-type", lambda: picard.solve(rule(), [1.0]), TypeError, "x0 must be a torch.Tensor"),
    (
        "solve-x0-int",
        lambda: picard.solve(rule(), torch.ones(2, dtype=torch.int64)),
        TypeError,
        "x0 must have a real floating dtype",
    ),
    (
        "solve-x0-complex",
        lambda: picard.solve(rule(), torch.ones(2, dtype=torch.complex64)),
        TypeError,
        "x0 must have a real floating dtype",
    ),
    (
        "solve-x0-empty",
        lambda: picard.solve(rule(), torch.ones(0)),
        ValueError,
        "x0 must not be empty",
    ),
    (
        "solve-x0-nan",
        lambda: picard.solve(rule(), torch.tensor([1.0, float("nan")])),
        ValueError,
        "x0 contains NaN or Inf",
    ),
    (
        "solve-x0-inf",
        lambda: picard.solve(rule(), torch.tensor([float("inf")])),
        ValueError,
        "x0 contains NaN or Inf",
    ),
    (
        "solve-window-0",
        lambda: picard.solve(rule(), Y0, window=0),
        ValueError,
        "window must be >= 1",
    ),
    (
        "solve-window-neg",
        lambda: picard.solve(rule(), Y0, window=-3),
        ValueError,
        "window must be >= 1",
    ),
    (
        "solve-window-float",
        lambda: picard.solve(rule(), Y0, window=2.5),
        TypeError,
        "window must be an int or None",
    ),
    (
        "solve-window-bool",
        lambda: picard.solve(rule(), Y0, window=True),
        TypeError,
        "window must be an int or None",
    ),
    (
        "solve-tol-neg",
        lambda: picard.solve(rule(), Y0, tol=-1e-3),
        ValueError,
        "tol must be a finite number >= 0",
    ),
    (
        "solve-tol-nan",
        lambda: picard.solve(rule(), Y0, tol=float("nan")),
        ValueError,
        "tol must be a finite number >= 0",
    ),
    (
        "solve-tol-str",
        lambda: picard.solve(rule(), Y0, tol="0.1"),
        TypeError,
        "tol must be a real number",
    ),
    (
        "solve-max-iters-0",
        lambda: picard.solve(rule(), Y0, max_iters=0),
        ValueError,
        "max_iters must be >= 1",
    ),
    (
        "solve-save-order",
        lambda: picard.solve(rule(), Y0, save=[3, 1]),
        ValueError,
        "save must hold increasing state indices in \\[0, 5\\]",
    ),
    (
        "solve-save-range",
        lambda: picard.solve(rule(), Y0, save=[0, 6]),
        ValueError,
        "save must hold increasing state indices",
    ),
    (
        "solve-save-empty",
        lambda: picard.solve(rule(), Y0, save=[]),
        ValueError,
        "save must hold increasing state indices",
    ),
    (
        "solve-save-type",
        lambda: picard.solve(rule(), Y0, save=3.5),
        TypeError,
        "save must be a bool or a sequence",
    ),
    ("solve-unknown-kw", lambda: picard.solve(rule(), Y0, windows=3), TypeError, "windows"),
    (
        "solve-increments-shape",
        lambda: picard.solve(Returns(lambda x: x[:1]), Y0),
        ValueError,
        "problem.increments returned \\(1, 2\\)",
    ),
    (
        "solve-increments-dtype",
        lambda: picard.solve(Returns(lambda x: x.double()), Y0),
        ValueError,
        "problem.increments returned .*float64.*expected",
    ),
    (
        "solve-increments-tuple",
        lambda: picard.solve(Returns(lambda x: (x,)), Y0),
        TypeError,
        "problem.increments must return a Tensor",
    ),
    (
        "solve-batch-ndim",
        lambda: picard.solve(rule(batch_dims=3), Y0),
        ValueError,
        "batch_ndim=3 exceeds x0.ndim=1",
    ),
    (
        "solve-scale-shape",
        lambda: picard.solve(rule(scale=[1.0, 2.0]), Y0),
        ValueError,
        "problem.scale\\(\\) must have shape \\(5,\\)",
    ),
    (
        "solve-scale-negative",
        lambda: picard.solve(rule(scale=-np.ones(5)), Y0),
        ValueError,
        "problem.scale\\(\\) must be finite and >= 0",
    ),
    (
        "solve-memory-without-outputs",
        lambda: picard.solve(Forgetful(), Y0),
        TypeError,
        "memory=1 must return its outputs as a Tensor",
    ),
    # Recursion
    ("recursion-fn", lambda: picard.Recursion(3, 5), TypeError, "fn must be callable"),
    ("recursion-steps", lambda: picard.Recursion(ok, 0), ValueError, "num_steps must be >= 1"),
    (
        "recursion-returns-tuple",
        lambda: picard.solve(picard.Recursion(lambda i, x: (x, x), 3), Y0),
        TypeError,
        "fn must return a torch.Tensor, got tuple",
    ),
    (
        "recursion-returns-shape",
        lambda: picard.solve(picard.Recursion(lambda i, x: x.sum(-1), 3), Y0),
        ValueError,
        "fn returned shape \\(\\d+,\\) for a batch of shape \\(\\d+, 2\\)",
    ),
    # odeint
    (
        "odeint-func",
        lambda: picard.odeint("f", Y0, T, method="euler"),
        TypeError,
        "func must be callable",
    ),
    (
        "odeint-y0-tuple",
        lambda: picard.odeint(ok, (Y0, "a"), T, method="euler"),
        TypeError,
        r"y0\[1\] must be a floating torch.Tensor",
    ),
    (
        "odeint-y0-int",
        lambda: picard.odeint(ok, torch.ones(2, dtype=torch.int32), T, method="euler"),
        TypeError,
        "y0 must have a real floating dtype",
    ),
    (
        "odeint-y0-nan",
        lambda: picard.odeint(ok, torch.tensor([float("nan")]), T, method="euler"),
        ValueError,
        "y0 contains NaN or Inf",
    ),
    (
        "odeint-t-list",
        lambda: picard.odeint(ok, Y0, [0.0, 1.0], method="euler"),
        TypeError,
        "t must be a torch.Tensor",
    ),
    (
        "odeint-t-int",
        lambda: picard.odeint(ok, Y0, torch.arange(5), method="euler"),
        TypeError,
        "t must have a real floating dtype",
    ),
    (
        "odeint-t-2d",
        lambda: picard.odeint(ok, Y0, torch.zeros(3, 2), method="euler"),
        ValueError,
        "t must be one-dimensional",
    ),
    (
        "odeint-t-empty",
        lambda: picard.odeint(ok, Y0, torch.zeros(0), method="euler"),
        ValueError,
        "t must hold at least one time point, got 0",
    ),
    (
        "odeint-t-repeated",
        lambda: picard.odeint(ok, Y0, torch.tensor([0.0, 0.5, 0.5, 1.0]), method="euler"),
        ValueError,
        "strictly increasing or strictly decreasing; t\\[1\\] = 0.5 and t\\[2\\] = 0.5",
    ),
    (
        "odeint-t-nonmonotone",
        lambda: picard.odeint(ok, Y0, torch.tensor([0.0, 0.6, 0.4]), method="euler"),
        ValueError,
        "t\\[1\\] = 0.6 and t\\[2\\] = 0.4",
    ),
    (
        "odeint-t-nonmonotone-decreasing",
        lambda: picard.odeint(ok, Y0, torch.tensor([1.0, 0.4, 0.6]), method="euler"),
        ValueError,
        "t\\[1\\] = 0.4 and t\\[2\\] = 0.6",
    ),
    (
        "odeint-t-nan",
        lambda: picard.odeint(ok, Y0, torch.tensor([0.0, float("nan")]), method="euler"),
        ValueError,
        "t contains NaN or Inf",
    ),
    (
        "odeint-t-device",
        lambda: picard.odeint(ok, Y0, torch.zeros(3, device="meta"), method="euler"),
        ValueError,
        "t is on meta but y0 is on cpu",
    ),
    (
        "odeint-method",
        lambda: picard.odeint(ok, Y0, T, method="rk45"),
        ValueError,
        "method must be one of .*'euler'.*got 'rk45'",
    ),
    (
        "odeint-adaptive-tol",
        lambda: picard.odeint(ok, Y0, T, tol=1e-6),
        ValueError,
        r"method='dopri5' controls its steps by rtol/atol: give those, not tol",
    ),
    (
        "odeint-method-type",
        lambda: picard.odeint(ok, Y0, T, method=4),
        TypeError,
        "method must be a str",
    ),
    (
        "odeint-step-size",
        lambda: picard.odeint(ok, Y0, T, step_size=0, method="euler"),
        ValueError,
        "step_size must be a finite number > 0",
    ),
    (
        "odeint-batched",
        lambda: picard.odeint(ok, Y0, T, batched="yes", method="euler"),
        ValueError,
        "batched must be True, False or 'auto'",
    ),
    (
        "odeint-batch-dims",
        lambda: picard.odeint(ok, Y0, T, batch_dims=2, method="euler"),
        ValueError,
        "batch_dims=2 exceeds",
    ),
    (
        "odeint-rtol",
        lambda: picard.odeint(ok, Y0, T, rtol="tight", method="euler"),
        TypeError,
        "rtol",
    ),
    (
        "odeint-rtol-and-tol",
        lambda: picard.odeint(ok, Y0, T, rtol=1e-3, tol=1e-4, method="euler"),
        ValueError,
        "tol .* or rtol/atol, not both",
    ),
    (
        "odeint-options-key",
        lambda: picard.odeint(ok, Y0, T, options={"stepsize": 0.1}, method="euler"),
        ValueError,
        "options has unknown key 'stepsize'",
    ),
    (
        "odeint-perturb",
        lambda: picard.odeint(ok, Y0, T, options={"perturb": True}),
        ValueError,
        r"options\['perturb'\] applies to fixed-grid methods",
    ),
    (
        "odeint-event",
        lambda: picard.odeint(ok, Y0, T, event_fn=ok, method="euler"),
        ValueError,
        r"event_fn with the fixed-grid method 'euler' needs options\['step_size'\]",
    ),
    (
        "odeint-window",
        lambda: picard.odeint(ok, Y0, T, window=0, method="euler"),
        ValueError,
        "window must be >= 1",
    ),
    (
        "odeint-drift-shape",
        lambda: picard.odeint(lambda t, y: y[..., :1], Y0, T, method="euler"),
        ValueError,
        "func returned shape \\(\\d+, 1\\) for a batch of shape \\(\\d+, 2\\)",
    ),
    (
        "odeint-drift-tuple",
        lambda: picard.odeint(lambda t, y: (y,), Y0, T, method="euler"),
        TypeError,
        "func must return a torch.Tensor, got tuple",
    ),
    (
        "odeint-drift-int",
        lambda: picard.odeint(lambda t, y: y.long(), Y0, T, method="euler"),
        TypeError,
        "func returned dtype torch.int64",
    ),
    (
        "odeint-drift-device",
        lambda: picard.odeint(lambda t, y: y.to("meta"), Y0, T, method="euler"),
        ValueError,
        "func returned a tensor on meta",
    ),
    # sdeint
    ("sdeint-g", lambda: picard.sdeint(ok, None, Y0, T), TypeError, "g must be callable"),
    (
        "sdeint-dW-shape",
        lambda: picard.sdeint(ok, ok, Y0, T, dW=torch.zeros(9, 2)),
        ValueError,
        "dW must have shape \\(len\\(t\\) - 1, \\*y0.shape\\) = \\(10, 2\\), got \\(9, 2\\)",
    ),
    (
        "sdeint-dW-dtype",
        lambda: picard.sdeint(ok, ok, Y0, T, dW=torch.zeros(10, 2, dtype=torch.float64)),
        TypeError,
        "dW has dtype torch.float64 but y0 has torch.float32",
    ),
    (
        "sdeint-dW-nan",
        lambda: picard.sdeint(ok, ok, Y0, T, dW=torch.full((10, 2), float("nan"))),
        ValueError,
        "dW contains NaN or Inf",
    ),
    (
        "sdeint-dW-type",
        lambda: picard.sdeint(ok, ok, Y0, T, dW=np.zeros((10, 2))),
        TypeError,
        "dW must be a torch.Tensor",
    ),
    (
        "sdeint-dW-device",
        lambda: picard.sdeint(ok, ok, Y0, T, dW=torch.zeros(10, 2, device="meta")),
        ValueError,
        "dW is on meta but y0 is on cpu",
    ),
    (
        "sdeint-generator-type",
        lambda: picard.sdeint(ok, ok, Y0, T, generator=0),
        TypeError,
        "generator must be a torch.Generator",
    ),
    (
        "sdeint-g-shape",
        lambda: picard.sdeint(ok, lambda t, y: y[:, :1], Y0, T),
        ValueError,
        "g returned shape",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_drift_returning_nan_names_step_time_and_sweep():
    def f(t, y):
        return torch.where((t > 0.55)[:, None], torch.full_like(y, float("nan")), -y)

    with pytest.raises(picard.NonFiniteError, match=r"step 6 \(t = 0.6\).* in sweep 1") as info:
        picard.odeint(f, Y0, T, method="euler", on_nonfinite="raise")
    assert info.value.step == 6


def test_drift_returning_nan_fails_where_the_sequential_solver_does():
    def f(t, y):
        return torch.where((t > 0.55)[:, None], torch.full_like(y, float("nan")), -y)

    # by default a fixed-grid odeint finishes diverging sweeps sequentially: the NaN is
    # the function's own, so the sequential steps meet it at the same step
    with pytest.raises(picard.NonFiniteError, match=r"step 6 \(t = 0.6\).*sequentially"):
        picard.odeint(f, Y0, T, method="euler")


def test_sde_diffusion_returning_inf():
    def g(t, y):
        return torch.where((t > 0.25)[:, None], torch.full_like(y, float("inf")), y)

    with pytest.raises(picard.NonFiniteError, match=r"step 3 \(t = 0.3\)"):
        picard.sdeint(ok, g, Y0, T, generator=torch.Generator().manual_seed(0))


@given(
    window=st.one_of(st.none(), st.integers(-3, 15), st.floats(-1, 5), st.text(max_size=2)),
    tol=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.none()),
    max_iters=st.one_of(st.none(), st.integers(-2, 12), st.floats(0, 3)),
)
def test_fuzzed_options_either_work_or_raise_a_named_error(window, tol, max_iters):
    """Any combination of options: a result, or ValueError/TypeError naming one of them."""
    try:
        ys = picard.odeint(ok, Y0, T, window=window, tol=tol, max_iters=max_iters, method="euler")
    except picard.ConvergenceError as err:
        assert "max_iters" in str(err)
    except (ValueError, TypeError) as err:
        assert any(name in str(err) for name in ("window", "tol", "max_iters")), str(err)
    else:
        assert ys.shape == (11, 2) and bool(torch.isfinite(ys).all())
