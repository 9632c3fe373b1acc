"""Sweep strategies (issue 5): secant acceleration, predicted and warm-started guesses,
row budgets. Each keeps the guarantees: at most N sweeps, tol = 0 exact, the error bound."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusion_helpers import gaussian_denoiser
from hypothesis import given
from hypothesis import strategies as st
from test_solver import linear_rule, problems, sequential_loop

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules

options = st.fixed_dictionaries(
    {
        "accelerate": st.sampled_from([None, "secant"]),
        "predict": st.booleans(),
        "max_rows": st.one_of(st.none(), st.integers(1, 80)),
    }
)


def windows(stats):
    return [len(c) for c in stats.changes]


@given(problems, st.integers(1, 70), options, st.integers(1, 3))
def test_every_option_is_exact_at_tol_zero(problem, window, opts, batch):
    n, dim, seed, gain = problem
    fn, _ = linear_rule(n, dim, seed, gain)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    rule = picard.Recursion(fn, n, batch_dims=1)
    sol = picard.solve(rule, x0, window=window, tol=0, save=True, **opts)
    torch.testing.assert_close(sol.ys, sequential_loop(fn, x0, n), rtol=1e-12, atol=1e-12)
    assert sol.stats.iterations <= n
    assert sol.stats.evaluations == batch * sum(windows(sol.stats))
    cap = window if opts["max_rows"] is None else max(1, min(window, opts["max_rows"] // batch))
    assert max(windows(sol.stats)) <= cap


@given(problems, st.integers(1, 70), st.floats(1e-8, 1e-2), options, st.integers(1, 3))
def test_every_option_keeps_the_error_bound(problem, window, tol, opts, batch):
    """Finalized states are built from increments evaluated within tol of them, whatever
    the iterates were: the bound tol * (prod(1 + L_i) - 1) of plain Picard holds."""
    n, dim, seed, gain = problem
    fn, lips = linear_rule(n, dim, seed, gain)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    sol = picard.solve(picard.Recursion(fn, n, batch_dims=1), x0, window=window, tol=tol, **opts)
    rms = (sol.final - sequential_loop(fn, x0, n)[-1]).square().mean(-1).sqrt()
    bound = tol * (math.prod(1 + lip for lip in lips) - 1)
    assert float(rms.max()) <= bound * (1 + 1e-6) + 1e-12
    assert sol.stats.iterations <= n


@given(problems, st.integers(1, 70), st.floats(1e-8, 1e-2), st.integers(1, 3))
def test_secant_error_bound_is_a_tenth_of_plain_picards(problem, window, tol, batch):
    """The secant's states become final at a tenth of tol (its iterates converge about
    linearly, so one change between sweeps leaves a larger error than plain Picard's): its
    final error obeys a tenth of plain Picard's bound tol * (prod(1 + L_i) - 1). (It is not
    always below plain Picard's actual error: plain Picard often lands far inside its bound.)"""
    n, dim, seed, gain = problem
    fn, lips = linear_rule(n, dim, seed, gain)
    x0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rule = picard.Recursion(fn, n, batch_dims=1)
    sol = picard.solve(rule, x0, window=window, tol=tol, accelerate=picard.Secant())
    rms = (sol.final - sequential_loop(fn, x0, n)[-1]).square().mean(-1).sqrt()
    bound = 0.1 * tol * (math.prod(1 + lip for lip in lips) - 1)
    assert float(rms.max()) <= bound * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize(("tighten", "error"), [(1.0, 4e-4), (0.1, 3e-5)])
def test_secant_tightened_test_keeps_its_error_below_plain_picards_on_ddpm(tighten, error):
    """DDPM-1000 with the whole grid (the Gaussian-data denoiser), tol 0.001: tested at tol
    the secant ends 6x further from the sequential sample than plain Picard (2.9e-4 vs
    4.9e-5 here, 10 vs 30 sweeps); at a tenth of tol, 0.4x (1.9e-5, 11 sweeps)."""
    sched, n = DDPMScheduler(), 1000
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def solve(**kw):
        gen = torch.Generator().manual_seed(1)
        problem = from_scheduler(sched, gaussian_denoiser(sched), n, generator=gen)
        return picard.solve(problem, x, **{"window": n, "tol": 0.001, **kw})

    exact = solve(window=1, tol=0).final

    def err(sol):
        return float((sol.final - exact).norm() / exact.norm())

    plain, fast = solve(accelerate=None), solve(accelerate=picard.Secant(tighten=tighten))
    assert fast.stats.iterations <= plain.stats.iterations // 2
    assert (err(fast) <= err(plain)) == (tighten < 1) and err(fast) <= error
    # min_window counts a window cut short by the grid's end as the long one it continues
    late = solve(accelerate=picard.Secant(tighten=tighten, min_window=128))
    assert torch.equal(late.final, fast.final)


@given(problems, st.integers(1, 70), st.floats(0, 1e-4), st.floats(0, 1.0))
def test_warm_start_is_exact_and_a_good_one_is_fast(problem, window, tol, noise):
    n, dim, seed, gain = problem
    fn, lips = linear_rule(n, dim, seed, gain)
    x0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = sequential_loop(fn, x0, n)
    init = exact + noise * torch.randn(exact.shape, dtype=torch.float64)
    sol = picard.solve(picard.Recursion(fn, n), x0, window=window, tol=tol, init=init)
    bound = tol * (math.prod(1 + lip for lip in lips) - 1)
    assert float((sol.final - exact[-1]).square().mean().sqrt()) <= bound * (1 + 1e-6) + 1e-12
    if noise == 0 and tol > 1e-10:  # the answer as the guess: one sweep verifies a window
        assert sol.stats.iterations == math.ceil(n / window)


def test_secant_fewer_sweeps_when_slopes_are_per_step_scalars():
    """Decay at a varying rate: each step's Jacobian is a scalar, which the secant slopes
    recover — 41 -> 12 sweeps at window 50, 38 -> 3 with the whole grid, here."""

    def fn(steps, x):
        s = steps.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return -0.05 * (1 + 0.5 * torch.sin(s / 7)) * x + 0.01 * torch.cos(s / 5)

    x0 = torch.ones(3, dtype=torch.float64)
    for window in (50, 200):
        plain = picard.solve(picard.Recursion(fn, 200), x0, tol=1e-8, window=window)
        fast = picard.solve(
            picard.Recursion(fn, 200), x0, tol=1e-8, window=window, accelerate="secant"
        )
        assert fast.stats.iterations <= plain.stats.iterations // 3
        assert fast.stats.accelerated > 0 and plain.stats.accelerated == 0
        torch.testing.assert_close(fast.final, plain.final, rtol=0, atol=1e-8)


def test_secant_safeguard_falls_back_when_slopes_mislead():
    """Increments whose slope flips sign from one step to the next (and are strongly
    nonlinear): secant slopes from the last sweep point the wrong way; the safeguard
    makes the next sweep plain, and the cost stays within two sweeps of plain Picard."""
    n = 120

    def fn(steps, x):
        sign = (1 - 2 * (steps % 2)).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return 0.6 * sign * torch.sin(3 * x) + 0.05

    x0 = torch.linspace(-1, 1, 4, dtype=torch.float64)
    plain = picard.solve(picard.Recursion(fn, n), x0, tol=1e-9, window=40)
    fast = picard.solve(picard.Recursion(fn, n), x0, tol=1e-9, window=40, accelerate="secant")
    assert fast.stats.fallbacks > 0
    assert fast.stats.iterations <= plain.stats.iterations + 2
    torch.testing.assert_close(fast.final, plain.final, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(clip_sample=False),
        DDPMScheduler(clip_sample=False, prediction_type="v_prediction"),
        DDIMScheduler(clip_sample=False),
        EulerDiscreteScheduler(),
        EulerAncestralDiscreteScheduler(),
    ],
    ids=["ddpm", "ddpm-v", "ddim", "euler", "euler-ancestral"],
)
def test_prior_slopes_are_each_steps_slope_under_unit_gaussian_data(scheduler):
    """The secant's start for rows without history is ∂Δ_i/∂x_i of the sampler's step with
    the ideal denoiser of N(0, I) data (linear, so a finite difference is exact; the Euler
    family's denoiser rounds its fractional timesteps, hence 1e-3)."""
    n = 25
    ideal = gaussian_denoiser(scheduler, wiggle=0.0, data_std=1.0)
    problem = from_scheduler(scheduler, ideal, n, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = problem.init(x)
    rows = x * torch.linspace(0.5, 2, n, dtype=torch.float64)[:, None, None]
    before, _ = problem.increments(rows, 0, state, None)
    after, _ = problem.increments(rows * 1.01, 0, state, None)
    prior = torch.as_tensor(problem.traits().slopes)
    assert prior.shape == (n,) and float(prior.abs().max()) > 1e-3
    slopes = (after - before) / (0.01 * rows)
    torch.testing.assert_close(slopes, prior[:, None, None].expand_as(rows), rtol=0, atol=1e-3)


def test_prior_slopes_save_sweeps_and_keep_tol_zero_exact():
    """DDPM-200 on Gaussian-like data: starting the rows without history from the prior
    slope takes fewer sweeps and evaluations than starting them uncorrected; at tol = 0 the
    solve is still the sequential one, bitwise; per-sample windows keep each sample's solo
    solve."""
    sched, n = DDPMScheduler(), 200
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def solve(**kw):
        gen = torch.Generator().manual_seed(1)
        return picard.solve(from_scheduler(sched, gaussian_denoiser(sched), n, generator=gen),
                            x, window=kw.pop("window", n), **kw)  # fmt: skip

    prior, none = solve(accelerate=picard.Secant()), solve(accelerate=picard.Secant(prior=False))
    assert prior.stats.iterations < none.stats.iterations
    assert prior.stats.evaluations < none.stats.evaluations
    assert torch.equal(solve(tol=0, accelerate="secant").final, solve(window=1, tol=0).final)
    assert picard.Secant(prior=False).bind(None) == picard.Secant(prior=False)

    def per_sample(samples):
        gens = [torch.Generator().manual_seed(10 + s) for s in samples]
        problem = from_scheduler(sched, gaussian_denoiser(sched), n, generator=gens)
        return picard.solve(problem, x[samples], window=64, accelerate="secant", per_sample=True)

    each = per_sample([0, 1, 2, 3])
    for s in range(4):
        alone = per_sample([s])
        assert alone.stats.accelerated > 0  # the same to rounding (lanes' sums in one array)
        torch.testing.assert_close(each.final[s], alone.final[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(),
        DDIMScheduler(),
        DPMSolverMultistepScheduler(solver_order=2),
        EulerDiscreteScheduler(),
        EulerAncestralDiscreteScheduler(),
    ],
    ids=["ddpm", "ddim", "dpmsolver++", "euler", "euler-ancestral"],
)
def test_diffusion_guess_is_the_frozen_denoised_rollout(scheduler):
    """The vectorised guess equals stepping the rule with x̂_0 held fixed, step by step."""
    n = 30
    problem = from_scheduler(
        scheduler, gaussian_denoiser(scheduler), n, generator=torch.Generator().manual_seed(0)
    )
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = problem.init(x)
    window = x.expand(8, *x.shape).clone()
    problem.increments(window, 0, state, None)
    guesses = problem.guess(window[-1], 8, 6, state)
    step, x_a, out_a = state.anchor[0]
    rule, co = problem.rule, state.coefficients
    ka, ks = rule.signal_keys
    x0 = schedules.predict_x0(rule.prediction_type, x_a, out_a, co[ka][step], co[ks][step])
    cur = window[-1]
    for j in range(6):
        i = 8 + j
        c = {k: v[i : i + 1] for k, v in co.items()}
        out = schedules.output_for_x0(rule.prediction_type, cur, x0, co[ka][i], co[ks][i])
        history = None
        if rule.memory:
            _, m = rule.update(cur[None], out[None], c, None, None)
            history = m.expand(rule.memory, *m.shape[1:])
        noise = None if state.noise is None else state.noise.window(i, i + 1)
        cur = rule.update(cur[None], out[None], c, noise, history)[0][0]
        torch.testing.assert_close(guesses[j], cur, rtol=1e-6, atol=1e-6)


def test_prediction_cuts_ddpm_sweeps_and_evaluations():
    scheduler = DDPMScheduler()
    den = gaussian_denoiser(scheduler)
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = {}
    for predict in (False, True):
        problem = from_scheduler(scheduler, den, 300, generator=torch.Generator().manual_seed(1))
        runs[predict] = picard.solve(problem, x, window=32, predict=predict)
    copy, guessed = runs[False].stats, runs[True].stats
    assert guessed.iterations < 0.8 * copy.iterations
    assert guessed.evaluations < 0.8 * copy.evaluations


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"accelerate": "anderson"}, ValueError, "accelerate must be None or one of"),
        ({"predict": 1}, TypeError, "predict must be a bool"),
        ({"max_rows": 0}, ValueError, "max_rows"),
        ({"init": [1.0]}, TypeError, "init must be a Tensor"),
        ({"init": torch.zeros(3, 2)}, ValueError, r"init must hold a guess of every state"),
        ({"init": torch.full((11, 2), float("nan"))}, ValueError, "init holds NaN"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        picard.solve(picard.Recursion(lambda i, x: -x, 10), torch.ones(2), **kwargs)


def test_front_ends_take_the_options_and_refuse_unknown_keywords():
    t = torch.linspace(0, 1, 21)
    y0 = torch.ones(2, dtype=torch.float64)
    ys = picard.odeint(
        lambda t, y: -y, y0, t, tol=0, accelerate="secant", max_rows=5, method="euler"
    )
    torch.testing.assert_close(ys, picard.odeint(lambda t, y: -y, y0, t, tol=0, method="euler"))
    warm = picard.odeint(
        lambda t, y: -y, y0, t, tol=1e-12, init=ys, return_stats=True, method="euler"
    )[1]
    assert warm.iterations == 1
    with pytest.raises(TypeError, match="unexpected keyword argument 'rtl'"):
        picard.odeint(lambda t, y: -y, y0, t, rtl=1e-3, method="euler")
    with pytest.raises(ValueError, match="step_size"):
        picard.odeint(lambda t, y: -y, y0, t, init=ys, step_size=0.01, method="euler")
    g = torch.Generator().manual_seed(0)
    sde = picard.sdeint(
        lambda t, y: -y, lambda t, y: 0.1 + 0 * y, y0, t, generator=g, accelerate="secant", tol=0
    )
    assert sde.shape == (21, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'atl'"):
        picard.sdeint(lambda t, y: -y, lambda t, y: 0 * y, y0, t, atl=1)


@given(problems, st.integers(1, 70), st.sampled_from([1e-8, 1e-6, 1e-4]), st.integers(1, 3))
def test_relative_tolerance_keeps_its_error_bound(problem, window, tol, batch):
    """With relative=True a state is accepted when its change is at most tol times its
    own RMS: the plain bound holds with tol scaled by the largest state RMS."""
    n, dim, seed, gain = problem
    fn, lips = linear_rule(n, dim, seed, gain)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    rule = picard.Recursion(fn, n, batch_dims=1)
    sol = picard.solve(rule, x0, window=window, tol=tol, relative=True)
    exact = sequential_loop(fn, x0, n)
    rms = (sol.final - exact[-1]).square().mean(-1).sqrt()
    biggest = float(exact.square().mean(-1).sqrt().max())
    bound = tol * 1.01 * biggest * (math.prod(1 + lip for lip in lips) - 1)
    assert float(rms.max()) <= bound * (1 + 1e-6) + 1e-12
    assert picard.solve(rule, x0, window=window, tol=0, relative=True).stats.iterations <= n


def test_ode_guess_holds_the_last_slope_and_saves_sweeps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    net = net.double()
    y0 = torch.tensor([[2.0, 0.0], [0.5, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    t = torch.linspace(0, 5, 1001, dtype=torch.float64)
    exact = picard.odeint(lambda t, y: net(y), y0, t, method="rk4", window=64, tol=0)
    runs = {
        p: picard.odeint(
            lambda t, y: net(y),
            y0,
            t,
            method="rk4",
            window=64,
            tol=1e-9,
            predict=p,
            return_stats=True,
        )
        for p in (False, True)
    }
    for ys, _ in runs.values():
        torch.testing.assert_close(ys, exact, rtol=0, atol=1e-7)
    assert runs[True][1].iterations < 0.9 * runs[False][1].iterations


def test_sde_guess_saves_sweeps_on_the_same_path():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    net = net.double()
    t = torch.linspace(0, 5, 1001, dtype=torch.float64)
    y0 = torch.full((8, 2), -1.0, dtype=torch.float64)
    dW = torch.randn(1000, 8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dW = dW * (5 / 1000) ** 0.5

    def run(**kw):
        return picard.sdeint(
            lambda t, y: net(y), lambda t, y: 0.3 * torch.cos(y), y0, t, dW=dW, window=64, **kw
        )

    exact = run(tol=0)
    copy, plain = run(tol=1e-8, predict=False, return_stats=True)
    guess, fast = run(tol=1e-8, return_stats=True)
    torch.testing.assert_close(guess, exact, rtol=0, atol=1e-7)
    torch.testing.assert_close(copy, exact, rtol=0, atol=1e-7)
    assert fast.iterations < 0.95 * plain.iterations


def test_secant_object_is_the_secant_name():
    """accelerate=picard.Secant() is accelerate="secant", bit for bit."""
    fn, _ = linear_rule(80, 3, 2, 1.5)
    rule = picard.Recursion(fn, 80, batch_dims=1)
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_name = picard.solve(rule, x0, window=30, tol=1e-8, accelerate="secant")
    by_object = picard.solve(rule, x0, window=30, tol=1e-8, accelerate=picard.Secant())
    assert torch.equal(by_name.final, by_object.final)
    assert by_name.stats == by_object.stats and by_name.stats.accelerated > 0


class RecordingAcceptance:
    """The first-unconverged rule, recording how many states pass each test it sees."""

    def __init__(self):
        self.passed = []

    def stride(self, ok, lengths):
        self.passed.append(int(ok.sum()))
        return picard.core.acceptance.FirstUnconverged().stride(ok, lengths)


def test_secant_tighter_test_uses_the_solves_acceptance():
    """The secant's tighter test goes through the user's acceptance= (issue 21), so with
    ParaDiGMS's rule the secant makes the first state unconverged at the tighter test
    final too, where before it always took the converged prefix."""
    fn, _ = linear_rule(80, 3, 2, 1.5)
    rule = picard.Recursion(fn, 80, batch_dims=1)
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = RecordingAcceptance()
    sol = picard.solve(rule, x0, window=40, tol=1e-6, accelerate="secant", acceptance=seen)
    assert len(seen.passed) == 2 * sol.stats.iterations  # the test at tol, then at tol / 10
    prefix = picard.solve(rule, x0, window=40, tol=1e-6, accelerate="secant")
    first = picard.solve(
        rule, x0, window=40, tol=1e-6, accelerate="secant", acceptance="first-unconverged"
    )
    ahead = zip(first.stats.window_starts, prefix.stats.window_starts, strict=False)
    assert first.stats.window_starts != prefix.stats.window_starts
    assert all(a >= b for a, b in ahead)  # it slides at least as far, sweep by sweep
    exact = picard.sequential(rule, x0).final
    assert (first.final - exact).abs().max() < 1e-4


class Overrelaxed:
    """A user-written acceleration following the documented protocol: extrapolate the
    states that are not final past their Picard values, new + ω (new − old)."""

    def __init__(self, omega: float):
        self.omega = omega

    def begin(self, columns):
        return self._Run(self.omega)

    class _Run:
        def __init__(self, omega):
            self.omega, self.rows = omega, 0

        def update(self, sweep, stride):
            rows = torch.arange(sweep.new.shape[0])[:, None, None]
            moving = torch.as_tensor(rows >= torch.as_tensor(stride)[None, :, None])
            step = sweep.ops.tensor(sweep.new) - sweep.ops.tensor(sweep.old)
            fresh = sweep.ops.tensor(sweep.new) + self.omega * step * moving
            sweep.ops.tensor(sweep.new)[...] = fresh
            self.rows += int(moving.sum())

        def counters(self):
            return {"extrapolated_rows": self.rows}


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_user_written_acceleration_runs_in_the_loop(per_sample):
    """The protocol is enough to plug in an acceleration: exact at tol = 0 (the final prefix
    is untouched), its counters reach Stats.acceleration, and it works per sample."""
    n = 40
    problem = picard.Recursion(lambda i, x: -0.02 * x * (1 + torch.sin(x)), n, batch_dims=1)
    if per_sample:
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(clip_sample=False)
        problem = from_scheduler(sched, gaussian_denoiser(sched), n)
    x0 = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0 = x0 if per_sample else x0.reshape(3, 4)
    exact = picard.sequential(problem, x0).final
    sol = picard.solve(
        problem, x0, window=15, tol=0, accelerate=Overrelaxed(0.5), per_sample=per_sample
    )
    torch.testing.assert_close(sol.final, exact, rtol=1e-12, atol=1e-12)
    assert sol.stats.acceleration["extrapolated_rows"] > 0
    with pytest.raises(TypeError, match="begin"):
        picard.solve(problem, x0, accelerate=object())


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"tighten": 0}, ValueError, "tighten"),
        ({"tighten": 1.5}, ValueError, "tighten"),
        ({"clip": -1}, ValueError, "clip"),
        ({"min_window": 0}, ValueError, "min_window"),
        ({"min_window": 2.5}, TypeError, "min_window"),
    ],
)
def test_bad_secant_arguments_are_named(kw, error, match):
    with pytest.raises(error, match=match):
        picard.Secant(**kw)


@pytest.mark.parametrize("model", ["moons", "gmm"])
def test_default_secant_error_is_no_larger_than_plain_picards_on_shipped_models(model):
    """The shipped models, DDPM-1000, 16 samples, picard's default tol: where the default
    runs the secant (windows of 128+ steps), its final error is no larger than plain
    Picard's at the same tol, in fewer sweeps (benchmarks/pareto.py: 2–60x smaller)."""
    from picard.cli.runs import make_scheduler, sample_in_parallel, start_latent
    from picard.models import load

    m = load(model)
    sched = make_scheduler("ddpm", m.scheduler)

    def run(**kw):
        gen = torch.Generator().manual_seed(0)
        x = start_latent(sched, 1000, (16, *m.sample_shape), gen)
        with torch.no_grad():
            return sample_in_parallel(sched, m.denoiser, 1000, x, gen, **kw)

    exact = run(window=1, tol=0).final

    def err(sol):
        return float(((sol.final - exact).norm(dim=1) / exact.norm(dim=1)).max())

    for window in (256, 1000):
        plain, default = run(window=window, accelerate=None), run(window=window)
        assert default.stats.accelerated > 0
        assert err(default) <= err(plain)
        assert default.stats.iterations < plain.stats.iterations
