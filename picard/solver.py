"""``solve``: check a solve's options once, build its strategies, run the sweep loop.

The loop itself is :func:`picard.core.loop.sweep`; this module turns the user's options into
the small objects it runs with — the plan (one window, or one per sample), the window
controller, the tolerance, the acceptance rule, the acceleration, the guess, the budget —
and wraps it in verification (``verify=``) and the device/rank evaluator.
``sequential`` is the step-by-step reference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_int, check_state
from picard.core.acceleration import Picard
from picard.core.adjoint import differentiable, gradient_inputs
from picard.core.arrays import TORCH
from picard.core.budget import Budget
from picard.core.guess import guess_for
from picard.core.loop import Strategies, sweep
from picard.core.plans import (
    PerSampleWindows,
    Saver,
    SharedWindow,
    bad_increments,
    remember,
    solution,
)
from picard.core.tolerance import Tolerance
from picard.core.verify import verified
from picard.core.window import calibration_key, controller_for, curve_for
from picard.errors import NonFiniteError
from picard.evaluation import evaluating, evaluator_for
from picard.options import Options
from picard.problem import Problem, per_sample_size, working_dtype
from picard.solution import Solution, Stats

__all__ = ["DEFAULT_TOL", "sequential", "solve", "solve_with"]

DEFAULT_TOL = Problem.default_tol
"""Default tolerance of ODEs, SDEs and recursions (:attr:`picard.Problem.default_tol`)."""

Progress = Callable[[int, int], None]


def solve(
    problem: Problem,
    x0: Tensor,
    *,
    save: bool | Sequence[int] = False,
    progress: Progress | None = None,
    **options: Any,
) -> Solution:
    """Solve ``problem`` from ``x0`` by sliding-window Picard iteration.

    Args:
        problem: the recursion (:class:`picard.Problem`).
        x0: the initial state; any shape, real floating dtype, any device.

    Other Arguments:
        save: ``True`` keeps every state ``x_0 … x_N`` in ``Solution.ys``; a sequence of
            increasing state indices keeps those; ``False`` keeps only the final state.
        progress: called after every sweep as ``progress(steps_done, num_steps)``
            (``verify`` starts it again from 0 for each verification solve).
        **options: the options of :class:`picard.Options`, by name: ``window``, ``tol``,
            ``max_iters``, ``accelerate``, ``predict``, ``max_rows``, ``init``,
            ``per_sample``, ``distributed``, ``devices``, ``max_evaluations``,
            ``on_budget``, ``on_nonfinite``, ``relative``, ``verify``.

    Returns:
        A :class:`picard.Solution`. States, cumulative sums and residuals are kept in
        float32 or float64 whatever the drift computes in; results come back in
        ``x0.dtype``. Runs without autograd.

    Raises:
        TypeError, ValueError: a bad argument (the message names it).
        picard.NonFiniteError: an increment was NaN or Inf (names the step and sweep).
        picard.ConvergenceError: a budget ran out before the last step.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: 0.01 * torch.sin(x), num_steps=100)
        >>> sol = picard.solve(rule, torch.tensor([1.0]), window=20, tol=1e-6)
        >>> sol.stats.iterations < 100
        True
    """
    options_ = Options.of(**options)
    return solve_with(problem, check_state("x0", x0), options_, save=save, progress=progress)


def solve_with(
    problem: Problem,
    x0: Tensor,
    options: Options,
    *,
    save: bool | Sequence[int] = False,
    progress: Progress | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> Solution:
    """:func:`solve` with its options and ``x0`` already checked.

    Front ends (:func:`picard.odeint`, :func:`picard.sdeint`, pipelines) check their
    options (:meth:`picard.Options.of`) and state when they are called, before any work,
    and solve through this.

    Args:
        problem: the recursion.
        x0: the initial state.
        options: the checked options.
        save: as for :func:`solve`.
        progress: as for :func:`solve`.
        on_step: called as ``on_step(i, x_{i+1})`` for every step ``i`` in order, as its
            result becomes final (one shared window, no ``verify``): what a sequential
            loop's per-step callback would see, though later steps may already be under
            way.

    Returns:
        The :class:`picard.Solution`.

    Raises:
        ValueError: ``on_step`` with ``per_sample`` or ``verify``.

    Example:
        >>> import torch, picard
        >>> options = picard.Options.of(window=4, tol=0)
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 10)
        >>> solve_with(rule, torch.ones(1), options).final
        tensor([0.3487])
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a picard.Problem, got {type(problem).__name__}")
    n = check_int("problem.num_steps", problem.num_steps, minimum=1)
    if problem.sequential_only:
        return _own_loop(problem, x0, save, on_step)
    window = "auto" if options.window == "auto" else min(n, options.window or n)
    max_iters = options.max_iters or n
    saved = saved_steps(save, n)
    batch_ndim = check_int("problem.batch_ndim", problem.batch_ndim, minimum=0)
    if batch_ndim > x0.ndim:
        raise ValueError(f"problem.batch_ndim={batch_ndim} exceeds x0.ndim={x0.ndim}")
    samples, size = per_sample_size(x0.shape, batch_ndim)
    if options.init is not None:
        _check_init(options.init, n, x0)
    if on_step is not None and (options.per_sample or options.verify is not False):
        raise ValueError("a per-step callback does not combine with per_sample or verify")
    mixed = None if options.rtol is None and options.atol is None else (options.atol, options.rtol)
    tolerance = Tolerance.of(
        problem, options.tol, options.relative, size, mixed, working_dtype(x0.dtype)
    )
    tol = tolerance.value
    acceleration = (
        problem.default_acceleration() if options.accelerate == "auto" else options.accelerate
    )
    if hasattr(acceleration, "bind"):  # what it needs of the problem (the secant: its prior)
        acceleration = acceleration.bind(problem)
    evaluator = evaluator_for(options.distributed, options.devices, x0, (n, window, tol))
    drawn: list[Any] = []

    def run(
        tol: float, init: Tensor | None, iters: int, evaluations: int | None, keep: Any = saved
    ) -> Solution:
        if not drawn:  # verification solves reuse the first solve's noise
            drawn.append(problem.init(x0))
        strategies = Strategies(
            tolerance.at(tol),
            options.acceptance,
            acceleration or Picard(),
            guess_for(init, options.predict, working_dtype(x0.dtype)),
            Budget(iters, evaluations, options.on_budget, options.on_nonfinite),
        )
        columns = 1 if options.per_sample else samples
        rpe = problem.rows_per_evaluation
        control = controller_for(
            window, options.max_rows, columns, rpe, options.per_sample,
            curve_for(calibration_key(problem, x0, options)), evaluator.agree, n,
            n if init is not None else None,  # a warm start has every step's guess
        )  # fmt: skip
        if options.per_sample:
            plan = PerSampleWindows(problem, x0, keep, control.cap)
        else:
            plan = SharedWindow(problem, x0, keep, control.cap, on_step=on_step)
        return sweep(problem, x0, plan, control, strategies, drawn[0], progress)

    def forward(keep: Any) -> Solution:
        # NaN/Inf are detected and reported by the loop itself, not by numpy warnings.
        with torch.no_grad(), np.errstate(over="ignore", invalid="ignore"), evaluating(evaluator):
            if options.verify is False:
                return run(tol, options.init, max_iters, options.max_evaluations, keep)
            target = tol if options.verify is True else options.verify
            every = list(range(n + 1))
            return verified(
                lambda t, i, m, e: run(t, i, n if m is None else m, e, every),
                tol,
                target,
                options.init,
                None if options.max_iters is None else max_iters,
                options.max_evaluations,
                batch_ndim,
                keep,
            )

    params = None
    if torch.is_grad_enabled() and (options.distributed or options.devices):
        _no_gradients_across_devices(problem, x0)
    elif torch.is_grad_enabled():
        with torch.no_grad():
            drawn.append(problem.init(x0))
        params = gradient_inputs(problem, x0, drawn[0], options.adjoint_params)
    if params is None:
        return forward(saved)
    if on_step is not None:
        raise ValueError("a per-step callback does not combine with gradients")

    # the backward's test: relative to each adjoint's RMS, at tol (or rtol, for rtol/atol)
    back_tol = tol if tolerance.weights is None else tolerance.weights[1]

    def solve_adjoint(adjoint: Problem, start: Tensor, adjoint_window: int) -> Solution:
        back = Options.of(
            window=adjoint_window or window, tol=back_tol, relative=True, predict=False
        )
        with torch.no_grad():
            return solve_with(adjoint, start, back, save=True)

    every = forward(list(range(n + 1)))
    return differentiable(problem, x0, every, drawn[0], saved, params, solve_adjoint)


def sequential(problem: Problem, x0: Tensor, *, save: bool | Sequence[int] = False) -> Solution:
    """Solve ``problem`` step by step, one call per step: the reference for :func:`solve`.

    Runs in the caller's grad mode: gradients are autograd's through the loop (every
    step's activations are kept), the reference for :func:`solve`'s backward pass.

    Args:
        problem: the recursion (:class:`picard.Problem`).
        x0: the initial state.
        save: as for :func:`solve`.

    Returns:
        A :class:`picard.Solution`; ``stats.iterations`` is N (one round per step).

    Example:
        >>> import torch, picard
        >>> picard.sequential(picard.Recursion(lambda i, x: -0.1 * x, 10), torch.ones(1)).final
        tensor([0.3487])
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a picard.Problem, got {type(problem).__name__}")
    n = check_int("problem.num_steps", problem.num_steps, minimum=1)
    x0 = check_state("x0", x0)
    saved = saved_steps(save, n)
    samples, _ = per_sample_size(x0.shape, problem.batch_ndim)
    # in the caller's grad mode: autograd records what requires grad
    x = x0.to(working_dtype(x0.dtype), copy=True)
    state = problem.init(x0)
    saver = None if saved is None else Saver(saved, x, TORCH)
    history: Tensor | None = None
    for i in range(n):
        inc, out = problem.increments(x[None], i, state, history)
        if not isinstance(inc, Tensor) or inc.shape != (1, *x.shape) or inc.dtype != x.dtype:
            bad_increments(inc, x[None])
        x = x + inc[0]
        if not bool(torch.isfinite(x).all()):
            label = problem.step_label(i)
            raise NonFiniteError(f"{label}: NaN or Inf in the sequential solve", step=i)
        if saver is not None:
            saver.add(x[None], i, 1)
        if problem.memory:
            history = remember(history, out, 1, problem.memory)
    stats = Stats(
        n, 1, 0.0, n, n * samples, problem.stages, tuple(range(n)), problem.rows_per_evaluation
    )
    return solution(x, None if saver is None else saver.ys_t, saved, stats, x0.dtype)


def _no_gradients_across_devices(problem: Problem, x0: Tensor) -> None:
    """Refuse gradients across devices: ``distributed``/``devices`` solves are detached.

    Raise if ``x0`` asks for gradients; warn if the model's parameters require grad.
    """
    if x0.requires_grad:
        raise ValueError(
            "x0 requires grad, but gradients through a solve do not combine with "
            "distributed or devices; detach x0 or solve on one device"
        )
    if any(p.requires_grad for p in problem.parameters()):
        warnings.warn(
            "a distributed or devices solve is not differentiable: the result is detached "
            "from the model's parameters (run it under torch.no_grad() to silence this)",
            UserWarning,
            stacklevel=4,
        )


def _own_loop(
    problem: Problem, x0: Tensor, save: Any, on_step: Callable[[int, Tensor], None] | None
) -> Solution:
    """A ``sequential_only`` problem, by its own loop: exactly its sequential result."""
    if save is not False or on_step is not None:
        raise ValueError(
            f"{type(problem).__name__} runs step by step: save and on_step are not kept"
        )
    n = problem.num_steps
    samples, _ = per_sample_size(x0.shape, problem.batch_ndim)
    final = problem.loop(x0)  # in the caller's grad mode: autograd through the loop
    stats = Stats(
        n, 1, 0.0, n, n * samples, problem.stages, tuple(range(n)), problem.rows_per_evaluation
    )
    return Solution(final=final, ys=None, steps=None, stats=stats)


def saved_steps(save: Any, n: int) -> Sequence[int] | None:
    """The state indices ``save`` asks for (``None``: only the final state)."""
    if save is True:
        return range(n + 1)
    if save is False or save is None:
        return None
    if isinstance(save, Tensor | np.ndarray):
        save = save.tolist()
    items = list(save) if isinstance(save, Sequence | range) and not isinstance(save, str) else None
    if items is None or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) for s in items
    ):
        raise TypeError(
            f"save must be a bool or a sequence of integer state indices, got {save!r:.60}"
        )
    steps = [int(s) for s in items]
    if not steps or any(s < 0 or s > n for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"save must hold increasing state indices in [0, {n}], got {steps}")
    return steps


def _check_init(init: Tensor, n: int, x0: Tensor) -> None:
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
