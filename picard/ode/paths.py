"""Sweeps or steps: which way an adaptive solve runs, learned per drift and span.

An adaptive method can be solved in parallel rounds of sweeps or one step after another
(:func:`picard.ode.adaptive.stepped`, torchdiffeq's own steps), and which is faster
depends on the device and the drift: a batched call of many rows can cost about one row's
time (a GPU, a small drift) or many times it (a CPU and a network, a drift vectorised by
:func:`torch.func.vmap`), and a span may need few sweeps per step or many. As
``window="auto"`` learns its windows, a solve repeated with the same drift, state shape,
method, tolerances and times (a training loop) learns its way: the first call runs the
sweeps, the second steps, and later calls take whichever ran faster, timing it again
each time (the forward call's time: the backward pass is not timed). Both ways pass
torchdiffeq's error test at every step. Under ``torch.use_deterministic_algorithms(True)``
nothing is timed and every call runs the sweeps, so the answer is the same in every
process. ``odeint_adjoint`` keeps to the
sweeps too: their backward pass is the adjoint recursion, whose memory is the
trajectory's, where stepping's is autograd's through every stage.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from picard.problem import model_parameters

__all__ = ["PATHS", "PathChoice", "in_sweeps_only", "path_choice", "sweeps_only"]

PATHS = ("sweeps", "steps")
"""The two ways, in the order they are first tried."""

_CHOICES: OrderedDict[Any, PathChoice] = OrderedDict()
_KEEP = 64
_SWEEPS_ONLY: ContextVar[bool] = ContextVar("picard_sweeps_only", default=False)


@contextmanager
def sweeps_only() -> Iterator[None]:
    """Within it, adaptive solves learn nothing and run the sweeps (``odeint_adjoint``).

    Returns:
        A context manager (a generator-based one: use it in a ``with`` statement).

    Example:
        >>> f, y0, t = (lambda t, y: -y), torch.ones(2), torch.linspace(0, 1, 3)
        >>> with sweeps_only():
        ...     path_choice(f, y0, t, "dopri5", ()) is None
        True
    """
    token = _SWEEPS_ONLY.set(True)
    try:
        yield
    finally:
        _SWEEPS_ONLY.reset(token)


class PathChoice:
    """The seconds each way last took for one drift and span, and the way to run next.

    Example:
        >>> c = PathChoice()
        >>> c.pick()  # untried: the sweeps first
        'sweeps'
        >>> c.record("sweeps", 0.3); c.pick()
        'steps'
        >>> c.record("steps", 0.2); c.pick()
        'steps'
        >>> c.record("steps", 0.5); c.pick()  # slower now: back to the sweeps
        'sweeps'
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pick(self) -> str:
        """The way to run: an untried one (in :data:`PATHS` order), else the faster."""
        for path in PATHS:
            if path not in self.seconds:
                return path
        return min(PATHS, key=self.seconds.__getitem__)

    def record(self, path: str, seconds: float) -> None:
        """What ``path`` took this time (replaces what it took before)."""
        self.seconds[path] = seconds


def in_sweeps_only() -> bool:
    """Whether a :func:`sweeps_only` block is running.

    Returns:
        ``True`` inside one.

    Example:
        >>> in_sweeps_only()
        False
    """
    return _SWEEPS_ONLY.get()


def path_choice(
    func: Any, y0: Tensor, t: Tensor, method: Any, tolerances: tuple[Any, ...]
) -> PathChoice | None:
    """The choice kept for this solve, or ``None`` where nothing is timed.

    Args:
        func: the user's drift (its first parameter, else the callable itself, names it).
        y0: the initial state (shape, dtype and device).
        t: the output times.
        method: the method (its tableau).
        tolerances: ``rtol``, ``atol`` and the adaptive options, hashable.

    Returns:
        The shared :class:`PathChoice` (kept per process, the 64 latest), or ``None``
        under ``torch.use_deterministic_algorithms(True)`` and within :func:`sweeps_only`.

    Example:
        >>> f, y0, t = (lambda t, y: -y), torch.ones(2), torch.linspace(0, 1, 3)
        >>> path_choice(f, y0, t, "dopri5", (1e-7,)) is path_choice(f, y0, t, "dopri5", (1e-7,))
        True
    """
    if torch.are_deterministic_algorithms_enabled() or _SWEEPS_ONLY.get():
        return None
    model = getattr(func, "picard_model", func)
    first = next(iter(model_parameters(model)), None)
    times = tuple(t.detach().double().cpu().tolist()) if len(t) <= 16 else (
        len(t), float(t[0]), float(t[-1]))  # fmt: skip
    key = (id(model if first is None else first), tuple(y0.shape), str(y0.dtype),
           str(y0.device), id(method), times, tolerances)  # fmt: skip
    choice = _CHOICES.pop(key, None)
    _CHOICES[key] = PathChoice() if choice is None else choice
    while len(_CHOICES) > _KEEP:
        _CHOICES.popitem(last=False)
    return _CHOICES[key]
