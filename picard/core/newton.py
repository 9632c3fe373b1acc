"""Newton steps on a whole trajectory, for small states: verification in a few rounds.

A trajectory ``x_0 … x_N`` of a rule without memory has defects
``r_j = x_j + Δ_j(x_j) - x_{j+1}`` (zero on the sequential trajectory). Newton's
correction solves the linearised recursion

    δ_0 = 0,        δ_{j+1} = (I + J_j) δ_j + r_j,

with ``J_j`` the per-sample Jacobians (:class:`picard.core.jacobians.Jacobians`): one
batched round of calls gives every step's defect and Jacobian, the recursion itself is a
product per step, and ``x + δ`` is the next iterate (DEER: Lim et al., ICLR 2024). Its fixed
point is the sequential trajectory whatever the Jacobians, so an iteration that contracts
converges to it; and near it, the final state's correction estimates that state's error.
:func:`newton_verified` uses this as ``verify=``'s check for small states: a solve at its
tolerance is corrected until the corrections vanish, and its distance from the corrected
trajectory estimates its error. Where the corrections do not shrink at least by half per
step (Jacobians that autograd cannot see, such as a
model run under ``torch.no_grad()``, or a trajectory too far for the linearisation), it
gives up and verification re-solves at finer tolerances instead.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from picard.core import jacobians
from picard.core.arrays import TORCH
from picard.core.jacobians import Jacobians, small_state
from picard.core.tolerance import Tolerance
from picard.core.window import MODELED_CAPACITY, ModeledCost
from picard.errors import AccuracyWarning
from picard.problem import Problem
from picard.solution import Solution, Stats

__all__ = [
    "CONTRACTION",
    "MAX_NEWTON",
    "SETTLED",
    "newton_applies",
    "newton_step",
    "newton_verified",
]

MAX_NEWTON = 4
"""Newton steps at most before verification falls back to re-solving."""

CONTRACTION = 0.5
"""The largest ratio of one correction to the one before that counts as converging."""

SETTLED = 100.0
"""Steps stop once the last correction is at most the target divided by this."""


def newton_applies(problem: Problem, x0: Tensor, options: Any) -> bool:
    """Whether :func:`newton_verified` checks this solve.

    Args:
        problem: the problem.
        x0: its initial state.
        options: the solve's options (one shared window, one process, one device).

    Returns:
        ``True`` for a small state (:func:`~picard.core.jacobians.small_state`) solved by
        one shared window in this process.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 8)
        >>> newton_applies(rule, torch.ones(3), picard.Options.of())
        True
    """
    plain = not (options.per_sample or options.distributed or options.devices)
    return plain and small_state(problem, x0.shape)


def newton_pays(stats: Stats, samples: int, products: int, device: torch.device) -> bool:
    """Whether Newton's check is modeled cheaper than re-solving at a finer tolerance.

    Each Newton round is one call of every step's rows with ``products`` backward
    passes (counted as two rows each); about three rounds (the probe, two steps) against
    re-solving, which takes about 0.7 of the solve's sweeps of its window. Times are
    :class:`~picard.core.window.ModeledCost`'s for the device type — no clock, so the
    choice is the same in every process: on a CPU, whose cost grows with the rows,
    Newton pays only with few products; a GPU batches far more rows per call.

    Args:
        stats: the solve's stats (its sweeps, window and steps).
        samples: the samples S.
        products: vector–Jacobian products per step (d, or fewer when compressed).
        device: the state's device.

    Returns:
        ``True`` where three Newton rounds are modeled no slower than the re-solve.

    Example:
        >>> import torch, picard
        >>> stats = picard.solve(picard.Recursion(lambda i, x: -0.1 * x, 50), torch.ones(1)).stats
        >>> newton_pays(stats, 1, 1, torch.device("cpu"))
        True
    """
    cost = ModeledCost(MODELED_CAPACITY.get(torch.device(device).type, 1024))
    newton = 3 * cost(stats.num_steps * samples * (1 + 2 * products))
    again = 0.7 * stats.iterations * cost(stats.window * samples)
    return newton <= again


def newton_step(problem: Problem, noise: Any, ys: Tensor, jac: Jacobians) -> tuple[Tensor, int]:
    """One Newton step on the trajectory ``ys``: the corrected trajectory and its rounds.

    Args:
        problem: the problem (no memory).
        noise: what ``problem.init(x0)`` returned in the solve.
        ys: ``x_0 … x_N`` (working dtype).
        jac: the problem's Jacobians.

    Returns:
        ``(ys + δ, rounds)``: rounds of batched calls (one per chunk of steps, see
        :data:`~picard.core.jacobians.MAX_ENTRIES`).

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: 0.1 * torch.sin(x), 20)
        >>> exact = picard.sequential(rule, torch.ones(1, dtype=torch.float64), save=True).ys
        >>> ys = torch.ones(21, 1, dtype=torch.float64)  # far from the trajectory
        >>> for _ in range(5):  # errors 1.2, 2e-2, 4e-5, 2e-10, 0
        ...     ys, _ = newton_step(rule, None, ys, Jacobians(rule, None, ys))
        >>> float((ys - exact).abs().max()) < 1e-15
        True
    """
    n = ys.shape[0] - 1
    samples, size = jac.samples, jac.size
    chunk = max(1, min(n, jacobians.MAX_ENTRIES // (samples * size * size)))
    delta = ys.new_zeros((n + 1, samples, size, 1))
    eye = torch.eye(size, dtype=ys.dtype, device=ys.device)
    rounds = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows, inc = jac.at(ys[lo:hi], lo)  # rows[k, j, s, a] = ∂Δ_j[s, k] / ∂x_j[s, a]
        rounds += 1
        assert inc is not None
        r = (ys[lo:hi] + inc.detach() - ys[lo + 1 : hi + 1]).reshape(hi - lo, samples, size, 1)
        step = eye if rows is None else eye + rows.permute(1, 2, 0, 3)  # (.., S, k, a)
        step = step.expand(hi - lo, samples, size, size)
        for j in range(lo, hi):
            torch.baddbmm(r[j - lo], step[j - lo], delta[j], out=delta[j + 1])
    return ys + delta.reshape(ys.shape), rounds


def newton_verified(
    problem: Problem, noise: Any, sol: Solution, target: float, budget: int | None
) -> Solution | tuple[int, int]:
    """``sol`` verified and corrected by Newton steps (see the module docstring).

    Steps run until the last correction of every final sample is at most ``target /
    100``, each correction at most :data:`CONTRACTION` of the one before (at most
    :data:`MAX_NEWTON` steps). The estimate of ``sol``'s error is each sample's distance
    from the corrected one; where it exceeds ``target``, the estimate reported is the
    last correction's instead (the error of the iterate before the returned one, as
    verification by re-solving reports its second refinement's).

    Args:
        problem: the problem (a small state, no memory).
        noise: what ``problem.init(x0)`` returned in the solve.
        sol: the solve's solution, every state kept.
        target: the error to reach, relative to each final sample's RMS.
        budget: rounds of calls left (``None``: no limit).

    Returns:
        The corrected solution (every state; its stats add the rounds to the sweeps and
        each step's increments to the evaluations, ``verifications`` 1 or 2 as above,
        ``error_estimate`` and ``sample_errors`` the estimates); or, where the probe
        found Newton not to pay (:func:`newton_pays`), the corrections did not contract or
        the budget ran out, ``(rounds, evaluations)``: what it spent.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: 0.05 * torch.sin(3 * x), 60)
        >>> x0 = torch.ones(1, dtype=torch.float64)
        >>> sol = picard.solve(rule, x0, window=20, tol=1e-3, save=True)
        >>> checked = newton_verified(rule, None, sol, 1e-3, None)
        >>> exact = picard.sequential(rule, x0).final
        >>> float((sol.final - exact).abs()) > 1e-8, float((checked.final - exact).abs()) < 1e-14
        (True, True)
    """
    from picard.core.verify import relative_errors

    assert sol.ys is not None
    ys = first = sol.ys
    n, batch_ndim = ys.shape[0] - 1, problem.batch_ndim
    jac = Jacobians(problem, noise, ys)
    if not newton_pays(sol.stats, jac.samples, jac.products, ys.device):
        return jac.rounds, 0  # the probe found too many products to pay
    spent, before = 0, None
    floor = 64 * torch.finfo(ys.dtype).eps
    steps = 0
    for _ in range(MAX_NEWTON):
        new, rounds = newton_step(problem, noise, ys, jac)
        steps += 1
        spent += rounds
        if (budget is not None and spent + jac.rounds > budget) or not bool(
            torch.isfinite(new).all()
        ):
            return spent + jac.rounds, steps * n * jac.samples
        change = relative_errors(ys[-1], new[-1], batch_ndim)
        ys = new
        settled = change <= floor  # at rounding: nothing left to contract
        if before is not None:
            ratio = change / before.clamp_min(floor)
            if bool((ratio[~settled] > CONTRACTION).any()):
                return spent + jac.rounds, steps * n * jac.samples
        if bool(settled.all()) or (before is not None and float(change.max()) <= target / SETTLED):
            break
        before = change
    else:
        return spent + jac.rounds, steps * n * jac.samples
    estimate = relative_errors(first[-1], ys[-1], batch_ndim)
    verifications = 1
    if float(estimate.max()) > target:  # the solve missed: report the corrected one's
        estimate, verifications = change, 2
        if float(estimate.max()) > target:
            warnings.warn(
                f"verify: after {steps} Newton steps the error estimate "
                f"{float(estimate.max()):.3g} still exceeds {target:g}; the solution may be "
                "that far off",
                AccuracyWarning,
                stacklevel=5,
            )
    stats = dataclasses.replace(
        sol.stats,
        iterations=sol.stats.iterations + spent + jac.rounds,
        evaluations=sol.stats.evaluations + steps * n * jac.samples,
        error_estimate=float(estimate.max()),
        verifications=verifications,
        sample_errors=tuple(estimate.tolist()),
        acceleration={**sol.stats.acceleration, "newton_steps": steps},
    )
    return Solution(final=ys[-1], ys=ys, steps=sol.steps, stats=stats)


def newton_solve(
    problem: Problem,
    x0: Tensor,
    noise: Any,
    tolerance: Tolerance,
    init: Tensor | None,
    keep: Sequence[int] | None,
    max_steps: int,
) -> Solution | tuple[int, int]:
    """A solve by Newton steps on the whole trajectory (``accelerate="newton"``).

    From ``init`` (or every state at ``x0``), Newton steps run until every state's last
    correction meets ``tolerance`` (as a sweep's change must), each step one round of
    calls. They stop early where the corrections grow twice running or turn non-finite.

    Args:
        problem: the problem (a small state, no memory: :func:`newton_applies`).
        x0: the initial state (working dtype).
        noise: what ``problem.init(x0)`` returned.
        tolerance: the test at the solve's ``tol``.
        init: a guess of every state, or ``None``.
        keep: the state indices to keep (``None``: only the final state).
        max_steps: the most Newton steps.

    Returns:
        The solution (``stats.iterations`` its rounds, ``acceleration["newton_steps"]``
        its steps); or, where it stopped early, ``(rounds, evaluations)``: what it spent.
        The sweeps that take over start from their own guesses, not from Newton's best
        iterate: from that one they took 929 sweeps for 1000 steps, from their own 88.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: 0.1 * torch.sin(x), 40)
        >>> x0 = torch.ones(1, dtype=torch.float64)
        >>> sol = picard.solve(rule, x0, accelerate="newton")  # from every state at x0
        >>> sol.stats.iterations, picard.solve(rule, x0).stats.iterations  # sweeps: 14
        (7, 14)
        >>> float((sol.final - picard.sequential(rule, x0).final).abs()) < 1e-14
        True
    """
    n = problem.num_steps
    ys = x0.expand(n + 1, *x0.shape).clone() if init is None else init.to(x0.dtype).clone()
    ys[0] = x0
    jac = Jacobians(problem, noise, ys)
    spent, steps, rising = 0, 0, 0
    previous = math.inf
    while steps < max_steps:
        new, rounds = newton_step(problem, noise, ys, jac)
        spent, steps = spent + rounds, steps + 1
        if not bool(torch.isfinite(new).all()):
            break
        shaped = (n, jac.samples, jac.size)
        change = tolerance.measure(TORCH, new[1:].reshape(shaped), ys[1:].reshape(shaped))
        worst = change.max(axis=1, keepdims=True)
        units = float(tolerance.in_units(worst, slice(0, n)).max())
        ys = new
        if bool(tolerance.converged(worst, slice(0, n)).all()):
            stats = Stats(
                num_steps=n,
                window=n,
                tol=tolerance.value,
                iterations=spent + jac.rounds,
                evaluations=steps * n * jac.samples,
                stages=problem.stages,
                window_starts=(0,) * (spent + jac.rounds),
                rows_per_evaluation=problem.rows_per_evaluation,
                acceleration={"newton_steps": steps, "jacobian_products": jac.products},
            )
            kept = None if keep is None else ys[list(keep)]
            return Solution(final=ys[-1], ys=kept, steps=keep, stats=stats)
        rising = rising + 1 if units > previous else 0
        if rising == 2:
            break
        previous = units
    return spent + jac.rounds, steps * n * jac.samples
