"""Timestep grids: diffusers' ``timestep_spacing`` options, as its schedulers build them.

Part of :mod:`~picard.adapters.schedulers.schedules` (see its notes on the symbols).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from picard.adapters.schedulers.config import SPACINGS, read_option

__all__ = ["check_timesteps", "euler_timesteps", "leading_timesteps", "solver_timesteps"]


def _spacing(config: Mapping[str, Any]) -> str:
    spacing = read_option(config, "timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    return spacing


def leading_timesteps(config: Mapping[str, Any], n: int) -> np.ndarray:
    """The integer timestep grid of DDPM and DDIM (descending, length n).

    Args:
        config: the scheduler configuration: ``num_train_timesteps`` (default 1000),
            ``timestep_spacing`` (one of :data:`SPACINGS`, default ``"leading"``) and
            ``steps_offset`` (default 0, added under ``leading`` spacing only).
        n: the number of inference steps.

    Returns:
        An int64 array of shape ``(n,)``, descending. It is not checked against the
        training schedule; see :func:`check_timesteps`.

    Raises:
        ValueError: if ``timestep_spacing`` is not one of :data:`SPACINGS`.

    Example:
        >>> leading_timesteps({"num_train_timesteps": 1000, "timestep_spacing": "trailing"}, 4)
        array([999, 749, 499, 249])
        >>> leading_timesteps({"num_train_timesteps": 1000, "steps_offset": 1}, 4).tolist()
        [751, 501, 251, 1]
    """
    total = int(read_option(config, "num_train_timesteps", 1000))
    spacing = _spacing(config)
    if spacing == "linspace":
        return np.linspace(0, total - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = total // n
        steps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        return steps + int(read_option(config, "steps_offset", 0))
    return np.round(np.arange(total, 0, -total / n)).astype(np.int64) - 1


def check_timesteps(timesteps: np.ndarray, total: int, config: Mapping[str, Any]) -> None:
    """Refuse a grid that leaves the training schedule (diffusers would raise IndexError).

    ``leading`` spacing with ``steps_offset = 1`` and N = num_train_timesteps steps asks
    for timestep T, one past the end.

    Args:
        timesteps: the integer timestep grid (e.g. from :func:`leading_timesteps`).
        total: the number of training timesteps T; valid timesteps are 0 … T-1.
        config: the scheduler configuration, quoted (spacing, offset) in the error message.

    Raises:
        ValueError: if some timestep is negative or at least ``total``.

    Example:
        >>> cfg = {"num_train_timesteps": 1000, "steps_offset": 1}
        >>> check_timesteps(leading_timesteps(cfg, 10), 1000, cfg)  # fine: returns None
        >>> try:
        ...     check_timesteps(leading_timesteps(cfg, 1000), 1000, cfg)
        ... except ValueError as err:
        ...     print("leaves the training schedule" in str(err))
        True
    """
    if len(timesteps) and (timesteps.max() >= total or timesteps.min() < 0):
        raise ValueError(
            f"the timestep grid {timesteps.min()}…{timesteps.max()} leaves the training "
            f"schedule [0, {total - 1}] (timestep_spacing={_spacing(config)!r}, "
            f"steps_offset={read_option(config, 'steps_offset', 0)}); use fewer steps or another "
            "spacing"
        )


def solver_timesteps(config: Mapping[str, Any], n: int, last: int | None = None) -> np.ndarray:
    """The integer timestep grid of DPM-Solver multistep (descending, length n).

    ``last`` is the first timestep beyond the grid (``num_train_timesteps`` unless
    ``lambda_min_clipped`` cuts it).

    Args:
        config: the scheduler configuration: ``num_train_timesteps`` (default 1000),
            ``timestep_spacing`` (one of :data:`SPACINGS`, default ``"leading"``) and
            ``steps_offset`` (default 0, added under ``leading`` spacing only).
        n: the number of inference steps.
        last: the first timestep beyond the grid; ``None`` means ``num_train_timesteps``.

    Returns:
        An int64 array of shape ``(n,)``, descending.

    Raises:
        ValueError: if ``timestep_spacing`` is not one of :data:`SPACINGS`.

    Example:
        >>> solver_timesteps({"num_train_timesteps": 1000, "timestep_spacing": "linspace"}, 4)
        array([999, 749, 500, 250])
        >>> solver_timesteps({"timestep_spacing": "linspace"}, 4, last=500).tolist()
        [499, 374, 250, 125]
    """
    total = int(read_option(config, "num_train_timesteps", 1000))
    last = total if last is None else last
    spacing = _spacing(config)
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        return steps + int(read_option(config, "steps_offset", 0))
    return np.arange(last, 0, -total / n).round().copy().astype(np.int64) - 1


def euler_timesteps(config: Mapping[str, Any], n: int) -> np.ndarray:
    """The float32 timestep grid of the Euler-type schedulers (descending, length n).

    Args:
        config: the scheduler configuration: ``num_train_timesteps`` (default 1000),
            ``timestep_spacing`` (one of :data:`SPACINGS`, default ``"leading"``) and
            ``steps_offset`` (default 0, added under ``leading`` spacing only).
        n: the number of inference steps.

    Returns:
        A float32 array of shape ``(n,)``, descending; under ``linspace`` spacing the
        timesteps may be fractional.

    Raises:
        ValueError: if ``timestep_spacing`` is not one of :data:`SPACINGS`.

    Example:
        >>> ts = euler_timesteps({"num_train_timesteps": 1000, "timestep_spacing": "linspace"}, 4)
        >>> ts.dtype, ts.tolist()
        (dtype('float32'), [999.0, 666.0, 333.0, 0.0])
    """
    total = int(read_option(config, "num_train_timesteps", 1000))
    spacing = _spacing(config)
    if spacing == "linspace":
        return np.linspace(0, total - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = total // n
        steps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
        return steps + np.float32(read_option(config, "steps_offset", 0))
    return np.arange(total, 0, -total / n).round().copy().astype(np.float32) - np.float32(1)
