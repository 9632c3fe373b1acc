"""``solve``: check a solve's options once, build its run, sweep; ``sequential``, the reference.

The loop itself is :func:`picard.core.loop.sweep`; :class:`picard.core.run.Solver` turns the
checked options into the small objects it runs with — the plan (one window, or one per
sample), the window controller, the tolerance, the acceptance rule, the acceleration, the
guess, the budget — and runs it once, or again for verification (``verify=``) and for the
backward pass of gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_int, check_state
from picard.core.adjoint import differentiable, gradient_inputs
from picard.core.arrays import TORCH
from picard.core.options import Options
from picard.core.plans import Saver, bad_increments, remember, solution
from picard.core.run import Solver
from picard.errors import NonFiniteError
from picard.problem import Problem, per_sample_size, working_dtype
from picard.solution import Solution, Stats

__all__ = ["DEFAULT_TOL", "sequential", "solve", "solve_with", "with_gradients"]

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
    saved = saved_steps(save, n)
    solver = Solver(problem, x0, options, on_step=on_step, progress=progress)
    params = None
    if torch.is_grad_enabled() and (options.distributed or options.devices):
        _no_gradients_across_devices(problem, x0)
    elif torch.is_grad_enabled():
        params = gradient_inputs(problem, x0, solver.noise, options.adjoint_params)
    if params is None:
        return solver.forward(saved)
    if on_step is not None:
        raise ValueError("a per-step callback does not combine with gradients")
    zeros = options.adjoint_params is not None  # each given tensor gets a gradient
    return differentiable(solver, solver.forward(list(range(n + 1))), saved, params, zeros)


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


def with_gradients(problem: Problem, x0: Tensor, options: Options, sol: Solution) -> Solution:
    """``sol``, a solve of ``problem`` run without autograd, made differentiable.

    What :func:`solve_with` returns with gradients, without solving again: a front end
    that found the trajectory under ``torch.no_grad()`` (an adaptive grid's last round)
    attaches the backward pass to it.

    Args:
        problem: the recursion.
        x0: the initial state (as given: gradients flow to it if it requires them).
        options: the checked options (the backward solve's ``tol`` and window).
        sol: its solution, every state kept (``save=True``).

    Returns:
        ``sol`` itself where nothing requires gradients (or under ``torch.no_grad()``),
        else the same states, differentiable, every state kept.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 3)
        >>> x0 = torch.ones(1, requires_grad=True)
        >>> with torch.no_grad():
        ...     sol = picard.solve(rule, x0, tol=0, save=True)
        >>> out = with_gradients(rule, x0, picard.Options.of(tol=0), sol)
        >>> out.final.backward()
        >>> x0.grad  # 0.9³
        tensor([0.7290])
    """
    if not torch.is_grad_enabled() or options.distributed or options.devices:
        return sol
    n = problem.num_steps
    solver = Solver(problem, x0, options)
    params = gradient_inputs(problem, x0, solver.noise, options.adjoint_params)
    if params is None:
        return sol
    zeros = options.adjoint_params is not None
    return differentiable(solver, sol, list(range(n + 1)), params, zeros)


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
