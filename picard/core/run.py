"""One solve, built once from its checked options and run as often as its callers ask.

:class:`Solver` holds what every run of one solve shares — the problem, ``x0``, the test,
the acceleration, the evaluator, the noise drawn once — and :meth:`Solver.run` builds the
loop's small objects (plan, window controller, guess, budget) for one run and sweeps.
Verification (:func:`picard.core.verify.verified`) re-runs it at finer tolerances,
warm-started; gradients (:func:`picard.core.adjoint.differentiable`) ask it to solve the
adjoint recursion with :meth:`Solver.adjoint`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_int
from picard.core.acceleration import Newton, Picard, resolve_acceleration
from picard.core.budget import Budget
from picard.core.guess import guess_for
from picard.core.loop import Strategies, sweep
from picard.core.newton import newton_applies, newton_solve
from picard.core.options import Options
from picard.core.plans import Windows
from picard.core.tolerance import Tolerance
from picard.core.verify import verified
from picard.core.window import calibration_key, controller_for, cost_for, curve_for
from picard.evaluation import evaluating, evaluator_for
from picard.problem import Problem, per_sample_size, working_dtype
from picard.solution import Solution

__all__ = ["Solver"]

Progress = Callable[[int, int], None]
OnStep = Callable[[int, Tensor], None]


class Solver:
    """One solve of ``problem`` from ``x0`` with checked ``options``, ready to run.

    Args:
        problem: the recursion (not ``sequential_only``).
        x0: the checked initial state.
        options: the checked options.
        on_step: called as ``on_step(i, x_{i+1})`` as each step becomes final (one shared
            window, no ``verify``).
        progress: called after every sweep as ``progress(steps_done, num_steps)``.

    Attributes:
        tolerance: the convergence test; ``tol`` its value.
        acceleration: the acceleration every run uses (bound to the problem).
        window: the longest window, or ``"auto"``.

    Raises:
        ValueError: ``problem.batch_ndim`` exceeds ``x0.ndim``; a bad ``init``; ``on_step``
            with ``per_sample`` or ``verify``.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 10)
        >>> solver = Solver(rule, torch.ones(1), picard.Options.of(window=4, tol=0))
        >>> solver.forward(None).final
        tensor([0.3487])
    """

    def __init__(
        self,
        problem: Problem,
        x0: Tensor,
        options: Options,
        *,
        on_step: OnStep | None = None,
        progress: Progress | None = None,
    ):
        n = problem.num_steps
        batch_ndim = check_int("problem.batch_ndim", problem.batch_ndim, minimum=0)
        if batch_ndim > x0.ndim:
            raise ValueError(f"problem.batch_ndim={batch_ndim} exceeds x0.ndim={x0.ndim}")
        if options.init is not None:
            _check_init(options.init, n, x0)
        if on_step is not None and (options.per_sample or options.verify is not False):
            raise ValueError("a per-step callback does not combine with per_sample or verify")
        self.problem, self.x0, self.options = problem, x0, options
        self.on_step, self.progress = on_step, progress
        self.samples, size = per_sample_size(x0.shape, batch_ndim)
        self.window: int | str = "auto" if options.window == "auto" else min(n, options.window or n)
        mixed = (
            None if options.rtol is None and options.atol is None else (options.atol, options.rtol)
        )
        dtype = working_dtype(x0.dtype)
        self.tolerance = Tolerance.of(problem, options.tol, options.relative, size, mixed, dtype)
        self.tol = self.tolerance.value
        self.acceleration = resolve_acceleration(options.accelerate, problem) or Picard()
        self.evaluator = evaluator_for(
            options.distributed, options.devices, x0, (n, self.window, self.tol)
        )
        self._noise: list[Any] = []

    @property
    def noise(self) -> Any:
        """What ``problem.init(x0)`` returned: drawn once, reused by every run."""
        if not self._noise:
            with torch.no_grad():
                self._noise.append(self.problem.init(self.x0))
        return self._noise[0]

    def run(
        self,
        *,
        keep: Sequence[int] | None,
        tol: float | None = None,
        init: Tensor | None = None,
        max_iters: int | None = None,
        max_evaluations: int | None = None,
    ) -> Solution:
        """One run of the sweep loop (no autograd, the evaluator already entered).

        Args:
            keep: the state indices to keep (``None``: only the final state).
            tol: the test's value (``None``: :attr:`tol`).
            init: a warm start of every state, or ``None``.
            max_iters: the sweep budget (``None``: N).
            max_evaluations: the evaluation budget, or ``None``.

        Returns:
            The run's solution.
        """
        problem, x0, options = self.problem, self.x0, self.options
        n, dtype = problem.num_steps, working_dtype(x0.dtype)
        newton = None
        if (
            isinstance(self.acceleration, Newton)
            and self.on_step is None
            and newton_applies(problem, x0, options)
        ):
            test = self.tolerance.at(self.tol if tol is None else tol)
            got = newton_solve(
                problem, x0.to(dtype), self.noise, test, init, keep, self.acceleration.max_steps
            )
            if isinstance(got, Solution):
                if self.progress is not None:
                    self.progress(n, n)
                return _in_dtype(got, x0.dtype)
            newton = got  # (rounds, evaluations) spent; the sweeps start from their guesses
            if max_iters is not None:
                max_iters = max(1, max_iters - newton[0])
        strategies = Strategies(
            self.tolerance.at(self.tol if tol is None else tol),
            options.acceptance,
            self.acceleration,
            guess_for(init, options.predict, dtype),
            Budget(max_iters or n, max_evaluations, options.on_budget, options.on_nonfinite),
        )
        control = controller_for(
            self.window, options.max_rows, 1 if options.per_sample else self.samples,
            problem.rows_per_evaluation, options.per_sample,
            curve_for(calibration_key(problem, x0, options)), self.evaluator.agree, n,
            n if init is not None else None,  # a warm start has every step's guess
            cost_for(x0.device),  # deterministic algorithms: a cost model, not the clock
        )  # fmt: skip
        plan = Windows(
            problem, x0, keep, control.cap, per_sample=options.per_sample, on_step=self.on_step
        )
        sol = sweep(problem, x0, plan, control, strategies, self.noise, self.progress)
        if newton is None:
            return sol
        stats = dataclasses.replace(
            sol.stats,
            iterations=sol.stats.iterations + newton[0],
            evaluations=sol.stats.evaluations + newton[1],
            acceleration={**sol.stats.acceleration, "newton_fallbacks": 1},
        )
        return Solution(final=sol.final, ys=sol.ys, steps=sol.steps, stats=stats)

    def forward(self, keep: Sequence[int] | None) -> Solution:
        """The solve the options ask for: one run, or verified runs (``verify=``).

        Args:
            keep: the state indices to keep (``None``: only the final state).

        Returns:
            The solution.
        """
        options = self.options
        # NaN/Inf are detected and reported by the loop itself, not by numpy warnings.
        with (
            torch.no_grad(),
            np.errstate(over="ignore", invalid="ignore"),
            evaluating(self.evaluator),
        ):
            if options.verify is False:
                return self.run(
                    keep=keep,
                    init=options.init,
                    max_iters=options.max_iters,
                    max_evaluations=options.max_evaluations,
                )
            return verified(self, keep)

    def adjoint(self, adjoint: Problem, start: Tensor, window: int) -> Solution:
        """Solve the backward recursion of gradients, keeping every state.

        Its test is relative to each adjoint's RMS at ``tol`` (``rtol`` for the mixed test);
        where its sweeps diverge it does what the forward's ``on_nonfinite`` says.

        Args:
            adjoint: the adjoint problem (:class:`picard.core.adjoint.AdjointProblem`).
            start: its initial state, ``∂L/∂x_N``.
            window: its window (0: the forward solve's).

        Returns:
            The adjoint solution, every state kept.
        """
        weights = self.tolerance.weights
        back = Options.of(
            window=window or self.window,
            tol=self.tol if weights is None else weights[1],
            relative=True,
            predict=False,
            on_nonfinite=self.options.on_nonfinite,  # diverging sweeps: as the forward's
        )
        with torch.no_grad():
            return Solver(adjoint, start, back).forward(range(adjoint.num_steps + 1))


def _in_dtype(sol: Solution, dtype: torch.dtype) -> Solution:
    """``sol`` with its states in ``dtype`` (the sweeps return the caller's dtype too)."""
    ys = None if sol.ys is None else sol.ys.to(dtype)
    return Solution(final=sol.final.to(dtype), ys=ys, steps=sol.steps, stats=sol.stats)


def _check_init(init: Tensor, n: int, x0: Tensor) -> None:
    """Raise unless ``init`` is a finite guess of every state, like ``x0``."""
    if init.shape != (n + 1, *x0.shape):
        raise ValueError(
            f"init must hold a guess of every state, shape {(n + 1, *x0.shape)}; "
            f"got {tuple(init.shape)}"
        )
    if not init.is_floating_point():
        raise TypeError(f"init must be a real floating tensor, got {init.dtype}")
    if init.device != x0.device:
        raise ValueError(f"init is on {init.device}; expected {x0.device}, like x0")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("init holds NaN or Inf")
