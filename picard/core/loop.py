"""The sliding-window Picard sweep loop — the one loop, for every problem and layout.

Notation (ParaDiGMS, Shih et al. 2023, Algorithm 1): states ``x_0 … x_N``, increments
``Δ_i``; a sweep over the window ``[b, b + w)`` computes, from the current guesses,

    x_{i+1}  <-  x_b + Σ_{j=b..i} Δ_j(x_j)        for i = b … b + w - 1   (one cumsum)

with every ``Δ_j`` of the window from one batched call. The loop only sequences small
objects built once per solve: the plan (:mod:`picard.core.plans`: one window for the batch, or
one per sample) evaluates and keeps the states; the :class:`~picard.core.tolerance.Tolerance`
says which states converged; the acceptance rule (:mod:`picard.core.acceptance`) how far each
window slides; the acceleration (:mod:`picard.core.acceleration`) rewrites the states not yet
final; the window controller (:mod:`picard.core.window`) sizes the next window; the guess
(:mod:`picard.core.guess`) fills the steps entering it; the budget (:mod:`picard.core.budget`) stops
it. The state after a window's start depends on that final state alone, so windows slide
by at least one step: at most N sweeps, and ``tol = 0`` gives the sequential recursion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import Tensor

from picard.core.acceleration import Acceleration, Picard
from picard.core.acceptance import AcceptAll, Acceptance
from picard.core.budget import SEQUENTIAL_FINISH, Budget
from picard.core.estimate import Defects
from picard.core.guess import Copy, Guess
from picard.core.plans import Plan
from picard.core.tolerance import Tolerance
from picard.core.window import Controller, FixedWindow
from picard.errors import ConvergenceError
from picard.problem import Problem
from picard.solution import Solution, Stats

__all__ = ["Log", "Strategies", "sweep"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Strategies:
    """The small objects a solve's loop runs with (see the module docstring).

    Attributes:
        tolerance: the convergence test.
        acceptance: how far windows slide.
        acceleration: how a sweep's Picard values become the next iterate.
        guess: where entering steps start.
        budget: the budgets and what happens when they end.

    Example:
        >>> import picard
        >>> from picard.core.acceptance import ConvergedPrefix
        >>> from picard.core.budget import Budget
        >>> from picard.core.guess import Copy
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 10)
        >>> s = Strategies(picard.Tolerance.of(rule, 1e-6, False, 1), ConvergedPrefix(),
        ...                picard.Picard(), Copy(), Budget(max_iters=10))
        >>> s.budget.max_iters
        10
    """

    tolerance: Tolerance
    acceptance: Acceptance
    acceleration: Acceleration
    guess: Guess
    budget: Budget


class Log:
    """What the sweeps did and cost, for :class:`picard.Stats`.

    Args:
        defects: the per-sample error estimate the sweeps feed
            (:mod:`picard.core.estimate`), or ``None`` for none.

    Example:
        >>> Log().stats  # filled by the loop; ``stats(...)`` builds the Stats
        <bound method Log.stats of ...>
    """

    def __init__(self, defects: Defects | None = None) -> None:
        self.defects = defects  # the per-sample error estimate, fed every sweep
        self.starts: list[int] = []  # per sweep, the first step not final
        self.changes: list[np.ndarray] = []  # per sweep, the worst squared change per row
        self.lane_starts: list[np.ndarray] | None = None  # per-sample windows: their starts
        self.evaluations = 0
        self.sequential = 0  # sweeps of one step each, after the sweeps stopped
        self.counters: dict[str, int] = {}

    def add(self, plan: Plan, sweep_: Any, finishing: bool) -> int:
        """Count one sweep; returns its number (1-based) among the parallel sweeps."""
        self.evaluations += sweep_.evaluations
        if finishing:
            self.sequential += 1
            return len(self.starts)
        self.starts.append(sweep_.front)
        self.changes.append(sweep_.change)  # (w, lanes)
        if self.defects is not None:
            self.defects.add(sweep_)
        if not plan.shared:
            self.lane_starts = [] if self.lane_starts is None else self.lane_starts
            self.lane_starts.append(sweep_.starts)
        return len(self.starts)

    def stats(self, problem: Problem, controller: Controller, tolerance: Tolerance) -> Stats:
        """The statistics so far."""
        report = getattr(controller, "report", None)
        return Stats(
            num_steps=problem.num_steps,
            window=getattr(controller, "choice", controller.cap),
            tol=tolerance.value,
            iterations=len(self.starts) + self.sequential,
            evaluations=self.evaluations,
            stages=problem.stages,
            rows_per_evaluation=problem.rows_per_evaluation,
            window_starts=tuple(self.starts),
            acceleration=dict(self.counters),
            sequential_steps=self.sequential,
            changes=self.changes,
            lane_starts=self.lane_starts,
            inv_scale=tolerance.inv_scale,
            cost={} if report is None else report(),
            defects=self.defects,
        )


def sweep(
    problem: Problem,
    x0: Tensor,
    plan: Plan,
    controller: Controller,
    strategies: Strategies,
    state: Any,
    progress: Progress | None = None,
) -> Solution:
    """Solve ``problem`` from ``x0`` on ``plan``: sweeps, then (if they stop) steps.

    :func:`picard.solve` builds the arguments from its options; building them by hand
    runs the same loop.

    Args:
        problem: the recursion.
        x0: the initial state.
        plan: the window layout (:mod:`picard.core.plans`).
        controller: the window controller (:mod:`picard.core.window`).
        strategies: tolerance, acceptance, acceleration, guess and budget.
        state: what ``problem.init(x0)`` returned.
        progress: called after every sweep as ``progress(steps_done, num_steps)``.

    Returns:
        The :class:`picard.Solution`.

    Example:
        >>> import torch, picard
        >>> from picard.core.acceptance import ConvergedPrefix
        >>> from picard.core.budget import Budget
        >>> from picard.core.guess import Predict
        >>> from picard.core.plans import Windows
        >>> from picard.core.window import FixedWindow
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 10)
        >>> x0 = torch.ones(1)
        >>> s = Strategies(picard.Tolerance.of(rule, 0.0, False, 1), ConvergedPrefix(),
        ...                picard.Picard(), Predict(), Budget(max_iters=10))
        >>> sweep(rule, x0, Windows(rule, x0, None, 4), FixedWindow(4), s, None).final
        tensor([0.3487])

    Raises:
        picard.ConvergenceError: a budget ran out with ``on_budget="raise"``.
        picard.NonFiniteError: a sweep met NaN/Inf with ``on_nonfinite="raise"``, or a step
            taken sequentially did.
    """
    log = Log(Defects(problem.num_steps, plan.samples))
    stopped = _loop(problem, plan, controller, strategies, state, log, progress)
    if stopped == "budget" and strategies.budget.on_budget == "raise":
        stats = log.stats(problem, controller, strategies.tolerance)
        partial = plan.partial(stats, x0.dtype)
        raise ConvergenceError(
            f"{strategies.budget.what(len(log.starts))} {plan.progress_note()}; raise the "
            'budget or tol, or pass on_budget="sequential" to finish step by step',
            stats=stats,
            steps_done=plan.front(),
            state=partial.final,
            solution=partial,
        )
    if stopped is not None:  # the rest step by step: windows of one step, each final
        finish = replace(
            strategies, acceptance=AcceptAll(), acceleration=Picard(), guess=Copy(),
            budget=SEQUENTIAL_FINISH,
        )  # fmt: skip
        _loop(problem, plan, FixedWindow(1), finish, state, log, progress, finishing=True)
    return plan.solution(log.stats(problem, controller, strategies.tolerance), x0.dtype)


def _loop(
    problem: Problem,
    plan: Plan,
    controller: Controller,
    s: Strategies,
    state: Any,
    log: Log,
    progress: Progress | None,
    finishing: bool = False,
) -> str | None:
    """Sweep until every window reaches the last step; why it stopped early, or ``None``."""
    run = s.acceleration.begin(plan.active)
    try:
        return _sweeps(problem, plan, controller, s, state, log, progress, finishing, run)
    finally:
        for name, count in run.counters().items():
            log.counters[name] = log.counters.get(name, 0) + count


def _sweeps(
    problem: Problem,
    plan: Plan,
    controller: Controller,
    s: Strategies,
    state: Any,
    log: Log,
    progress: Progress | None,
    finishing: bool,
    run: Any,
) -> str | None:
    n, budget, tolerance, guess = problem.num_steps, s.budget, s.tolerance, s.guess
    # Bound once: the loop's own cost matters when the model is small.
    lengths_of, evaluate, commit, width = plan.lengths, plan.sweep, plan.commit, controller.width
    after = controller.after if controller.adapts else None
    acceptance, update, converged = s.acceptance, run.update, tolerance.converged
    stride_of, defects = acceptance.stride, log.defects
    max_iters, metered = budget.max_iters, budget.max_evaluations is not None
    sweeps = 0
    while plan.running:
        left = budget.left(log.evaluations, plan.active) if metered else None
        lengths = lengths_of(width(plan.active), left)
        if sweeps == max_iters or (metered and budget.spent(sweeps, left, lengths)):
            return "budget"
        this = evaluate(lengths, problem, state, guess, tolerance)
        this.acceptance = acceptance
        sweeps += 1
        number = log.add(plan, this, finishing)
        if not this.finite:
            if budget.on_nonfinite == "sequential":
                return "nonfinite"
            raise plan.non_finite(this, number, budget.where)
        stride = stride_of(converged(this.change, this.steps), lengths)
        if update is not None:
            held = update(this, stride)
            if held is not None:  # the acceleration holds states back
                stride = held
        if defects is not None and not finishing:
            defects.accept(stride)
        commit(this, stride)
        if after is not None:
            after(stride, lengths)
        if progress is not None:
            progress(plan.front(), n)
    return None
