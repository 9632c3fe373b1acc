"""Noise schedules: the training betas, ``alphas_cumprod`` and the stds derived from them.

Part of :mod:`~picard.adapters.schedulers.schedules` (see its notes on the symbols).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.schedulers.config import read_option

__all__ = ["alphas_cumprod", "betas", "lambda_clipped", "posterior_std"]


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
