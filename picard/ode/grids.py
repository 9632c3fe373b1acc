"""Time grids for ``odeint``.

The output grid refined, torchdiffeq's step-size grid, and linear interpolation of a
solved grid back onto the output times.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["interpolate", "refine_grid", "step_size_grid"]


def refine_grid(t: Tensor, step_size: float) -> tuple[Tensor, list[int]]:
    """Split each interval of ``t`` into equal substeps no longer than ``step_size``.

    Returns the fine grid and the indices of the points of ``t`` in it (so output lands
    exactly on ``t``, with no interpolation).

    Args:
        t: the grid (1-D, strictly monotone).
        step_size: the longest substep allowed (positive).

    Returns:
        ``(fine, index)``: the fine grid (``t``'s dtype and device, its points included
        exactly) and, for each point of ``t``, its index in ``fine``.

    Example:
        >>> refine_grid(torch.tensor([0.0, 1.0, 1.5]), 0.5)[1]
        [0, 2, 3]
        >>> refine_grid(torch.tensor([0.0, 1.0, 1.5]), 0.5)[0]
        tensor([0.0000, 0.5000, 1.0000, 1.5000])
    """
    spans = (t[1:] - t[:-1]).abs().tolist()
    counts = [max(1, math.ceil(s / step_size - 1e-9)) for s in spans]
    pieces = [t[:1]]
    for i, m in enumerate(counts):
        frac = torch.arange(1, m + 1, dtype=t.dtype, device=t.device) / m
        pieces.append(t[i] + frac * (t[i + 1] - t[i]))
        pieces[-1][-1] = t[i + 1]
    index = [0]
    for m in counts:
        index.append(index[-1] + m)
    return torch.cat(pieces), index


def step_size_grid(t: Tensor, step_size: float) -> Tensor:
    """The grid torchdiffeq steps for ``options={"step_size": h}``: ``t[0] + k h``, ``t[-1]``.

    The output times need not lie on it: torchdiffeq interpolates linearly
    (:func:`interpolate`). A decreasing ``t`` steps backwards by ``h``.

    Args:
        t: the output times (1-D, strictly monotone).
        step_size: ``h > 0``.

    Returns:
        The grid, ``t``'s dtype and device.

    Example:
        >>> step_size_grid(torch.tensor([0.0, 1.0]), 0.3)
        tensor([0.0000, 0.3000, 0.6000, 0.9000, 1.0000])
    """
    sign = 1.0 if bool(t[-1] > t[0]) else -1.0
    span = (t[-1] - t[0]).abs()
    count = int(torch.ceil(span / step_size + 1).item())
    grid = torch.arange(0, count, dtype=t.dtype, device=t.device) * (sign * step_size) + t[0]
    grid[-1] = t[-1]
    return grid


def constructed_grid(
    constructor: Callable[..., Tensor], func: Any, y0: Tensor, t: Tensor
) -> Tensor:
    """The grid of torchdiffeq's ``grid_constructor(func, y0, t)``, checked.

    It must run from ``t[0]`` to ``t[-1]``, strictly monotone.
    """
    grid = constructor(func, y0, t)
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError("options['grid_constructor'] must return a 1-D tensor of times")
    if bool(grid[0] != t[0]) or bool(grid[-1] != t[-1]):
        raise ValueError("options['grid_constructor'] must return a grid from t[0] to t[-1]")
    return grid.to(t.dtype)


def interpolate(grid: Tensor, ys: Tensor, t: Tensor, slopes: Tensor | None = None) -> Tensor:
    """States at the times ``t`` from states ``ys`` on ``grid``, as torchdiffeq reads them.

    On a grid point, the state there; between two, the linear interpolation
    ``y0 + (t - t0) / (t1 - t0) (y1 - y0)`` of the interval torchdiffeq stepped through,
    or with ``slopes`` (torchdiffeq's ``interp="cubic"``) the cubic Hermite interpolant of
    the two states and their slopes.

    Args:
        grid: the solved grid (1-D, monotone, from ``t[0]`` to ``t[-1]``).
        ys: the states on it, ``(len(grid), ...)``.
        t: the output times.
        slopes: ``func(grid[k], ys[k])`` per grid point, for the cubic interpolant.

    Returns:
        ``(len(t), ...)``.

    Example:
        >>> grid = torch.tensor([0.0, 0.5, 1.0])
        >>> interpolate(grid, torch.tensor([[0.0], [1.0], [4.0]]), torch.tensor([0.0, 0.75, 1.0]))
        tensor([[0.0000],
                [2.5000],
                [4.0000]])
    """
    g = grid.tolist()
    forward = g[-1] >= g[0]
    out, k = [ys[0]], 1  # k: the end of the interval torchdiffeq is in
    for j in range(1, t.shape[0]):
        tj = float(t[j])
        while (g[k] < tj) if forward else (g[k] > tj):
            k += 1
        t0, t1 = g[k - 1], g[k]
        if tj == t0:
            out.append(ys[k - 1])
        elif tj == t1:
            out.append(ys[k])
        else:
            out.append(_between(grid, ys, slopes, k, t[j]))
    return torch.stack(out)


def _between(grid: Tensor, ys: Tensor, slopes: Tensor | None, k: int, at: Tensor) -> Tensor:
    """The state at ``at`` inside the interval ``grid[k - 1] … grid[k]``."""
    dt = (grid[k] - grid[k - 1]).to(ys.dtype)
    s = ((at - grid[k - 1]) / (grid[k] - grid[k - 1])).to(ys.dtype)
    y0, y1 = ys[k - 1], ys[k]
    if slopes is None:
        return y0 + s * (y1 - y0)
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
    h01, h11 = s * s * (3 - 2 * s), s * s * (s - 1)
    return h00 * y0 + h10 * dt * slopes[k - 1] + h01 * y1 + h11 * dt * slopes[k]
