"""Flow-matching Heun, as diffusers' ``FlowMatchHeunDiscreteScheduler`` steps it.

Rectified flow (Lipman et al. 2023; Esser et al. 2024) ``x_σ = (1 - σ) x_0 + σ ε`` with
the velocity model ``v̂ ≈ dx/dσ``, integrated by Heun's method (Karras et al. 2022,
Algorithm 2: Euler to σ_{i+1}, then the trapezoidal correction; optional churn).
Variables (diffusers -> symbols):

- ``sigmas`` interleaves the grid ``[σ_0, σ_1, σ_1, …, σ_{N-1}, σ_{N-1}, 0]`` and
  ``timesteps`` = 1000 σ likewise (2N - 1 loop entries, one model call each); the grid
  is :func:`picard.adapters.schedulers.flow.flow_grid`'s with the static ``shift`` s,
  ``σ' = s σ / (1 + (s - 1) σ)`` (Esser et al. 2024, eq. 23), applied twice as diffusers
  does. The config has no other options.
- ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``: S_churn, S_tmin, S_tmax, S_noise;
  γ = min(S_churn/(2N - 1), √2 - 1) where S_tmin ≤ σ_i ≤ S_tmax (2N - 1 = ``len(sigmas) -
  1``), ``sigma_hat`` σ̂_i = σ_i (1 + γ); the sample gets ``+ S_noise z √(σ̂² - σ²)``.
- first stage: ``denoised = x̂ - v̂ σ_i`` (σ_i, not σ̂_i), ``derivative`` d_i = (x̂ -
  denoised)/σ̂_i = v̂ σ_i/σ̂_i, ``dt`` = σ_{i+1} - σ̂_i, ``x̃ = x̂ + d_i dt`` (stores
  ``prev_derivative``, ``dt``, ``sample`` x̂);
- second stage: d'_i = v̂(x̃) (written ``(x̃ - (x̃ - v̂ σ_{i+1}))/σ_{i+1}``), ``x_{i+1} = x̂
  + (d_i + d'_i)/2 · dt``.

diffusers churns in *both* stages (the same γ, as σ is the pair's σ_i): the second
stage draws a noise tensor too and adds it to x̃, where it changes d'_i only by rounding
— but it advances the generator, so picard draws it (``noise_draws`` is True at both
entries of every churned step). The sample is stepped in float32 (diffusers upcasts)
and the noise drawn in the model output's dtype.

For picard each loop entry is one step; its state is the sample the model sees (x_i,
then x̃). ``memory = 1``: each entry stores d, and the correction is written as an
increment of x̃, ``x̃ + (d'_i - d_i)/2 · dt`` (equal to diffusers' since ``x̃ = x̂ + d_i
dt``; see :mod:`picard.adapters.schedulers.heun` for why), matching diffusers to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.flow import flow_grid, flow_tol_scale
from picard.adapters.schedulers.heun import TwoStageRule, check_first_timestep
from picard.adapters.schedulers.sigma_rules import karras_churn, real_number

__all__ = ["FLOW_HEUN_DEFAULTS", "FlowMatchHeunRule", "flow_heun_grid", "from_config"]

FLOW_HEUN_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}
"""``FlowMatchHeunDiscreteScheduler``'s whole config (other keys are ignored, as there)."""


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    return schedules.with_defaults(config, FLOW_HEUN_DEFAULTS, known_only=True)


def flow_heun_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """``FlowMatchHeunDiscreteScheduler.set_timesteps``: interleaved timesteps and sigmas.

    Args:
        config: a ``FlowMatchHeunDiscreteScheduler`` configuration (``num_train_timesteps``,
            ``shift``).
        num_inference_steps: N.

    Returns:
        ``(timesteps (2N - 1,), sigmas (2N,))``, float32, as diffusers' ``timesteps`` and
        ``sigmas``.

    Example:
        >>> t, s = flow_heun_grid({"shift": 3.0}, 3)
        >>> [round(v, 1) for v in t.tolist()], s[-1].item()
        ([1000.0, 751.1, 751.1, 8.9, 8.9], 0.0)
    """
    steps, base = flow_grid(_config(config), num_inference_steps)
    timesteps = torch.cat([steps[:1], steps[1:].repeat_interleave(2)])
    check_first_timestep(timesteps)
    return timesteps, torch.cat([base[:1], base[1:-1].repeat_interleave(2), base[-1:]])


class FlowMatchHeunRule(TwoStageRule):
    """Flow-matching Heun on the 2N - 1 loop entries of ``FlowMatchHeunDiscreteScheduler``.

    Args:
        config: a ``FlowMatchHeunDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N (diffusers' argument).
        s_churn: S_churn (0: the deterministic ODE, no noise drawn).
        s_tmin: S_tmin, the least σ that is churned.
        s_tmax: S_tmax, the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    Attributes:
        sigmas: diffusers' interleaved ``scheduler.sigmas`` (float32, ending at 0).
        base_sigmas: σ_0 … σ_{N-1}, 0 (float32).

    Example:
        >>> rule = FlowMatchHeunRule({"shift": 3.0}, 3, s_churn=1.0)
        >>> rule.num_steps, rule.noise_draws.tolist()
        (5, [True, True, True, True, True])
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        *,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ):
        self.config = _config(config)
        s_churn, s_tmin = real_number("s_churn", s_churn), real_number("s_tmin", s_tmin)
        s_tmax, self.s_noise = real_number("s_tmax", s_tmax), real_number("s_noise", s_noise)
        self.timesteps, self.sigmas = flow_heun_grid(self.config, num_inference_steps)
        m = self.num_steps = len(self.timesteps)
        base = self.base_sigmas = torch.cat([self.sigmas[::2], self.sigmas[-1:]])
        n = m // 2 + 1
        sigma, following = base[:n], base[1 : n + 1]
        sigma_hat, draws, churn = karras_churn(sigma, len(self.sigmas) - 1, s_churn, s_tmin, s_tmax)
        first = torch.arange(m) % 2 == 0
        j = torch.arange(m) // 2
        self.coefficients = {
            "divisor": torch.where(first, sigma_hat[j], following[j]).numpy(),
            "dt": (following - sigma_hat)[j].numpy(),
            "churn": churn[j].numpy(),
        }
        self.noise_draws = draws[j].numpy().copy()
        s = torch.cat([base.double(), torch.zeros(2, dtype=torch.float64)]).numpy()
        k = j.numpy()
        self.tol_scale = flow_tol_scale(s[k + 1], s[k + 2])
        self.tol_scale[-1] = 0.0
        self._finish(self.sigmas[:m], first, epsilon_signal=False)

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """The state itself: flow matching does not scale the model input."""
        return x

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Churn where drawn, then the Euler step or the trapezoidal correction.

        Returns the next states and each entry's derivative (the correction reads its
        first stage's).

        Example:
            >>> rule = FlowMatchHeunRule({}, 3)
            >>> c = {k: torch.as_tensor(v[:3]).reshape(-1, 1, 1) for k, v in
            ...      rule.coefficients.items()}
            >>> nxt, kept = rule.update(torch.ones(3, 1, 2), torch.ones(3, 1, 2), c, None, None)
            >>> [round(v, 3) for v in nxt[:, 0, 0].tolist()]
            [0.501, 1.0, 0.5]
        """
        churned = x
        if noise is not None:  # zero rows (no draw) add exactly 0
            churned = x + (noise * self.s_noise) * c["churn"]
        first = c["first"] > 0.5
        denoised = churned - out * c["sigma_in"]
        derivative = (churned - denoised) / c["divisor"]
        d_prev = self._previous(derivative, history)
        euler = churned + derivative * c["dt"]
        corrected = x + (0.5 * (derivative - d_prev)) * c["dt"]
        return torch.where(first, euler, corrected), derivative


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> FlowMatchHeunRule:
    """The rule of a ``FlowMatchHeunDiscreteScheduler`` config, with ``step``'s options.

    Args:
        config: a ``FlowMatchHeunDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N, as passed to ``set_timesteps``.
        s_churn: S_churn (0: the deterministic ODE).
        s_tmin: S_tmin, the least σ that is churned.
        s_tmax: S_tmax, the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    Returns:
        The :class:`FlowMatchHeunRule` on diffusers' 2N - 1 loop entries.

    Example:
        >>> rule = from_config({"shift": 3.0}, 28)
        >>> rule.num_steps, rule.sigmas[0].item(), bool(rule.noise_draws.any())
        (55, 1.0, False)
    """
    return FlowMatchHeunRule(
        config, num_inference_steps, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
    )
