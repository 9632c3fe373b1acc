"""torchdiffeq's event handling: integrate until ``event_fn(t, y)`` crosses zero.

The solve runs ahead in parallel chunks, each a whole solve of its own (any method),
and reads the event function at the chunk's times; the first chunk in which its sign
changes holds the event. Then, as torchdiffeq does:

- a fixed-grid method (``options={"step_size": h}``) places the event where the
  interpolant of its steps (linear, or cubic Hermite with ``interp="cubic"``) crosses
  zero, by bisection to ``atol``;
- an adaptive method places it where the solution itself crosses zero: bisection on
  the cubic Hermite interpolant of the chunk's states, then Newton's method on the
  event time, each iterate a short solve from the chunk's last state before it, until
  it moves less than ``atol``.

Several event functions (a vector ``event_fn``) are combined as torchdiffeq does: each
made positive at the start, the event is the first to reach zero. The event time
carries the gradient of the implicit function theorem; the state at it, the gradient
at a fixed time (as torchdiffeq's ``odeint``); :func:`odeint_event` adds the event
time's motion to the state (as torchdiffeq's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from picard.checks import check_callable
from picard.ode.grids import interpolate
from picard.problem import call_batched
from picard.solution import Stats, no_steps, summed

__all__ = [
    "CHUNK_STEPS",
    "MIN_CHUNK_STEPS",
    "EventSearch",
    "combined_event",
    "next_chunk",
    "odeint_event",
    "solve_until_event",
]

CHUNK_STEPS = 64
"""Steps of a fixed-grid method's first chunk (later chunks: :func:`next_chunk`)."""

MIN_CHUNK_STEPS = 8
"""Steps of a fixed-grid method's chunk at least."""

CHUNK_POINTS = 16
"""Times an adaptive method's chunk is read at (the event function's samples)."""

MAX_CHUNKS = 40
"""Chunks tried before giving up (the span doubles with each)."""

NEWTON_STEPS = 8
"""Newton iterations on an adaptive method's event time, at most."""

NEWTON_CLOSE = 0.01
"""A Newton step on the event time shorter than this times ``sqrt(atol × interval)`` ends
the iteration: the next would move it by about the square of this step over the time
scale of the event function along the solution, under ``atol`` unless that scale is 10⁴
times shorter than the interval. The state is then moved along the solution (``y + f δ``,
an error of the same order) instead of solved again. One solve fewer per event at least:
the benchmark's event moved 3.1e-8, then 2.2e-16."""


def combined_event(event_fn: Callable[[Tensor, Tensor], Tensor], t0: Tensor, y0: Tensor) -> Any:
    """``event_fn`` as one scalar that starts positive: torchdiffeq's combination.

    Args:
        event_fn: ``event_fn(t, y)``, a scalar or a vector of event functions.
        t0: the initial time.
        y0: the initial state.

    Returns:
        ``g(t, y) = min(event_fn(t, y) * sign(event_fn(t0, y0)))``.

    Example:
        >>> g = combined_event(lambda t, y: y - 2, torch.tensor(0.0), torch.ones(1))
        >>> float(g(torch.tensor(0.0), torch.ones(1)))  # 1 - 2, made positive
        1.0
    """
    with torch.no_grad():
        signs = torch.sign(_value(event_fn, t0, y0))

    def g(t: Tensor, y: Tensor) -> Tensor:
        return torch.min(_value(event_fn, t, y) * signs)

    return g


def _value(event_fn: Callable[[Tensor, Tensor], Tensor], t: Tensor, y: Tensor) -> Tensor:
    out = event_fn(t, y)
    if not isinstance(out, Tensor):
        raise TypeError(f"event_fn must return a torch.Tensor, got {type(out).__name__}")
    return out.real if out.is_complex() else out


class EventSearch:
    """What :func:`solve_until_event` needs to know of the solve.

    Args:
        solve: ``solve(y, times) -> (ys, stats)``: the user's method from ``y`` at
            ``times[0]`` (differentiable in ``y``), ``times`` a 1-D grid; a fixed-grid
            method steps exactly on ``times``.
        drift: the batched drift ``f(t: (M,), y: (M, *shape))``.
        step: a fixed-grid method's step size (``None``: an adaptive method).
        cubic: interpolate a fixed-grid method's steps by cubic Hermite (else linearly).
        atol: the event time's tolerance (torchdiffeq's: ``atol``).
        first_span: an adaptive method's first chunk length (the span doubles each chunk).

    Example:
        >>> import picard
        >>> def solve(y, times):
        ...     return picard.odeint(lambda t, y: -y, y, times, method="rk4", tol=0,
        ...                          return_stats=True)
        >>> search = EventSearch(solve, lambda t, y: -y, step=0.01, cubic=True, atol=1e-9,
        ...                      first_span=1.0)
        >>> y0, t0 = torch.ones(1, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        >>> event_t, ys, stats = solve_until_event(search, lambda t, y: y[0] - 0.5, y0, t0, 1.0)
        >>> round(float(event_t), 6), ys.shape  # ln 2
        (0.693147, torch.Size([2, 1]))
    """

    def __init__(
        self,
        solve: Callable[[Tensor, Tensor], tuple[Tensor, Stats]],
        drift: Callable[[Tensor, Tensor], Tensor],
        step: float | None,
        cubic: bool,
        atol: float,
        first_span: float,
    ):
        self.solve, self.drift, self.step = solve, drift, step
        self.cubic, self.atol, self.first_span = cubic, atol, first_span


def solve_until_event(
    search: EventSearch,
    event_fn: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t0: Tensor,
    direction: float,
) -> tuple[Tensor, Tensor, Stats]:
    """Integrate from ``(t0, y0)`` until the combined event function reaches zero.

    Args:
        search: the solve and its settings.
        event_fn: torchdiffeq's ``event_fn(t, y)`` (checked callable).
        y0: the initial state.
        t0: the initial time (0-d, float64).
        direction: +1 forward in time, -1 backward.

    Returns:
        ``(event_t, ys, stats)``: the event time (0-d, with the implicit-function gradient),
        ``stack([y0, y(event_t)])``, and the statistics of all the solves.

    Raises:
        RuntimeError: no event within :data:`MAX_CHUNKS` chunks.

    Example:
        See :class:`EventSearch`.
    """
    event_fn = check_callable("event_fn", event_fn)
    g = combined_event(event_fn, t0, y0)
    parts: list[Stats] = []
    with torch.no_grad():
        g0 = float(g(t0, y0))
    if g0 == 0:  # torchdiffeq: an event at the start ends the solve there
        return t0.clone(), torch.stack([y0, y0]), no_steps()
    start_t, start_y = t0, y0
    steps, span = CHUNK_STEPS, search.first_span
    for _ in range(MAX_CHUNKS):
        if search.step is not None:
            times = start_t + direction * search.step * torch.arange(steps + 1, dtype=t0.dtype)
        else:
            times = start_t + direction * span * torch.linspace(0, 1, CHUNK_POINTS + 1,
                                                                 dtype=t0.dtype)  # fmt: skip
            span *= 2
        ys, stats = search.solve(start_y, times)
        parts.append(stats)
        with torch.no_grad():
            values = [float(g(times[k], ys[k])) for k in range(1, len(times))]
        if all(v > 0 for v in values):
            start_t, start_y = times[-1], ys[-1]
            steps = next_chunk(steps, [g0, *values])
            continue
        k = next(i for i, v in enumerate(values) if not v > 0) + 1  # in (times[k-1], times[k]]
        if search.step is not None:
            event_t = _bisect(search, g, times, ys, k)
            y_event = _between(times, ys, k, event_t, _slopes(search, times, ys, k))
        else:
            event_t, y_event = _newton(search, g, times, ys, k, parts)
        event_t = _with_gradient(g, search.drift, event_t, y_event)
        return event_t, torch.stack([y0, y_event]), summed(parts)
    raise RuntimeError(
        f"event_fn did not reach zero within {MAX_CHUNKS} chunks (up to t = {float(start_t):g})"
    )


def next_chunk(steps: int, values: list[float]) -> int:
    """The steps of a fixed-grid method's next chunk, from the event function's last values.

    Where the combined event function (positive until the event) fell over the last step,
    the chunk reaches 1.5 times the steps a straight line through its last two values
    takes to zero, and two more; else, or beyond, it doubles. At least
    :data:`MIN_CHUNK_STEPS`. A chunk that falls short costs one more solve; one that
    overshoots, steps past the event: the chunks of 64 and then 128 steps, where the
    benchmark's event needed 74, stepped 192.

    Args:
        steps: the last chunk's steps.
        values: the event function at the last chunk's times (its start first), all > 0.

    Returns:
        The next chunk's steps.

    Example:
        >>> next_chunk(64, [1.0, 0.5, 0.25, 0.2])  # 0.2 left, falling 0.05 a step: 4 steps
        9
        >>> next_chunk(64, [1.0, 0.9, 0.5])  # 0.5 left, falling 0.4 a step: at least 8
        8
        >>> next_chunk(64, [1.0, 0.99, 0.98])  # 98 steps to go: 149, capped at 128
        128
        >>> next_chunk(64, [1.0, 1.1])  # rising: doubles
        128
    """
    fall = values[-2] - values[-1]
    if not fall > 0:
        return 2 * steps
    reach = 1.5 * values[-1] / fall + 2
    return int(min(2 * steps, max(MIN_CHUNK_STEPS, math.ceil(reach))))


def _slopes(search: EventSearch, times: Tensor, ys: Tensor, k: int) -> Tensor | None:
    """The drift at the interval's two ends, for the cubic interpolant (else ``None``)."""
    if not search.cubic:
        return None
    with torch.no_grad():
        return call_batched(search.drift, "func", times[k - 1 : k + 1], ys[k - 1 : k + 1].detach(),
                            ys.dtype)  # fmt: skip


def _between(times: Tensor, ys: Tensor, k: int, at: Tensor, slopes: Tensor | None) -> Tensor:
    """The interpolant of ``(times[k-1], times[k])`` at ``at`` (``slopes``: of the two ends)."""
    pair = torch.stack([times[k - 1], at])
    return interpolate(times[k - 1 : k + 1], ys[k - 1 : k + 1], pair, slopes)[1]


def _bisect(search: EventSearch, g: Any, times: Tensor, ys: Tensor, k: int) -> Tensor:
    """Torchdiffeq's bisection on the interpolant of ``(times[k-1], times[k])`` to ``atol``."""
    lo, hi = times[k - 1], times[k]
    pair, states = times[k - 1 : k + 1], ys[k - 1 : k + 1].detach()
    slopes = _slopes(search, times, ys, k)  # of the pair
    width = abs(float(hi - lo))
    count = max(0, math.ceil(math.log2(width / search.atol))) if search.atol > 0 else 60
    with torch.no_grad():
        for _ in range(min(count, 200)):
            mid = (lo + hi) / 2
            inside = float(g(mid, _between(pair, states, 1, mid, slopes))) > 0
            lo, hi = (mid, hi) if inside else (lo, mid)
    return (lo + hi) / 2


def _false_position(search: EventSearch, g: Any, times: Tensor, ys: Tensor, k: int) -> Tensor:
    """The zero on the cubic interpolant of ``(times[k-1], times[k])``, to ``atol``.

    Illinois false position: the same zero as :func:`_bisect`'s (within ``atol``) in a
    handful of the event function's calls where bisection takes ``log2(width / atol)``,
    26 for the benchmark's event.
    """
    lo, hi = times[k - 1], times[k]
    pair, states = times[k - 1 : k + 1], ys[k - 1 : k + 1].detach()
    slopes = _slopes(search, times, ys, k)
    with torch.no_grad():
        g_lo, g_hi = float(g(lo, states[0])), float(g(hi, states[1]))  # > 0 and <= 0
        side = 0
        for _ in range(100):
            if g_hi == 0 or abs(float(hi - lo)) <= search.atol:
                break
            mid = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
            if not min(float(lo), float(hi)) < float(mid) < max(float(lo), float(hi)):
                mid = (lo + hi) / 2
            g_mid = float(g(mid, _between(pair, states, 1, mid, slopes)))
            if g_mid > 0:
                lo, g_lo = mid, g_mid
                g_hi, side = (g_hi / 2 if side == 1 else g_hi), 1
            else:
                hi, g_hi = mid, g_mid
                g_lo, side = (g_lo / 2 if side == -1 else g_lo), -1
            if abs(g_mid) == 0:
                return mid
    return hi if g_hi == 0 else (lo + hi) / 2


def _newton(
    search: EventSearch, g: Any, times: Tensor, ys: Tensor, k: int, parts: list[Stats]
) -> tuple[Tensor, Tensor]:
    """The event time where the solution crosses zero, and the state there (with grad).

    A first estimate by false position on the cubic Hermite interpolant of the chunk's two
    states; then Newton's method on ``g(t, y(t))``, each iterate a short solve from the
    interval's first state (the chunk's last before the event), ending on the iterate; the
    iterate stays inside the interval (bisection where it would not), and a step shorter
    than :data:`NEWTON_CLOSE` allows ends it. Solving from the
    chunk's start instead took 53 sweeps for the benchmark's event against 35, and ended
    no closer to torchdiffeq's event (1.4e-8 against 1.2e-8).
    """
    cubic = EventSearch(search.solve, search.drift, None, True, search.atol, 0.0)
    lo, hi = times[k - 1], times[k]
    close = max(search.atol, NEWTON_CLOSE * math.sqrt(search.atol * abs(float(hi - lo))))
    t_e = _false_position(cubic, g, times, ys, k)
    y_e = ys[k]
    for _ in range(NEWTON_STEPS):
        if float(t_e) == float(lo):
            return lo, ys[k - 1]
        seg, stats = search.solve(ys[k - 1], torch.stack([times[k - 1], t_e]))
        parts.append(stats)
        y_e = seg[-1]
        value, rate, slope = _value_and_rate(g, search.drift, t_e, y_e)
        if value == 0 or rate == 0:
            break
        step = -value / rate
        new = t_e + step
        if not (min(float(lo), float(hi)) <= float(new) <= max(float(lo), float(hi))):
            new = (lo + t_e) / 2 if value < 0 else (t_e + hi) / 2
        moved = float(new - t_e)
        t_e = new.detach()
        if abs(moved) <= close:  # the state moved along the solution, not solved again
            y_e = y_e + (slope * moved).to(y_e.dtype)
            break
    return t_e, y_e


def _value_and_rate(g: Any, drift: Any, t: Tensor, y: Tensor) -> tuple[float, float, Tensor]:
    """``g(t, y)``, its total rate ``∂g/∂t + ∂g/∂y · f(t, y)`` along the solution, and ``f``."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        yy = y.detach().clone().requires_grad_(True)
        value = g(tt, yy)
        dt, dy = torch.autograd.grad(value, (tt, yy), allow_unused=True)
    with torch.no_grad():
        f = call_batched(drift, "func", t.detach().reshape(1), y.detach()[None], y.dtype)[0]
    rate = (0.0 if dt is None else float(dt)) + (0.0 if dy is None else float((dy * f).sum()))
    return float(value.detach()), rate, f


def _with_gradient(g: Any, drift: Any, event_t: Tensor, y_event: Tensor) -> Tensor:
    """``event_t`` with the implicit function theorem's gradient through ``y_event``.

    ``g(t_e, y(t_e; θ)) = 0`` gives ``dt_e/dθ = -(∂g/∂y · ∂y/∂θ) / (dg/dt)``, the total
    rate along the solution; the value is unchanged.
    """
    event_t = event_t.detach()
    if not (torch.is_grad_enabled() and y_event.requires_grad):
        return event_t
    _, rate, _ = _value_and_rate(g, drift, event_t, y_event)
    if rate == 0:
        return event_t
    value = g(event_t, y_event)
    return event_t + ((value - value.detach()) / -rate).to(event_t.dtype)


def odeint_event(
    func: Callable[[Tensor, Any], Any],
    y0: Any,
    t0: Tensor,
    *,
    event_fn: Callable[[Tensor, Any], Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Any]:
    """Torchdiffeq's ``odeint_event``: solve until ``event_fn`` is zero, gradients included.

    The event time's gradient (the implicit function theorem's) also moves the final
    state along the solution: ``dy_e = ∂y/∂θ + f(t_e, y_e) dt_e``.

    Args:
        func: the drift, as for :func:`picard.odeint`.
        y0: the initial state (a tensor or a tuple of them).
        t0: the initial time (a scalar tensor).
        event_fn: ``event_fn(t, y)``: the solve stops where it reaches zero.
        reverse_time: integrate backward in time.
        odeint_interface: :func:`picard.odeint` (default) or :func:`picard.odeint_adjoint`.
        **kwargs: further arguments of ``odeint_interface`` (``method``, ``options``, …).

    Returns:
        ``(event_t, solution)``: the event time and ``solution[-1]`` the state there.

    Example:
        >>> import torch, picard
        >>> t, ys = picard.odeint_event(lambda t, y: -y, torch.ones(1, dtype=torch.float64),
        ...                             torch.tensor(0.0, dtype=torch.float64),
        ...                             event_fn=lambda t, y: y[0] - 0.5)
        >>> round(float(t), 6), round(float(ys[-1, 0]), 6)  # ln 2
        (0.693147, 0.5)
    """
    if odeint_interface is None:
        from picard.ode.integrate import odeint

        odeint_interface = odeint
    t0 = torch.as_tensor(t0)
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + (-1.0 if reverse_time else 1.0)])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    if not event_t.requires_grad:
        return event_t, solution
    moved = event_t - event_t.detach()
    if isinstance(solution, tuple):
        ends = func(event_t.detach(), tuple(s[-1].detach() for s in solution))
        return event_t, tuple(
            torch.cat([s[:-1], (s[-1] + e.detach() * moved)[None]])
            for s, e in zip(solution, ends, strict=True)
        )
    with torch.no_grad():
        end = func(event_t.detach(), solution[-1].detach())
    return event_t, torch.cat([solution[:-1], (solution[-1] + end * moved)[None]])
