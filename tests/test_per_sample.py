"""Per-sample windows (issue 5, item 3): each sample of a batch slides its own window and
gets exactly what solving it alone gives; finished samples leave the batch."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusion_helpers import gaussian_denoiser
from hypothesis import given, settings
from hypothesis import strategies as st

import picard
from picard.adapters.diffusers import from_scheduler


class Mixed(picard.Problem):
    """x_{i+1} = x_i + h (A_i x_i + c_i) + h g_s tanh(x_i), a different gain g_s per
    sample (so the samples converge at different paces)."""

    batch_ndim = 1
    per_lane = True

    def __init__(self, n: int, dim: int, seed: int, gains: torch.Tensor):
        gen = torch.Generator().manual_seed(seed)
        self.num_steps = n
        self.a = torch.randn(n, dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
        self.c = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        self.gains = gains
        self.rows: list[int] = []  # rows per call

    def _delta(self, x, steps, gains):
        lin = torch.einsum("wsij,wsj->wsi", self.a[steps], x) + self.c[steps]
        return (lin + gains[..., None] * torch.tanh(x)) / self.num_steps

    def increments(self, x, start, state, history):
        if isinstance(start, picard.Lanes):  # per-sample windows
            valid = start.valid
            self.rows.append(int(valid.sum()))
            gains = self.gains[start.samples].expand(x.shape[:2])
            return torch.where(valid[..., None], self._delta(x, start.at, gains), 0.0), None
        steps = torch.arange(start, start + x.shape[0])[:, None].expand(x.shape[:2])
        self.rows.append(x.shape[0] * x.shape[1])
        return self._delta(x, steps, self.gains.expand(x.shape[:2])), None

    def alone(self, s: int) -> Mixed:
        one = Mixed.__new__(Mixed)
        one.num_steps, one.a, one.c, one.rows = self.num_steps, self.a, self.c, []
        one.gains = self.gains[s : s + 1]
        return one


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 45),
    st.sampled_from([0.0, 1e-9, 1e-6, 1e-3]),
    st.integers(1, 4),
    st.integers(0, 10**6),
    st.booleans(),
)
@torch.no_grad()  # counts rows: no gradient trace (picard.core.adjoint.gradient_inputs)
def test_each_sample_gets_what_solving_it_alone_gives(n, window, tol, batch, seed, save):
    gen = torch.Generator().manual_seed(seed)
    gains = torch.rand(batch, generator=gen, dtype=torch.float64) * 8 - 4
    problem = Mixed(n, 3, seed, gains)
    x0 = torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    saved = sorted({0, n // 2, n}) if save else False
    sol = picard.solve(problem, x0, window=window, tol=tol, per_sample=True, save=saved)
    alone = [
        picard.solve(problem.alone(s), x0[s : s + 1], window=window, tol=tol, save=saved)
        for s in range(batch)
    ]
    for s, one in enumerate(alone):
        torch.testing.assert_close(sol.final[s], one.final[0], rtol=1e-13, atol=1e-13)
        if save:
            torch.testing.assert_close(sol.ys[:, s], one.ys[:, 0], rtol=1e-13, atol=1e-13)
    assert sol.stats.iterations == max(one.stats.iterations for one in alone) <= n
    assert sol.stats.evaluations == sum(one.stats.evaluations for one in alone)
    assert sum(problem.rows) == sol.stats.evaluations  # only valid rows were evaluated
    assert len(sol.stats.residuals) == sol.stats.iterations
    if tol == 0:
        exact = picard.sequential(problem, x0).final
        torch.testing.assert_close(sol.final, exact, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(1, 60), st.integers(1, 4), st.integers(0, 10**6))
def test_a_row_budget_goes_to_the_samples_left(n, max_rows, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    gains = torch.rand(batch, generator=gen, dtype=torch.float64) * 8 - 4
    problem = Mixed(n, 2, seed, gains)
    x0 = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
    sol = picard.solve(problem, x0, tol=0, per_sample=True, max_rows=max_rows)
    torch.testing.assert_close(sol.final, picard.sequential(problem, x0).final)
    assert sol.stats.iterations <= n
    # Never more rows than the budget allows (one row per sample at least).
    assert max(problem.rows) <= max(max_rows, batch)


def test_finished_samples_leave_and_their_rows_go_to_the_others():
    n, batch = 60, 4
    gains = torch.tensor([0.0, 0.0, 0.0, 30.0], dtype=torch.float64)  # one slow sample
    problem = Mixed(n, 2, 3, gains)
    x0 = torch.ones(batch, 2, dtype=torch.float64)
    sol = picard.solve(problem, x0, tol=1e-8, per_sample=True, max_rows=32)
    rows = problem.rows
    problem.rows = []
    shared = picard.solve(problem, x0, tol=1e-8, max_rows=32)
    assert max(rows) == 32
    # The slow sample runs on with the whole budget (a window of 32, not 8).
    assert sol.stats.iterations < 0.8 * shared.stats.iterations
    torch.testing.assert_close(sol.final, shared.final, rtol=0, atol=1e-6)


def _diffusion(kind, n, batch, generators=True):
    scheduler = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
    sched = scheduler[kind]()
    denoiser = gaussian_denoiser(sched, wiggle=0.3)

    def problem(samples=range(batch)):
        gens = [torch.Generator().manual_seed(10 + s) for s in samples] if generators else None
        return from_scheduler(sched, denoiser, n, generator=gens)

    return problem


@pytest.mark.parametrize("kind,n", [("ddpm", 120), ("ddim", 40), ("dpm", 20)])
def test_diffusion_samples_match_their_solo_solves(kind, n):
    batch = 4
    make = _diffusion(kind, n, batch)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 2, 4, 4, generator=gen, dtype=torch.float64)
    x = x * torch.linspace(0.5, 2.0, batch).reshape(-1, 1, 1, 1)
    sol = picard.solve(make(), x, window=16, per_sample=True, save=[0, 5, n])
    shared = picard.solve(make(), x, window=16)
    for s in range(batch):
        one = picard.solve(make([s]), x[s : s + 1], window=16, save=[0, 5, n])
        torch.testing.assert_close(sol.ys[:, s], one.ys[:, 0], rtol=0, atol=1e-12)
    assert sol.stats.evaluations <= shared.stats.evaluations
    # each sample slides by its own converged prefix: as many sweeps as its slowest solo
    # solve, which can be one more than the shared window's (25 vs 24 here)
    assert sol.stats.iterations <= shared.stats.iterations + 1
    exact = picard.sequential(make(), x).final
    err = (sol.final - exact).square().mean(dim=(1, 2, 3)).sqrt()
    assert float(err.max()) < 0.2


def test_denoisers_that_take_samples_get_each_rows_sample():
    n, batch = 30, 3
    sched = DDIMScheduler()
    base = gaussian_denoiser(sched, wiggle=0.3)
    shift = torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64)
    seen = []

    def conditioned(x, t, samples=None):
        if samples is None:
            samples = torch.arange(batch).repeat(x.shape[0] // batch)
        seen.append(samples.clone())
        return base(x, t) + shift[samples].reshape(-1, 1, 1, 1) * 0.1

    x = torch.randn(batch, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = picard.solve(from_scheduler(sched, conditioned, n), x, window=8, per_sample=True, tol=0)
    exact = picard.sequential(from_scheduler(sched, conditioned, n), x).final
    torch.testing.assert_close(sol.final, exact, rtol=1e-10, atol=1e-10)
    assert any(len(s) < 8 * batch for s in seen)  # some calls had samples at other steps


def test_per_sample_errors_name_the_option():
    rule = picard.Recursion(lambda i, x: -0.1 * x, 5)
    with pytest.raises(ValueError, match="per_sample=True needs a problem with one batch"):
        picard.solve(rule, torch.ones(2), per_sample=True)
    with pytest.raises(ValueError, match="per_sample"):
        picard.solve(rule, torch.ones(2), per_sample=True, accelerate="secant")
    with pytest.raises(TypeError, match="per_sample must be a bool"):
        picard.solve(rule, torch.ones(2), per_sample=1)
    with pytest.raises(ValueError, match="per_sample=True needs"):
        picard.odeint(
            lambda t, y: -y,
            torch.ones(2, 3),
            torch.linspace(0, 1, 5),
            per_sample=True,
            method="euler",
        )


def test_per_sample_non_finite_and_budget_errors():
    n = 20
    gains = torch.tensor([0.0, 1.0], dtype=torch.float64)
    problem = Mixed(n, 2, 0, gains)
    bad = Mixed(n, 2, 0, gains)
    bad.c = bad.c.clone()
    bad.c[7] = float("nan")
    x0 = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(picard.NonFiniteError, match="step 7 of sample") as info:
        picard.solve(bad, x0, window=10, per_sample=True)
    assert info.value.step == 7
    with pytest.raises(picard.ConvergenceError, match="max_iters=2") as info:
        picard.solve(problem, x0, window=4, tol=0, per_sample=True, max_iters=2)
    assert info.value.stats.iterations == 2
    assert info.value.state.shape == x0.shape


def test_per_sample_warm_start_from_the_answer_takes_one_pass():
    n = 25
    problem = Mixed(n, 2, 5, torch.tensor([1.0, -2.0], dtype=torch.float64))
    x0 = torch.ones(2, 2, dtype=torch.float64)
    exact = picard.sequential(problem, x0, save=True).ys
    sol = picard.solve(problem, x0, window=n, tol=1e-10, per_sample=True, init=exact)
    assert sol.stats.iterations == 1
    torch.testing.assert_close(sol.final, exact[-1])


@settings(max_examples=12, deadline=None)
@given(
    st.integers(2, 40),
    st.integers(2, 45),
    st.sampled_from([0.0, 1e-9, 1e-6, 1e-3]),
    st.integers(1, 4),
    st.integers(0, 10**6),
    st.sampled_from([None, "secant"]),
)
def test_each_sample_is_bitwise_its_solo_solve_with_any_acceleration(
    n, window, tol, batch, seed, accelerate
):
    """Per-sample windows run the one loop with one lane per sample: each sample's iterates,
    secant slopes and safeguard included, are bitwise those of solving it alone."""
    gains = torch.rand(batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    problem = Mixed(n, 3, seed, 4 * gains)
    x0 = torch.randn(
        batch, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    kw = {"window": window, "tol": tol, "accelerate": accelerate}
    sol = picard.solve(problem, x0, per_sample=True, **kw)
    for s in range(batch):
        one = picard.solve(problem.alone(s), x0[s : s + 1], **kw)
        assert torch.equal(sol.final[s], one.final[0])
