"""Adaptive steps in parallel: torchdiffeq's local error test, met by refining the grid.

torchdiffeq steps an embedded Runge–Kutta pair one step at a time, shrinking a step whose
error estimate fails ``RMS(err / (atol + rtol max(|y_n|, |y_{n+1}|))) <= 1`` and growing
the next. picard solves a whole grid at once instead, then estimates every step's error
from the same batched stages (one round of calls), and changes the grid where the test
says: a failing step is split by the factor torchdiffeq would shrink it by, runs of steps
far below the test are merged (once, on the first grid that passes), and the next solve
starts from the last one's trajectory.
Rounds before the grid passes run the sweeps at a hundred times the tolerance; the grid
that passes is solved once more at the tolerance itself (with gradients) and checked
again. Every step of the returned solution passes torchdiffeq's test, so the answer is as
accurate as torchdiffeq's at the same ``rtol``/``atol`` (not the same grid: the same
test). The initial step is Hairer's choice, as torchdiffeq makes it. As in torchdiffeq,
steps do not stop at the output times: those are read off the steps that hold them
(:mod:`picard.ode.dense`), so a hundred outputs over a span that needs ten steps cost
about ten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_nonneg
from picard.core.options import Options
from picard.errors import ConvergenceError, NonFiniteError
from picard.ode.batching import call_one_row
from picard.ode.callbacks import Callbacks
from picard.ode.dense import dense_output
from picard.ode.grids import interpolate, refine_grid
from picard.ode.integrate import STEP_OPTIONS
from picard.ode.runge_kutta import (
    ODEProblem,
    combine,
    differentiable_steps,
    one_step_slopes,
    stage_times,
)
from picard.ode.tableaus import Tableau
from picard.problem import call_batched, working_dtype
from picard.solution import Solution, Stats, no_steps, summed
from picard.solver import solve_with

__all__ = [
    "FEW_STEPS",
    "MAX_ROUNDS",
    "STEP_OPTIONS",
    "StepOptions",
    "error_ratios",
    "initial_step",
    "regrid",
    "solve_adaptive",
    "step_options",
    "stepped",
]

SAFETY, GROW, SHRINK = 0.9, 10.0, 0.2
"""torchdiffeq's step-size factors: safety, largest growth, largest shrink."""

MAX_ROUNDS = 32
"""Grid changes at most before :func:`solve_adaptive` gives up (each one a solve)."""

LOOSE = 100.0
"""The rounds before the grid passes run the sweeps at ``rtol`` and ``atol`` times this."""

FEW_STEPS = 32
"""Spans whose first grid has at most this many steps are stepped one by one
(:func:`stepped`): the rounds' fixed cost (the sweeps of a loose and a final solve, an error
estimate after each) is about as many sequential rounds of calls as stepping takes there.
Measured on this project's CPU against torchdiffeq, the threshold toggled in one run:
dopri8 on the methods benchmark's oscillator (19 steps) 0.62x → 1.56x, the neural ODE
forward and backward on [0, 1] (7 steps) 1.50x → 2.01x; 15 other cases with first grids of
35 to 5,839 steps were not affected. At 2 (before) it covered only an event search's Newton
iterates. On a device where a batched call costs one row's time the sweeps could have
taken fewer rounds on such spans; they are short either way."""

INITIAL_GROWTH = 10.0
"""The first grid's steps are the initial step times this (torchdiffeq's steps grow by up
to 10x a step); failing ones are split."""

MAX_INITIAL_STEPS = 4096
"""The first grid has at most this many steps (longer spans start coarser)."""

SPLIT_MARGIN = 0.5
"""When some step fails, every step above this ratio is split too (fewer rounds)."""

MERGE_FACTOR = 1.25
"""Merged steps stay this far inside what torchdiffeq would grow each member to."""

MERGE_FRACTION = 0.5
"""A grid that passes is coarsened first when this fraction of its steps could merge."""

SWEEPS_PER_STEP = 4
"""A round that needs more than one sweep per this many steps (and at least
:data:`MIN_BUDGET`) is not paying: the solve steps one step after another instead."""

MIN_BUDGET = 16
"""Every round may take this many sweeps."""

CHUNK = 1024
"""Steps per batched call when estimating the errors."""


@dataclass(frozen=True)
class StepOptions:
    """torchdiffeq's ``options`` for its adaptive solvers, as picard reads them.

    Attributes:
        first_step: the first step's size (``None``: Hairer's choice).
        max_step: the longest step allowed.
        min_step: the shortest step: a step no longer is accepted whatever its error (as
            torchdiffeq's), and no step is split below it.
        safety: the factor of a step's next size ``safety * ratio^(-1/order)``.
        ifactor: the largest growth of a step.
        dfactor: the largest shrinking of a step.
        points: times every grid must contain (``step_t`` and ``jump_t``: steps end there).
        norm: ``norm(tensor) -> scalar`` for the error test (``None``: RMS).
        max_num_steps: the most steps a grid may have.

    Example:
        >>> step_options({"max_step": 0.1, "jump_t": torch.tensor([0.5])}).points
        (0.5,)
    """

    first_step: float | None = None
    max_step: float = math.inf
    min_step: float = 0.0
    safety: float = SAFETY
    ifactor: float = GROW
    dfactor: float = SHRINK
    points: tuple[float, ...] = ()
    norm: Callable[[Tensor], Any] | None = None
    max_num_steps: int = 2**31 - 1


def step_options(options: Mapping[str, Any]) -> StepOptions:
    """:class:`StepOptions` from torchdiffeq's ``options`` (other keys are not read here).

    Args:
        options: the ``options`` mapping.

    Returns:
        The checked options.

    Raises:
        ValueError, TypeError: a bad value (the message names the key).

    Example:
        >>> o = step_options({"first_step": 0.01, "step_t": [0.5, 0.25]})
        >>> o.first_step, o.points, o.max_step
        (0.01, (0.25, 0.5), inf)
    """
    first = options.get("first_step")
    if first is not None:
        first = check_nonneg("options['first_step']", float(first), positive=True)
    top = options.get("max_step")
    if top is not None and float(top) != math.inf:  # torchdiffeq's default: inf
        top = check_nonneg("options['max_step']", float(top), positive=True)
    points: list[float] = []
    for key in ("step_t", "jump_t"):
        value = options.get(key)
        if value is not None:
            points += torch.as_tensor(value).detach().double().reshape(-1).tolist()
    norm = options.get("norm")
    if norm is not None and not callable(norm):
        raise TypeError(f"options['norm'] must be callable, got {type(norm).__name__}")
    most = int(options.get("max_num_steps", 2**31 - 1))
    if most < 1:
        raise ValueError(f"options['max_num_steps'] must be >= 1, got {most}")
    top = math.inf if top is None else top
    low = check_nonneg("options['min_step']", float(options.get("min_step", 0.0)))
    factors = [
        check_nonneg(f"options[{key!r}]", float(options.get(key, default)), positive=True)
        for key, default in (("safety", SAFETY), ("ifactor", GROW), ("dfactor", SHRINK))
    ]
    return StepOptions(first, top, low, *factors, tuple(sorted(set(points))), norm, most)


def initial_step(
    func: Callable[[Tensor, Tensor], Tensor],
    t0: Tensor,
    y0: Tensor,
    order: int,
    rtol: float,
    atol: float,
    in_dtype: torch.dtype,
    direction: float = 1.0,
) -> float:
    """Hairer's initial step (as torchdiffeq chooses it), from two calls of ``func``.

    Args:
        func: the batched drift.
        t0: the initial time (0-d).
        y0: the initial state, in the working dtype.
        order: the method's order.
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        in_dtype: the dtype ``func`` receives.
        direction: ``1`` forward in time, ``-1`` backward (the trial step goes that way).

    Returns:
        The step size (positive).

    Example:
        >>> h = initial_step(lambda t, y: -y, torch.tensor(0.0), torch.ones(1), 5, 1e-6, 1e-9,
        ...                  torch.float32)
        >>> 0 < h < 1
        True
    """
    scale = atol + rtol * y0.abs()
    t = t0.reshape(1)
    f0 = call_batched(func, "func", t, y0[None], in_dtype)[0]
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = y0 + direction * h0 * f0
    f1 = call_batched(func, "func", t + direction * h0, y1[None], in_dtype)[0]
    d2 = _rms((f1 - f0) / scale) / h0
    top = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if top <= 1e-15 else (0.01 / top) ** (1.0 / order)
    return min(100 * h0, h1)


def error_ratios(
    problem: ODEProblem,
    ys: Tensor,
    rtol: float,
    atol: float,
    norm: Callable[[Tensor], Any] | None = None,
) -> np.ndarray:
    """Each step's error estimate against torchdiffeq's test (pass: at most 1).

    One batched round: every step's stages from its solved start ``ys[i]`` (and, for a
    first-same-as-last pair, the slope at every step's end).

    Args:
        problem: the ODE on the grid (an embedded pair's tableau).
        ys: the solved states on the grid, ``(N + 1, *shape)``, in the working dtype.
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        norm: the norm of the scaled error, ``norm(tensor) -> scalar`` (``None``: RMS).

    Returns:
        ``(N,)``: ``RMS(h Σ e_s k_s / (atol + rtol max(|y_i|, |y_{i+1}|)))`` per step.

    Example:
        >>> import picard
        >>> grid = torch.linspace(0, 1, 5, dtype=torch.float64)
        >>> p = ODEProblem(lambda t, y: -y, grid, "dopri5", torch.float64)
        >>> ys = picard.solve(p, torch.ones(1, dtype=torch.float64), tol=0, save=True).ys
        >>> bool((error_ratios(p, ys, 1e-6, 1e-9) <= 1).all())  # steps of 0.25 pass at 1e-6
        True
    """
    weights = problem.tableau.error
    assert weights is not None
    n, dt = problem.num_steps, problem.t[1:] - problem.t[:-1]
    out = np.empty(n)
    with torch.no_grad():
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            h = dt[lo:hi].to(ys.dtype).reshape(-1, *([1] * (ys.ndim - 1)))
            ks = problem.slopes(ys[lo:hi], lo, h)
            if len(weights) > len(ks):  # first same as last: the slope at each step's end
                ks.append(_end_slopes(problem, ys, lo, hi))
            err = combine(ks, weights)
            bound = atol + rtol * torch.maximum(ys[lo:hi].abs(), ys[lo + 1 : hi + 1].abs())
            scaled = h * err / bound
            if norm is None:
                ratio = scaled.pow(2).reshape(hi - lo, -1).mean(1).sqrt()
                out[lo:hi] = ratio.double().cpu().numpy()
            else:
                out[lo:hi] = [float(norm(row)) for row in scaled]
    return out


def _end_slopes(problem: ODEProblem, ys: Tensor, lo: int, hi: int) -> Tensor:
    ends = stage_times(problem.t[lo : hi + 1], 1.0, True)  # just inside each step's end
    return call_batched(problem.func, "func", ends, ys[lo + 1 : hi + 1], problem.in_dtype)


def regrid(
    grid: Tensor,
    index: list[int],
    ratios: np.ndarray,
    order: int,
    merge: bool = True,
    steps: StepOptions | None = None,
) -> tuple[Tensor, list[int]]:
    """The next grid: failing steps split, runs of steps far below the test merged.

    A step's factor is torchdiffeq's, ``min(10, max(0.2, 0.9 ratio^(-1/order)))``: the
    size it would take next, relative to this one. A failing step becomes ``ceil(1 /
    factor)`` equal steps; a run of passing steps between two kept times becomes one
    step when its length is at most every member's factor times its size, over
    :data:`MERGE_FACTOR`.

    Args:
        grid: the grid (1-D, monotone).
        index: the positions of the times the grid must keep (the span's ends and
            ``step_t``/``jump_t``); no step is merged across them.
        ratios: each step's error ratio (:func:`error_ratios`).
        order: the method's order.
        merge: merge runs of passing steps; else split, besides the failing steps, those
            above :data:`SPLIT_MARGIN` (the next solve moves them a little too).
        steps: torchdiffeq's options: no merged step is longer than ``max_step``; no
            step is split into pieces shorter than ``min_step`` (but into two, where it is
            shorter than twice it; such pieces pass the next test); the factor's
            ``safety``, ``ifactor`` and ``dfactor``.

    Returns:
        ``(grid, index)``: the new grid (the kept times exactly) and their positions.

    Example:
        >>> g, i = regrid(torch.tensor([0.0, 1.0, 2.0]), [0, 2], np.array([4.0, 0.1]), 5)
        >>> g.tolist(), i
        ([0.0, 0.5, 1.0, 2.0], [0, 3])
        >>> g, i = regrid(torch.tensor([0.0, 1.0, 2.0, 3.0]), [0, 3], np.zeros(3), 5)
        >>> g.tolist(), i  # far below the test: one step
        ([0.0, 3.0], [0, 1])
    """
    steps = StepOptions() if steps is None else steps
    max_step, min_step = steps.max_step, steps.min_step
    factor = _factors(ratios, order, steps)
    outputs = set(index)
    g = grid.tolist()
    points, new_index, i, n = [g[0]], [0], 0, len(g) - 1
    while i < n:
        if ratios[i] > 1 or (not merge and ratios[i] > SPLIT_MARGIN):
            pieces = max(2, math.ceil(1.0 / factor[i] - 1e-9))
            if min_step > 0:
                pieces = max(2, min(pieces, math.floor(abs(g[i + 1] - g[i]) / min_step)))
            points += [g[i] + (g[i + 1] - g[i]) * k / pieces for k in range(1, pieces + 1)]
            i += 1
        elif not merge:
            points.append(g[i + 1])
            i += 1
        else:  # the longest run from i that every member allows
            allowed = min(max_step, abs(g[i + 1] - g[i]) * factor[i] / MERGE_FACTOR)
            j = i + 1
            while j < n and j not in outputs and ratios[j] <= 1:
                allowed = min(allowed, abs(g[j + 1] - g[j]) * factor[j] / MERGE_FACTOR)
                if abs(g[j + 1] - g[i]) > allowed:
                    break
                j += 1
            points.append(g[j])
            i = j
        if i in outputs:
            new_index.append(len(points) - 1)
    new = torch.tensor(points, dtype=grid.dtype, device=grid.device)
    for j, k in zip(index, new_index, strict=True):
        new[k] = grid[j]  # the output times exactly
    return new, new_index


def solve_adaptive(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    tableau: Tableau,
    batch_ndim: int,
    options: Options,
    step_on: bool = True,
    steps: StepOptions = StepOptions(),
    callbacks: Callbacks | None = None,
    stepping: bool = False,
    adjoint: bool = False,
) -> tuple[Tensor, Stats]:
    """``odeint`` with an embedded pair: every step passes torchdiffeq's error test.

    Args:
        func: the batched drift.
        y0: the initial state (the user's dtype).
        t: the output times.
        tableau: an embedded pair (``tableau.error`` set).
        batch_ndim: leading dimensions of ``y0`` that index samples.
        options: the solve's options; ``rtol``/``atol`` (torchdiffeq's defaults 1e-7 and
            1e-9 where ``None``) set the error test and the sweeps' test alike.
        step_on: where a round's sweeps meet NaN or Inf, solve by :func:`stepped`
            instead of raising. Likewise, unless ``options.max_iters`` is set, where a
            round needs more than one sweep per :data:`SWEEPS_PER_STEP` steps.
        steps: torchdiffeq's adaptive options (:func:`step_options`).
        callbacks: ``func``'s step callbacks: each round's failing steps are rejected,
            the final grid's steps accepted.
        stepping: step one step after another from the start (:func:`stepped`), as a
            span of at most :data:`FEW_STEPS` steps is (:mod:`picard.ode.paths` says when).
        adjoint: a stepped solve's backward pass is the adjoint recursion of its steps
            (``odeint_adjoint``), not autograd through them.

    Returns:
        ``(ys, stats)``: the states at ``t`` and the statistics of every round (the
        initial step's two calls and each error estimate count as sweeps).

    Raises:
        picard.ConvergenceError: no grid passed in :data:`MAX_ROUNDS` rounds.

    Example:
        >>> from picard.core.options import Options
        >>> from picard.ode.tableaus import ADAPTIVE
        >>> t = torch.linspace(0, 1, 3, dtype=torch.float64)
        >>> ys, stats = solve_adaptive(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t,
        ...                            ADAPTIVE["dopri5"], 0, Options.of())
        >>> abs(float(ys[-1]) - 0.36787944) < 1e-7, stats.num_steps > 2  # exp(-1)
        (True, True)
    """
    rtol = 1e-7 if options.rtol is None else options.rtol
    atol = 1e-9 if options.atol is None else options.atol
    work = y0.to(working_dtype(y0.dtype))
    if steps.first_step is not None:
        h, rounds = steps.first_step, 0
    else:
        with torch.no_grad():
            direction = 1.0 if bool(t[-1] > t[0]) else -1.0
            h = initial_step(func, t[0], work.detach(), tableau.order, rtol, atol, y0.dtype,
                             direction)  # fmt: skip
        rounds = 2  # two sweeps: the initial step's calls
    span = float((t[-1] - t[0]).abs())
    spacing = min(steps.max_step, max(h * INITIAL_GROWTH, span / MAX_INITIAL_STEPS))
    spacing = max(spacing, steps.min_step)
    nodes = _nodes(t, steps.points)
    grid, index = refine_grid(nodes, spacing)
    backward = (batch_ndim, options) if adjoint else None
    if stepping or len(grid) - 1 <= FEW_STEPS:  # a short span: the sweeps cannot pay
        return stepped(func, y0, t, tableau, rtol, atol, h, None, rounds, steps, callbacks,
                       backward)  # fmt: skip
    parts: list[Stats] = []
    samples = math.prod(y0.shape[:batch_ndim])
    estimated, prev = 0, None
    settled = merged = False
    budgeted = options.max_iters is None
    for _ in range(MAX_ROUNDS):
        if len(grid) - 1 > steps.max_num_steps:
            raise ValueError(
                f"odeint: max_num_steps exceeded: the grid needs {len(grid) - 1} steps, "
                f"options['max_num_steps'] is {steps.max_num_steps}"
            )
        problem = ODEProblem(func, grid, tableau, y0.dtype, batch_ndim, perturb=True)
        init = None if prev is None else interpolate(prev[0], prev[1], grid)
        loose = 1.0 if settled else LOOSE
        budget = max(MIN_BUDGET, problem.num_steps // SWEEPS_PER_STEP) if budgeted else None
        opts = dataclasses.replace(options, init=init, rtol=rtol * loose, atol=atol * loose,
                                   tol=None, max_iters=budget or options.max_iters)  # fmt: skip
        try:
            sol = _solve(problem, y0, opts, grad=settled)
        except (ConvergenceError, NonFiniteError) as e:
            if not (budgeted if isinstance(e, ConvergenceError) else step_on):
                raise
            spent = [*parts, e.stats] if getattr(e, "stats", None) is not None else parts
            before = _with_estimates(spent, 0, estimated) if spent else None  # the estimates too
            return stepped(func, y0, t, tableau, rtol, atol, h, before, rounds, steps, callbacks,
                           backward)  # fmt: skip
        assert sol.ys is not None
        ys = sol.ys.detach().to(work.dtype)
        ratios = error_ratios(problem, ys, rtol, atol, steps.norm)
        if steps.min_step > 0:  # torchdiffeq accepts a step of min_step whatever its error
            short = np.abs(np.diff(grid.double().cpu().numpy())) <= steps.min_step * (1 + 1e-12)
            ratios = np.where(short, np.minimum(ratios, 1.0), ratios)
        parts.append(sol.stats)
        rounds, estimated = rounds + 1, estimated + problem.num_steps * samples
        passed, prev = bool((ratios <= 1).all()), (grid, ys)
        if callbacks is not None:
            for i in np.flatnonzero(ratios > 1).tolist():
                callbacks.steps(grid[i : i + 2], ys[i : i + 1], accepted=False)
        if passed and settled:
            if callbacks is not None:
                callbacks.steps(grid, ys)
            ys_out = dense_output(func, tableau, grid, sol.ys, t, y0.dtype)
            return ys_out, _with_estimates(parts, rounds + 1, estimated)
        if passed:  # coarsen once, where far below the test; else solve it at the tolerance
            new, new_index = regrid(grid, index, ratios, tableau.order, steps=steps)
            if (
                merged
                or _mergeable(ratios, tableau.order, steps) < MERGE_FRACTION
                or len(new) == len(grid)
            ):
                settled = True
                continue
            merged, grid, index = True, new, new_index
            continue
        grid, index = regrid(grid, index, ratios, tableau.order, merge=False, steps=steps)
    stats = _with_estimates(parts, rounds, estimated)
    raise ConvergenceError(
        f"odeint: no grid passed the error test (rtol={rtol:g}, atol={atol:g}) in "
        f"{MAX_ROUNDS} rounds; the last had {len(grid) - 1} steps",
        stats=stats,
        steps_done=0,
        state=y0,
    )


def stepped(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    tableau: Tableau,
    rtol: float,
    atol: float,
    h: float,
    spent: Stats | None = None,
    rounds: int = 0,
    steps: StepOptions = StepOptions(),
    callbacks: Callbacks | None = None,
    adjoint: tuple[int, Options] | None = None,
) -> tuple[Tensor, Stats]:
    """Torchdiffeq's own stepping, one step after another: where sweeps do not pay.

    Each step's stages from its start, its error against the same test, accepted or
    retried with torchdiffeq's factor (after an accepted step the next is never shorter,
    as torchdiffeq's controller has it), so the steps are torchdiffeq's; they end exactly
    on ``step_t``/``jump_t`` and the span's end, and the output times are read off the
    steps that hold them (:func:`~picard.ode.dense.dense_output`), as torchdiffeq reads
    them. Gradients flow by autograd through the steps, or, with ``adjoint``
    (``odeint_adjoint``), by the adjoint recursion of the accepted steps
    (:func:`picard.solver.with_gradients`): the steps are then taken without autograd,
    and only the trajectory is kept for the backward pass.

    Args:
        func: the batched drift.
        y0: the initial state.
        t: the output times.
        tableau: an embedded pair.
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        h: the first step's size (positive).
        spent: the statistics of the sweeps run before (their cost is reported too).
        rounds: sweeps run besides them (the initial step, error estimates).
        steps: torchdiffeq's adaptive options (:func:`step_options`).
        callbacks: ``func``'s step callbacks, called as each step is tried.
        adjoint: ``(batch_ndim, options)`` for the adjoint recursion's backward pass
            (``options.adjoint_params`` among them), or ``None`` for autograd's.

    Returns:
        ``(ys, stats)``; ``stats.sequential_steps`` counts the steps tried here,
        ``stats.num_steps`` those accepted.

    Example:
        >>> from picard.ode.tableaus import ADAPTIVE
        >>> t = torch.linspace(0, 1, 3, dtype=torch.float64)
        >>> ys, stats = stepped(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t,
        ...                     ADAPTIVE["dopri5"], 1e-7, 1e-9, 0.1)
        >>> abs(float(ys[-1]) - 0.36787944) < 1e-6, stats.sequential_steps > 2  # exp(-1)
        (True, True)
    """
    quiet = adjoint is not None and torch.is_grad_enabled()  # the adjoint's backward pass
    with torch.no_grad() if quiet else contextlib.nullcontext():
        grid, states, tried = _steps(func, y0, t, tableau, rtol, atol, h, steps, callbacks)
    accepted = len(grid) - 1
    base = spent if spent is not None else no_steps()
    stats = dataclasses.replace(
        base,
        num_steps=accepted,
        iterations=base.iterations + rounds + tried,
        sequential_steps=base.sequential_steps + tried,
    )
    if quiet:
        assert adjoint is not None
        batch_ndim, options = adjoint
        problem = ODEProblem(func, grid, tableau, y0.dtype, batch_ndim, perturb=True)
        opts = dataclasses.replace(options, rtol=rtol, atol=atol, tol=None, init=None,
                                   max_iters=None)  # fmt: skip
        states = differentiable_steps(problem, y0, opts, states, stats)
    ys_out = dense_output(func, tableau, grid, states, t, y0.dtype).to(y0.dtype)
    return ys_out, stats


def _steps(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    tableau: Tableau,
    rtol: float,
    atol: float,
    h: float,
    steps: StepOptions,
    callbacks: Callbacks | None,
) -> tuple[Tensor, Tensor, int]:
    """:func:`stepped`'s steps: the accepted steps' ends, their states, the steps tried."""
    weights = tableau.error
    assert weights is not None
    work = working_dtype(y0.dtype)
    y, path, tried, accepted = y0.to(work), [y0.to(work)], 0, 0
    sign = 1.0 if bool(t[-1] > t[0]) else -1.0
    now = float(t[0])
    nodes = _nodes(t, steps.points)
    ends = [nodes[0]]
    for k, target in enumerate(nodes.tolist()):
        if k == 0:
            continue
        while sign * (target - now) > 0:
            if tried >= steps.max_num_steps:
                raise ValueError(
                    f"odeint: max_num_steps exceeded: {tried} steps tried, "
                    f"options['max_num_steps'] is {steps.max_num_steps}"
                )
            step = min(max(h, steps.min_step), steps.max_step, sign * (target - now))
            last = step == sign * (target - now)
            hs = torch.tensor(sign * step, dtype=work, device=y.device)
            pair = torch.stack([t[0] * 0 + now, t[0] * 0 + (target if last else now + sign * step)])
            pair = pair.to(t.dtype)  # the step's ends; its stages are read just inside them
            at = [stage_times(pair, c, True)[0] for c in tableau.c]
            ks = one_step_slopes(func, tableau, y, hs, at, y0.dtype)
            total = combine(ks, tableau.b)
            assert total is not None
            new = y + hs * total
            if len(weights) > len(ks):
                end_at = stage_times(pair, 1.0, True)[0]
                ks.append(call_one_row(func, "func", end_at, new, y0.dtype))
            err = hs * combine(ks, weights)
            bound = atol + rtol * torch.maximum(y.abs(), new.abs())
            scaled = (err / bound).detach()
            ratio = float(scaled.pow(2).mean().sqrt() if steps.norm is None else steps.norm(scaled))
            tried += 1
            if callbacks is not None:
                span = torch.tensor([now, now + sign * step], dtype=t.dtype, device=t.device)
                callbacks.steps(span, y[None], accepted=ratio <= 1)
            if ratio <= 1 or step <= steps.min_step:  # a step of min_step: always accepted
                y, now, accepted = new, (target if last else now + sign * step), accepted + 1
                path.append(y)
                ends.append(nodes[k] if last else t[0] * 0 + now)
            factor = float(_factors(np.array([ratio]), tableau.order, steps)[0])
            h = step * (max(factor, 1.0) if ratio < 1 else factor)  # torchdiffeq's: no shrinking
    grid = torch.stack(ends).to(t.dtype)
    return grid, torch.stack(path), tried


def _nodes(t: Tensor, points: tuple[float, ...]) -> Tensor:
    """The span of ``t`` with the ``points`` inside it merged in: where steps must end.

    Output times between them are read off the steps (:func:`~picard.ode.dense.dense_output`).
    """
    lo, hi = sorted((float(t[0]), float(t[-1])))
    forward = bool(t[-1] > t[0])
    extra = sorted({p for p in points if lo < p < hi}, reverse=not forward)
    nodes = torch.tensor([float(t[0]), *extra, float(t[-1])], dtype=t.dtype, device=t.device)
    nodes[0], nodes[-1] = t[0], t[-1]  # the ends exactly
    return nodes


def _mergeable(ratios: np.ndarray, order: int, steps: StepOptions) -> float:
    """The fraction of steps that could be twice as long."""
    return float((_factors(ratios, order, steps) > 2 * MERGE_FACTOR).mean())


def _factors(ratios: np.ndarray, order: int, steps: StepOptions) -> np.ndarray:
    """The next step's factor, ``clip(safety ratio^(-1/order), dfactor, ifactor)``."""
    with np.errstate(divide="ignore"):
        raw = steps.safety * ratios ** (-1.0 / order)
        factor = np.minimum(steps.ifactor, np.maximum(steps.dfactor, raw))
    return np.where(ratios > 0, factor, steps.ifactor)


def _solve(problem: ODEProblem, y0: Tensor, options: Options, grad: bool) -> Solution:
    if grad:
        return solve_with(problem, y0, options, save=True)
    with torch.no_grad():
        return solve_with(problem, y0.detach(), options, save=True)


def _with_estimates(parts: list[Stats], rounds: int, evaluations: int) -> Stats:
    total = summed(parts)
    return dataclasses.replace(
        total, iterations=total.iterations + rounds, evaluations=total.evaluations + evaluations
    )


def _rms(x: Tensor) -> float:
    return float(x.pow(2).mean().sqrt())
