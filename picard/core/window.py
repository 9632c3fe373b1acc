"""How long each sweep's window is: fixed, sized by a row budget, or learned (``"auto"``).

A window controller is built once per solve; before each sweep it says how many steps each
running window may take (``width``), and after it learns how far the windows slid
(``after``). The sweep loop caps the width by the steps left and the evaluation budget.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "AUTO_START",
    "MODELED_CAPACITY",
    "AutoWindow",
    "Controller",
    "FixedWindow",
    "ModeledCost",
    "RowBudget",
    "calibration_key",
    "controller_for",
    "cost_for",
    "curve_for",
]


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


default_clock: Callable[[], float] = time.perf_counter
"""The timer of :class:`AutoWindow` (replace it to simulate a device, as the tests do)."""

AUTO_START = 16
"""The first window of ``window="auto"``: 16 steps × samples rows, small enough for any
device, large enough that a device with parallel capacity is seen to have it."""

MODELED_CAPACITY: dict[str, int] = {"cpu": 32, "cuda": 4096, "mps": 1024}
"""Rows a call takes at about twice the cost of one row, by device type, for
:class:`ModeledCost` (``window="auto"`` under ``torch.use_deterministic_algorithms``);
other device types take 1024."""


@dataclass(frozen=True)
class ModeledCost:
    """A sweep's time from its rows alone, ``(1 + rows / capacity)`` ms: no clock.

    ``window="auto"`` decides by it instead of measured times when PyTorch runs
    deterministically (``torch.use_deterministic_algorithms(True)``), so the windows, and
    the result, are the same in every process and under any load. The rule stands in for
    a device that batches rows well up to ``capacity`` rows per call and linearly beyond.

    Attributes:
        capacity: the rows a call takes at about twice the cost of one row.

    Example:
        >>> cost = ModeledCost(capacity=32)
        >>> cost(32) / cost(1) < 2 < cost(64) / cost(1)
        True
    """

    capacity: int

    def __call__(self, rows: int) -> float:
        """The modeled seconds of a call of ``rows`` rows."""
        return 1e-3 * (1.0 + rows / self.capacity)


def cost_for(device: Any) -> ModeledCost | None:
    """The cost model ``window="auto"`` runs on ``device``, or ``None`` (the clock).

    Args:
        device: the state's device.

    Returns:
        :class:`ModeledCost` for the device type when deterministic algorithms are on
        (``torch.are_deterministic_algorithms_enabled()``), else ``None``.

    Example:
        >>> import torch
        >>> cost_for(torch.device("cpu")) is None  # the clock, unless deterministic
        True
        >>> torch.use_deterministic_algorithms(True)
        >>> cost_for(torch.device("cpu"))
        ModeledCost(capacity=32)
        >>> torch.use_deterministic_algorithms(False)
    """
    if not torch.are_deterministic_algorithms_enabled():
        return None
    return ModeledCost(MODELED_CAPACITY.get(torch.device(device).type, 1024))


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


class AutoWindow:
    """The window that finalizes the most steps per second, learned while solving.

    Time per finalized step is the time of a sweep over the steps it made final. Sweep
    times depend on the rows per call, which batch well up to a point that depends on the
    model, the batch and the device; strides depend on the problem. So the controller
    climbs: it runs ``dwell`` sweeps at a window (the first of them, a transition, is not
    counted), times the second at the sweep loop's one synchronisation (leaving at once if
    the window could not win even if all of it slid), and moves to twice (then half) the
    window while that finalizes at least ``gain`` times as many steps per second, then
    settles on the best window seen (the smallest within 5% of it). On hardware without
    parallel capacity the rate falls as the window grows, so it settles on small windows.
    Settled, it reviews every ``review`` sweeps whether a smaller window it timed would now
    be faster: a sweep that slid ``s`` steps would have slid ``min(s, w')`` with a window
    ``w'``, so the rate of every smaller window follows from the strides seen (late steps
    of a sampler may converge more slowly than the first ones it climbed on).

    Reproducible in one process: a sweep's time is stored in ``curve`` (rows → seconds; the
    first measurement is kept) and every decision reads the stored time, never a new one,
    so the same inputs take the same windows and give the same result. ``curve`` is shared
    by the solves of one model, state shape, dtype and device (see :func:`controller_for`).
    With ``cost`` (a :class:`ModeledCost`) times come from it and never from the clock: the
    same windows in every process, under any load.

    Args:
        cap: the largest window (the steps, or a row budget's).
        columns: samples per window.
        rows_per_evaluation: model rows per (step, sample).
        curve: stored sweep times, rows → seconds (filled here).
        agree: maps a measured time to the one every process uses (distributed: the slowest
            rank's).
        start: the first window.
        dwell: sweeps per window while climbing.
        gain: how much faster a new window must finalize steps to be taken (hysteresis).
        review: sweeps between reviews once settled.
        clock: the timer (``None``: :data:`default_clock`, looked up when built).
        cost: sweep seconds by rows, used instead of the clock (``None``: measure).

    Example:
        >>> auto = AutoWindow(cap=1000, columns=1, rows_per_evaluation=1, curve={})
        >>> auto.width(1), auto.cap
        (16, 1000)
    """

    adapts = True

    def __init__(
        self,
        cap: int,
        columns: int,
        rows_per_evaluation: int,
        curve: dict[int, float],
        agree: Callable[[float], float] = float,
        start: int = AUTO_START,
        dwell: int = 3,
        gain: float = 1.2,
        review: int = 8,
        clock: Callable[[], float] | None = None,
        cost: Callable[[int], float] | None = None,
    ):
        self.cap, self.rows = cap, columns * rows_per_evaluation
        self.curve, self.agree = curve, agree
        self.dwell, self.gain, self.review = dwell, gain, review
        self.clock = default_clock if clock is None else clock
        self.cost = cost
        self.w = self.start = min(cap, start)
        self.rates: dict[int, float] = {}  # window -> finalized steps per second
        self.rows_at: dict[int, int] = {}  # window -> the rows its time is stored under
        self.came_from: int | None = None
        self.direction = 1
        self.settled = False
        self.strides: list[int] = []
        self.times: list[float] = []
        self.t0 = 0.0

    @property
    def choice(self) -> int:
        """The window it settled on (or is trying)."""
        return self.w

    def width(self, columns: int) -> int:
        """See :class:`Controller`."""
        if self.cost is None:
            self.t0 = self.clock()
        return self.w

    def after(self, stride: np.ndarray, lengths: np.ndarray) -> None:
        """See :class:`Controller`: time the sweep; after ``dwell`` sweeps, decide."""
        measured = not self.settled and self.cost is None
        seconds = self.agree(self.clock() - self.t0) if measured else 0.0
        if int(lengths.max()) < self.w:  # cut short by the grid's end or a budget
            return
        rows = self.w * self.rows * len(lengths)  # per-sample windows: the running lanes
        if self.cost is not None and not self.settled:
            seconds = self.cost(rows)
        if self.settled:
            self.strides.append(int(stride.sum()))
            if len(self.strides) == self.review:
                self._review(np.asarray(self.strides))
                self.strides = []
            return
        self.strides.append(int(stride.sum()))
        self.times.append(seconds)
        if len(self.times) < 2:  # the first sweep at a window is a transition
            return
        t = self.curve.setdefault(rows, self.times[1])
        self.rows_at[self.w] = rows
        prev = self.came_from
        cannot = prev is not None and rows / self.rows / t < self.gain * self.rates[prev]
        if len(self.times) < self.dwell and not cannot:
            return
        # a window that cannot win even if all of it slid is left after one timed sweep
        self.rates[self.w] = float(np.mean(self.strides[1:])) / t
        self.strides, self.times = [], []
        self._decide()

    def _decide(self) -> None:
        w, prev = self.w, self.came_from
        if prev is None or self.rates[w] >= self.gain * self.rates[prev]:
            nxt = self._next(w)
            if nxt is not None:
                self.came_from, self.w = w, nxt
                return
        elif self.direction == 1 and prev == self.start:  # up did not pay: try below
            self.direction = -1
            nxt = self._next(self.start)
            if nxt is not None:
                self.came_from, self.w = self.start, nxt
                return
        best = max(self.rates.values())  # within 5% of it, the smallest (fewest evaluations)
        self.w = min(k for k, r in self.rates.items() if r * 1.05 >= best)
        self.settled = True

    def _review(self, strides: np.ndarray) -> None:
        """Move to a smaller timed window if the strides seen say it is now faster."""
        lanes = self.rows_at[self.w] // (self.w * self.rows)
        here = float(strides.mean()) / self.curve[self.rows_at[self.w]]
        best, rate = self.w, self.gain * here
        for w in sorted(k for k in self.rates if k < self.w):
            guess = float(np.minimum(strides, w * lanes).mean()) / self.curve[self.rows_at[w]]
            if guess > rate:
                best, rate = w, guess
        self.w = best

    def _next(self, w: int) -> int | None:
        nxt = min(self.cap, 2 * w) if self.direction == 1 else w // 2
        return nxt if nxt >= 1 and nxt != w and nxt not in self.rates else None

    def report(self) -> dict[int, float]:
        """The sweep times this solve's decisions read, rows → seconds."""
        return {self.rows_at[w]: self.curve[self.rows_at[w]] for w in sorted(self.rates)}


_CURVES: OrderedDict[Any, dict[int, float]] = OrderedDict()
_KEEP = 64


def curve_for(key: Any) -> dict[int, float]:
    """The stored sweep times of one model, state shape, dtype and device (kept per process).

    Args:
        key: what identifies them (hashable).

    Returns:
        The shared dict (rows → seconds), empty at first.

    Example:
        >>> curve_for(("doc", 1)) is curve_for(("doc", 1))
        True
    """
    curve = _CURVES.pop(key, None)
    _CURVES[key] = {} if curve is None else curve
    while len(_CURVES) > _KEEP:
        _CURVES.popitem(last=False)
    return _CURVES[key]


def calibration_key(problem: Any, x0: Any, options: Any) -> tuple:
    """What sweep times are stored under: the model, the state's shape, dtype and device.

    The model is the problem's first parameter (:meth:`picard.Problem.parameters`), else
    its type alone; the layout options (per-sample windows, devices, distributed) count too,
    and whether the times are modeled (deterministic algorithms) rather than measured.

    Args:
        problem: the recursion.
        x0: the initial state.
        options: the solve's :class:`picard.Options`.

    Returns:
        A hashable key.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -x, 4)
        >>> calibration_key(rule, torch.ones(2), picard.Options.of())[1:4]
        ('Recursion', None, (2,))
    """
    first = next(iter(problem.parameters()), None)
    return (
        type(problem).__module__,
        type(problem).__qualname__,
        None if first is None else id(first),
        tuple(x0.shape),
        str(x0.dtype),
        str(x0.device),
        problem.rows_per_evaluation,
        problem.stages,
        options.per_sample,
        options.devices,
        options.distributed,
        torch.are_deterministic_algorithms_enabled(),  # modeled times, not measured ones
    )


def controller_for(
    window: int | str,
    max_rows: int | None,
    columns: int,
    rows_per_evaluation: int,
    per_sample: bool,
    curve: dict[int, float] | None = None,
    agree: Callable[[float], float] = float,
    steps: int | None = None,
    start: int | None = None,
    cost: Callable[[int], float] | None = None,
) -> Controller:
    """The controller of a solve: a row budget if ``max_rows`` is given, else fixed or auto.

    Args:
        window: the longest window, or ``"auto"`` (:class:`AutoWindow`; then ``steps``
            is the grid's length and ``curve`` the stored times).
        max_rows: the row budget per call, or ``None``.
        columns: the samples sharing one window (all of them), or 1 for per-sample
            windows, whose budget is shared among the running samples.
        rows_per_evaluation: model rows per (step, sample).
        per_sample: whether each sample has its own window.
        curve: with ``"auto"``, the stored sweep times (:func:`curve_for`).
        agree: with ``"auto"``, see :class:`AutoWindow`.
        steps: with ``"auto"``, the number of steps N.
        start: with ``"auto"``, the first window (``None``: :data:`AUTO_START`).
        cost: with ``"auto"``, sweep seconds by rows instead of the clock (:func:`cost_for`).

    Returns:
        The controller.

    Example:
        >>> controller_for(64, None, 4, 1, False)
        FixedWindow(cap=64)
        >>> controller_for(64, 32, 4, 1, False).cap
        8
    """
    if window == "auto":
        assert steps is not None
        if max_rows is not None:
            return RowBudget(max_rows, steps, columns, rows_per_evaluation, adapt=not per_sample)
        curve = {} if curve is None else curve
        first = AUTO_START if start is None else start
        return AutoWindow(steps, columns, rows_per_evaluation, curve, agree, first, cost=cost)
    assert isinstance(window, int)
    if max_rows is None:
        return FixedWindow(window)
    return RowBudget(max_rows, window, columns, rows_per_evaluation, adapt=not per_sample)
