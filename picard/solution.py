"""What a solve returns: the states asked for and what they cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["Solution", "Stats", "no_steps", "summed"]


@dataclass(frozen=True)
class Stats:
    """What a solve cost.

    Attributes:
        num_steps: N, the number of steps solved.
        window: the window size used (steps per sweep, at most); with ``window="auto"``,
            the one it settled on.
        tol: the tolerance used.
        iterations: sweeps, i.e. sequential rounds of batched model calls.
        evaluations: step × sample increments evaluated, summed over the sweeps.
        stages: drift calls per increment (4 for RK4); see :attr:`nfe`.
        window_starts: the first step of the window, per sweep.
        rows_per_evaluation: model rows behind one evaluation (2 with classifier-free
            guidance); see :attr:`model_rows`.
        acceleration: the acceleration's counters (``accelerate=``): two every
            acceleration may report, ``accelerated`` (sweeps whose update it changed) and
            ``fallbacks`` (times its safeguard made the next sweep plain Picard), read by
            :attr:`accelerated` and :attr:`fallbacks`, and any of its own; empty for plain
            Picard.
        sequential_steps: steps taken one at a time after the sweeps stopped
            (``on_budget``/``on_nonfinite="sequential"``); counted in ``iterations``
            and ``evaluations``.
        error_estimate: with ``verify=``, the estimated error of the final state: the
            worst sample's RMS distance between the last two solutions (at ``tol / 100^k``
            and ``tol / 100^(k+1)``) relative to its RMS. It estimates the error of the
            looser one; the returned state is the tighter one, usually a few times
            closer to the sequential result. ``None`` without ``verify``.
        backward: with gradients, the :class:`Stats` of each backward pass run through the
            solve (``loss.backward()``), appended as they run: the adjoint recursion's
            sweeps and evaluations (:mod:`picard.core.adjoint`); for small states, its
            rounds of Jacobian products (:mod:`picard.core.dense_adjoint`).
        cost: with ``window="auto"``, the sweep times its choice read, model rows per call →
            seconds per sweep (measured on this device, or stored from an earlier solve of
            the same model, shape, dtype and device); empty otherwise.
        sample_errors: with ``verify=``, :attr:`error_estimate` per sample: each sample's
            RMS distance between the last two solutions relative to its RMS, in batch
            order (flattened over the batch dimensions); ``None`` without ``verify``.
        verifications: the verification solves run (``verify=``), each warm-started
            from the previous trajectory at a hundredth of its tolerance; their sweeps and
            evaluations are counted in ``iterations`` and ``evaluations``. For a small
            state checked by Newton steps (:mod:`picard.core.newton`), 1 (2 where the solve
            missed the target), their rounds counted as sweeps and
            ``acceleration["newton_steps"]`` the steps.

    Example:
        >>> import torch, picard
        >>> sol = picard.solve(picard.Recursion(lambda i, x: -0.1 * x, 8), torch.ones(1))
        >>> sol.stats.iterations <= sol.stats.num_steps
        True
        >>> len(sol.stats.residuals) == len(sol.stats.window_starts) == sol.stats.iterations
        True
    """

    num_steps: int
    window: int
    tol: float
    iterations: int
    evaluations: int
    stages: int
    window_starts: tuple[int, ...]
    rows_per_evaluation: int = 1
    acceleration: Mapping[str, int] = field(default_factory=dict)
    sequential_steps: int = 0
    error_estimate: float | None = None
    verifications: int = 0
    # Per sweep, the worst sample's squared measure of each state's change ((w, 1) for one
    # shared window, (w, lanes) for per-sample windows, whose starts are in lane_starts),
    # and the reciprocal per-step norm scale: residuals are computed when first asked.
    changes: Sequence[np.ndarray] = field(default=(), repr=False, compare=False)
    lane_starts: Sequence[np.ndarray] | None = field(default=None, repr=False, compare=False)
    inv_scale: np.ndarray | None = field(default=None, repr=False, compare=False)
    # The stats of each backward pass run through this solve (gradients), appended by it.
    backward: list[Stats] = field(default_factory=list, repr=False, compare=False)
    cost: Mapping[int, float] = field(default_factory=dict, compare=False)
    sample_errors: tuple[float, ...] | None = field(default=None, compare=False)
    # The sweeps' record behind estimated_errors (picard.core.estimate.Defects), read when asked.
    defects: Any = field(default=None, repr=False, compare=False)

    @property
    def accelerated(self) -> int:
        """Sweeps whose update the acceleration corrected (``acceleration["accelerated"]``)."""
        return self.acceleration.get("accelerated", 0)

    @property
    def fallbacks(self) -> int:
        """Times the acceleration's safeguard made a sweep plain (``acceleration["fallbacks"]``)."""
        return self.acceleration.get("fallbacks", 0)

    @property
    def nfe(self) -> int:
        """Drift evaluations per sample-step, summed: ``evaluations * stages``."""
        return self.evaluations * self.stages

    @property
    def model_rows(self) -> int:
        """Rows passed to the model in all: ``evaluations * stages * rows_per_evaluation``."""
        return self.evaluations * self.stages * self.rows_per_evaluation

    @cached_property
    def estimated_errors(self) -> tuple[float, ...] | None:
        """Each sample's estimated distance from its sequential result, at no model call.

        RMS distance relative to its RMS, in batch order (flattened over the batch
        dimensions), from the sweeps' own changes (:mod:`picard.core.estimate`): the
        defects the accepted states leave, summed by size. Later steps that amplify errors
        (a sample passing near the boundary between two modes) can make the true distance
        many times larger; ``verify=`` measures it instead (:attr:`sample_errors`).
        ``None`` where no sweep ran (Newton's steps).
        """
        return None if self.defects is None else self.defects.errors()

    @cached_property
    def residuals(self) -> tuple[float, ...]:
        """Per sweep, the largest RMS change of a state since the previous sweep.

        In units of the state's scale (comparable with ``tol``), over the window and the
        samples.
        """
        if not self.changes or self.inv_scale is None:
            return (0.0,) * self.iterations
        if self.lane_starts is not None:  # per-sample windows: a start per lane
            last = len(self.inv_scale) - 1
            out = []
            for change, starts in zip(self.changes, self.lane_starts, strict=True):
                steps = np.minimum(starts[None, :] + np.arange(len(change))[:, None], last)
                out.append(float((np.sqrt(change) * self.inv_scale[steps]).max()))
            return tuple(out)
        sizes = np.array([len(c) for c in self.changes])
        begins = np.cumsum(sizes) - sizes
        steps = np.arange(sizes.sum()) + np.repeat(np.array(self.window_starts) - begins, sizes)
        ratio = np.sqrt(np.concatenate(self.changes).reshape(-1)) * self.inv_scale[steps]
        return tuple(np.maximum.reduceat(ratio, begins).tolist())


@dataclass(frozen=True)
class Solution:
    """The result of :func:`picard.solve`.

    Attributes:
        final: the final state ``x_N``, shaped and typed like ``x0``.
        ys: the saved states stacked on dim 0 (``None`` unless ``save`` asked for some).
        steps: the state indices held by ``ys``, in order (``None`` with ``ys``).
        stats: :class:`Stats`.

    Example:
        >>> import torch, picard
        >>> sol = picard.solve(picard.Recursion(lambda i, x: x, 3), torch.ones(1), save=True)
        >>> sol.ys.squeeze(-1).tolist(), list(sol.steps)
        ([1.0, 2.0, 4.0, 8.0], [0, 1, 2, 3])
    """

    final: Tensor
    ys: Tensor | None
    steps: Sequence[int] | None
    stats: Stats


def summed(parts: Sequence[Stats]) -> Stats:
    """The statistics of several solves run one after another, as one solve's.

    Sweeps, evaluations, sequential steps, window starts, per-sweep changes and the
    acceleration's counters add up; everything else is the last solve's, except ``tol``
    and ``window`` (the first's).

    Args:
        parts: the solves' statistics, in the order they ran (at least one).

    Returns:
        The combined :class:`Stats`.

    Example:
        >>> import torch, picard
        >>> a = picard.solve(picard.Recursion(lambda i, x: -0.1 * x, 8), torch.ones(1)).stats
        >>> summed([a, a]).iterations == 2 * a.iterations
        True
    """
    counters: dict[str, int] = {}
    for s in parts:
        for name, count in s.acceleration.items():
            counters[name] = counters.get(name, 0) + count
    lanes = [s.lane_starts for s in parts]
    return replace(
        parts[-1],
        tol=parts[0].tol,
        window=parts[0].window,
        iterations=sum(s.iterations for s in parts),
        evaluations=sum(s.evaluations for s in parts),
        window_starts=tuple(i for s in parts for i in s.window_starts),
        acceleration=counters,
        sequential_steps=sum(s.sequential_steps for s in parts),
        changes=[c for s in parts for c in s.changes],
        lane_starts=None if any(ls is None for ls in lanes) else [a for ls in lanes for a in ls],
    )


def no_steps() -> Stats:
    """The statistics of a solve that took no step (nothing swept, nothing evaluated).

    Returns:
        :class:`Stats` with zero steps, sweeps and evaluations.

    Example:
        >>> no_steps().iterations, no_steps().num_steps
        (0, 0)
    """
    return Stats(num_steps=0, window=0, tol=0.0, iterations=0, evaluations=0, stages=1,
                 window_starts=())  # fmt: skip
