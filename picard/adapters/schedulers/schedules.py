"""Schedule maths, written once: noise schedules, timestep and sigma grids, conversions.

Pure functions of a scheduler's configuration (any mapping with diffusers' config keys),
reproducing diffusers' own arithmetic — float32 where diffusers computes in float32 — so
that the grids, and the samples built on them, match the sequential schedulers.

Symbols (DDPM, Ho et al. 2020; k-diffusion / EDM for sigmas): ``ᾱ_t`` = ``alphas_cumprod``;
the VP latent is ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε``; the VE (sigma) latent of the Euler-type
samplers is ``x = x_0 + σ ε`` with ``σ_t = √((1-ᾱ_t)/ᾱ_t)``; flow matching uses
``x_σ = (1-σ) x_0 + σ ε``.

The maths lives in one module per topic, all re-exported here (the rules call
``schedules.betas(...)`` and so on): :mod:`~picard.adapters.schedulers.config` (defaults,
option checks), :mod:`~picard.adapters.schedulers.alphas` (noise schedules),
:mod:`~picard.adapters.schedulers.timesteps` (timestep grids),
:mod:`~picard.adapters.schedulers.sigmas` (sigma grids and conversions) and
:mod:`~picard.adapters.schedulers.predictions` (model outputs, thresholding).
"""

from __future__ import annotations

from picard.adapters.schedulers.alphas import alphas_cumprod, betas, lambda_clipped, posterior_std
from picard.adapters.schedulers.config import (
    BETA_DEFAULTS,
    PREDICTION_TYPES,
    SIGMA_SCHEDULES,
    SPACINGS,
    THRESHOLD_DEFAULTS,
    check_steps,
    with_defaults,
)

# gaussian_slopes, output_for_x0 and train_sigmas are public here though not in ``__all__``
# (as before the split): rule.py and the rules call them as ``schedules.<name>``.
from picard.adapters.schedulers.predictions import (  # noqa: F401
    clip_or_threshold,
    gaussian_slopes,
    output_for_x0,
    predict_eps,
    predict_x0,
    prediction_type,
)
from picard.adapters.schedulers.sigmas import (
    ancestral_std,
    convert_sigmas,
    flow_sigmas,
    interp_sigmas,
    karras_sigmas,
    sigma_to_t,
    sigmas_to_timesteps,
    train_sigmas,  # noqa: F401
)
from picard.adapters.schedulers.timesteps import (
    check_timesteps,
    euler_timesteps,
    leading_timesteps,
    solver_timesteps,
)

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
