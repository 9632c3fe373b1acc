"""torchdiffeq's Adams methods: multistep recursions over the drift's past values.

``explicit_adams`` steps ``y_{n+1} = y_n + h_n Σ_k β_k f_{n-k}`` with the Adams–Bashforth
weights of order ``q = min(n + 1, max_order - 1)``; ``implicit_adams`` (``fixed_adams``)
then corrects the step with the Adams–Moulton weights of order ``q + 1``, iterating
``y_{n+1} = y_n + h_n (μ_0 f(t_{n+1}, y_{n+1}) + Σ_k μ_{k+1} f_{n-k})`` until the
increment changes by less than ``rtol``/``atol`` (at most ``max_iters`` times), as
torchdiffeq does. The first steps, with fewer than three past values, are Kutta's 3/8
Runge–Kutta steps. The past values ``f_k = f(t_k, y_k)`` are each step's output, so the
recursion is a problem with memory: one batched call of ``func`` per sweep gives every
step of the window its slope (the corrector adds up to ``max_iters`` calls).

The weights are computed exactly (rational arithmetic) from the conditions that the
quadrature is exact for polynomials of the order's degree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from fractions import Fraction
from functools import cache

import torch
from torch import Tensor

from picard.ode.runge_kutta import ODEProblem, combine
from picard.problem import call_batched, extend_rows

__all__ = ["ADAMS", "MAX_ORDER", "AdamsProblem", "adams_weights"]

ADAMS: dict[str, bool] = {"explicit_adams": False, "implicit_adams": True, "fixed_adams": True}
"""torchdiffeq's Adams methods by name: whether the step is corrected (implicit)."""

MAX_ORDER = 12
"""torchdiffeq's default and largest ``max_order``."""

STARTUP = 3
"""Past values below which a step is a Runge–Kutta step (torchdiffeq's minimum order - 1)."""


@cache
def adams_weights(order: int, implicit: bool) -> tuple[float, ...]:
    """The Adams weights of ``order`` values: Bashforth's (explicit) or Moulton's.

    Explicit: ``∫_0^1 p(s) ds = Σ_j β_j p(-j)`` for every polynomial ``p`` of degree below
    ``order`` (nodes ``0, -1, …``, the current and past slopes); implicit: the nodes are
    ``1, 0, -1, …`` (the new slope first).

    Args:
        order: the number of slopes the step combines (>= 1).
        implicit: Moulton's weights (the first weighs the step's end).

    Returns:
        The weights, newest slope first.

    Example:
        >>> [round(w * 24) for w in adams_weights(4, implicit=False)]
        [55, -59, 37, -9]
        >>> [round(w * 24) for w in adams_weights(4, implicit=True)]
        [9, 19, -5, 1]
    """
    nodes = [Fraction(1 - j if implicit else -j) for j in range(order)]
    # solve Σ_j w_j nodes_j^m = 1 / (m + 1), m < order, exactly (Gauss–Jordan on fractions)
    rows = [[x**m for x in nodes] + [Fraction(1, m + 1)] for m in range(order)]
    for col in range(order):
        pivot = next(r for r in range(col, order) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        lead = rows[col][col]
        rows[col] = [v / lead for v in rows[col]]
        for r in range(order):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return tuple(float(rows[j][order]) for j in range(order))


class AdamsProblem(ODEProblem):
    """``dy/dt = func(t, y)`` on the grid ``t``, stepped by torchdiffeq's Adams methods.

    Args:
        func: batched drift, ``func(t: (M,), y: (M, *y0.shape)) -> (M, *y0.shape)``.
        t: the grid (1-D, strictly monotone).
        in_dtype: the dtype ``func`` receives ``y`` in.
        batch_ndim: leading dimensions of ``y0`` that index independent samples.
        perturb: torchdiffeq's ``perturb``: slopes at a step's start taken just after it,
            the corrector's at its end just before it.
        implicit: correct each step with Adams–Moulton (``implicit_adams``).
        max_order: torchdiffeq's ``max_order`` (4 … 12): at most ``max_order - 1`` slopes.
        max_iters: the corrector's iterations at most (torchdiffeq's ``max_iters``).
        rtol: the corrector's relative test on the increment's change.
        atol: its absolute test.

    Example:
        >>> import torch, picard
        >>> t = torch.linspace(0, 1, 21, dtype=torch.float64)
        >>> p = AdamsProblem(lambda t, y: -y, t, torch.float64, implicit=True)
        >>> abs(float(picard.solve(p, torch.ones(1, dtype=torch.float64), tol=0).final)
        ...     - 0.36787944117) < 1e-8  # exp(-1)
        True
    """

    def __init__(
        self,
        func: Callable[[Tensor, Tensor], Tensor],
        t: Tensor,
        in_dtype: torch.dtype,
        batch_ndim: int = 0,
        perturb: bool = False,
        implicit: bool = False,
        max_order: int = MAX_ORDER,
        max_iters: int = 4,
        rtol: float = 1e-7,
        atol: float = 1e-9,
    ):
        super().__init__(func, t, "rk4", in_dtype, batch_ndim, perturb)
        if not STARTUP + 1 <= max_order <= MAX_ORDER:
            raise ValueError(f"options['max_order'] must be in [4, {MAX_ORDER}], got {max_order}")
        self.implicit = implicit
        self.max_iters = max_iters
        self.rtol, self.atol = rtol, atol
        width = max_order - 1  # slopes a step combines at most
        self.memory = width - 1  # past slopes f_{n-1} … f_{n-width+1}
        self.stages = 2 if implicit else 1  # a corrected step calls at least twice
        orders = [min(n + 1, width) for n in range(self.num_steps)]
        self._startup = sum(q < STARTUP for q in orders)  # the leading Runge–Kutta steps
        self._bashforth = _rows(orders, width, implicit=False, t=t)
        self._moulton = _rows(orders, width, implicit=True, t=t) if implicit else None
        self._columns = [k for k in range(width) if self._bashforth[:, k].any()]
        self._m0 = torch.tensor(
            [adams_weights(q + 1, True)[0] if q >= STARTUP else 0.0 for q in orders],
            dtype=torch.float64,
            device=t.device,
        )
        self.unconverged = torch.zeros(self.num_steps, dtype=torch.bool, device=t.device)
        """Per step, whether the corrector's last run stopped at ``max_iters`` unconverged."""

    def increments(self, x, start, state, history):  # type: ignore[override]
        """The window's increments and its slopes ``f(t_n, y_n)`` (kept as history)."""
        w = x.shape[0]
        h = state.dt[start : start + w]
        f = call_batched(self.func, "func", self._stage_t[0][start : start + w], x, self.in_dtype)
        state.slope[:] = [f[-1]]
        ext = extend_rows(f, history, self.memory)  # ext[memory + r - k] = f_{start + r - k}
        dy = h * _weighted(ext, self._bashforth[start : start + w], self._columns, self.memory, x)
        if self._moulton is not None:
            dy = self._correct(x, dy, h, ext, start, w)
        if start < self._startup:  # Runge–Kutta steps until there are enough slopes
            m = min(w, self._startup - start)
            ks = self.slopes(x[:m], start, h[:m], first=f[:m])
            rk = combine(ks, self.tableau.b)
            assert rk is not None
            dy = torch.cat([h[:m] * rk, dy[m:]])
        return dy, f

    def _correct(self, x: Tensor, dy: Tensor, h: Tensor, ext: Tensor, start: int, w: int) -> Tensor:
        """Adams–Moulton's corrector on every row at once, rows frozen as they converge."""
        assert self._moulton is not None
        delta = h * _weighted(ext, self._moulton[start : start + w], self._columns, self.memory, x)
        m0 = self._m0[start : start + w].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        done = (m0 == 0).reshape(-1)  # Runge–Kutta rows are not corrected
        times = self._stage_t[3][start : start + w]  # the steps' ends (perturbed: just before)
        for _ in range(self.max_iters):
            if bool(done.all()):
                break
            end = call_batched(self.func, "func", times, x + dy, self.in_dtype)
            new = h * m0 * end + delta
            bound = self.atol + self.rtol * torch.maximum(dy.abs(), new.abs())
            ratio = ((new - dy).abs() / bound).reshape(w, -1).amax(1)
            keep = done.reshape(-1, *([1] * (x.ndim - 1)))
            dy = torch.where(keep, dy, new)
            done = done | (ratio < 1)
        self.unconverged[start : start + w] = ~done
        return dy

    def warn_unconverged(self) -> None:
        """Warn, as torchdiffeq does, where the answer's corrector did not converge.

        Each step's last evaluation is the answer's (sweeps stop when the states stop
        changing), so :attr:`unconverged` then describes the answer, not the iterates.
        """
        steps = torch.nonzero(self.unconverged).reshape(-1).tolist()
        if steps:
            warnings.warn(
                f"implicit_adams: the corrector did not converge within max_iters "
                f"({self.max_iters}) at {len(steps)} step(s), first {self.step_label(steps[0])}; "
                "the solution may be inaccurate (torchdiffeq warns the same)",
                RuntimeWarning,
                stacklevel=3,
            )


def _rows(orders: list[int], width: int, implicit: bool, t: Tensor) -> Tensor:
    """Per step, the weights of ``f_n, f_{n-1}, …`` (``(N, width)``, zero-padded).

    Explicit: Bashforth's of the step's order; implicit: Moulton's of one order more,
    without the first (the step's end, applied by the corrector).
    """
    rows = torch.zeros(len(orders), width, dtype=torch.float64)
    for n, q in enumerate(orders):
        if q < STARTUP:
            continue
        weights = adams_weights(q + 1, True)[1:] if implicit else adams_weights(q, False)
        rows[n, : len(weights)] = torch.tensor(weights, dtype=torch.float64)
    return rows.to(t.device)


def _weighted(ext: Tensor, rows: Tensor, columns: list[int], memory: int, x: Tensor) -> Tensor:
    """``Σ_k rows[r, k] f_{start + r - k}`` for every row r of the window."""
    w, shape = x.shape[0], (-1, *([1] * (x.ndim - 1)))
    total = torch.zeros_like(x)
    for k in columns:
        total = total + rows[:, k].to(x.dtype).reshape(shape) * ext[memory - k : memory - k + w]
    return total
