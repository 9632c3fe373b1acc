"""Where the steps entering a window start: a copy, the problem's prediction, a warm start.

A guess decides only how fast the sweeps converge, never what they converge to. The first
window of a solve starts from copies of ``x0`` (or the warm start): a prediction needs a
model call to go on. A guess has one method, :meth:`Guess.guess`, for one window shared by
the batch (``end`` the first step's index) and for per-sample windows (``end`` a
:class:`picard.Lanes`), returning the guesses, or ``None`` for copies of the last state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from picard.problem import Lanes, Problem

__all__ = ["Copy", "Guess", "Predict", "WarmStart", "guess_for"]


@runtime_checkable
class Guess(Protocol):
    """The protocol of a guess for entering steps (see the module docstring).

    Example:
        >>> isinstance(Predict(), Guess), Predict().needs_history
        (True, True)
    """

    needs_history: bool
    """Whether it needs a model call first (then the first window starts from copies)."""

    def guess(
        self, problem: Problem, x: Tensor, end: int | Lanes, count: int, state: Any
    ) -> Tensor | None:
        """Guesses of the states after steps ``end … end + count - 1``, from state ``x``.

        As :meth:`picard.Problem.guess`: one shared window, ``x`` is state ``end`` and
        the result ``(count, *x.shape)``; per-sample windows, ``end`` is a
        :class:`picard.Lanes` (column k: sample ``end.samples[k]`` after its steps
        ``end.steps[:, k]``, ``-1`` padding) and ``x`` holds each column's newest state.
        ``None``: copies of ``x``.
        """
        ...


@dataclass(frozen=True)
class Copy:
    """Copies of the window's last state, as ParaDiGMS starts new steps.

    Example:
        >>> Copy().guess(None, torch.ones(2), end=3, count=2, state=None) is None  # copies
        True
    """

    needs_history = True

    def guess(self, problem: Problem, x: Tensor, end: int | Lanes, count: int, state: Any) -> None:
        """See :class:`Guess`."""
        return None


@dataclass(frozen=True)
class Predict:
    """The problem's cheap prediction (:meth:`picard.Problem.guess`), else a copy.

    Example:
        >>> import picard
        >>> rule = picard.Recursion(lambda i, x: -x, 4)  # no guess hook: copies
        >>> Predict().guess(rule, torch.ones(2), end=1, count=2, state=None) is None
        True
    """

    needs_history = True

    def guess(
        self, problem: Problem, x: Tensor, end: int | Lanes, count: int, state: Any
    ) -> Tensor | None:
        """See :class:`Guess`."""
        guess = problem.guess(x, end, count, state)
        if guess is not None and tuple(guess.shape) != (count, *x.shape):
            raise ValueError(
                f"problem.guess returned shape {tuple(guess.shape)}; expected {(count, *x.shape)}"
            )
        return guess


@dataclass(frozen=True)
class WarmStart:
    """A given guess of every state, ``(N + 1, *x0.shape)`` (row 0 unused).

    Attributes:
        states: the guesses.

    Example:
        >>> WarmStart(torch.arange(5.0)[:, None]).guess(None, None, end=1, count=2, state=None)
        tensor([[2.],
                [3.]])
    """

    states: Tensor
    needs_history = False

    def guess(
        self, problem: Problem, x: Tensor, end: int | Lanes, count: int, state: Any
    ) -> Tensor:
        """See :class:`Guess`."""
        if not isinstance(end, Lanes):
            return self.states[end + 1 : end + 1 + count]
        ends = end.steps[0]
        rows = ends[None, :] + 1 + torch.arange(count, device=ends.device)[:, None]
        return self.states[rows.clamp(max=self.states.shape[0] - 1), end.samples[None, :]]


def guess_for(init: Tensor | None, predict: bool, dtype: Any) -> Guess:
    """The guess of a solve: the warm start ``init`` if given, else predict or copy.

    Args:
        init: a warm start ``(N + 1, *x0.shape)``, or ``None``.
        predict: whether to use the problem's prediction.
        dtype: the working dtype the warm start is kept in.

    Returns:
        The guess.

    Example:
        >>> guess_for(None, True, torch.float32), guess_for(None, False, torch.float32)
        (Predict(), Copy())
    """
    if init is not None:
        return WarmStart(init.to(dtype))
    return Predict() if predict else Copy()
