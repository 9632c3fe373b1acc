"""Finishing a solve step by step: ``on_budget="sequential"`` and ``on_nonfinite="sequential"``.

When the sweep budget runs out, or a sweep meets NaN/Inf, the states up to the window's
start are final (converged, or computed from converged inputs). The remaining steps can
then be taken one at a time, as the sequential sampler takes them, so the result is
still the sequential one — only slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from picard.errors import NonFiniteError
from picard.problem import Problem

__all__ = ["FALLBACKS", "bad_increments", "finish_sequentially"]

FALLBACKS = ("raise", "sequential")
"""Values of ``on_budget`` and ``on_nonfinite``."""


def finish_sequentially(
    problem: Problem,
    state: Any,
    x: Tensor,
    start: int,
    history: Tensor | None,
    keep: Callable[[int, Tensor], None],
    remember: Callable[[Tensor | None, Any], Tensor | None],
    where: str = "even when taken sequentially (the fallback after the sweeps stopped)",
) -> Tensor:
    """Take steps ``start … N-1`` one at a time from state ``x`` (state ``start``).

    ``keep(i, x)`` receives each new state ``i``; ``remember(history, outputs)`` folds a
    step's outputs into the history of a multistep problem. Returns the final state.

    Args:
        problem: the recursion being solved.
        state: what ``problem.init`` returned for this solve.
        x: state ``start`` (final), without the leading row dimension.
        start: the index of ``x``; steps ``start … N-1`` are taken.
        history: the outputs of the steps before ``start`` (multistep problems), or
            ``None``.
        keep: called as ``keep(i, x_i)`` with each new state, ``i = start + 1 … N``.
        remember: ``remember(history, outputs)`` returns the history after a step
            (called only when ``problem.memory`` is nonzero).
        where: how the NaN/Inf error describes the run (:func:`picard.sequential` says
            it is the sequential solve).

    Returns:
        The final state ``x_N``, in ``x``'s dtype.

    Raises:
        picard.NonFiniteError: a step is NaN or Inf even when taken sequentially.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 5)
        >>> kept = {}
        >>> x5 = finish_sequentially(
        ...     rule, rule.init(torch.ones(1)), torch.ones(1), 2, None, kept.__setitem__,
        ...     lambda history, out: history,
        ... )
        >>> sorted(kept), x5  # 3 steps of x -> 0.9 x from state 2
        ([3, 4, 5], tensor([0.7290]))
    """
    for i in range(start, problem.num_steps):
        inc, out = problem.increments(x[None], i, state, history)
        if not isinstance(inc, Tensor) or inc.shape != (1, *x.shape) or inc.dtype != x.dtype:
            bad_increments(inc, x[None])
        x = x + inc[0]
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"{problem.step_label(i)}: NaN or Inf {where}", step=i)
        keep(i + 1, x)
        if problem.memory:
            history = remember(history, out)
    return x


def bad_increments(inc: Any, x: Tensor) -> None:
    """Raise the error for increments that are not a tensor like ``x``.

    Args:
        inc: what ``problem.increments`` returned.
        x: the states it was given.

    Raises:
        TypeError: ``inc`` is not a tensor.
        ValueError: its shape, dtype or device differ from ``x``'s.

    Example:
        >>> import torch
        >>> try:
        ...     bad_increments(torch.ones(2), torch.ones(3))
        ... except ValueError as err:
        ...     "expected (3,)" in str(err)
        True
    """
    if not isinstance(inc, Tensor):
        raise TypeError(f"problem.increments must return a Tensor, got {type(inc).__name__}")
    raise ValueError(
        f"problem.increments returned {tuple(inc.shape)} {inc.dtype} on {inc.device}; "
        f"expected {tuple(x.shape)} {x.dtype} on {x.device}, like its input"
    )
