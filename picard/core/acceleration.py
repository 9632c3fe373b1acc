"""How a sweep turns its Picard values into the next iterate: plain Picard or accelerated.

An acceleration is a small object with one method, ``begin(columns)``, that returns the
per-solve worker: ``update(sweep, stride)`` may rewrite the rows of ``sweep.new`` that are
not final (row ``j`` of a lane is final when ``j < stride``) and may return a smaller
stride (hold states back), and ``counters()`` returns what it wants reported in
:attr:`picard.Stats.acceleration`. The convergence test is made on the Picard values
before ``update`` runs: the states made final are always Picard values.
An object may also have ``bind(problem)``, which :func:`picard.solve` calls first and
whose result it runs: what it needs of the problem it reads from
:meth:`picard.Problem.traits` (the secant takes the problem's slopes that way).
``accelerate="auto"`` picks by the problem's kind (:data:`AUTO_ACCELERATIONS`). Write your
own by following :class:`Acceleration`; ``accelerate=`` takes the object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from picard.checks import check_int, check_nonneg, named_or_object
from picard.core.arrays import Arrays
from picard.core.sweep import Sweep

__all__ = [
    "ACCELERATIONS",
    "AUTO_ACCELERATIONS",
    "SECANT_MIN_WINDOW",
    "Acceleration",
    "Newton",
    "Picard",
    "Run",
    "Secant",
    "acceleration_of",
    "resolve_acceleration",
]


class Run(Protocol):
    """One solve's worker of an :class:`Acceleration` (see the module docstring).

    Example:
        >>> run = Secant().begin(columns=2)
        >>> run.counters()
        {'accelerated': 0, 'fallbacks': 0}
    """

    def update(self, sweep: Sweep, stride: np.ndarray) -> np.ndarray | None:
        """Rewrite ``sweep.new`` in place at the rows not final (``row >= stride`` per lane).

        Returns ``None``, or a stride per lane in ``[1, stride]`` to make fewer states
        final (the rows from it on are then the ones to rewrite). A worker with nothing to
        do may set ``update = None`` instead.
        """
        ...

    def counters(self) -> dict[str, int]:
        """What :attr:`picard.Stats.acceleration` reports for this solve.

        Two names are common to every acceleration and have their own
        :class:`picard.Stats` properties: ``"accelerated"`` (sweeps whose update it changed)
        and ``"fallbacks"`` (sweeps its safeguard made plain); others are its own.
        """
        ...


@runtime_checkable
class Acceleration(Protocol):
    """The protocol of ``accelerate=`` objects: ``begin(columns)`` returns a :class:`Run`.

    Example:
        >>> isinstance(Secant(), Acceleration), isinstance("secant", Acceleration)
        (True, False)
    """

    def begin(self, columns: int) -> Run:
        """The worker of one solve whose sweeps have ``columns`` columns (samples)."""
        ...


class _Plain:
    update = None  # nothing to do: the loop skips the call

    def counters(self) -> dict[str, int]:
        return {}


@dataclass(frozen=True)
class Picard:
    """Plain Picard updates, as ParaDiGMS: the next iterate is the Picard value.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 10)
        >>> picard.solve(rule, torch.ones(1), accelerate=picard.Picard()).stats.acceleration
        {}
    """

    def begin(self, columns: int) -> Run:
        """A worker that changes nothing."""
        return _Plain()


@dataclass(frozen=True)
class Secant:
    """Per-step secant (quasi-Newton) acceleration of the sweep, safeguarded.

    Picard's update ``x_{i+1} <- x_b + Σ Δ_j(x_j)`` ignores how ``Δ_i`` depends on ``x_i``.
    With a slope ``a_i`` (one scalar per step and sample, estimated from the last two
    sweeps: ``<δΔ_i, δx_i> / |δx_i|²``, clipped to ``[-clip, clip]``) the sweep solves the
    linearized recursion ``x'_{i+1} = x'_i + Δ_i(x_i) + a_i (x'_i - x_i)`` instead — a
    parallel scan, ``x' = x_Picard + E`` with ``E_{i+1} = (1 + a_i) E_i + a_i (x_Picard_i -
    x_i)``. The structure is triangular (causal), as in ParaTAA: state i is corrected only
    from states before it, so a final prefix stays exact and the window rule is unchanged
    (at most N sweeps; ``tol = 0`` exact). Safeguard: a lane whose largest scaled change on
    the steps it shares with the previous sweep grew takes a plain Picard sweep next
    (counted as a fallback). Per lane, so per-sample windows get what solving each sample
    alone gives.

    States become final at a tenth of ``tol`` while the secant runs (``tighten``; the
    solve's acceptance rule applied to the tighter test, never more than it allows): its
    iterates converge about linearly where plain Picard's converge faster than
    geometrically, so the same change between sweeps leaves a larger error (tested at
    ``tol`` itself, 0.4–8.5x plain Picard's final error). At a tenth its error bound is a
    tenth of plain Picard's, and its error was smaller than plain Picard's in 20 of the 21
    cases of ``benchmarks/pareto.py`` at tol 0.01 (1.9–270x; 0.66x in one), still in
    32–62% fewer sweeps on DDPM-1000 with windows of 256 steps or more; over 400 random
    linear recursions it was larger in 5 (at most 1.75x).

    Rows with no history yet (every row of the first sweep, the steps entering a
    sliding window) start from the problem's slopes (:class:`picard.Traits`) — for
    diffusion samplers the slope each step has when the data are unit Gaussian — bound by
    :func:`picard.solve` through :meth:`bind`; problems without one leave those rows
    uncorrected.

    Args:
        clip: the largest slope magnitude.
        min_window: run on windows of at least this many steps (small windows converge
            in about one sweep per step, where the secant has nothing to gain; the
            default acceleration of diffusion samplers uses 128), and on the shorter
            windows that follow one to the grid's end.
        tighten: the fraction of ``tol`` the states must meet while the secant runs.
        prior: start rows without history from the problem's prior slopes.
        slopes: those slopes, per step (set by :meth:`bind`).

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.05 * (1 + i[:, None]) * x / 40, 40)
        >>> x0 = torch.ones(1, dtype=torch.float64)
        >>> fast = picard.solve(rule, x0, tol=1e-9, window=40, accelerate=picard.Secant())
        >>> plain = picard.solve(rule, x0, tol=1e-9, window=40, accelerate=None)
        >>> fast.stats.iterations, plain.stats.iterations, fast.stats.accelerated
        (3, 12, 1)
    """

    clip: float = 0.5
    min_window: int = 1
    tighten: float = 0.1
    prior: bool = True
    slopes: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_nonneg("clip", self.clip, positive=True)
        check_int("min_window", self.min_window, minimum=1)
        if not 0 < check_nonneg("tighten", self.tighten, positive=True) <= 1:
            raise ValueError(f"tighten must be in (0, 1], got {self.tighten!r}")

    def bind(self, problem: Any) -> Secant:
        """This secant with ``problem``'s prior slopes (when ``prior`` and it has some).

        Args:
            problem: the :class:`picard.Problem` about to be solved.

        Returns:
            The secant to run.
        """
        if not self.prior or self.slopes is not None:
            return self
        slopes = problem.traits().slopes
        return self if slopes is None else replace(self, slopes=np.asarray(slopes, np.float64))

    def begin(self, columns: int) -> Run:
        """The worker of one solve."""
        return _SecantRun(self.clip, self.min_window, self.slopes, self.tighten)


@dataclass(frozen=True)
class Newton:
    """Newton steps on the whole trajectory instead of sweeps (DEER), for small states.

    Each step is one round of calls: every step's increment and per-sample Jacobian
    (:mod:`picard.core.newton`); a handful of steps where Picard needs many sweeps, each
    far heavier than a sweep (all steps' rows and their vector–Jacobian products). Taken
    for problems without memory whose samples have at most
    :data:`picard.core.jacobians.DENSE_MAX` numbers, in one process; where the steps
    stop converging (corrections growing twice running, or NaN/Inf), the solve starts
    over by plain Picard sweeps, and ``Stats.acceleration`` says ``newton_fallbacks``
    (the Newton rounds are counted in the sweeps). Other problems run plain Picard.

    On this project's CPU it was never faster than the sweeps (each round evaluates every
    step with its products): from a warm start it took 2–3 rounds where the sweeps took
    31, in about the same time; from a cold start over long oscillating horizons it
    diverged and fell back. It is meant for devices that batch rows well.

    Attributes:
        max_steps: the most Newton steps before the sweeps take over.

    Example:
        >>> acceleration_of("newton")
        Newton(max_steps=12)
    """

    max_steps: int = 12

    def __post_init__(self) -> None:
        check_int("max_steps", self.max_steps, minimum=1)

    def begin(self, columns: int) -> Run:
        """The sweeps' worker where Newton's steps do not run: plain Picard's."""
        return Picard().begin(columns)


ACCELERATIONS: dict[str, type] = {"secant": Secant, "newton": Newton}
"""``accelerate=`` names and the class each builds (with its defaults)."""

SECANT_MIN_WINDOW = 128
"""The shortest window the secant runs on when ``accelerate="auto"`` picks it."""

AUTO_ACCELERATIONS: dict[str, Callable[[], Acceleration]] = {
    "diffusion": lambda: Secant(min_window=SECANT_MIN_WINDOW),
}
"""What ``accelerate="auto"`` runs, by :attr:`picard.Traits.kind` (others: plain Picard).

Diffusion samplers take the secant update on windows of :data:`SECANT_MIN_WINDOW` steps or
more. Measured at tol 0.01 against plain Picard (``benchmarks/pareto.py``: DDPM-1000 on the
mixture, the 2-D model and the digits UNet; DDIM-200/50): 32–45% fewer sweeps at window 256
and 59% with the whole grid on DDPM-1000, 0–23% on whole-grid DDIM, with an error smaller
in 20 of 21 cases (it tests at a tenth of tol); at window 16 it took 1–22 sweeps more and at
64 as many or up to 3 fewer, so it starts at 128 steps.
"""


def resolve_acceleration(accelerate: Any, problem: Any) -> Acceleration | None:
    """The acceleration a solve of ``problem`` runs, bound to it.

    Args:
        accelerate: the checked ``accelerate=`` option: ``"auto"``, ``None`` or an object.
        problem: the :class:`picard.Problem` about to be solved.

    Returns:
        ``None`` (plain Picard) or the object, after its ``bind(problem)`` if it has one.

    Example:
        >>> import picard
        >>> resolve_acceleration("auto", picard.Recursion(lambda i, x: -x, 4)) is None
        True
    """
    if accelerate == "auto":
        make = AUTO_ACCELERATIONS.get(problem.traits().kind)
        accelerate = None if make is None else make()
    bind = getattr(accelerate, "bind", None)
    return accelerate if bind is None else bind(problem)


def acceleration_of(accelerate: Any) -> Acceleration | None:
    """``accelerate=`` as an object: ``None``, a name of :data:`ACCELERATIONS` or an object.

    Args:
        accelerate: ``None``, a name, or an object with ``begin(columns)``.

    Returns:
        The object (``None`` for plain Picard).

    Raises:
        ValueError: an unknown name.
        TypeError: an object without ``begin``.

    Example:
        >>> acceleration_of("secant"), acceleration_of(None)
        (Secant(clip=0.5, min_window=1, tighten=0.1, prior=True), None)
    """
    if accelerate is None:
        return None
    return named_or_object(
        "accelerate", accelerate, ACCELERATIONS, Acceleration, "begin(columns)", none=True
    )


class _SecantRun:
    BLOCK = 32  # cumprod block: products of slopes in [1/2, 3/2] stay well inside float range

    def __init__(
        self,
        clip: float,
        min_window: int = 1,
        prior: np.ndarray | None = None,
        tighten: float = 1.0,
    ):
        self.clip, self.min_window = clip, min_window
        self.scale2 = 1.0 / tighten**2  # the squared change in units of the tighter test
        self.on = False
        self.prior = None if prior is None else np.clip(prior, -clip, clip)
        self.prev: tuple[np.ndarray, np.ndarray, np.ndarray, Any, Any] | None = None
        self.last: tuple[np.ndarray, ...] | None = None  # the last sweep's scaled changes
        self.plain = np.zeros(0, dtype=np.int64)  # lanes whose next sweep is plain Picard
        self.accelerated = 0
        self.fallbacks = 0

    def counters(self) -> dict[str, int]:
        return {"accelerated": self.accelerated, "fallbacks": self.fallbacks}

    def update(self, sweep: Sweep, stride: np.ndarray) -> np.ndarray | None:
        ops = sweep.ops
        prev = self.prev
        self.prev = (
            sweep.lanes.copy(),
            sweep.starts.copy(),
            sweep.lengths.copy(),
            ops.copy(sweep.x),
            ops.copy(sweep.inc),
        )
        plain, self.plain = self.plain, np.zeros(0, dtype=np.int64)
        # On for windows of min_window steps, and for the windows that follow them to the
        # grid's end (shorter there, they hold secant iterates).
        at_end = bool((sweep.starts + sweep.lengths >= sweep.num_steps).all())
        self.on = int(sweep.lengths.max()) >= self.min_window or (self.on and at_end)
        small = not self.on
        held = None
        if not small and self.scale2 != 1.0:  # the solve's acceptance at the tighter test
            ok = sweep.tolerance.converged(sweep.change * self.scale2, sweep.steps)
            held = np.minimum(stride, sweep.acceptance.stride(ok, sweep.lengths))
            stride = held
        slope = None if small else self._slopes(prev, sweep, plain)
        if slope is not None:
            fix = slope.reshape(slope.shape[0], len(sweep.lanes), -1).any(axis=(0, 2))
            fix &= stride < sweep.lengths - 1
            if fix.any():
                self.accelerated += 1
                self._correct(sweep, slope, stride, fix)
        if not small:
            self._check(sweep, stride)
        return held

    def _slopes(self, prev: tuple | None, sweep: Sweep, plain: np.ndarray) -> np.ndarray | None:
        """Per (row, column) secant slopes ``<δΔ, δx> / |δx|²`` against the last sweep.

        Rows without history take the prior slope; lanes in ``plain`` take none.
        """
        w, columns = sweep.inc.shape[0], sweep.x.shape[1]
        slope = np.zeros((w, columns))
        if self.prior is not None:
            steps = np.minimum(sweep.starts[None, :] + np.arange(w)[:, None], len(self.prior) - 1)
            slope[:] = self.prior[steps]  # (w, lanes) broadcasts to (w, columns)
            if len(plain):
                slope *= ~np.isin(sweep.lanes, plain)
        if prev is not None:
            self._secants(prev, sweep, plain, slope)
        return slope if slope.any() else None

    def _secants(self, prev: tuple, sweep: Sweep, plain: np.ndarray, slope: np.ndarray) -> None:
        """Write the secant slopes of the rows with history into ``slope``."""
        ops = sweep.ops
        p_lanes, p_starts, p_lengths, p_x, p_inc = prev
        w = sweep.inc.shape[0]
        pos = np.searchsorted(p_lanes, sweep.lanes).clip(max=len(p_lanes) - 1)
        shift = sweep.starts - p_starts[pos]
        have = (p_lanes[pos] == sweep.lanes) & ~np.isin(sweep.lanes, plain)
        rows = np.where(have, np.minimum(p_lengths[pos], shift + w) - shift, 0)
        if len(sweep.lanes) == len(p_lanes) == 1:  # the same one window: slices
            lo, n = int(shift[0]), int(rows[0])
            if n <= 0:
                return
            dx = sweep.x[:n] - p_x[lo : lo + n]
            dd = sweep.inc[:n] - p_inc[lo : lo + n]
        else:
            j = np.arange(w)[:, None]
            n = int(rows.max(initial=0))
            if n <= 0:
                return
            src = ops.index(np.minimum(j[:n] + shift, p_x.shape[0] - 1), None)
            col = ops.index(np.broadcast_to(pos, (n, len(pos))), None)
            valid = ops.asarray((j[:n] < rows)[:, :, None], sweep.x)
            dx = (sweep.x[:n] - p_x[src, col]) * valid
            dd = (sweep.inc[:n] - p_inc[src, col]) * valid
        den = ops.host(ops.dots(dx, dx))
        num = ops.host(ops.dots(dx, dd))
        secant = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        known = np.arange(n)[:, None] < rows[None, :]  # (n, lanes): the rows with history
        slope[:n] = np.where(known, np.clip(secant, -self.clip, self.clip), slope[:n])

    def _correct(
        self, sweep: Sweep, slope: np.ndarray, stride: np.ndarray, fix: np.ndarray
    ) -> None:
        """``new += E`` at the rows not final, ``E_{j+1} = (1 + a_j) E_j + a_j (new_j - x_j)``."""
        ops, new = sweep.ops, sweep.new
        a = ops.asarray(slope[:, :, None], new)
        corr = _scan(ops, 1 + a[1:], a[1:] * (new - sweep.old)[:-1], self.BLOCK)
        if len(sweep.lanes) == 1:
            s = int(stride[0])
            new[s:] += corr[s - 1 :]
            return
        rows = np.arange(1, new.shape[0])[:, None]
        keep = ops.asarray(((rows >= stride) & fix)[:, :, None], new)
        new[1:] += corr * keep

    def _check(self, sweep: Sweep, stride: np.ndarray) -> None:
        """Safeguard: plain Picard next for lanes whose worst change on shared steps grew."""
        scaled = sweep.tolerance.in_units(sweep.change, sweep.steps)
        last = self.last
        self.last = (sweep.lanes.copy(), sweep.starts.copy(), sweep.lengths.copy(), scaled)
        if last is None:
            return
        l_lanes, l_starts, l_lengths, l_scaled = last
        grew = []
        for k, lane in enumerate(sweep.lanes):
            at = int(np.searchsorted(l_lanes, lane))
            if at == len(l_lanes) or l_lanes[at] != lane:
                continue
            lo = int(sweep.starts[k] - l_starts[at])
            hi = min(int(l_lengths[at]), lo + int(sweep.lengths[k]))
            if hi > lo and scaled[: hi - lo, k].max() > l_scaled[lo:hi, at].max():
                grew.append(lane)
        if grew:
            self.plain = np.asarray(grew)
            self.fallbacks += 1


def _scan(ops: Arrays, m: Any, source: Any, block: int) -> Any:
    """``E_{j+1} = m_j E_j + source_j`` (``E_0 = 0``): ``E_1 … E_w``, by blocked cumprods."""
    out = ops.copy(source)
    carry = None
    for b in range(0, source.shape[0], block):
        p = ops.cumprod(m[b : b + block])
        part = p * ops.cumsum(source[b : b + block] / p)
        if carry is not None:
            part += p * carry
        out[b : b + block] = part
        carry = part[-1:]
    return out
