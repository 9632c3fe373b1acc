"""Budgets of a solve and what happens when one runs out (or a sweep meets NaN/Inf).

``max_iters`` bounds the sweeps, ``max_evaluations`` the (step × sample) evaluations (the
last sweep's windows shrink to fit it). When a budget runs out with ``on_budget="raise"``,
:class:`picard.ConvergenceError` carries the partial solution; with ``"sequential"`` the
remaining steps are taken one at a time — the sweep loop with windows of one step, every
one final — which is still the sequential result, only slower. The states up to each
window's start are final (converged, or computed from converged inputs), so nothing is
lost. ``on_nonfinite`` does the same for a sweep that meets NaN or Inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Budget"]


@dataclass(frozen=True)
class Budget:
    """The sweep and evaluation budgets and the policies when they end.

    Attributes:
        max_iters: the sweep budget (``None``: none).
        max_evaluations: the (step × sample) evaluation budget (``None``: none).
        on_budget: ``"raise"`` or ``"sequential"`` when a budget runs out.
        on_nonfinite: ``"raise"`` or ``"sequential"`` when a sweep meets NaN/Inf.
        where: how a NaN/Inf error describes the run (``None``: the sweeps).

    Example:
        >>> b = Budget(max_iters=10, max_evaluations=100)
        >>> b.left(evaluations=90, columns=4), b.what(sweeps=3)
        (2, 'max_evaluations=100 evaluations')
    """

    max_iters: int | None = None
    max_evaluations: int | None = None
    on_budget: str = "raise"
    on_nonfinite: str = "raise"
    where: str | None = None

    def left(self, evaluations: int, columns: int) -> int | None:
        """Window steps the evaluation budget still affords per sample (``None``: no budget)."""
        if self.max_evaluations is None:
            return None
        return max(0, (self.max_evaluations - evaluations) // columns)

    def spent(self, sweeps: int, left: int | None, lengths: np.ndarray) -> bool:
        """Whether no sweep is left: ``max_iters`` reached, or no window step affordable.

        ``left`` is what :meth:`left` returned, ``lengths`` the next windows' lengths. (The
        sweep loop tests ``max_iters`` itself and calls this only with an evaluation
        budget.)
        """
        return sweeps == self.max_iters or (left is not None and int(lengths.max()) <= 0)

    def what(self, sweeps: int) -> str:
        """Which budget ran out, for the error message."""
        if sweeps == self.max_iters:
            return f"max_iters={self.max_iters} sweeps"
        return f"max_evaluations={self.max_evaluations} evaluations"


SEQUENTIAL_FINISH = Budget(
    where="even when taken sequentially (the fallback after the sweeps stopped)"
)
"""The budget of the step-by-step finish: none; NaN/Inf then raise."""
