"""An adaptive solve read at the output times, as torchdiffeq reads its own steps.

torchdiffeq's adaptive solvers do not step to the output times: they step as their error
test allows and read each output time off the step that contains it, from a quartic
polynomial through the step's two ends, the slopes there and an estimate of the state
at the step's middle. picard's adaptive grids do the same, so output times cost no steps
(a solve asked for 100 outputs over a span that needs 10 steps takes about 10). The
polynomial in ``θ = (t - t_k) / h`` on ``[0, 1]`` is
``p(θ) = y_k + F_0 θ + c_2 θ² + c_3 θ³ + c_4 θ⁴`` with ``F_0 = h f(t_k, y_k)``,
``F_1 = h f(t_{k+1}, y_{k+1})``, ``D = y_{k+1} - y_k``, ``M = y_{k+1/2} - y_k`` and

    c_2 = 16 M - 5 D - 4 F_0 + F_1
    c_3 = 14 D - 32 M + 5 F_0 - 3 F_1
    c_4 = 16 M - 8 D - 2 F_0 + 2 F_1,

the unique quartic with ``p(0) = y_k``, ``p'(0) = F_0``, ``p(1) = y_{k+1}``,
``p'(1) = F_1`` and ``p(1/2) = y_{k+1/2}``. The slopes are read just inside the step
(the adjacent floats), so a jump at a step's end (``jump_t``) does not reach into it. The
middle state is one step of the solve's own method, of half the length, from ``y_k``
(torchdiffeq combines the step's stages with dense-output weights instead): every step
that holds an output time costs one batched half step and one slope, all steps together
in one round.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from picard.ode.runge_kutta import combine
from picard.ode.tableaus import Tableau
from picard.problem import call_batched

__all__ = ["dense_output", "quartic"]


def quartic(y0: Tensor, y1: Tensor, ymid: Tensor, f0: Tensor, f1: Tensor, theta: Tensor) -> Tensor:
    """The quartic through ``y0``, ``ymid``, ``y1`` with end slopes ``f0``, ``f1``, at ``theta``.

    Args:
        y0: the states at the steps' starts.
        y1: the states at their ends.
        ymid: the states at their middles.
        f0: the slopes times the step size at the starts (``h f(t_k, y_k)``).
        f1: the same at the ends.
        theta: where to read, as fractions of each step, broadcasting against the states.

    Returns:
        ``p(theta)``.

    Example:
        >>> t = torch.tensor([0.0, 0.25, 0.5, 1.0])  # y = θ⁴ is read back exactly
        >>> one, zero = torch.tensor(1.0), torch.tensor(0.0)
        >>> quartic(zero, one, torch.tensor(0.0625), zero, torch.tensor(4.0), t).tolist()
        [0.0, 0.00390625, 0.0625, 1.0]
    """
    d, m = y1 - y0, ymid - y0
    c2 = 16 * m - 5 * d - 4 * f0 + f1
    c3 = 14 * d - 32 * m + 5 * f0 - 3 * f1
    c4 = 16 * m - 8 * d - 2 * f0 + 2 * f1
    return y0 + theta * (f0 + theta * (c2 + theta * (c3 + theta * c4)))


def dense_output(
    func: Callable[[Tensor, Tensor], Tensor],
    tableau: Tableau,
    grid: Tensor,
    ys: Tensor,
    t: Tensor,
    in_dtype: torch.dtype,
) -> Tensor:
    """The states at the output times ``t`` of a solve whose steps are ``grid``.

    A time on a grid point is that point's state; one inside a step is read off the
    step's quartic (module description). Differentiable through ``ys`` and ``func``.

    Args:
        func: the batched drift, ``func(t: (M,), y: (M, ...)) -> (M, ...)``.
        tableau: the solve's method (its half step gives the middle state).
        grid: the solve's step ends (1-D, monotone), from ``t[0]`` to ``t[-1]``.
        ys: the states on ``grid``, ``(len(grid), ...)``.
        t: the output times, monotone in the grid's direction.
        in_dtype: the dtype ``func`` receives states in.

    Returns:
        ``(len(t), ...)``, in ``ys``'s dtype.

    Example:
        >>> from picard.ode.tableaus import ADAPTIVE
        >>> grid = torch.linspace(0, 1, 11, dtype=torch.float64)
        >>> ys = torch.exp(-grid)[:, None]  # y' = -y, exact at the nodes
        >>> t = torch.tensor([0.0, 0.33, 0.5, 0.97], dtype=torch.float64)
        >>> out = dense_output(lambda t, y: -y, ADAPTIVE["dopri5"], grid, ys, t, torch.float64)
        >>> bool((out[:, 0] - torch.exp(-t)).abs().max() < 1e-9)  # O(h^5): h = 0.1
        True
    """
    g = grid.detach().double().cpu().numpy()
    tt = t.detach().double().cpu().numpy()
    sign = 1.0 if g[-1] >= g[0] else -1.0
    k = np.searchsorted(sign * g, sign * tt, side="right") - 1
    k = np.clip(k, 0, len(g) - 1)
    on_node = tt == g[k]
    inside = np.flatnonzero(~on_node)
    rows: list[Tensor | None] = [ys[int(i)] if on_node[j] else None for j, i in enumerate(k)]
    if len(inside):
        steps = np.unique(k[inside])
        at = torch.as_tensor(steps, device=ys.device)
        t0, t1 = grid[at], grid[at + 1]
        h = t1 - t0
        y0, y1 = ys[at], ys[at + 1]
        ymid, f0 = _half_step(func, tableau, t0, h, y0, in_dtype)
        f1 = call_batched(func, "func", torch.nextafter(t1, t0), y1, in_dtype)  # just inside
        shape = (-1,) + (1,) * (ys.ndim - 1)
        hb = h.to(ys.dtype).reshape(shape)
        where = np.searchsorted(steps, k[inside])
        pick = torch.as_tensor(where, device=ys.device)
        theta = ((t[torch.as_tensor(inside, device=t.device)] - t0[pick]) / h[pick]).to(ys.dtype)
        read = quartic(
            y0[pick], y1[pick], ymid[pick], hb[pick] * f0[pick], hb[pick] * f1[pick],
            theta.reshape(shape),
        )  # fmt: skip
        for n, j in enumerate(inside.tolist()):
            rows[j] = read[n]
    return torch.stack([r for r in rows if r is not None])


def _half_step(
    func: Callable[[Tensor, Tensor], Tensor],
    tableau: Tableau,
    t0: Tensor,
    h: Tensor,
    y0: Tensor,
    in_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """One step of ``tableau`` of length ``h / 2`` from every row of ``y0``, and ``f(t0, y0)``."""
    half = h / 2
    hb = half.to(y0.dtype).reshape((-1,) + (1,) * (y0.ndim - 1))
    ks: list[Tensor] = []
    for c, row in zip(tableau.c, tableau.a, strict=True):
        slope = combine(ks, row)
        y = y0 if slope is None else y0 + hb * slope
        at = torch.nextafter(t0, t0 + h) if c == 0 else t0 + c * half  # just inside
        ks.append(call_batched(func, "func", at, y, in_dtype))
    total = combine(ks, tableau.b)
    assert total is not None
    return y0 + hb * total, ks[0]
