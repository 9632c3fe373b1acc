"""Sweeps, steps or Newton: which way a Runge–Kutta solve runs, learned per drift and span.

An explicit Runge–Kutta solve, adaptive or on a fixed grid, can run in parallel rounds of
sweeps, by Newton's method on the whole trajectory (a small state), or one step after
another (:func:`picard.ode.adaptive.stepped`, torchdiffeq's own steps;
:meth:`picard.ode.runge_kutta.ODEProblem.step_by_step`, the sequential result itself),
and which is fastest depends on the device and the drift: a batched call of many rows can
cost about one row's time (a GPU, a small drift) or many times it (a CPU and a network, a
drift vectorised by :func:`torch.func.vmap`), and a span may need few sweeps per step or
many. As ``window="auto"`` learns its windows, a solve repeated with the same drift, state
shape, method, tolerances and times (a training loop) learns its way: the first call runs
the sweeps, the second steps, the third (a small state) Newton's method, the next ones
each again (a first run may carry one-time costs), and later calls take whichever ran
fastest, timing it again each time. The time is the forward call's,
plus its backward pass's where every way has had one (:class:`Clock`): in training the
backward pass is most of the cost, and the ways' differ (the adjoint recursion against
autograd through the steps). Every way passes torchdiffeq's error test at every step
(fixed grids: the sweeps and Newton converge to the steps' result). Under
``torch.use_deterministic_algorithms(True)`` nothing is timed and every call runs the
sweeps, so the answer is the same in every process. Under ``odeint_adjoint``
(:func:`adjoint_steps`) the steps are taken without autograd and their backward pass is
the adjoint recursion of the accepted steps, as the sweeps' is: the memory is the
trajectory's either way, never autograd's through every stage.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from picard.problem import model_parameters

__all__ = [
    "PATHS",
    "Clock",
    "PathChoice",
    "adjoint_steps",
    "in_adjoint",
    "in_sweeps_only",
    "path_choice",
    "sweeps_only",
]

PATHS = ("sweeps", "steps", "newton")
"""The ways, in the order they are first tried: the sweeps, one step after another, and
Newton's method on the whole trajectory (``accelerate="newton"``, each adaptive round's
solve by it; a small state only, :func:`picard.core.newton.newton_applies`)."""

_CHOICES: OrderedDict[Any, PathChoice] = OrderedDict()
_KEEP = 64
_SWEEPS_ONLY: ContextVar[bool] = ContextVar("picard_sweeps_only", default=False)
_ADJOINT: ContextVar[bool] = ContextVar("picard_adjoint_steps", default=False)


@contextmanager
def adjoint_steps() -> Iterator[None]:
    """Within it (``odeint_adjoint``), a stepped solve's backward pass is the adjoint's.

    The adjoint recursion of its steps, as the sweeps' is, not autograd through every stage.

    Returns:
        A context manager (a generator-based one: use it in a ``with`` statement).

    Example:
        >>> with adjoint_steps():
        ...     in_adjoint()
        True
    """
    token = _ADJOINT.set(True)
    try:
        yield
    finally:
        _ADJOINT.reset(token)


def in_adjoint() -> bool:
    """Whether an :func:`adjoint_steps` block is running.

    Returns:
        ``True`` inside one.

    Example:
        >>> in_adjoint()
        False
    """
    return _ADJOINT.get()


@contextmanager
def sweeps_only() -> Iterator[None]:
    """Within it, Runge–Kutta solves learn nothing and run the sweeps (benchmarks, tests).

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

    A way's seconds are its forward call's, plus its backward pass's once every tried way
    has had one (then the two are compared forward and backward; until then, forward).

    Example:
        >>> c = PathChoice()
        >>> c.pick()  # untried: the sweeps first
        'sweeps'
        >>> c.record("sweeps", 0.3); c.pick()
        'steps'
        >>> c.record("steps", 0.2); c.pick()  # each way twice: the first may warm up
        'sweeps'
        >>> c.record("sweeps", 0.25); c.record("steps", 0.2); c.pick()
        'steps'
        >>> c.record("steps", 0.5); c.pick()  # slower now: back to the sweeps
        'sweeps'
        >>> c.add_backward("sweeps", 0.9); c.pick()  # only one backward: forward times
        'sweeps'
        >>> c.add_backward("steps", 0.1); c.pick()  # 0.25 + 0.9 against 0.5 + 0.1
        'steps'
        >>> c.pick(PATHS)  # Newton's too, where it applies: untried
        'newton'
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.backward: dict[str, float] = {}
        self.runs: dict[str, int] = {}
        self.owner: Callable[[], Any] = lambda: None  # what the choice is for (weakly)

    def pick(self, ways: tuple[str, ...] = PATHS[:2]) -> str:
        """The way to run among ``ways``: each is tried twice, in turn, then the fastest.

        A way's first run in a process may carry one-time costs (Newton's first Jacobian
        products took 20 times its later runs): its second time replaces the first.
        """
        for turn in (1, 2):
            for path in ways:
                if self.runs.get(path, 0) < turn:
                    return path
        both = all(path in self.backward for path in ways)
        return min(ways, key=lambda p: self.seconds[p] + (self.backward[p] if both else 0.0))

    def record(self, path: str, seconds: float) -> None:
        """What ``path``'s forward call took this time (replaces what it took before)."""
        self.seconds[path] = seconds
        self.runs[path] = self.runs.get(path, 0) + 1

    def add_backward(self, path: str, seconds: float) -> None:
        """What ``path``'s backward pass took this time (replaces what it took before)."""
        self.backward[path] = seconds


class Clock:
    """Times one call: its forward solve, and its backward pass if one comes.

    The backward pass is timed from when the gradient reaches the output (:meth:`exit`)
    to when it reaches the initial state (:meth:`entry`), every step's gradient computed
    by then. Where gradients may flow (``y0`` or a parameter of the drift requires grad),
    the state entering the solve is marked by an identity whose input includes a scalar
    that requires grad, so that the gradient reaches it even when only the parameters
    ask for one (one more product with the first step); where none may, nothing is
    marked and only the forward call is timed.

    Args:
        choice: the kept choice to record in.
        path: the way this call runs.
        inputs: what gradients may flow to: ``y0`` and the drift's parameters.

    Example:
        >>> c, w = PathChoice(), torch.ones(2, requires_grad=True)
        >>> clock = Clock(c, "steps", [w])
        >>> ys = clock.exit(3 * clock.entry(w))
        >>> ys.sum().backward()
        >>> sorted(c.seconds), sorted(c.backward), w.grad.tolist()
        (['steps'], ['steps'], [3.0, 3.0])
    """

    def __init__(self, choice: PathChoice, path: str, inputs: Iterable[Tensor]) -> None:
        self.choice, self.path = choice, path
        self.marked = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
        self.began: float | None = None
        self.start = time.perf_counter()

    def entry(self, y0: Tensor) -> Tensor:
        """``y0``, marked where a backward pass may come (a view, requiring grad)."""
        if not self.marked:
            return y0
        return _Entered.apply(self, torch.zeros((), requires_grad=True), y0)

    def exit(self, ys: Tensor) -> Tensor:
        """Record the forward seconds; ``ys``, marked where the entry was."""
        self.choice.record(self.path, time.perf_counter() - self.start)
        return _Left.apply(self, ys) if self.marked and ys.requires_grad else ys

    def ended(self) -> None:
        """The gradient reached the initial state: record the backward seconds."""
        if self.began is not None:
            self.choice.add_backward(self.path, time.perf_counter() - self.began)
            self.began = None


class _Entered(torch.autograd.Function):
    """The identity on ``y0``; its backward pass ends the clock's backward time."""

    @staticmethod
    def forward(ctx: Any, clock: Clock, flag: Tensor, y0: Tensor) -> Tensor:
        ctx.clock = clock
        return y0.view_as(y0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        ctx.clock.ended()
        return None, None, grad


class _Left(torch.autograd.Function):
    """The identity on the output; its backward pass starts the clock's backward time."""

    @staticmethod
    def forward(ctx: Any, clock: Clock, ys: Tensor) -> Tensor:
        ctx.clock = clock
        return ys.view_as(ys)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        ctx.clock.began = time.perf_counter()
        return None, grad


def _reference(owner: Any) -> Callable[[], Any]:
    """A weak reference to ``owner`` (a strong one where it takes none: kept 64 at most)."""
    try:
        return weakref.ref(owner)
    except TypeError:
        return lambda: owner


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
    owner = model if first is None else first
    key = (id(owner), tuple(y0.shape), str(y0.dtype), str(y0.device), id(method), times,
           tolerances, _ADJOINT.get())  # fmt: skip
    choice = _CHOICES.pop(key, None)
    if choice is None or choice.owner() is not owner:  # new, or an id reused after its owner
        choice = PathChoice()
        choice.owner = _reference(owner)
    _CHOICES[key] = choice
    while len(_CHOICES) > _KEEP:
        _CHOICES.popitem(last=False)
    return _CHOICES[key]
