"""What one sweep computed: the record the loop hands to its acceleration.

A sweep evaluates, for every *lane* (one window: the whole batch shares one, or each sample
has its own), the increments of its window's states in one batched call, and forms their
Picard values ``x_b + Σ Δ_j``. Arrays are indexed ``(row, column, element)``: row j of a
lane is its window's step ``start + j``; columns are the batch's samples (all in the one
lane of a shared window, one lane each with per-sample windows), so a ``(w, lanes)`` array
broadcasts against ``(w, columns)`` in both layouts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from picard.core.arrays import Arrays
from picard.core.tolerance import Tolerance

__all__ = ["Sweep"]


class Sweep:
    """One sweep's inputs and results (see the module docstring).

    Arrays are numpy arrays on the CPU (views of the solve's tensors:
    ``ops.tensor(a)`` gives a tensor sharing memory) and torch tensors elsewhere. They are
    valid during the sweep only — the workspace moves on — so copy what you keep.

    Attributes:
        ops: the array operations for these arrays.
        lanes: ``(lanes,)`` which lane each is (0 for a shared window; the batch index of
            the sample with per-sample windows), increasing.
        starts: ``(lanes,)`` each lane's first step.
        lengths: ``(lanes,)`` each lane's window length (rows past it are padding).
        x: ``(w, columns, size)`` the states the increments were evaluated at.
        inc: ``(w, columns, size)`` their increments.
        new: ``(w, columns, size)`` the Picard values of the next states, ``x[0] + Σ inc``;
            an acceleration may rewrite the rows that are not final.
        old: ``(w, columns, size)`` the previous values of those next states.
        delta: ``new - old`` as the sweep measured it, before an acceleration rewrote
            ``new`` (``None`` where the sweep was built without it).
        change: ``(w, lanes)`` the tolerance's squared measure of ``new - old`` (worst
            sample of a lane), on the host.
        steps: the steps of ``change``'s rows: a slice (one shared window) or a
            ``(w, lanes)`` array of step indices (per-sample windows).
        tolerance: the test; ``tolerance.in_units(change, steps)`` is the squared change in
            units of ``tol``.
        acceptance: the solve's acceptance rule (:mod:`picard.core.acceptance`), set by the
            loop: ``acceptance.stride(ok, lengths)`` is how far each lane slides for the
            verdicts ``ok`` (e.g. of a tighter test).
        finite: whether the new states are finite.
        evaluations: the (step × sample) evaluations of the sweep.
        front: the first step not final before the sweep (the slowest lane's start).
        num_steps: N, the steps of the grid (a lane's window ends at ``start + length``).

    Example:
        >>> import torch, picard
        >>> seen = []
        >>> class Spy(picard.Picard):  # an acceleration that only looks
        ...     def begin(self, columns):
        ...         run = super().begin(columns)
        ...         run.update = lambda sweep, stride: seen.append(sweep.x.shape)
        ...         return run
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 6)
        >>> _ = picard.solve(rule, torch.ones(2), window=3, accelerate=Spy())
        >>> seen[0]  # (rows, columns, elements per column)
        (3, 1, 2)
    """

    __slots__ = (
        "_inc",
        "_starts",
        "_x",
        "acceptance",
        "change",
        "delta",
        "evaluations",
        "finite",
        "front",
        "lanes",
        "lengths",
        "new",
        "num_steps",
        "old",
        "ops",
        "steps",
        "tolerance",
    )

    def __init__(
        self,
        ops: Arrays,
        lanes: np.ndarray,
        starts: np.ndarray | None,
        lengths: np.ndarray,
        x: Any,
        inc: Any,
        new: Any,
        old: Any,
        change: np.ndarray,
        steps: Any,
        tolerance: Tolerance,
        finite: bool = True,
        evaluations: int = 0,
        front: int = 0,
        num_steps: int = 0,
        delta: Any = None,
    ):
        self.ops, self.lanes, self._starts, self.lengths = ops, lanes, starts, lengths
        self._x, self._inc, self.new, self.old = x, inc, new, old
        self.change, self.steps, self.tolerance = change, steps, tolerance
        self.finite, self.evaluations, self.front = finite, evaluations, front
        self.num_steps = num_steps
        self.delta = delta
        self.acceptance: Any = None

    @property
    def starts(self) -> np.ndarray:
        """``(lanes,)`` each lane's first step (one shared window: ``[front]``)."""
        if self._starts is None:
            self._starts = np.array([self.front])
        return self._starts

    @property
    def x(self) -> Any:
        """The states the increments were evaluated at, ``(w, columns, size)``."""
        return self._x.reshape(self.new.shape)

    @property
    def inc(self) -> Any:
        """Their increments, ``(w, columns, size)``."""
        return self._inc.reshape(self.new.shape)
