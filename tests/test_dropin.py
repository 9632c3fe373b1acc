"""torchdiffeq's and torchsde's calls, unchanged, give their answers.

The funcs are written as torchdiffeq users write them — for one time and one state — and
many of them give another answer when called on a batch of rows (a norm over the state,
an index, ``t`` concatenated as a feature, a batch statistic). ``batched="auto"`` (the
default) must find that out and still give torchdiffeq's answer.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq
from hypothesis import assume, given
from hypothesis import strategies as st

import picard
from picard.ode.batching import batched_form

F64 = torch.float64


class TimeFeature(torch.nn.Module):
    """A field that concatenates a scalar ``t`` as a feature (torchdiffeq's examples)."""

    def __init__(self, dim: int, dtype):
        super().__init__()
        torch.manual_seed(1)
        self.lin = torch.nn.Linear(dim + 1, dim).to(dtype)

    def forward(self, t, y):
        return torch.tanh(self.lin(torch.cat([y, t.expand(*y.shape[:-1], 1)], -1)))


class BatchStatistic(torch.nn.Module):
    """A BatchNorm in training mode: statistics over the leading dimension of ``y``."""

    def __init__(self, dim: int, dtype):
        super().__init__()
        torch.manual_seed(2)
        self.lin = torch.nn.Linear(dim, dim).to(dtype)
        self.norm = torch.nn.BatchNorm1d(dim, track_running_stats=False).to(dtype)

    def forward(self, t, y):
        return -0.5 * self.norm(torch.tanh(self.lin(y)))


def branchy(t, y):
    """Python control flow on a value: vmap cannot run it."""
    return -y if float(y.sum()) > 0 else 0.5 * y


FUNCS = {
    "norm": lambda d, dt: lambda t, y: -y / y.norm(),
    "sum": lambda d, dt: lambda t, y: -0.1 * y * y.sum(),
    "index": lambda d, dt: lambda t, y: -y * y[..., :1].mean() + torch.sin(t),
    "first-row": lambda d, dt: lambda t, y: -y + 0.3 * y[0],
    "t-feature": TimeFeature,
    "batchnorm": BatchStatistic,
    "branch": lambda d, dt: branchy,
    "plain": lambda d, dt: lambda t, y: torch.cos(t) * y - y**3,
}


@given(
    st.sampled_from(sorted(FUNCS)),
    st.sampled_from(["euler", "midpoint", "rk4"]),
    st.integers(3, 40),
    st.sampled_from([(3,), (2, 3), (4, 2)]),
    st.sampled_from([F64, torch.float32]),
    st.integers(0, 1000),
)
def test_torchdiffeqs_funcs_give_torchdiffeqs_answer(name, method, n, shape, dtype, seed):
    assume(name != "batchnorm" or len(shape) == 2)  # BatchNorm1d needs (batch, features)
    func = FUNCS[name](shape[-1], dtype)
    gen = torch.Generator().manual_seed(seed)
    y0 = torch.randn(shape, generator=gen, dtype=dtype) * 0.5 + 0.2
    t = torch.linspace(0, 1, n, dtype=dtype)
    with torch.no_grad():
        expected = torchdiffeq.odeint(func, y0, t, method=method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", picard.PerformanceWarning)
            got = picard.odeint(func, y0, t, method=method, tol=0)
    bound = 1e-10 if dtype == F64 else 1e-5
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= bound * scale


def test_what_auto_chooses_and_the_warning_when_rows_run_one_at_a_time():
    y0, t = torch.randn(2, 3), torch.linspace(0, 1, 5)
    batched = lambda t, y: -y * t.reshape(-1, *([1] * (y.ndim - 1)))  # noqa: E731
    assert batched_form(batched, "func", "auto", t, y0) is batched  # written for rows
    plain = lambda t, y: -y  # noqa: E731
    assert batched_form(plain, "func", "auto", t, y0) is plain  # same either way
    norm = batched_form(lambda t, y: -y / y.norm(), "func", "auto", t, y0)
    rows = torch.randn(4, 2, 3)
    expected = torch.stack([-r / r.norm() for r in rows])
    torch.testing.assert_close(norm(t[:4], rows), expected)  # vmapped
    with pytest.warns(picard.PerformanceWarning, match="one at a time"):
        one_by_one = batched_form(branchy, "func", "auto", t, y0)
    torch.testing.assert_close(one_by_one(t[:4], rows), torch.stack([branchy(0, r) for r in rows]))
    with pytest.raises(ValueError, match="batched must be True, False or 'auto'"):
        batched_form(plain, "func", "yes", t, y0)


def test_batched_true_is_the_fast_path_without_a_probe():
    calls = []

    def func(t, y):
        calls.append(tuple(y.shape))
        return -y

    with torch.no_grad():
        picard.odeint(
            func, torch.ones(3), torch.linspace(0, 1, 9), batched=True, window=8, method="euler"
        )
    assert calls[0] == (8, 3) and all(len(shape) == 2 for shape in calls)  # no probes


def test_torchdiffeqs_keywords():
    func = lambda t, y: torch.sin(t) - y**3  # noqa: E731
    y0 = torch.tensor([0.5, -1.0], dtype=F64)
    t = torch.tensor([0.0, 0.33, 1.0], dtype=F64)
    with torch.no_grad():
        for method, h in (("euler", 0.01), ("rk4", 0.1), ("midpoint", 0.07)):
            opts = {"step_size": h}
            expected = torchdiffeq.odeint(func, y0, t, method=method, options=opts)
            got = picard.odeint(func, y0, t, method=method, options=opts, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)

        def grid(func, y0, t):
            return torch.linspace(float(t[0]), float(t[-1]), 31, dtype=t.dtype)

        opts = {"grid_constructor": grid}
        expected = torchdiffeq.odeint(func, y0, t, method="heun3", options=opts)
        got = picard.odeint(func, y0, t, method="heun3", options=opts, tol=0)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        # an adaptive method at fixed steps landing on t is close to torchdiffeq's adaptive
        # answer (options={"step_size": h} would interpolate linearly between grid points)
        adaptive = torchdiffeq.odeint(func, y0, t, method="dopri5", rtol=1e-12, atol=1e-12)
        fixed = picard.odeint(func, y0, t, method="dopri5", step_size=0.05, tol=0)
        torch.testing.assert_close(fixed, adaptive, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(method="dopri5", tol=1e-6), ValueError, "controls its steps by rtol/atol.*not tol"),
        (dict(method="adams"), ValueError, "method must be one of"),
        (dict(method="implicit_adams", options={"max_order": 13}), ValueError, "max_order"),
        (dict(method="scipy_solver", options={"solver": "RK4"}), ValueError, "solver"),
        (dict(options={"step_size": 0.1, "first_step": 0.1}), ValueError, "first_step.*adaptive"),
        (dict(options={"step_size": 0.1, "solver": 1}), ValueError, "unknown key 'solver"),
        (dict(options={"perturb": True}, method="dopri5"), ValueError, "perturb.*fixed-grid"),
        (dict(options={"interp": "quadratic"}), ValueError, "interp"),
        (dict(options={"step_size": 0.1}, step_size=0.1), ValueError, "give one of"),
        (dict(event_fn=lambda t, y: y.sum()), ValueError, "event_fn.*step_size"),
        (dict(rtol=-1.0), ValueError, "rtol"),
        (dict(rtol=1e-6, tol=1e-6), ValueError, "rtol/atol, not both"),
        (dict(batched="maybe"), ValueError, "batched must be"),
    ],
)
def test_what_picard_cannot_take_is_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        picard.odeint(
            lambda t, y: -y,
            torch.ones(2),
            torch.linspace(0, 1, 5),
            **({"method": "euler"} | kwargs),
        )


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_rtol_atol_is_the_mixed_test(dtype):
    """rtol/atol: every state's weighted RMS change is at most 1 at the end; on this field
    the trajectory is then within the weighted tolerance of the sequential one (measured:
    at most 0.31), and float32 converges at torchdiffeq's default rtol (floored)."""
    field = lambda t, y: torch.sin(3 * t) * y - 0.5 * y**3  # noqa: E731
    y0 = torch.linspace(-1, 1, 6, dtype=dtype)
    t = torch.linspace(0, 4, 401, dtype=dtype)
    with torch.no_grad():
        exact = torchdiffeq.odeint(field, y0, t, method="rk4")
        for rtol, atol in ((1e-3, 1e-6), (1e-5, 1e-8), (None, 1e-9), (1e-7, None)):
            ys, stats = picard.odeint(
                field, y0, t, method="rk4", rtol=rtol, atol=atol, return_stats=True, window=64
            )
            r = max(1e-7 if rtol is None else rtol, 16 * torch.finfo(dtype).eps)
            a = 1e-9 if atol is None else atol
            err = ((ys - exact).abs() / (a + r * exact.abs())).max()
            assert float(err) <= 1
            assert stats.iterations < 400


class SDE(torch.nn.Module):
    """torchsde's interface: ``f``, ``g``, ``noise_type``, ``sde_type``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        ).double()

    def f(self, t, y):
        return self.net(y) * torch.sin(t)

    def g(self, t, y):
        return 0.2 * torch.sigmoid(y)


def test_torchsdes_call_gives_torchsdes_path_and_gradients():
    torchsde = pytest.importorskip("torchsde")
    sde = SDE()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.3, 0.75, 1.0], dtype=F64)
    bm = torchsde.BrownianInterval(
        t0=0.0, t1=1.0, size=(4, 3), dtype=F64, levy_area_approximation="none", entropy=3
    )
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=0.01)
    got = picard.sdeint(sde, y0, ts, bm=bm, method="euler", dt=0.01, tol=0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    inputs = [y0, *sde.parameters()]
    w = torch.randn(4, 4, 3, dtype=F64)
    ge = torch.autograd.grad((w * expected).sum(), inputs)
    gg = torch.autograd.grad((w * got).sum(), inputs)
    for a, b in zip(gg, ge, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_torchsdes_call_without_torchsde():
    """``bm`` is any ``bm(ta, tb)``; ``bm=None`` draws increments (torchsde's default)."""
    sde = SDE()
    y0 = torch.randn(2, 3, dtype=F64)
    ts = torch.tensor([0.0, 0.5], dtype=F64)
    draws = []

    def bm(ta, tb):
        draws.append(float(tb - ta))
        return torch.full((2, 3), 0.01, dtype=F64)

    with torch.no_grad():
        got = picard.sdeint(sde, y0, ts, bm=bm, method="euler", dt=0.1, tol=0)
        y = y0.clone()
        for i in range(5):
            t = torch.tensor(0.1 * i, dtype=F64)
            y = y + sde.f(t, y) * 0.1 + sde.g(t, y) * 0.01
        torch.testing.assert_close(got[-1], y, rtol=1e-12, atol=1e-12)
        assert got.shape == (2, 2, 3) and len(draws) == 5
        assert picard.sdeint(sde, y0, ts, dt=0.1).shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(noise_type="general"), ValueError, r"diffusion must be of shape \(batch, d, m\)"),
        (dict(noise_type="colored"), ValueError, "noise_type must be one of"),
        (dict(sde_type="stratonovich"), ValueError, "'euler' solves ito SDEs"),
    ],
)
def test_torchsde_objects_picard_cannot_solve_are_named(change, error, match):
    sde = SDE()
    for k, v in change.items():
        setattr(sde, k, v)
    with pytest.raises(error, match=match):
        picard.sdeint(
            sde, torch.ones(1, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="euler"
        )


def test_torchsde_methods_and_arguments_picard_does_not_take():
    sde = SDE()
    y0, ts = torch.ones(1, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="'log_ode' solves stratonovich SDEs"):
        picard.sdeint(sde, y0, ts, method="log_ode")
    with pytest.raises(ValueError, match="method must be one of"):
        picard.sdeint(sde, y0, ts, method="rk4")
    with pytest.raises(ValueError, match="method must be 'euler'"):
        picard.sdeint(sde.f, sde.g, y0, ts, method="milstein")  # picard's own call
    with pytest.raises(ValueError, match="takes bm, not dW"):
        picard.sdeint(sde, y0, ts, dW=torch.zeros(1000, 1, 3, dtype=F64))
    with pytest.raises(TypeError, match="bm and dt belong to torchsde's call"):
        picard.sdeint(sde.f, sde.g, y0, ts, dt=0.1)
