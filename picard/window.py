"""How long each sweep's window is: fixed, or sized by a row budget.

A window controller is built once per solve; before each sweep it says how many steps each
running window may take (``width``), and after it learns how far the windows slid
(``after``). The sweep loop caps the width by the steps left and the evaluation budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Controller", "FixedWindow", "RowBudget", "controller_for"]


@runtime_checkable
class Controller(Protocol):
    """The protocol of a window controller (one per solve).

    Example:
        >>> isinstance(FixedWindow(8), Controller)
        True
    """

    cap: int
    """The longest window it will ask for (reported as :attr:`picard.Stats.window`)."""

    adapts: bool
    """Whether it learns from the sweeps (else :meth:`after` is not called)."""

    def width(self, columns: int) -> int:
        """Steps per window for this sweep, with ``columns`` samples still running."""
        ...

    def after(self, stride: np.ndarray, lengths: np.ndarray) -> None:
        """Learn from a sweep whose windows had these ``lengths`` and slid by ``stride``."""
        ...


@dataclass
class FixedWindow:
    """The same window every sweep.

    Attributes:
        cap: the window.

    Example:
        >>> FixedWindow(16).width(4)
        16
    """

    cap: int
    adapts = False

    def width(self, columns: int) -> int:
        """See :class:`Controller`."""
        return self.cap

    def after(self, stride: np.ndarray, lengths: np.ndarray) -> None:
        """See :class:`Controller`."""


class RowBudget:
    """At most ``max_rows`` model rows per call (``window × samples × rows_per_evaluation``).

    ``adapt=True`` (one shared window): the window doubles after a sweep that made all of it
    final, else becomes twice the steps it made final — rows far beyond the converged front
    are mostly wasted — but at least half the budget: small windows cost sweeps (a quarter
    cost 12–24 of 31–33 DDPM-1000 sweeps on the 2-D models; half costs 2–4 and still saves
    evaluations). ``adapt=False`` (per-sample windows): the running samples share the budget
    equally, so a finished sample's rows go to the others.

    Args:
        max_rows: the row budget per call.
        window: a further cap on the window.
        columns: samples in the batch.
        rows_per_evaluation: model rows per (step, sample).
        adapt: adapt the window to the strides (see above).

    Example:
        >>> budget = RowBudget(64, window=100, columns=4, rows_per_evaluation=1, adapt=True)
        >>> budget.cap, budget.width(4)
        (16, 16)
        >>> budget.after(np.array([3]), np.array([16])); budget.width(4)  # slid 3: half the budget
        8
    """

    def __init__(
        self, max_rows: int, window: int, columns: int, rows_per_evaluation: int, adapt: bool
    ):
        self.max_rows, self.window, self.rpe, self.adapt = (
            max_rows,
            window,
            rows_per_evaluation,
            adapt,
        )
        self.cap = self._fit(columns)
        self.w = self.cap
        self.adapts = adapt

    def _fit(self, columns: int) -> int:
        return max(1, min(self.window, self.max_rows // (columns * self.rpe)))

    def width(self, columns: int) -> int:
        """See :class:`Controller`."""
        return self.w if self.adapt else self._fit(columns)

    def after(self, stride: np.ndarray, lengths: np.ndarray) -> None:
        """See :class:`Controller`."""
        if not self.adapt:
            return
        s, used = int(stride[0]), int(lengths[0])
        self.w = (
            min(self.cap, 2 * used) if s == used else min(self.cap, max(self.cap // 2, 2 * s, 1))
        )


def controller_for(
    window: int, max_rows: int | None, columns: int, rows_per_evaluation: int, per_sample: bool
) -> Controller:
    """The controller of a solve: a row budget if ``max_rows`` is given, else fixed.

    Args:
        window: the longest window.
        max_rows: the row budget per call, or ``None``.
        columns: the samples sharing one window (all of them), or 1 for per-sample
            windows, whose budget is shared among the running samples.
        rows_per_evaluation: model rows per (step, sample).
        per_sample: whether each sample has its own window.

    Returns:
        The controller.

    Example:
        >>> controller_for(64, None, 4, 1, False)
        FixedWindow(cap=64)
        >>> controller_for(64, 32, 4, 1, False).cap
        8
    """
    if max_rows is None:
        return FixedWindow(window)
    return RowBudget(max_rows, window, columns, rows_per_evaluation, adapt=not per_sample)
