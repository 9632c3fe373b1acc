"""Euler, Heun and DPM-2 (Karras et al. 2022), and their ancestral forms, as tables.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models")
on the VE latent ``x = x_0 + σ n`` with the denoiser D and the ODE slope
``d(x; σ) = (x - D(x; σ))/σ``:

- Algorithm 2's churn: γ_i = min(S_churn/N, √2 - 1) where S_tmin ≤ σ_i ≤ S_tmax,
  σ̂_i = σ_i (1 + γ_i), ``x̂_i = x_i + √(σ̂_i² - σ_i²) S_noise ε_i`` (k-diffusion draws ε_i
  at every step, γ_i > 0 or not); the model is evaluated at (x̂_i, σ̂_i).
- Euler: ``x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) d(x̂_i; σ̂_i)``.
- Heun (Algorithm 2 with its correction): the Euler point x̃ and
  ``x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) (d(x̂_i; σ̂_i) + d(x̃; σ_{i+1}))/2``; Euler when σ_{i+1} = 0.
- DPM-2 (DPM-Solver-2, Lu et al. 2022, with the midpoint in log σ):
  σ_mid = exp(½ (log σ̂_i + log σ_{i+1})), ``x̃ = x̂_i + (σ_mid - σ̂_i) d(x̂_i; σ̂_i)`` and
  ``x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) d(x̃; σ_mid)``; Euler when σ_{i+1} = 0.
- Ancestral (η): σ_↑ = min(σ_{i+1}, η √(σ_{i+1}² (σ_i² - σ_{i+1}²)/σ_i²)),
  σ_↓ = √(σ_{i+1}² - σ_↑²); the step aims at σ_↓, then ``+ S_noise σ_↑ z_i`` with
  ``z_i = noise_sampler(σ_i, σ_{i+1})``.

Entries (see :mod:`~picard.adapters.k_samplers.table`): the state of a churned step's
first entry is x̂_i, so the churn of step i + 1 is the last noise term of step i (and the
churn of step 0 perturbs the starting state). A second stage is an increment of its own
state x̃: its first stage stores ``-(σ_mid - σ̂) d`` (DPM-2) or ``-(σ_{i+1} - σ̂) d/2`` (Heun).
"""

from __future__ import annotations

import torch
from torch import Tensor

from picard.adapters.k_samplers.table import START, Table
from picard.adapters.schedulers.sigma_rules import karras_churn

__all__ = [
    "ancestral_step",
    "dpm_2",
    "dpm_2_ancestral",
    "euler",
    "euler_ancestral",
    "heun",
]


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(σ_↓, σ_↑)`` of an ancestral step from ``sigma_from`` to ``sigma_to``.

    σ_↑ = min(σ_to, η √(σ_to² (σ_from² - σ_to²)/σ_from²)) and σ_↓ = √(σ_to² - σ_↑²):
    the step's variance σ_to² splits into the deterministic part σ_↓² and fresh noise
    σ_↑²; η = 0 gives ``(σ_to, 0)``.

    Args:
        sigma_from: σ of the state.
        sigma_to: σ of the next state.
        eta: η, the share of the DDPM-like noise (1: ancestral sampling).

    Returns:
        ``(sigma_down, sigma_up)``, tensors in the grid's dtype.

    Example:
        >>> down, up = ancestral_step(torch.tensor(2.0), torch.tensor(1.0))
        >>> round(down.item(), 4), round(up.item(), 4)
        (0.5, 0.866)
    """
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    up = torch.minimum(sigma_to, up)
    return (sigma_to**2 - up**2) ** 0.5, up


def _euler_row(x_sigma: Tensor, target: Tensor) -> dict[str, float]:
    """``x + (target - σ) d(x; σ)`` as ``cx x + cd D`` (the step rounded in the grid's dtype)."""
    ratio = (target - x_sigma).double().item() / x_sigma.double().item()
    return {"cx": 1.0 + ratio, "cd": -ratio}


def _two_stage(table: Table, i: int, sigma: Tensor, mid: Tensor, target: Tensor, heun: bool) -> int:
    """A Heun or DPM-2 step from σ (entry 1) via ``mid`` (entry 2) to ``target``.

    Heun: x̃ = x + (t - σ) d, ``x' = x̃ + (t - σ)(d̃ - d)/2``; DPM-2: x̃ = x + (m - σ) d,
    ``x' = x̃ + (t - σ) d̃ - (m - σ) d``. Returns the second entry's index.
    """
    s, m = sigma.double().item(), mid.double().item()
    dt = (target - sigma).double().item()  # steps rounded in the grid's dtype, as k-diffusion's
    first = dt / s if heun else (mid - sigma).double().item() / s  # the first stage's step / σ
    keep = first / 2 if heun else first  # what the second stage takes back, over σ
    table.add(i, sigma, cx=1 + first, cd=-first, kx=-keep, kd=keep)
    second = dt / (2 * m) if heun else dt / m
    return table.add(i, mid, cx=1 + second, cd=-second, c1=1.0)


def _churned(
    sigmas: Tensor,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    stage: str,
) -> Table:
    """Euler, Heun or DPM-2 with Algorithm 2's churn (``stage``: euler, heun or dpm_2)."""
    n = len(sigmas) - 1
    table = Table(sigmas, memory=0 if stage == "euler" else 1)
    sigma_hat, churned, churn = karras_churn(sigmas[:n], n, s_churn, s_tmin, s_tmax)
    last = None  # the entry that ends the previous step
    for i in range(n):
        # ε_i is drawn at every step; it perturbs the state where γ_i > 0
        target = None if not churned[i] else (START if i == 0 else last)
        table.draw(target, sigmas[i], sigmas[i + 1], s_noise * churn[i])
        if churned[i] and i > 0:
            table.coefficient(last, "cz", s_noise * churn[i].double().item())
        hat, nxt = sigma_hat[i], sigmas[i + 1]
        if stage == "euler" or nxt == 0:
            last = table.add(i, hat, **_euler_row(hat, nxt))
        elif stage == "heun":
            last = _two_stage(table, i, hat, nxt, nxt, heun=True)
        else:
            mid = hat.log().lerp(nxt.log(), 0.5).exp()
            last = _two_stage(table, i, hat, mid, nxt, heun=False)
    return table


def euler(
    sigmas: Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Table:
    """Euler steps (Algorithm 2 of Karras et al. 2022), k-diffusion's ``sample_euler``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        s_churn: S_churn (0: no churn).
        s_tmin: the least σ that is churned.
        s_tmax: the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> table = euler(torch.tensor([2.0, 1.0, 0.0]))
        >>> table.num_entries, table.arrays()["cx"].tolist(), len(table.draws)
        (2, [0.5, 0.0], 2)
    """
    return _churned(sigmas, s_churn, s_tmin, s_tmax, s_noise, "euler")


def heun(
    sigmas: Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Table:
    """Heun steps (Algorithm 2 of Karras et al. 2022), k-diffusion's ``sample_heun``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        s_churn: S_churn (0: no churn).
        s_tmin: the least σ that is churned.
        s_tmax: the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> table = heun(torch.tensor([2.0, 1.0, 0.0]))  # two evaluations, then Euler
        >>> table.num_entries, table.step, table.first
        (3, [0, 0, 1], [True, False, True])
    """
    return _churned(sigmas, s_churn, s_tmin, s_tmax, s_noise, "heun")


def dpm_2(
    sigmas: Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Table:
    """DPM-Solver-2 steps with the midpoint in log σ, k-diffusion's ``sample_dpm_2``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        s_churn: S_churn (0: no churn).
        s_tmin: the least σ that is churned.
        s_tmax: the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> table = dpm_2(torch.tensor([4.0, 1.0, 0.0]))
        >>> [round(s.item(), 3) for s in table.sigma_in]  # σ_mid = √(4 · 1)
        [4.0, 2.0, 1.0]
    """
    return _churned(sigmas, s_churn, s_tmin, s_tmax, s_noise, "dpm_2")


def euler_ancestral(sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0) -> Table:
    """Ancestral Euler steps, k-diffusion's ``sample_euler_ancestral``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> table = euler_ancestral(torch.tensor([2.0, 1.0, 0.0]))
        >>> [d.entry for d in table.draws]  # no noise into σ = 0
        [0]
    """
    n = len(sigmas) - 1
    table = Table(sigmas)
    for i in range(n):
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        k = table.add(i, sigmas[i], **_euler_row(sigmas[i], down))
        if sigmas[i + 1] > 0:
            table.coefficient(k, "cz", s_noise * up.double().item())
            table.draw(k, sigmas[i], sigmas[i + 1])
    return table


def dpm_2_ancestral(sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0) -> Table:
    """Ancestral DPM-Solver-2 steps, k-diffusion's ``sample_dpm_2_ancestral``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> table = dpm_2_ancestral(torch.tensor([2.0, 1.0, 0.0]))
        >>> table.num_entries, [d.entry for d in table.draws]
        (3, [1])
    """
    n = len(sigmas) - 1
    table = Table(sigmas, memory=1)
    for i in range(n):
        sigma = sigmas[i]
        down, up = ancestral_step(sigma, sigmas[i + 1], eta)
        if down == 0:  # Euler to σ_↓ = 0, no noise
            table.add(i, sigma, **_euler_row(sigma, down))
            continue
        mid = sigma.log().lerp(down.log(), 0.5).exp()
        k = _two_stage(table, i, sigma, mid, down, heun=False)
        table.coefficient(k, "cz", s_noise * up.double().item())
        table.draw(k, sigma, sigmas[i + 1])
    return table
