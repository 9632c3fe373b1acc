"""Euler and Euler-ancestral (Karras et al. 2022), as diffusers' Euler schedulers step them.

The state is the VE latent ``x = x_0 + σ n`` of a VP-trained model (Karras et al. 2022,
Table 1: ``c_in = 1/√(σ² + 1)``, so the model sees the VP latent). Variables
(diffusers -> paper):

- ``sigmas[i]`` σ_i, the noise level of step i (``sigmas[i + 1]`` is where the step goes);
  ``timesteps[i]`` the (float) training timestep the model receives at σ_i.
- ``scale_model_input``: ``c_in(σ_i) = 1/√(σ_i² + 1)``.
- ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``: S_churn, S_tmin, S_tmax, S_noise of
  Algorithm 2; ``gamma`` γ_i = min(S_churn/N', √2 - 1) where S_tmin ≤ σ_i ≤ S_tmax (N' =
  ``len(sigmas) - 1``); ``sigma_hat`` σ̂_i = σ_i (1 + γ_i).
- ``pred_original_sample`` the denoised D(x̂_i; σ̂_i): ``x̂ - σ̂ ε̂`` (epsilon), the output
  (sample), or ``c_skip x̂ + c_out v̂`` with ``c_skip = 1/(σ² + 1)``, ``c_out = -σ/√(σ² + 1)``
  (v_prediction; diffusers uses σ_i, not σ̂_i, there).
- ``derivative`` d_i = (x̂_i - D)/σ̂_i and ``dt`` = σ_{i+1} - σ̂_i: Algorithm 2's Euler step
  ``x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) d_i``, with ``x̂_i = x_i + √(σ̂_i² - σ_i²) S_noise z``.
  As in diffusers, the model is evaluated at the *unchurned* x_i (and σ_i, t_i).
- Ancestral: ``sigma_up`` σ_↑ = √(σ_{i+1}² (σ_i² - σ_{i+1}²)/σ_i²), ``sigma_down``
  σ_↓ = √(σ_{i+1}² - σ_↑²) (k-diffusion's ``get_ancestral_step``): an Euler step to σ_↓,
  then ``+ σ_↑ z``; a noise tensor is drawn at every step (also the last, where σ_↑ = 0).

The grids follow diffusers' ``set_timesteps`` (float32 timesteps, float32 sigmas), with its
quirks: ``interpolation_type="log_linear"`` builds N + 1 sigmas log-linearly between the
training extremes and ignores the timestep grid (with N timesteps the appended final
sigma is never reached); trailing spacing can give N + 1 timesteps (``np.arange``
rounding, e.g. N = 61 of 1000), and then diffusers runs N + 1 steps, the last at timestep
-1 — reproduced here, so ``num_steps`` is the length of diffusers' ``timesteps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.sigma_rules import (
    VPDenoiser,
    ancestral_tol_scale,
    check_grid,
    chosen_sigma_schedule,
    convert_config_sigmas,
    init_noise_sigma,
    karras_churn,
    real_number,
    vp_scalings,
)

__all__ = [
    "EULER_DEFAULTS",
    "EulerAncestralRule",
    "EulerRule",
    "ancestral_from_config",
    "euler_ancestral_grid",
    "euler_grid",
    "from_config",
]

EULER_DEFAULTS: dict[str, Any] = {
    **schedules.BETA_DEFAULTS,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "sigma_min": None,
    "sigma_max": None,
    "timestep_spacing": "linspace",
    "timestep_type": "discrete",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero",
}
"""The defaults of diffusers' ``EulerDiscreteScheduler`` (and, for the keys it has, of
``EulerAncestralDiscreteScheduler``): a plain mapping config falls back to them."""

_INTERPOLATIONS = ("linear", "log_linear")
_FINAL_SIGMAS = ("zero", "sigma_min")
_TIMESTEP_TYPES = ("discrete", "continuous")


def _choice(config: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = config[key]
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed} for the Euler schedulers, got {value!r}")
    return value


def euler_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """``EulerDiscreteScheduler.set_timesteps``: the float32 timesteps and sigmas.

    Args:
        config: an ``EulerDiscreteScheduler`` configuration (missing keys take
            :data:`EULER_DEFAULTS`).
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas)``: timesteps ``(M,)`` (M = N, or N + 1 where diffusers'
        grid has one more, see the module notes) and sigmas ``(≥ M + 1,)``, step i going
        from ``sigmas[i]`` to ``sigmas[i + 1]``.

    Example:
        >>> t, s = euler_grid({"timestep_spacing": "trailing"}, 4)
        >>> t.tolist(), round(s[0].item(), 3), s[-1].item()
        ([999.0, 749.0, 499.0, 249.0], 157.407, 0.0)
    """
    config = schedules.with_defaults(config, EULER_DEFAULTS)
    n = schedules.check_steps(num_inference_steps)
    interpolation = _choice(config, "interpolation_type", _INTERPOLATIONS)
    final = _choice(config, "final_sigmas_type", _FINAL_SIGMAS)
    timestep_type = _choice(config, "timestep_type", _TIMESTEP_TYPES)
    kind = chosen_sigma_schedule(config)
    ab = schedules.alphas_cumprod(config, terminal_floor=True)
    train = schedules.train_sigmas(ab)
    log_train = np.log(train)
    t = schedules.euler_timesteps(config, n)
    if interpolation == "linear":
        sigmas = schedules.interp_sigmas(t, train)
    else:  # N + 1 sigmas, log-linear between the training extremes (the grid is ignored)
        sigmas = torch.linspace(np.log(train[-1]), np.log(train[0]), n + 1).exp().numpy()
    if kind is not None:
        sigmas = convert_config_sigmas(kind, sigmas, n, config)
        t = np.array([schedules.sigma_to_t(s, log_train) for s in sigmas])
    last = float(((1 - ab[0]) / ab[0]) ** 0.5) if final == "sigma_min" else 0.0
    out = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
    if timestep_type == "continuous" and config["prediction_type"] == "v_prediction":
        timesteps = torch.stack([0.25 * s.log() for s in out[:-1]])  # per sigma, as diffusers
    else:
        timesteps = torch.from_numpy(np.asarray(t).astype(np.float32))
    check_grid(timesteps, out)
    return timesteps, out


def euler_ancestral_grid(
    config: Mapping[str, Any], num_inference_steps: int
) -> tuple[Tensor, Tensor]:
    """``EulerAncestralDiscreteScheduler.set_timesteps``: the float32 timesteps and sigmas.

    Args:
        config: an ``EulerAncestralDiscreteScheduler`` configuration.
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas)`` as :func:`euler_grid` (σ linear in t, final σ = 0).

    Example:
        >>> t, s = euler_ancestral_grid({}, 3)
        >>> t.tolist(), len(s)
        ([999.0, 499.5, 0.0], 4)
    """
    config = schedules.with_defaults(config, EULER_DEFAULTS)
    n = schedules.check_steps(num_inference_steps)
    ab = schedules.alphas_cumprod(config, terminal_floor=True)
    t = schedules.euler_timesteps(config, n)
    sigmas = schedules.interp_sigmas(t, schedules.train_sigmas(ab))
    timesteps = torch.from_numpy(t)
    out = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    check_grid(timesteps, out)
    return timesteps, out


class _EulerBase(VPDenoiser):
    """What both Euler rules share: the grid, ``c_in`` and the v-prediction constants."""

    sigmas: Tensor

    def _setup(self, config: dict[str, Any], timesteps: Tensor, sigmas: Tensor) -> Tensor:
        m = len(timesteps)
        self.config = config
        self.num_steps = m
        self.timesteps = timesteps
        self.sigmas = sigmas
        self.init_noise_sigma = init_noise_sigma(config, sigmas)
        self.tol_scale = ancestral_tol_scale(sigmas, m)
        sigma = sigmas[:m]
        self.coefficients = vp_scalings(sigma)
        return sigma


def _prediction(config: Mapping[str, Any], allowed: tuple[str, ...]) -> str:
    kind = config["prediction_type"]
    if kind not in allowed:
        raise ValueError(f"prediction_type must be one of {allowed} here, got {kind!r}")
    return kind


class EulerRule(_EulerBase):
    """Euler (Karras et al. 2022, Algorithm 2 without Heun), as ``EulerDiscreteScheduler``.

    Args:
        config: an ``EulerDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N.
        s_churn: S_churn (0: the deterministic Euler ODE step).
        s_tmin: S_tmin, the least σ that is churned.
        s_tmax: S_tmax, the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    diffusers draws a noise tensor only at steps with γ_i > 0, so with ``s_churn = 0`` no
    noise is drawn and ``noise_draws`` is all False.

    Attributes:
        sigmas: diffusers' ``scheduler.sigmas`` (float32, the final σ appended).

    Example:
        >>> rule = EulerRule({"timestep_spacing": "leading", "steps_offset": 1}, 4)
        >>> rule.timesteps.tolist(), round(rule.init_noise_sigma, 2), bool(rule.noise_draws.any())
        ([751.0, 501.0, 251.0, 1.0], 17.54, False)
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
        full = schedules.with_defaults(config, EULER_DEFAULTS)
        self.prediction_type = _prediction(
            full, ("epsilon", "sample", "original_sample", "v_prediction")
        )
        s_churn, s_tmin = real_number("s_churn", s_churn), real_number("s_tmin", s_tmin)
        s_tmax, self.s_noise = real_number("s_tmax", s_tmax), real_number("s_noise", s_noise)
        timesteps, sigmas = euler_grid(full, num_inference_steps)
        sigma = self._setup(full, timesteps, sigmas)
        m = self.num_steps
        sigma_hat, draws, churn = karras_churn(sigma, len(sigmas) - 1, s_churn, s_tmin, s_tmax)
        self.coefficients.update(
            {
                "sigma_hat": sigma_hat.numpy(),
                "dt": (sigmas[1 : m + 1] - sigma_hat).numpy(),
                "churn": churn.numpy(),
            }
        )
        self.noise_draws = draws.numpy().copy()
        self._unit_signal("sigma_hat")

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """Churn (where γ_i > 0), then the Euler step from σ̂_i to σ_{i+1}."""
        if noise is not None:  # zero rows (no draw) add exactly 0
            x = x + (noise * self.s_noise) * c["churn"]
        sigma_hat = c["sigma_hat"]
        denoised = self._denoised(x, out, c, sigma_hat)
        derivative = (x - denoised) / sigma_hat
        return x + derivative * c["dt"], None


class EulerAncestralRule(_EulerBase):
    """Euler ancestral sampling, as ``EulerAncestralDiscreteScheduler``.

    Args:
        config: an ``EulerAncestralDiscreteScheduler`` configuration (mapping); prediction
            type epsilon or v_prediction (diffusers does not implement ``sample``).
        num_inference_steps: N.

    Attributes:
        sigmas: diffusers' ``scheduler.sigmas`` (float32, ending at 0).

    Example:
        >>> rule = EulerAncestralRule({"timestep_spacing": "trailing"}, 3)
        >>> rule.timesteps.tolist(), bool(rule.noise_draws.all())
        ([999.0, 666.0, 332.0], True)
    """

    def __init__(self, config: Mapping[str, Any], num_inference_steps: int):
        full = schedules.with_defaults(config, EULER_DEFAULTS)
        self.prediction_type = _prediction(full, ("epsilon", "v_prediction"))
        timesteps, sigmas = euler_ancestral_grid(full, num_inference_steps)
        sigma = self._setup(full, timesteps, sigmas)
        nxt = sigmas[1 : self.num_steps + 1]
        sigma_up = (nxt**2 * (sigma**2 - nxt**2) / sigma**2) ** 0.5
        sigma_down = (nxt**2 - sigma_up**2) ** 0.5
        self.coefficients.update(
            {
                "sigma": sigma.numpy(),
                "dt": (sigma_down - sigma).numpy(),
                "sigma_up": sigma_up.numpy(),
            }
        )
        self.noise_draws = np.ones(self.num_steps, dtype=bool)
        self._unit_signal("sigma")
        bad = np.flatnonzero(~np.isfinite(self.coefficients["dt"]))
        if len(bad):  # σ_↑ rounds above σ_{i+1} in float32 when σ_i ≫ σ_{i+1}
            raise ValueError(
                f"diffusers' Euler-ancestral step {bad[0]} (σ {sigma[bad[0]].item():g} -> "
                f"{nxt[bad[0]].item():g}) gives NaN: float32 σ_up rounds above σ_next, so "
                "sigma_down = √(σ_next² - σ_up²) is NaN and so is diffusers' sample; use "
                "another step count or timestep_spacing"
            )

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """The Euler step from σ_i to σ_↓, then ``+ σ_↑ z``."""
        sigma = c["sigma"]
        denoised = self._denoised(x, out, c, sigma)
        derivative = (x - denoised) / sigma
        nxt = x + derivative * c["dt"]
        if noise is not None:
            nxt = nxt + noise * c["sigma_up"]
        return nxt, None


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> EulerRule:
    """The Euler rule of an ``EulerDiscreteScheduler`` config, with ``step``'s options.

    Args:
        config: an ``EulerDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N.
        s_churn: S_churn (0: the deterministic Euler ODE step).
        s_tmin: S_tmin, the least σ that is churned.
        s_tmax: S_tmax, the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.

    Returns:
        The :class:`EulerRule` on N steps.

    Example:
        >>> from_config({"use_karras_sigmas": True}, 5).num_steps
        5
        >>> from_config({}, 3, s_churn=1.0).noise_draws.tolist()  # churn draws noise
        [True, True, True]
    """
    return EulerRule(
        config, num_inference_steps, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
    )


def ancestral_from_config(
    config: Mapping[str, Any], num_inference_steps: int
) -> EulerAncestralRule:
    """The rule of an ``EulerAncestralDiscreteScheduler`` config (``step`` takes no options).

    Args:
        config: an ``EulerAncestralDiscreteScheduler`` configuration (mapping); prediction
            type epsilon or v_prediction.
        num_inference_steps: N.

    Returns:
        The :class:`EulerAncestralRule` on N steps.

    Example:
        >>> ancestral_from_config({"prediction_type": "v_prediction"}, 10).num_steps
        10
        >>> rule = ancestral_from_config({}, 4)
        >>> bool(rule.noise_draws.all()), rule.sigmas[-1].item()  # noise at every step
        (True, 0.0)
    """
    return EulerAncestralRule(config, num_inference_steps)
