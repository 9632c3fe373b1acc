"""Schedule maths, written once: noise schedules, timestep and sigma grids, conversions.

Pure functions of a scheduler's configuration (any mapping with diffusers' config keys),
reproducing diffusers' own arithmetic — float32 where diffusers computes in float32 — so
that the grids, and the samples built on them, match the sequential schedulers.

Symbols (DDPM, Ho et al. 2020; k-diffusion / EDM for sigmas): ``ᾱ_t`` = ``alphas_cumprod``;
the VP latent is ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε``; the VE (sigma) latent of the Euler-type
samplers is ``x = x_0 + σ ε`` with ``σ_t = √((1-ᾱ_t)/ᾱ_t)``; flow matching uses
``x_σ = (1-σ) x_0 + σ ε``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BETA_DEFAULTS",
    "PREDICTION_TYPES",
    "SIGMA_SCHEDULES",
    "SPACINGS",
    "THRESHOLD_DEFAULTS",
    "alphas_cumprod",
    "ancestral_std",
    "betas",
    "check_steps",
    "check_timesteps",
    "clip_or_threshold",
    "convert_sigmas",
    "euler_timesteps",
    "flow_sigmas",
    "interp_sigmas",
    "karras_sigmas",
    "lambda_clipped",
    "leading_timesteps",
    "posterior_std",
    "predict_eps",
    "predict_x0",
    "prediction_type",
    "sigma_to_t",
    "sigmas_to_timesteps",
    "solver_timesteps",
    "with_defaults",
]

SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
"""The config flags of the sigma schedules that :func:`convert_sigmas` builds."""
BETA_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}
"""diffusers' defaults of the training schedule's keys (DDPM's linear betas)."""
THRESHOLD_DEFAULTS: dict[str, Any] = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}
"""diffusers' defaults of the dynamic-thresholding keys (see :func:`clip_or_threshold`)."""


def read_option(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``config[key]`` (a mapping) or ``config.key`` (an object), else ``default``."""
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def with_defaults(
    config: Mapping[str, Any], defaults: Mapping[str, Any], *, known_only: bool = False
) -> dict[str, Any]:
    """The config over a scheduler's defaults, ``None`` values taking the default.

    Args:
        config: the scheduler configuration (mapping).
        defaults: the scheduler's keys and default values.
        known_only: drop the keys ``defaults`` does not have (as a scheduler whose
            constructor ignores them); else keep them after the defaults.

    Returns:
        A new dict with every key of ``defaults``.

    Example:
        >>> with_defaults({"shift": None, "extra": 1}, {"shift": 1.0})
        {'shift': 1.0, 'extra': 1}
        >>> with_defaults({"extra": 1}, {"shift": 1.0}, known_only=True)
        {'shift': 1.0}
    """
    given = {k: v for k, v in dict(config).items() if v is not None}
    if known_only:
        return {k: given.get(k, v) for k, v in defaults.items()}
    return {**defaults, **given}


def check_steps(value: Any, name: str = "num_inference_steps", upper: int | None = None) -> int:
    """``value`` as an int >= 1 (and at most ``upper``), else a ``ValueError`` naming ``name``.

    Args:
        value: the step count to check.
        name: the option's name, for the message.
        upper: the largest count allowed (``num_train_timesteps``, say), or ``None``.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: if ``value`` is not an int (``bool`` is not) in range.

    Example:
        >>> check_steps(4), check_steps(4, upper=1000)
        (4, 4)
        >>> check_steps(0, "original_inference_steps")
        Traceback (most recent call last):
            ...
        ValueError: original_inference_steps must be an int >= 1, got 0
    """
    if upper is None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    elif (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not 1 <= value <= upper
    ):
        raise ValueError(f"{name} must be an int in [1, {upper}], got {value!r}")
    return int(value)


def betas(config: Mapping[str, Any]) -> Tensor:
    """The training betas (float32), as diffusers builds them from the config.

    Supports ``trained_betas`` and ``beta_schedule`` in {linear, scaled_linear,
    squaredcos_cap_v2}, with ``rescale_betas_zero_snr``.

    Args:
        config: the scheduler configuration (a mapping, or an object with attributes) with
            diffusers' keys ``num_train_timesteps``, ``beta_start``, ``beta_end``,
            ``beta_schedule``, ``trained_betas`` and ``rescale_betas_zero_snr``; missing
            keys take diffusers' defaults (1000, 0.0001, 0.02, ``"linear"``).

    Returns:
        A float32 tensor of shape ``(num_train_timesteps,)`` (or ``(len(trained_betas),)``),
        β_t for t = 0 … T-1.

    Raises:
        ValueError: if ``beta_schedule`` is unknown (and no ``trained_betas`` are given).

    Example:
        >>> betas({"num_train_timesteps": 4, "beta_schedule": "linear",
        ...        "beta_start": 0.1, "beta_end": 0.4}).tolist()
        [0.10000000149011612, 0.20000000298023224, 0.30000001192092896, 0.4000000059604645]
        >>> b = betas({"beta_schedule": "squaredcos_cap_v2"})
        >>> b.shape, b.dtype, round(float(b.max()), 3)
        (torch.Size([1000]), torch.float32, 0.999)
    """
    n = int(read_option(config, "num_train_timesteps", 1000))
    start, end = read_option(config, "beta_start", 0.0001), read_option(config, "beta_end", 0.02)
    trained = read_option(config, "trained_betas")
    schedule = read_option(config, "beta_schedule", "linear")
    if trained is not None:
        out = torch.tensor(trained, dtype=torch.float32)
    elif schedule == "linear":
        out = torch.linspace(start, end, n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        out = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        out = torch.tensor(_cosine_betas(n), dtype=torch.float32)
    else:
        raise ValueError(
            "beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2' "
            f"(or trained_betas), got {schedule!r}"
        )
    if read_option(config, "rescale_betas_zero_snr", False):
        out = _rescale_zero_terminal_snr(out)
    return out


def _cosine_betas(n: int, max_beta: float = 0.999) -> list[float]:
    """Glide's cosine schedule (Nichol & Dhariwal 2021, eq. 17)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]


def _rescale_zero_terminal_snr(b: Tensor) -> Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale √ᾱ so that the last step has SNR 0."""
    sqrt_ab = torch.cumprod(1.0 - b, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def alphas_cumprod(config: Mapping[str, Any], *, terminal_floor: bool = False) -> Tensor:
    """``ᾱ_t`` for t = 0 … T-1 (float32), as diffusers computes it.

    Args:
        config: the scheduler configuration.
        terminal_floor: the sigma-based schedulers (Euler, DPM-Solver) replace a zero
            terminal ᾱ by 2^-24 under ``rescale_betas_zero_snr``; DDPM and DDIM do not.

    Returns:
        A float32 tensor of shape ``(num_train_timesteps,)``: ``ᾱ_t = ∏_{s≤t} (1 - β_s)``,
        decreasing in t.

    Example:
        >>> float(alphas_cumprod({"num_train_timesteps": 1000})[0])
        0.9998999834060669
        >>> zsnr = {"rescale_betas_zero_snr": True}
        >>> float(alphas_cumprod(zsnr)[-1]), float(alphas_cumprod(zsnr, terminal_floor=True)[-1])
        (0.0, 5.960464477539063e-08)
    """
    out = torch.cumprod(1.0 - betas(config), dim=0)
    if terminal_floor and read_option(config, "rescale_betas_zero_snr", False):
        out[-1] = 2**-24
    return out


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


def lambda_clipped(ab: Tensor, lambda_min_clipped: float) -> int:
    """How many training timesteps ``lambda_min_clipped`` cuts from the end of the schedule.

    The last timesteps whose half log-SNR ``λ_t = log √ᾱ_t − log √(1-ᾱ_t)`` is below the
    clip, as the DPM-Solver family's ``set_timesteps`` counts them.

    Args:
        ab: ``ᾱ_t`` of the training timesteps (see :func:`alphas_cumprod`).
        lambda_min_clipped: the least λ kept (``-inf``: none cut).

    Returns:
        The number of timesteps cut.

    Example:
        >>> ab = alphas_cumprod({"beta_schedule": "squaredcos_cap_v2"})
        >>> lambda_clipped(ab, -math.inf), lambda_clipped(ab, -5.1)
        (0, 4)
    """
    lam = torch.log(torch.sqrt(ab)) - torch.log(torch.sqrt(1 - ab))
    return int(torch.searchsorted(torch.flip(lam, [0]), float(lambda_min_clipped)))


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


def posterior_std(alpha_t: Tensor, alpha_prev: Tensor) -> Tensor:
    """The DDPM posterior std of ``x_prev`` given ``x_t`` and ``x_0`` (Ho et al., eq. 7).

    ``β̃ = (1-ᾱ_prev)/(1-ᾱ_t) · (1 - ᾱ_t/ᾱ_prev)``, in VP units.

    Args:
        alpha_t: ``ᾱ_t`` at the current timestep (tensor, broadcastable with alpha_prev).
        alpha_prev: ``ᾱ_prev`` at the next, less noisy timestep of the grid.

    Returns:
        ``√β̃``, the variance clamped at 0 first, in the broadcast shape of the arguments.

    Example:
        >>> round(float(posterior_std(torch.tensor(0.5), torch.tensor(0.8))), 4)
        0.3873
    """
    var = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    return var.clamp(min=0).sqrt()


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
        >>> up = ancestral_std(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.0]))
        >>> [round(v, 4) for v in up.tolist()]
        [0.866, 0.0]
    """
    return (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).clamp(min=0).sqrt()


def prediction_type(config: Mapping[str, Any]) -> str:
    """The config's prediction type, checked.

    Args:
        config: the scheduler configuration (key ``prediction_type``).

    Returns:
        One of :data:`PREDICTION_TYPES`; ``"epsilon"`` when the config has none.

    Raises:
        ValueError: if the prediction type is not one of :data:`PREDICTION_TYPES`.

    Example:
        >>> prediction_type({}), prediction_type({"prediction_type": "v_prediction"})
        ('epsilon', 'v_prediction')
    """
    kind = read_option(config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")
    return kind


def predict_x0(kind: str, x: Tensor, out: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The model's estimate of x_0 from ``x = α x_0 + σ ε`` and its output.

    ``kind`` is the prediction type: epsilon (out = ε), sample (out = x_0) or v_prediction
    (out = α ε - σ x_0, Salimans & Ho 2022).

    Args:
        kind: the prediction type, one of :data:`PREDICTION_TYPES`.
        x: the noisy latent.
        out: the model output at ``x``, shaped like ``x``.
        alpha: the signal scale α (``√ᾱ_t`` in VP units), broadcastable to ``x``.
        sigma: the noise scale σ (``√(1-ᾱ_t)`` in VP units), broadcastable to ``x``; the
            v_prediction formula assumes ``α² + σ² = 1``.

    Returns:
        The estimate of x_0, shaped like ``x``.

    Raises:
        ValueError: if ``kind`` is not one of :data:`PREDICTION_TYPES`.

    Example:
        >>> a, s = torch.tensor(0.6), torch.tensor(0.8)
        >>> x, out = torch.tensor([1.0]), torch.tensor([0.5])
        >>> [round(predict_x0(k, x, out, a, s).item(), 4) for k in PREDICTION_TYPES]
        [1.0, 0.5, 0.2]
    """
    if kind == "epsilon":
        return (x - sigma * out) / alpha
    if kind == "sample":
        return out
    if kind == "v_prediction":
        return alpha * x - sigma * out
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")


def predict_eps(kind: str, x: Tensor, out: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The model's estimate of ε from ``x = α x_0 + σ ε`` and its output (see predict_x0).

    Args:
        kind: the prediction type, one of :data:`PREDICTION_TYPES`.
        x: the noisy latent.
        out: the model output at ``x``, shaped like ``x``.
        alpha: the signal scale α (``√ᾱ_t`` in VP units), broadcastable to ``x``.
        sigma: the noise scale σ (``√(1-ᾱ_t)`` in VP units), broadcastable to ``x``; the
            v_prediction formula assumes ``α² + σ² = 1``.

    Returns:
        The estimate of ε, shaped like ``x``.

    Raises:
        ValueError: if ``kind`` is not one of :data:`PREDICTION_TYPES`.

    Example:
        >>> a, s = torch.tensor(0.6), torch.tensor(0.8)
        >>> x, out = torch.tensor([1.0]), torch.tensor([0.5])
        >>> eps = predict_eps("v_prediction", x, out, a, s)
        >>> round(eps.item(), 4)
        1.1
        >>> torch.allclose(a * predict_x0("v_prediction", x, out, a, s) + s * eps, x)
        True
    """
    if kind == "epsilon":
        return out
    if kind == "sample":
        return (x - alpha * out) / sigma
    if kind == "v_prediction":
        return alpha * out + sigma * x
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")


def output_for_x0(kind: str, x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The model output whose estimate of x_0 at ``x`` is ``x0`` (inverts predict_x0).

    Example:
        >>> a, s = torch.tensor(0.6), torch.tensor(0.8)
        >>> x, x0 = torch.tensor([1.0]), torch.tensor([0.5])
        >>> predict_x0("v_prediction", x, output_for_x0("v_prediction", x, x0, a, s), a, s)
        tensor([0.5000])
    """
    if kind == "epsilon":
        return (x - alpha * x0) / sigma
    if kind == "sample":
        return x0
    if kind == "v_prediction":  # α ε - σ x_0 with ε = (x - α x_0) / σ, α² + σ² = 1
        return (alpha * x - (alpha * alpha + sigma * sigma) * x0) / sigma
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")


def gaussian_slopes(a: Tensor, b: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Per step, ``∂Δ_i/∂x_i`` of ``x_{i+1} = a_i x_i + b_i x̂_0`` when the data are N(0, I).

    Under unit Gaussian data the ideal denoiser is linear, ``x̂_0 = α x / (α² + σ²)``
    (``x = α x_0 + σ ε``), so the increment ``Δ_i = x_{i+1} - x_i`` has the slope
    ``a_i + b_i α_i / (α_i² + σ_i²) - 1``: the secant update's start for rows with no
    history (:meth:`picard.Problem.prior_slopes`).

    Args:
        a: the update's coefficient of ``x_i`` with ``x̂_0`` held fixed, per step.
        b: its coefficient of ``x̂_0``, per step.
        alpha: the signal scale α_i, per step.
        sigma: the noise scale σ_i, per step.

    Returns:
        The slopes, per step.

    Example:
        >>> a, b = torch.tensor([0.9]), torch.tensor([0.2])
        >>> round(gaussian_slopes(a, b, torch.tensor(0.6), torch.tensor(0.8)).item(), 4)
        0.02
    """
    return a + b * alpha / (alpha * alpha + sigma * sigma) - 1


def clip_or_threshold(x0: Tensor, config: Mapping[str, Any], sample_ndim: int) -> Tensor:
    """Apply the config's dynamic thresholding (Imagen, Saharia et al. 2022) or clipping.

    ``x0`` has ``sample_ndim`` trailing dimensions per sample (``(..., C, H, W)``); the
    quantile runs over each sample, as diffusers' ``_threshold_sample`` does.

    Args:
        x0: the estimate of x_0, shape ``(..., *sample_shape)``.
        config: the scheduler configuration: ``thresholding`` (with
            ``dynamic_thresholding_ratio``, default 0.995, and ``sample_max_value``,
            default 1) takes precedence over ``clip_sample`` (with ``clip_sample_range``,
            default 1); with neither set, ``x0`` is returned as is.
        sample_ndim: the number of trailing dimensions that make up one sample.

    Returns:
        The thresholded or clipped ``x0``, same shape and dtype.

    Example:
        >>> x0 = torch.tensor([[-4.0, 2.0], [0.5, 0.25]])
        >>> clip_or_threshold(x0, {"clip_sample": True}, 1).tolist()
        [[-1.0, 1.0], [0.5, 0.25]]
        >>> cfg = {"thresholding": True, "dynamic_thresholding_ratio": 1.0, "sample_max_value": 2.0}
        >>> clip_or_threshold(x0, cfg, 1).tolist()  # per-sample s = clamp(max |x0|, 1, 2)
        [[-1.0, 1.0], [0.5, 0.25]]
        >>> clip_or_threshold(x0, {}, 1) is x0
        True
    """
    if read_option(config, "thresholding", False):
        lead = x0.shape[: x0.ndim - sample_ndim]
        flat = x0.reshape(*lead, -1)
        upcast = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(
            upcast.abs(), read_option(config, "dynamic_thresholding_ratio", 0.995), dim=-1
        )
        s = (
            s.clamp(min=1, max=read_option(config, "sample_max_value", 1.0))
            .unsqueeze(-1)
            .to(x0.dtype)
        )
        return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)
    if read_option(config, "clip_sample", False):
        r = read_option(config, "clip_sample_range", 1.0)
        return x0.clamp(-r, r)
    return x0
