"""Trajectory Consistency Distillation (Zheng et al. 2024), as diffusers' ``TCDScheduler``.

Strategic Stochastic Sampling (Zheng et al. 2024, §"Strategic Stochastic Sampling"): the
trajectory consistency function maps the latent at timestep t to an intermediate
timestep ``s = ⌊(1 - γ) t'⌋`` before the next grid timestep t' (the DDIM-form jump
``x_s = α_s x̂_0 + σ_s ε̂``), then forward diffusion returns to t'
(``x_{t'} = √(ᾱ_{t'}/ᾱ_s) x_s + √(1 - ᾱ_{t'}/ᾱ_s) z``). γ = 0 is deterministic
(DDIM-like), γ = 1 is LCM-like multistep consistency sampling. Variables (diffusers ->
paper):

- ``eta`` γ (``step``'s option, default 0.3, in [0, 1]);
  ``timestep_s`` s = ``floor((1 - eta) * prev_timestep)``, computed in float32 on the
  integer timestep as diffusers does; ``prev_timestep`` t' (0 after the last step).
- ``alpha_prod_t``, ``alpha_prod_s``, ``alpha_prod_t_prev``: ᾱ_t, ᾱ_s, ᾱ_{t'};
  ``pred_original_sample``/``pred_epsilon``: x̂_0, ε̂ of the config's ``prediction_type``;
  ``pred_noised_sample`` x_s.
- ``noise`` z: drawn with ``randn_tensor`` in the latent's dtype at every step but the
  last when γ > 0; the last step (and every step when γ = 0) returns x_s itself.

The grid is LCM's (:func:`picard.adapters.schedulers.lcm.lcm_timesteps`), except that diffusers'
``set_timesteps`` with an explicit ``original_inference_steps`` picks the N timesteps
from *all* ``num_train_timesteps`` training timesteps (``range(T)``), not from the
distillation grid — reproduced here. diffusers' TCD ``step`` never reads
``clip_sample``/``thresholding`` (nor ``timestep_scaling``, ``timestep_spacing``,
``steps_offset``, ``set_alpha_to_one``): they change nothing, here or there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import lcm, schedules

__all__ = ["TCDRule", "from_config", "tcd_timesteps"]


def tcd_timesteps(
    config: Mapping[str, Any],
    num_inference_steps: int,
    original_inference_steps: int | None = None,
) -> np.ndarray:
    """``TCDScheduler.set_timesteps(N, original_inference_steps=…)``: the integer grid.

    Args:
        config: a ``TCDScheduler`` configuration (missing keys take LCM's defaults).
        num_inference_steps: N.
        original_inference_steps: ``None``: N of the config's distillation grid (as
            LCM); given: N of all training timesteps, N at most this value.

    Returns:
        An int64 array of shape ``(N,)``, descending.

    Raises:
        ValueError: N or ``original_inference_steps`` out of range (as diffusers).

    Example:
        >>> tcd_timesteps({}, 4).tolist()
        [999, 759, 499, 259]
        >>> tcd_timesteps({}, 4, original_inference_steps=50).tolist()
        [999, 749, 499, 249]
    """
    if original_inference_steps is None:
        return lcm.lcm_timesteps(config, num_inference_steps)
    config = schedules.with_defaults(config, lcm.LCM_DEFAULTS)
    total, original, n = lcm._counts(config, num_inference_steps, original_inference_steps)
    if n > original or n > total:
        raise ValueError(
            f"num_inference_steps ({n}) must be at most original_inference_steps "
            f"({original}) and num_train_timesteps ({total})"
        )
    return lcm.pick_timesteps(np.arange(0, total, dtype=np.int64), n)


def _check_eta(eta: Any) -> float:
    if isinstance(eta, bool) or not isinstance(eta, int | float | np.integer | np.floating):
        raise TypeError(f"eta must be a real number in [0, 1], got {type(eta).__name__}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta (gamma) must be in [0, 1], got {eta!r}")
    return float(eta)


class TCDRule(UpdateRule):
    """Strategic stochastic sampling, as ``TCDScheduler`` with ``step(…, eta=γ)``.

    Args:
        config: a ``TCDScheduler`` configuration (mapping).
        num_inference_steps: N.
        eta: γ in [0, 1], the stochasticity (diffusers' default 0.3).
        original_inference_steps: ``set_timesteps``' option (see :func:`tcd_timesteps`).

    Attributes:
        config: the full configuration (defaults filled in).
        eta: γ.
        intermediate: (N,) the intermediate timesteps s (int64).

    Example:
        >>> rule = TCDRule({}, 4)
        >>> rule.intermediate.tolist(), rule.noise_draws.tolist()
        ([531, 349, 181, 0], [True, True, True, False])
        >>> bool(TCDRule({}, 4, eta=0.0).noise_draws.any())
        False
    """

    signal_keys = ("sqrt_alpha", "sqrt_beta")

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        eta: float = 0.3,
        original_inference_steps: int | None = None,
    ):
        self.config = schedules.with_defaults(config, lcm.LCM_DEFAULTS)
        self.prediction_type = schedules.prediction_type(self.config)
        self.eta = _check_eta(eta)
        t = tcd_timesteps(self.config, num_inference_steps, original_inference_steps)
        lcm.check_zero_snr(self.config, self.prediction_type, t)
        n = len(t)
        ab = schedules.alphas_cumprod(self.config)
        ts = torch.from_numpy(t)
        prev = torch.cat([ts[1:], torch.zeros(1, dtype=torch.long)])
        s = torch.floor((1 - self.eta) * prev).to(dtype=torch.long)  # float32, as diffusers
        a_t, a_s, a_prev = ab[ts], ab[s], ab[prev]
        noisy = torch.full((n,), self.eta > 0) & (torch.arange(n) < n - 1)
        ratio = a_prev / a_s
        self.num_steps = n
        self.timesteps = ts
        self.coefficients = {
            "sqrt_alpha": a_t.sqrt().numpy(),
            "sqrt_beta": (1 - a_t).sqrt().numpy(),
            "sqrt_alpha_s": a_s.sqrt().numpy(),
            "sqrt_beta_s": (1 - a_s).sqrt().numpy(),
            "forward": torch.where(noisy, ratio.sqrt(), torch.ones(())).numpy(),
            "forward_std": torch.where(noisy, (1 - ratio).sqrt(), torch.zeros(())).numpy(),
        }
        self.intermediate = s
        self.noise_draws = noisy.numpy()
        # ParaDiGMS's scale, as DDIM's: the DDPM posterior std of step i + 1 (any γ).
        std = schedules.posterior_std(a_t.double(), a_prev.double()).numpy()
        self.tol_scale = np.append(std[1:], 0.0)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """``x_s = α_s x̂_0 + σ_s ε̂``, then ``√(ᾱ_{t'}/ᾱ_s) x_s + √(1 - ᾱ_{t'}/ᾱ_s) z``."""
        sa, sb = c["sqrt_alpha"], c["sqrt_beta"]
        x0 = schedules.predict_x0(self.prediction_type, x, out, sa, sb)
        eps = schedules.predict_eps(self.prediction_type, x, out, sa, sb)
        noised = c["sqrt_alpha_s"] * x0 + c["sqrt_beta_s"] * eps
        if noise is None:
            return c["forward"] * noised, None
        return c["forward"] * noised + c["forward_std"] * noise, None


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    eta: float = 0.3,
    original_inference_steps: int | None = None,
    timesteps: Any = None,
    strength: float = 1.0,
) -> TCDRule:
    """The TCD rule of a ``TCDScheduler`` config, with ``step``'s and ``set_timesteps``' options.

    Args:
        config: a ``TCDScheduler`` configuration (mapping).
        num_inference_steps: N.
        eta: γ in [0, 1] (``step``'s option; diffusers' default 0.3).
        original_inference_steps: ``set_timesteps``' option (see :func:`tcd_timesteps`).
        timesteps: custom timesteps: not supported (must be ``None``).
        strength: img2img strength: not supported (must be 1).

    Returns:
        The :class:`TCDRule` on N steps.

    Raises:
        ValueError: ``eta`` outside [0, 1], custom ``timesteps``, ``strength`` ≠ 1, or
            options out of range.

    Example:
        >>> from_config({}, 2, eta=1.0).intermediate.tolist()  # γ = 1: s = 0, as LCM
        [0, 0]
    """
    lcm.refuse_custom_grid(timesteps, strength, "TCD")
    return TCDRule(config, num_inference_steps, eta, original_inference_steps)
