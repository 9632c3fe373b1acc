"""The sweep loop: exactness at tol = 0, the error bound at tol > 0, window independence,
exact accounting, saving, precision, multistep history and failure reporting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import picard
from picard.core.acceleration import Picard
from picard.core.acceptance import FirstUnconverged
from picard.core.arrays import NUMPY, TORCH
from picard.core.budget import Budget
from picard.core.guess import Predict
from picard.core.loop import Strategies, sweep
from picard.core.plans import SharedWindow
from picard.core.tolerance import Tolerance
from picard.core.window import FixedWindow


def linear_rule(n: int, dim: int, seed: int, gain: float):
    """Δ_i(x) = h A_i x + h c_i with random A_i; returns (rule, Lipschitz of each Δ_i)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, dim, generator=gen, dtype=torch.float64) * gain / math.sqrt(dim)
    c = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    h = 1.0 / n

    def fn(steps, x):
        return h * (
            torch.einsum("mij,m...j->m...i", a[steps], x)
            + c[steps].reshape(len(steps), *([1] * (x.ndim - 2)), dim)
        )

    lips = [h * float(torch.linalg.matrix_norm(a[i], 2)) for i in range(n)]
    return fn, lips


def sequential_loop(fn, x0, n):
    """x_{i+1} = x_i + fn(i, x_i), one step at a time."""
    xs = [x0]
    for i in range(n):
        xs.append(xs[-1] + fn(torch.tensor([i]), xs[-1][None])[0])
    return torch.stack(xs)


def windows_used(stats):
    return [min(stats.window, stats.num_steps - s) for s in stats.window_starts]


problems = st.tuples(
    st.integers(1, 60),  # N
    st.integers(1, 4),  # dim
    st.integers(0, 10**6),  # seed
    st.floats(0.1, 8.0),  # gain (how stiff, how slowly Picard converges)
)


@given(problems, st.integers(1, 70))
def test_tol_zero_is_the_sequential_recursion(problem, window):
    n, dim, seed, gain = problem
    fn, _ = linear_rule(n, dim, seed, gain)
    x0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sol = picard.solve(picard.Recursion(fn, n), x0, window=window, tol=0, save=True)
    expected = sequential_loop(fn, x0, n)
    torch.testing.assert_close(sol.ys, expected, rtol=1e-12, atol=1e-12)
    assert sol.stats.iterations <= n
    assert sol.stats.evaluations == sum(windows_used(sol.stats))
    assert len(sol.stats.residuals) == sol.stats.iterations


@given(problems, st.integers(1, 70), st.floats(1e-8, 1e-2), st.integers(1, 3))
def test_error_is_bounded_by_tol(problem, window, tol, batch):
    """Every increment of a finalized state is evaluated within tol (RMS) of that state,
    so the final error is at most tol * (prod(1 + L_i) - 1) for Lipschitz constants L_i."""
    n, dim, seed, gain = problem
    fn, lips = linear_rule(n, dim, seed, gain)
    x0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rule = picard.Recursion(fn, n, batch_dims=1)
    sol = picard.solve(rule, x0, window=window, tol=tol)
    expected = sequential_loop(fn, x0, n)[-1]
    rms = (sol.final - expected).square().mean(-1).sqrt()  # per sample
    bound = tol * (math.prod(1 + lip for lip in lips) - 1)
    assert float(rms.max()) <= bound * (1 + 1e-6) + 1e-12
    assert sol.stats.evaluations == batch * sum(windows_used(sol.stats))


@given(problems, st.integers(1, 70), st.integers(1, 70), st.floats(1e-8, 1e-2))
def test_window_size_changes_the_answer_only_within_tol(problem, w1, w2, tol):
    n, dim, seed, gain = problem
    fn, lips = linear_rule(n, dim, seed, gain)
    x0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = picard.solve(picard.Recursion(fn, n), x0, window=w1, tol=tol).final
    b = picard.solve(picard.Recursion(fn, n), x0, window=w2, tol=tol).final
    bound = tol * (math.prod(1 + lip for lip in lips) - 1)
    assert float((a - b).square().mean().sqrt()) <= 2 * bound * (1 + 1e-6) + 1e-12


def test_convergence_takes_far_fewer_sweeps_than_steps():
    fn, _ = linear_rule(200, 3, seed=0, gain=1.0)
    x0 = torch.ones(3, dtype=torch.float64)
    sol = picard.solve(picard.Recursion(fn, 200), x0, tol=1e-8, window=None)
    assert sol.stats.iterations <= 20
    assert sol.stats.window == 200


def test_stride_is_at_least_one_even_when_nothing_converges():
    """A rule whose iterates never settle (contraction factor > 1) still ends in N sweeps."""
    n = 12
    rule = picard.Recursion(lambda i, x: 3.0 * x, n)
    x0 = torch.ones(1, dtype=torch.float64)
    sol = picard.solve(rule, x0, tol=0, save=True)
    assert sol.stats.iterations <= n
    torch.testing.assert_close(sol.final, x0 * 4.0**n)


@pytest.mark.parametrize("window", [1, 3, 7, 20])
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_save_modes_hold_the_same_states(window, tol):
    fn, _ = linear_rule(20, 2, seed=3, gain=2.0)
    rule = picard.Recursion(fn, 20)
    x0 = torch.ones(2, dtype=torch.float64)
    full = picard.solve(rule, x0, window=window, tol=tol, save=True)
    some = picard.solve(rule, x0, window=window, tol=tol, save=[0, 2, 3, 11, 20])
    last = picard.solve(rule, x0, window=window, tol=tol)
    assert full.ys.shape == (21, 2) and list(full.steps) == list(range(21))
    assert torch.equal(some.ys, full.ys[[0, 2, 3, 11, 20]])
    assert torch.equal(last.final, full.final) and last.ys is None
    assert torch.equal(full.ys[-1], full.final)
    assert full.stats.window_starts == some.stats.window_starts == last.stats.window_starts


def test_save_without_the_initial_state():
    rule = picard.Recursion(lambda i, x: x, 4)
    sol = picard.solve(rule, torch.ones(1), save=[2, 4])
    assert sol.ys.squeeze(-1).tolist() == [4.0, 16.0]


def test_torch_and_numpy_bookkeeping_agree():
    """The CPU path views the workspace as numpy; accelerators use torch. Same answers."""
    fn, _ = linear_rule(50, 3, seed=1, gain=3.0)
    rule = picard.Recursion(fn, 50, batch_dims=1)
    x0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    strategies = Strategies(
        Tolerance.of(rule, 1e-6, relative=False, size=3),
        FirstUnconverged(),
        Picard(),
        Predict(),
        Budget(max_iters=50),
    )

    def run(ops, save):
        plan = SharedWindow(rule, x0, save, 8, ops=ops)
        return sweep(rule, x0, plan, FixedWindow(8), strategies, rule.init(x0))

    for save in (None, range(51), [0, 5, 50]):
        a, b = run(NUMPY, save), run(TORCH, save)
        assert a.stats.window_starts == b.stats.window_starts
        torch.testing.assert_close(a.final, b.final, rtol=1e-13, atol=1e-13)
        if save is not None:
            torch.testing.assert_close(a.ys, b.ys, rtol=1e-13, atol=1e-13)


def test_workspace_compaction_with_small_windows():
    """Without save=True the workspace holds two windows and is compacted as it slides."""
    fn, _ = linear_rule(100, 2, seed=5, gain=1.0)
    rule = picard.Recursion(fn, 100)
    x0 = torch.ones(2, dtype=torch.float64)
    expected = sequential_loop(fn, x0, 100)
    for window in (1, 2, 5, 33, 99):
        sol = picard.solve(rule, x0, window=window, tol=0, save=[0, 50, 99, 100])
        torch.testing.assert_close(sol.ys, expected[[0, 50, 99, 100]], rtol=1e-12, atol=1e-12)


def test_multistep_history_reproduces_sequential_adams_bashforth():
    """A problem with memory = 1 (AB2) gets the outputs of the steps before the window."""

    class AB2(picard.Problem):
        memory = 1

        def __init__(self, n):
            self.num_steps = n
            self.h = 2.0 / n

        def increments(self, x, start, state, history):
            f = torch.cos(x) - 0.3 * x  # outputs of the window's own steps
            prev = torch.cat([f[:1] if history is None else history, f[:-1]])
            if start == 0:
                prev[0] = f[0]  # the first step has no history: Euler
            return self.h * (1.5 * f - 0.5 * prev), f

    n = 40
    x0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    ref = picard.sequential(AB2(n), x0, save=True)
    # An independent plain loop.
    xs, f_prev = [x0], None
    for _ in range(n):
        f = torch.cos(xs[-1]) - 0.3 * xs[-1]
        prev = f if f_prev is None else f_prev
        xs.append(xs[-1] + (2.0 / n) * (1.5 * f - 0.5 * prev))
        f_prev = f
    torch.testing.assert_close(ref.ys, torch.stack(xs), rtol=1e-13, atol=1e-13)
    for window in (1, 2, 3, 8, 40):
        sol = picard.solve(AB2(n), x0, window=window, tol=0, save=True)
        torch.testing.assert_close(sol.ys, ref.ys, rtol=1e-12, atol=1e-12)


def test_states_stay_in_float32_when_the_state_is_float16():
    """Increments of 0.01 on a state of 1000: float16 alone would never move (its spacing
    there is 0.5); picard accumulates in float32 and rounds only the result."""
    seen = []

    def fn(steps, x):
        seen.append(x.dtype)
        return torch.full_like(x, 0.01)

    x0 = torch.full((3,), 1000.0, dtype=torch.float16)
    sol = picard.solve(picard.Recursion(fn, 1000), x0, window=100, tol=0)
    assert sol.final.dtype == torch.float16
    assert set(seen) == {torch.float32}
    assert float(sol.final[0]) == 1010.0


def test_inputs_are_not_modified_and_results_are_deterministic():
    fn, _ = linear_rule(30, 2, seed=2, gain=2.0)
    x0 = torch.randn(2, dtype=torch.float64)
    before = x0.clone()
    a = picard.solve(picard.Recursion(fn, 30), x0, window=7, tol=1e-6, save=True)
    b = picard.solve(picard.Recursion(fn, 30), x0, window=7, tol=1e-6, save=True)
    assert torch.equal(x0, before)
    assert torch.equal(a.ys, b.ys) and a.stats == b.stats
    a.final.add_(1.0)  # the result owns its memory
    assert torch.equal(a.ys[-1], b.ys[-1])


def test_nonfinite_increment_names_step_and_sweep():
    def fn(steps, x):
        out = -0.1 * x
        out[steps == 7] = float("nan")
        return out

    with pytest.raises(picard.NonFiniteError, match=r"step 7: .*NaN or Inf in sweep 1") as info:
        picard.solve(picard.Recursion(fn, 20), torch.ones(2), window=20)
    assert (info.value.step, info.value.sweep) == (7, 1)


@torch.no_grad()  # counts calls: no gradient trace (picard.core.adjoint.gradient_inputs)
def test_nonfinite_in_a_later_sweep():
    calls = []

    def fn(steps, x):
        calls.append(1)
        out = 0.5 * torch.sin(x)
        if len(calls) == 3:
            out[steps == 12] = float("inf")
        return out

    with pytest.raises(picard.NonFiniteError, match="step 12") as info:
        picard.solve(picard.Recursion(fn, 30), torch.ones(2), window=30, tol=0)
    assert info.value.sweep == 3


def test_budget_exhausted_raises_convergence_error_with_partial_result():
    fn, _ = linear_rule(50, 2, seed=0, gain=4.0)
    with pytest.raises(picard.ConvergenceError, match="max_iters=3") as info:
        picard.solve(
            picard.Recursion(fn, 50),
            torch.ones(2, dtype=torch.float64),
            window=10,
            tol=0,
            max_iters=3,
        )
    err = info.value
    assert err.stats.iterations == 3
    assert 3 <= err.steps_done < 50
    expected = sequential_loop(fn, torch.ones(2, dtype=torch.float64), 50)[err.steps_done]
    torch.testing.assert_close(err.state, expected, rtol=1e-12, atol=1e-12)


def test_scale_weights_the_convergence_test():
    """A step with scale 0 must not change at all; a large scale accepts larger changes."""
    fn, _ = linear_rule(30, 2, seed=4, gain=3.0)
    x0 = torch.ones(2, dtype=torch.float64)
    loose = picard.solve(picard.Recursion(fn, 30, scale=np.full(30, 1e6)), x0, tol=1e-3)
    exact = picard.solve(picard.Recursion(fn, 30, scale=np.zeros(30)), x0, tol=1e-3)
    assert loose.stats.iterations < exact.stats.iterations
    torch.testing.assert_close(exact.final, sequential_loop(fn, x0, 30)[-1])


def test_residuals_and_window_starts():
    fn, _ = linear_rule(40, 2, seed=6, gain=1.0)
    sol = picard.solve(
        picard.Recursion(fn, 40), torch.ones(2, dtype=torch.float64), window=10, tol=1e-7
    )
    starts = sol.stats.window_starts
    assert starts[0] == 0 and all(b > a for a, b in itertools.pairwise(starts))
    assert all(r >= 0 for r in sol.stats.residuals)
    assert sol.stats.nfe == sol.stats.evaluations * sol.stats.stages


def test_sequential_reference_counts_one_round_per_step():
    rule = picard.Recursion(lambda i, x: -0.5 * x, 6)
    sol = picard.sequential(rule, torch.ones(3, 2), save=[0, 6])
    assert sol.stats.iterations == 6 and sol.stats.evaluations == 6
    torch.testing.assert_close(sol.ys[1], torch.full((3, 2), 0.5**6))
