"""Sigma grids: training sigmas, Karras/exponential/beta/flow grids, sigma ↔ timestep.

Part of :mod:`~picard.adapters.schedulers.schedules` (see its notes on the symbols).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from torch import Tensor

from picard.adapters.schedulers.config import read_option

__all__ = [
    "ancestral_std",
    "convert_sigmas",
    "flow_sigmas",
    "interp_sigmas",
    "karras_sigmas",
    "sigma_to_t",
    "sigmas_to_timesteps",
]


def train_sigmas(ab: Tensor) -> np.ndarray:
    """``σ_t = √((1-ᾱ_t)/ᾱ_t)`` for every training timestep (float32, ascending in t)."""
    return (((1 - ab) / ab) ** 0.5).numpy()


def interp_sigmas(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """σ at (possibly fractional) timesteps, linear in t between training steps.

    Args:
        timesteps: the timesteps, possibly fractional; values outside
            ``[0, len(sigmas) - 1]`` take the end values.
        sigmas: σ at each training timestep 0 … T-1 (ascending in t, as from
            ``train_sigmas``).

    Returns:
        A float64 array with the shape of ``timesteps``.

    Example:
        >>> interp_sigmas(np.array([0.5, 2.0]), np.array([0.0, 1.0, 4.0])).tolist()
        [0.5, 4.0]
    """
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def convert_sigmas(
    kind: str, sigma_min: float, sigma_max: float, n: int, log: Callable[[float], Any] = math.log
) -> np.ndarray:
    """Karras (eq. 5, ρ = 7), exponential or beta (α = β = 0.6) sigmas, as diffusers builds them.

    The ``use_karras_sigmas``, ``use_exponential_sigmas`` and ``use_beta_sigmas`` options
    of diffusers' schedulers (``_convert_to_karras`` and its siblings).

    Args:
        kind: ``"use_karras_sigmas"``, ``"use_exponential_sigmas"`` or ``"use_beta_sigmas"``.
        sigma_min: the smallest σ, the last of the grid.
        sigma_max: the largest σ, the first of the grid.
        n: the number of sigmas.
        log: the logarithm of the exponential grid's ends (``math.log``, or ``np.log``
            where the scheduler takes numpy's: the two can differ in the last bit).

    Returns:
        A float64 array of shape ``(n,)``, descending from ``sigma_max`` to ``sigma_min``.

    Example:
        >>> convert_sigmas("use_exponential_sigmas", 0.1, 10.0, 3).round(3).tolist()
        [10.0, 1.0, 0.1]
        >>> convert_sigmas("use_beta_sigmas", 0.1, 10.0, 3).round(3).tolist()
        [10.0, 5.05, 0.1]
    """
    if kind == "use_karras_sigmas":
        return karras_sigmas(sigma_min, sigma_max, n, rho=7.0)
    if kind == "use_exponential_sigmas":
        return np.exp(np.linspace(log(sigma_max), log(sigma_min), n))
    import scipy.stats

    ppfs = [scipy.stats.beta.ppf(u, 0.6, 0.6) for u in 1 - np.linspace(0, 1, n)]
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppfs])


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas from ``sigma_max`` down to ``sigma_min``.

    Args:
        sigma_min: the smallest σ, the last of the grid.
        sigma_max: the largest σ, the first of the grid.
        n: the number of sigmas.
        rho: the exponent ρ; the grid is uniform in ``σ^(1/ρ)`` (7 in the paper).

    Returns:
        A float64 array of shape ``(n,)``, descending from ``sigma_max`` to ``sigma_min``
        (no terminal 0).

    Example:
        >>> karras_sigmas(0.1, 10.0, 3).round(3).tolist()
        [10.0, 1.451, 0.1]
    """
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each σ: linear interpolation in log σ (as diffusers).

    Args:
        sigma: the sigmas, any shape.
        log_sigmas: ``log σ_t`` of the training timesteps 0 … T-1, ascending (at least two).

    Returns:
        A float64 array with the shape of ``sigma``: the fractional timesteps, clipped to
        ``[0, T-1]``.

    Example:
        >>> log_sigmas = np.log(np.array([0.1, 1.0, 10.0]))
        >>> sigma_to_t(np.array([1.0, 10**0.5, 100.0]), log_sigmas).round(6).tolist()
        [1.0, 1.5, 2.0]
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def sigmas_to_timesteps(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each σ of a grid, one σ at a time as diffusers converts them.

    Args:
        sigmas: the grid's sigmas, shape ``(n,)``.
        log_sigmas: ``log σ_t`` of the training timesteps (see :func:`sigma_to_t`).

    Returns:
        A float64 array of shape ``(n,)``.

    Example:
        >>> log_sigmas = np.log(np.array([0.1, 1.0, 10.0]))
        >>> sigmas_to_timesteps(np.array([10.0, 1.0]), log_sigmas).tolist()
        [2.0, 1.0]
    """
    return np.array([sigma_to_t(s, log_sigmas) for s in sigmas])


def flow_sigmas(
    config: Mapping[str, Any],
    n: int,
    sigmas: np.ndarray | None = None,
    mu: float | None = None,
) -> np.ndarray:
    """The σ grid of flow-matching Euler (descending, length n, no terminal 0), shifted.

    Static shift ``σ' = sσ / (1 + (s-1)σ)`` (SD3), or with ``use_dynamic_shifting`` the
    time shift by ``mu`` (Flux), exponential or linear.

    Args:
        config: the scheduler configuration: ``num_train_timesteps`` (default 1000),
            ``shift`` (s, default 1), ``use_dynamic_shifting`` (default False) and
            ``time_shift_type`` (``"exponential"``, the default, or ``"linear"``).
        n: the number of inference steps (unused when ``sigmas`` is given).
        sigmas: a custom, unshifted σ grid to shift instead of the default one.
        mu: the time-shift parameter; required with ``use_dynamic_shifting``, else unused.

    Returns:
        A float array of shape ``(n,)`` (or that of ``sigmas``), descending, in (0, 1].

    Raises:
        ValueError: if the config uses dynamic shifting and ``mu`` is ``None``.

    Example:
        >>> flow_sigmas({"num_train_timesteps": 1000, "shift": 3.0}, 4).round(3).tolist()
        [1.0, 0.858, 0.602, 0.009]
        >>> s = flow_sigmas({"use_dynamic_shifting": True}, 3, sigmas=[1.0, 0.5, 0.25], mu=1.0)
        >>> [round(float(v), 3) for v in s]
        [1.0, 0.731, 0.475]
    """
    total = int(read_option(config, "num_train_timesteps", 1000))
    shift = float(read_option(config, "shift", 1.0))
    if sigmas is None:
        base = np.linspace(1, total, total, dtype=np.float32)[::-1].copy() / np.float32(total)
        if not read_option(config, "use_dynamic_shifting", False):
            base = shift * base / (1 + (shift - 1) * base)
        sigma_max, sigma_min = float(base[0]), float(base[-1])
        ts = np.linspace(sigma_max * total, sigma_min * total, n)
        sigmas = ts / total
    else:
        sigmas = np.asarray(sigmas).astype(np.float32)
    if read_option(config, "use_dynamic_shifting", False):
        if mu is None:
            raise ValueError("mu is required when the scheduler uses dynamic shifting")
        if read_option(config, "time_shift_type", "exponential") == "exponential":
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        else:
            sigmas = mu / (mu + (1 / sigmas - 1) ** 1.0)
    else:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return np.asarray(sigmas)


def ancestral_std(sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
    """The ancestral noise std ``σ_up`` of a step from ``σ_from`` to ``σ_to`` (VE units).

    ``σ_up² = σ_to² (σ_from² - σ_to²) / σ_from²`` — the DDPM posterior std expressed in the
    VE latent, so the same tolerance means the same thing for VP and VE samplers.

    Args:
        sigma_from: σ before the step (positive tensor).
        sigma_to: σ after the step (tensor, broadcastable with sigma_from).

    Returns:
        ``σ_up`` (the variance clamped at 0 first), in the broadcast shape of the
        arguments; 0 for a step to ``σ_to = 0``.

    Example:
        >>> import torch
        >>> up = ancestral_std(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.0]))
        >>> [round(v, 4) for v in up.tolist()]
        [0.866, 0.0]
    """
    return (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).clamp(min=0).sqrt()
