"""EDM Euler (Karras et al. 2022), as diffusers' ``EDMEulerScheduler`` steps it.

The state is the EDM latent ``x = y + σ n`` (Karras et al. 2022, Table 1, "EDM" column),
sampled by Algorithm 2 without its Heun correction. Variables (diffusers -> paper):

- ``sigmas[i]`` σ_i, the noise level of step i (``sigmas[i + 1]`` where the step goes);
  the grid is eq. (5) (``sigma_schedule="karras"``: σ_max^(1/ρ) + (i/(N-1))
  (σ_min^(1/ρ) - σ_max^(1/ρ)), to the power ρ, computed in float64 then rounded to
  float32) or log-linear from σ_max to σ_min (``"exponential"``, float32 ``linspace``
  of the logs, as diffusers), then the final σ (0, or the grid's last σ with
  ``final_sigmas_type="sigma_min"``).
- ``precondition_inputs``/``scale_model_input``: ``c_in(σ_i) = 1/√(σ_i² + σ_d²)``
  (σ_d = ``sigma_data``); ``precondition_noise``: ``c_noise(σ_i) = ¼ ln σ_i``, which is
  ``scheduler.timesteps`` — the float32 value the pipeline passes to the model.
- ``precondition_outputs``: ``D = c_skip x̂ + c_out F`` with ``c_skip = σ_d²/(σ̂² + σ_d²)``
  and ``c_out = ± σ̂ σ_d/√(σ̂² + σ_d²)`` (+ for ``prediction_type="epsilon"``, - for
  ``"v_prediction"``), evaluated at σ̂_i (Table 1's preconditioning).
- ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``: S_churn, S_tmin, S_tmax, S_noise;
  γ_i = min(S_churn/N, √2 - 1) where S_tmin ≤ σ_i ≤ S_tmax, ``sigma_hat`` σ̂_i =
  σ_i (1 + γ_i), ``x̂_i = x_i + √(σ̂_i² - σ_i²) S_noise z`` (noise drawn, in the model
  output's dtype, only where γ_i > 0). As in diffusers, the model is evaluated at the
  *unchurned* x_i with c_in(σ_i) and c_noise(σ_i).
- ``derivative`` d_i = (x̂_i - D)/σ̂_i, ``dt`` = σ_{i+1} - σ̂_i: ``x_{i+1} = x̂_i + dt d_i``.

``init_noise_sigma`` is diffusers' √(σ_max² + 1) (not EDM's σ_max). diffusers' ``step``
rounds the sample to float32 and back to the model output's dtype; in float32 this
changes nothing, and a float64 picard solve stays float64 throughout.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.sigma_rules import ancestral_tol_scale, karras_churn

__all__ = ["EDM_EULER_DEFAULTS", "EDMEulerRule", "edm_grid", "from_config"]

EDM_EULER_DEFAULTS: dict[str, Any] = {
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "sigma_schedule": "karras",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rho": 7.0,
    "final_sigmas_type": "zero",
}
"""The defaults of diffusers' ``EDMEulerScheduler``: a plain mapping config falls back
to them."""

_SCHEDULES = ("karras", "exponential")
_PREDICTIONS = ("epsilon", "v_prediction")
_FINAL_SIGMAS = ("zero", "sigma_min")


def _with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    full = schedules.with_defaults(config, EDM_EULER_DEFAULTS)
    for key, allowed in (
        ("sigma_schedule", _SCHEDULES),
        ("prediction_type", _PREDICTIONS),
        ("final_sigmas_type", _FINAL_SIGMAS),
    ):
        if full[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed} for EDM Euler, got {full[key]!r}")
    for key in ("sigma_min", "sigma_max", "sigma_data", "rho"):
        value = full[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{key} must be a positive number for EDM Euler, got {value!r}")
    return full


def edm_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """``EDMEulerScheduler.set_timesteps``: the float32 timesteps (c_noise) and sigmas.

    Args:
        config: an ``EDMEulerScheduler`` configuration (missing keys take
            :data:`EDM_EULER_DEFAULTS`).
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas)``: ``(N,)`` timesteps ``¼ ln σ_i`` and ``(N + 1,)`` sigmas,
        step i going from ``sigmas[i]`` to ``sigmas[i + 1]``.

    Raises:
        ValueError: N < 1, an unknown option value, a non-positive σ, or a grid whose
            first timestep repeats (diffusers would start at the second occurrence).

    Example:
        >>> t, s = edm_grid({}, 3)
        >>> [round(v, 4) for v in s.tolist()], round(t[0].item(), 4)
        ([80.0, 2.5152, 0.002, 0.0], 1.0955)
    """
    config = _with_defaults(config)
    n = schedules.check_steps(num_inference_steps)
    lo, hi = float(config["sigma_min"]), float(config["sigma_max"])
    if config["sigma_schedule"] == "karras":
        grid = schedules.karras_sigmas(lo, hi, n, rho=float(config["rho"]))
        sigmas = torch.from_numpy(grid).to(torch.float32)
    else:  # float32 linspace of the logs, as diffusers (k-diffusion's get_sigmas_exponential)
        sigmas = torch.linspace(math.log(lo), math.log(hi), n).exp().flip(0)
    timesteps = 0.25 * torch.log(sigmas)
    last = sigmas[-1:] if config["final_sigmas_type"] == "sigma_min" else torch.zeros(1)
    sigmas = torch.cat([sigmas, last])
    repeats = int((timesteps == timesteps[0]).sum())
    if repeats > 1:
        raise ValueError(
            f"the first timestep {timesteps[0].item():g} occurs {repeats} times in the grid "
            "(σ_min and σ_max round to the same float32 σ); diffusers would start at the "
            "second occurrence. Use sigma_min < sigma_max or fewer steps"
        )
    return timesteps, sigmas


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


class EDMEulerRule(UpdateRule):
    """EDM's Euler sampler (Algorithm 2 without Heun), as ``EDMEulerScheduler``.

    Args:
        config: an ``EDMEulerScheduler`` configuration (mapping).
        num_inference_steps: N.
        s_churn: S_churn (0: the deterministic Euler ODE step).
        s_tmin: S_tmin, the least σ that is churned.
        s_tmax: S_tmax, the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    With ``prediction_type="epsilon"`` the guesses of new steps hold D fixed: the signal
    coefficients are ``(1/c_skip, -c_out/c_skip)``, with which the ε-formula
    ``(x - σ F)/α`` is EDM's ``D = c_skip x + c_out F``.

    Attributes:
        config: the full configuration (defaults filled in).
        sigmas: diffusers' ``scheduler.sigmas`` (float32, the final σ appended).

    Example:
        >>> rule = EDMEulerRule({}, 4, s_churn=1.0)
        >>> round(rule.init_noise_sigma, 3), rule.noise_draws.tolist()
        (80.006, [True, True, True, True])
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
        self.config = _with_defaults(config)
        self.prediction_type = self.config["prediction_type"]
        s_churn, s_tmin = _real("s_churn", s_churn), _real("s_tmin", s_tmin)
        s_tmax, self.s_noise = _real("s_tmax", s_tmax), _real("s_noise", s_noise)
        timesteps, sigmas = edm_grid(self.config, num_inference_steps)
        n = len(timesteps)
        sigma = sigmas[:n]
        sigma_hat, draws, churn = karras_churn(sigma, len(sigmas) - 1, s_churn, s_tmin, s_tmax)
        sd = float(self.config["sigma_data"])
        c_skip = sd**2 / (sigma_hat**2 + sd**2)
        sign = -1 if self.prediction_type == "v_prediction" else 1
        c_out = (sign * sigma_hat) * sd / (sigma_hat**2 + sd**2) ** 0.5
        self.num_steps = n
        self.timesteps = timesteps
        self.sigmas = sigmas
        self.init_noise_sigma = (float(self.config["sigma_max"]) ** 2 + 1) ** 0.5
        self.coefficients = {
            "c_in": (1 / ((sigma**2 + sd**2) ** 0.5)).numpy(),
            "c_skip": c_skip.numpy(),
            "c_out": c_out.numpy(),
            "sigma_hat": sigma_hat.numpy(),
            "dt": (sigmas[1 : n + 1] - sigma_hat).numpy(),
            "churn": churn.numpy(),
        }
        self.noise_draws = draws.numpy().copy()
        self.tol_scale = ancestral_tol_scale(sigmas, n)
        if self.prediction_type == "epsilon":
            self.coefficients["signal_alpha"] = (1 / c_skip.double()).numpy()
            self.coefficients["signal_sigma"] = (-c_out.double() / c_skip.double()).numpy()
            self.signal_keys = ("signal_alpha", "signal_sigma")

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """``precondition_inputs``: ``c_in(σ_i) x``."""
        return x * c["c_in"]

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """Churn (where γ_i > 0), ``D = c_skip x̂ + c_out F``, the Euler step to σ_{i+1}."""
        if noise is not None:  # zero rows (no draw) add exactly 0
            x = x + (noise * self.s_noise) * c["churn"]
        denoised = c["c_skip"] * x + c["c_out"] * out
        derivative = (x - denoised) / c["sigma_hat"]
        return x + derivative * c["dt"], None


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    sigmas: Any = None,
) -> EDMEulerRule:
    """The EDM Euler rule of an ``EDMEulerScheduler`` config, with ``step``'s options.

    Args:
        config: an ``EDMEulerScheduler`` configuration (mapping).
        num_inference_steps: N.
        s_churn: S_churn (0: the deterministic Euler ODE step).
        s_tmin: S_tmin, the least σ that is churned.
        s_tmax: S_tmax, the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.
        sigmas: ``set_timesteps``' custom ramp: not supported (must be ``None``).

    Returns:
        The :class:`EDMEulerRule` on N steps.

    Raises:
        ValueError: custom ``sigmas``, or a config option out of range.

    Example:
        >>> from_config({"sigma_schedule": "exponential"}, 5).timesteps.dtype
        torch.float32
        >>> from_config({}, 3, s_churn=1.0, s_tmin=1.0).noise_draws.tolist()
        [True, True, False]
    """
    if sigmas is not None:
        raise ValueError(
            "custom sigmas (set_timesteps' ramp) are not supported by picard's EDM Euler "
            "rule; pass num_inference_steps"
        )
    return EDMEulerRule(
        config, num_inference_steps, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
    )
