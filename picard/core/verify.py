"""Verification: an a-posteriori estimate of the final state's error, refined to a target.

A converged solve at ``tol`` is re-solved at ``tol / 100``, warm-started from its own
trajectory (so the second solve costs a fraction of the first), and the distance between
the two final states estimates the first one's error: the sequential result lies much
closer to the second (the estimate is within a factor of 0.8–2.1 of the true error over
random linear recursions, and on the fidelity benchmark, ``benchmarks/results/fidelity.md``;
a tenth of the tolerance was not enough: up to 25x off on stiff linear ones). While the
estimate exceeds the target, the refined solution is refined again, at most
:data:`MAX_VERIFICATIONS` times. As with an embedded Runge–Kutta pair, the tighter solution
is the one returned.

Small states without memory are checked by Newton steps on the whole trajectory instead
(:mod:`picard.core.newton`): each a round of batched calls, usually two or three in all,
falling back to the solves above where the corrections do not contract.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from picard.core.newton import newton_applies, newton_pays, newton_verified
from picard.core.options import Options
from picard.errors import AccuracyWarning, ConvergenceError
from picard.problem import Problem, per_sample_size
from picard.solution import Solution, Stats, summed

__all__ = [
    "MAX_VERIFICATIONS",
    "REFINEMENT",
    "Runs",
    "relative_error",
    "relative_errors",
    "verified",
]

REFINEMENT = 100.0
"""Each verification solve runs at the previous tolerance divided by this."""

MAX_VERIFICATIONS = 2
"""Verification solves at most (the last at ``tol / 10^4``)."""


class Runs(Protocol):
    """What :func:`verified` re-runs: one solve (:class:`picard.core.run.Solver`).

    Example:
        >>> from picard.core.run import Solver
        >>> hasattr(Solver, "run") and hasattr(Solver, "forward")
        True
    """

    problem: Problem
    x0: Tensor
    options: Options
    tol: float
    noise: Any

    def run(
        self,
        *,
        keep: Sequence[int] | None,
        tol: float | None = None,
        init: Tensor | None = None,
        max_iters: int | None = None,
        max_evaluations: int | None = None,
    ) -> Solution:
        """One solve (``max_iters=None``: the number of steps, which always suffices)."""
        ...


def relative_errors(a: Tensor, b: Tensor, batch_ndim: int) -> Tensor:
    """Each sample's RMS distance between ``a`` and ``b``, relative to ``b``'s RMS.

    Args:
        a: a state, e.g. a final sample batch.
        b: the reference state, shaped like ``a``.
        batch_ndim: leading dimensions of ``a`` that index samples (flattened, in order).

    Returns:
        ``(samples,)`` float64: ``||a - b|| / ||b||`` per sample (0 where both are 0).

    Example:
        >>> a, b = torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
        >>> relative_errors(a, b, 1).tolist()
        [0.0, 1.0]
    """
    rows = 1
    for size in a.shape[:batch_ndim]:
        rows *= size
    d = (a.double() - b.double()).reshape(rows, -1).norm(dim=1)
    ref = b.double().reshape(rows, -1).norm(dim=1)
    return torch.where(d == 0, torch.zeros_like(d), d / ref.clamp_min(torch.finfo(ref.dtype).tiny))


def relative_error(a: Tensor, b: Tensor, batch_ndim: int) -> float:
    """The worst sample's RMS distance between ``a`` and ``b``, relative to ``b``'s RMS.

    Args:
        a: a state, e.g. a final sample batch.
        b: the reference state, shaped like ``a``.
        batch_ndim: leading dimensions of ``a`` that index samples.

    Returns:
        ``max over samples of ||a - b|| / ||b||`` (0 where both are 0).

    Example:
        >>> a, b = torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
        >>> relative_error(a, b, 1), round(relative_error(a, b, 0), 4)  # 1 / sqrt(3): one sample
        (1.0, 0.5774)
    """
    return float(relative_errors(a, b, batch_ndim).max())


def verified(solver: Runs, saved: Sequence[int] | None) -> Solution:
    """Solve, then verify and refine until the error estimate is at most the target.

    The first run has the solver's ``tol`` and the options' warm start; the target is
    ``tol`` for ``verify=True``, else the number ``verify``; ``max_iters`` and
    ``max_evaluations`` budget all the runs together. Every run saves every state (the next
    run's warm start).

    Args:
        solver: the solve to run (its options say how).
        saved: the state indices the returned solution keeps (``None``: only the final).

    Returns:
        The last (tightest) solution, with ``stats.error_estimate`` and
        ``stats.verifications`` set and the sweeps and evaluations of all solves summed.

    Raises:
        picard.ConvergenceError: the budgets left nothing for a verification solve.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: 0.05 * torch.sin(3 * x), num_steps=60)
        >>> sol = picard.solve(rule, torch.ones(1), window=20, tol=1e-3, verify=True)
        >>> sol.stats.verifications, sol.stats.error_estimate <= 1e-3
        (1, True)
        >>> sol.stats.sample_errors == (sol.stats.error_estimate,)  # one sample
        True
    """
    options, tol = solver.options, solver.tol
    target = tol if options.verify is True else options.verify
    max_iters, max_evaluations = options.max_iters, options.max_evaluations
    every = list(range(solver.problem.num_steps + 1))

    def run(tol: float, init: Tensor | None, iters: int | None, evals: int | None) -> Solution:
        return solver.run(keep=every, tol=tol, init=init, max_iters=iters, max_evaluations=evals)

    sol = run(tol, options.init, max_iters, max_evaluations)
    if tol > 0 and max_evaluations is None and _newton_may_pay(solver, sol):
        left = None if max_iters is None else max_iters - sol.stats.iterations
        checked = newton_verified(solver.problem, solver.noise, sol, target, left)
        if isinstance(checked, Solution):  # small states: Newton's corrections, few rounds
            return _kept(checked, saved, checked.stats)
        rounds, evaluations = checked  # spent before the corrections stopped
        spent = dataclasses.replace(
            sol.stats,
            iterations=sol.stats.iterations + rounds,
            evaluations=sol.stats.evaluations + evaluations,
        )
        sol = Solution(final=sol.final, ys=sol.ys, steps=sol.steps, stats=spent)
    parts = [sol.stats]
    estimate, per_sample = 0.0, None
    while tol > 0 and len(parts) <= MAX_VERIFICATIONS:
        iters = None if max_iters is None else max_iters - sum(s.iterations for s in parts)
        evals = None if max_evaluations is None else max_evaluations - _evaluations(parts)
        if (iters is not None and iters < 1) or (evals is not None and evals < 1):
            raise ConvergenceError(
                f"verify= needs a verification solve but max_iters={max_iters} / "
                f"max_evaluations={max_evaluations} are spent; raise them",
                stats=_combined(parts, None),
                steps_done=sol.stats.num_steps,
                state=sol.final,
                solution=_kept(sol, saved, _combined(parts, None)),
            )
        tol /= REFINEMENT
        finer = run(tol, sol.ys, iters, evals)
        per_sample = relative_errors(sol.final, finer.final, solver.problem.batch_ndim)
        estimate = float(per_sample.max())
        sol = finer
        parts.append(sol.stats)
        if estimate <= target:
            break
    else:
        if estimate > target:
            warnings.warn(
                f"verify: after {len(parts) - 1} refinements the error estimate "
                f"{estimate:.3g} still exceeds {target:g}; the solution may be that far off",
                AccuracyWarning,
                stacklevel=4,
            )
    stats = _combined(parts, estimate)
    if per_sample is not None:
        stats = dataclasses.replace(stats, sample_errors=tuple(per_sample.tolist()))
    return _kept(sol, saved, stats)


def _newton_may_pay(solver: Runs, sol: Solution) -> bool:
    """Small states without memory, where Newton pays with the fewest products (two)."""
    x0 = solver.x0
    if not newton_applies(solver.problem, x0, solver.options):
        return False
    samples, size = per_sample_size(x0.shape, solver.problem.batch_ndim)
    return newton_pays(sol.stats, samples, min(size, 2), x0.device)


def _evaluations(parts: Sequence[Stats]) -> int:
    return sum(s.evaluations for s in parts)


def _combined(parts: Sequence[Stats], estimate: float | None) -> Stats:
    return dataclasses.replace(summed(parts), error_estimate=estimate, verifications=len(parts) - 1)


def _kept(sol: Solution, saved: Sequence[int] | None, stats: Stats) -> Solution:
    ys = None if saved is None or sol.ys is None else sol.ys[list(saved)]
    return Solution(final=sol.final, ys=ys, steps=saved, stats=stats)
