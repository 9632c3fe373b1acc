"""DPM-Solver-2 (k-diffusion's ``sample_dpm_2``), as diffusers' KDPM2 schedulers step it.

k-diffusion's ``sample_dpm_2``, "inspired by DPM-Solver-2 and Algorithm 2 from Karras et
al. (2022)" (DPM-Solver-2: Lu et al. 2022, Algorithm 1 with r₁ = ½, here a midpoint in
log σ): on the VE latent ``x = x_0 + σ n`` with ``d(x; σ) = (x - D(x; σ))/σ``,

- the midpoint σ_mid = exp(½ (log σ_i + log σ_{i+1})) = √(σ_i σ_{i+1}) (diffusers'
  ``sigmas_interpol``), the Euler half-step ``x̃ = x_i + (σ_mid - σ_i) d(x_i; σ_i)``,
- and the full step from the midpoint's slope ``x_{i+1} = x_i + (σ_{i+1} - σ_i) d(x̃; σ_mid)``;
  the last step (σ_N = 0) is Euler (diffusers: σ_mid = 0 there).

Ancestral (``KDPM2AncestralDiscreteScheduler``, k-diffusion's ``sample_dpm_2_ancestral``):
the step aims at ``σ_down`` = √(σ_{i+1}² - σ_up²) with ``σ_up`` =
√(σ_{i+1}² (σ_i² - σ_{i+1}²)/σ_i²) (``sigmas_down``, ``sigmas_up``), the midpoint is
√(σ_i σ_down), and ``σ_up z`` is added after the full step.

diffusers (names -> symbols): ``sigmas``, ``sigmas_interpol`` (and ``sigmas_up``,
``sigmas_down``) interleave the grid; ``timesteps`` is ``[t_0, t(σ_mid), t_1, t(σ_mid),
t_2, …]`` — 2N - 1 loop entries, one model call each, the midpoints' timesteps from
σ_mid by diffusers' ``_sigma_to_t``. ``step``'s first stage (``sample is None``) stores
``sample`` x_i and returns x̃ (the model then sees x̃ at σ_mid, ``scale_model_input`` dividing by
√(σ_mid² + 1)); the second returns x_{i+1}. The ancestral scheduler draws its noise in
the second stage only (entries 1, 3, …, 2N - 3: N - 1 draws, none at the last step), of
the model output's dtype (the latent's, for picard).

For picard each loop entry is one step; its state is the sample the model sees.
``memory = 1``: each entry stores its step ``p = d dt``, and a second-stage entry
``k`` updates its own state, ``x_{i+1} = x̃ + (d(x̃; σ_mid)(σ_{i+1} - σ_i) - p_{k-1})``
(+ ``σ_up z``) — equal to diffusers' ``x_i + …`` since ``x̃ = x_i + p_{k-1}``, written as
an increment of x̃ so that Picard's increments stay near the identity (see
:mod:`picard.adapters.schedulers.heun`); at ``tol=0`` the result matches diffusers' to float
rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers.heun import (
    HEUN_DEFAULTS,
    TwoStageRule,
    check_first_timestep,
    check_prediction,
    entry_tol_scale,
    karras_config,
    karras_family_grid,
)
from picard.adapters.schedulers.sigma_rules import init_noise_sigma

__all__ = [
    "KDPM2_DEFAULTS",
    "KDPM2AncestralRule",
    "KDPM2Rule",
    "ancestral_from_config",
    "from_config",
    "kdpm2_grid",
]

KDPM2_DEFAULTS: dict[str, Any] = {
    k: v for k, v in HEUN_DEFAULTS.items() if k not in ("clip_sample", "clip_sample_range")
}
"""The config keys and defaults of both KDPM2 schedulers (Heun's, without clipping)."""

_NAMES = {False: "KDPM2DiscreteScheduler", True: "KDPM2AncestralDiscreteScheduler"}


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The midpoints' timesteps by diffusers' ``_sigma_to_t``, in float32 as there.

    diffusers feeds it float32 tensors (σ and the training ``log σ``), so its mixed
    numpy/torch arithmetic runs in float32 (numpy's float32 ``log``), unlike
    :func:`picard.adapters.schedulers.schedules.sigma_to_t` (float64); this is that float32 version,
    vectorized, so the midpoints' timesteps match diffusers' bitwise.

    Args:
        sigma: float32 sigmas, shape (M,).
        log_sigmas: float32 ``log σ`` of the training timesteps (ascending).

    Returns:
        float32 (M,): the fractional timesteps.
    """
    log_sigma = np.log(np.maximum(sigma, np.float32(1e-10)))
    dists = log_sigma[np.newaxis, :] - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), np.float32(0), np.float32(1))
    one = np.float32(1)
    return (one - w) * low_idx.astype(np.float32) + w * (low_idx + 1).astype(np.float32)


def _pair(values: Tensor) -> Tensor:
    """Diffusers' interleaving ``[v_0, v_1, v_1, …, v_N, v_N, v_N]`` (length 2N + 2)."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def kdpm2_grid(
    config: Mapping[str, Any], num_inference_steps: int, ancestral: bool = False
) -> dict[str, Tensor]:
    """The KDPM2 schedulers' ``set_timesteps``: the grid, its midpoints and the timesteps.

    Args:
        config: a ``KDPM2DiscreteScheduler`` / ``KDPM2AncestralDiscreteScheduler``
            configuration (missing keys take :data:`KDPM2_DEFAULTS`).
        num_inference_steps: N.
        ancestral: the ancestral scheduler's grid (midpoints toward σ_down).

    Returns:
        ``base`` σ_0 … σ_{N-1}, 0 (float32), ``interp`` σ_mid per grid index (float32,
        diffusers' un-interleaved ``sigmas_interpol``), ``up`` and ``down`` (ancestral
        only) and ``timesteps``: diffusers' interleaved ``scheduler.timesteps`` (float32,
        float64 with a sigma-schedule conversion, as diffusers).

    Example:
        >>> g = kdpm2_grid({}, 3)
        >>> [round(v, 1) for v in g["timesteps"].tolist()]
        [999.0, 778.9, 499.5, 54.7, 0.0]
    """
    full = karras_config(config, KDPM2_DEFAULTS)
    t, sig, log_train = karras_family_grid(full, num_inference_steps)
    if full["use_karras_sigmas"]:
        t = t.round()
    steps = torch.from_numpy(np.ascontiguousarray(t))
    base = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
    out = {"base": base}
    if ancestral:
        following = base.roll(-1)
        following[-1] = 0.0
        up = (following**2 * (base**2 - following**2) / base**2) ** 0.5
        down = (following**2 - up**2) ** 0.5
        down[-1] = 0.0
        _check_down(down)
        interp = base.log().lerp(down.log(), 0.5).exp()
        interp[-2:] = 0.0
        out.update(up=up, down=down)
    else:
        interp = base.log().lerp(base.roll(1).log(), 0.5).exp()
    with np.errstate(invalid="ignore"):  # an unused NaN midpoint (index 0) stays NaN
        mid_t = _sigma_to_t(interp.numpy(), log_train.astype(np.float32))
    mid = torch.from_numpy(mid_t).to(steps.dtype)
    mid = mid[:-2] if ancestral else mid[1:-1]
    out["interp"] = interp
    out["timesteps"] = torch.cat([steps[:1], torch.stack([mid, steps[1:]], dim=-1).flatten()])
    check_first_timestep(out["timesteps"])
    return out


def _check_down(down: Tensor) -> None:
    """Refuse a σ_down that is NaN or 0 before the last step: diffusers' sample is NaN."""
    bad = (~(down[:-2] > 0)).nonzero()
    if len(bad):
        j = int(bad[0])
        raise ValueError(
            f"KDPM2AncestralDiscreteScheduler's σ_down of step {j} is {down[j].item():g}: in "
            "float32 σ_up rounds to or above σ_next where σ falls steeply, so the midpoint "
            "σ is 0 or NaN and so is diffusers' sample; use another step count, "
            "timestep_spacing or sigma schedule"
        )


class _KDPM2Base(TwoStageRule):
    """Both KDPM2 rules: the per-entry σ, step sizes and the midpoint update."""

    ancestral = False

    def __init__(self, config: Mapping[str, Any], num_inference_steps: int):
        name = _NAMES[self.ancestral]
        self.config = full = karras_config(config, KDPM2_DEFAULTS)
        self.prediction_type = check_prediction(full, ("epsilon", "v_prediction"), name)
        grid = kdpm2_grid(full, num_inference_steps, self.ancestral)
        base, interp = grid["base"], grid["interp"]
        self.timesteps = grid["timesteps"]
        m = self.num_steps = len(self.timesteps)
        self.base_sigmas = base
        self.sigmas, self.sigmas_interpol = _pair(base), _pair(interp)
        self.init_noise_sigma = init_noise_sigma(full, self.sigmas)
        j = torch.arange(m) // 2
        first = torch.arange(m) % 2 == 0
        if self.ancestral:  # the midpoint of step j is interp[j]; the step aims at σ_down
            sigma_in = torch.where(first, base[j], interp[j])
            dt = torch.where(first, interp[j] - base[j], grid["down"][j] - base[j])
            up = torch.where(first, torch.zeros(()), grid["up"][j])
        else:
            sigma_in = torch.where(first, base[j], interp[j + 1])
            dt = torch.where(first, interp[j + 1] - base[j], base[j + 1] - base[j])
            up = torch.zeros(m)
        self._check_finite(name, sigma_in, dt, up)
        self.coefficients = {"dt": dt.numpy(), "sigma_up": up.numpy()}
        self.noise_draws = (~first).numpy() if self.ancestral else np.zeros(m, dtype=bool)
        self.tol_scale = entry_tol_scale(base, m)
        self._finish(sigma_in, first)

    @staticmethod
    def _check_finite(name: str, sigma_in: Tensor, dt: Tensor, up: Tensor) -> None:
        bad = ~(torch.isfinite(sigma_in) & torch.isfinite(dt) & torch.isfinite(up))
        bad |= sigma_in <= 0
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ValueError(
                f"{name}'s grid gives a NaN, infinite or zero σ at loop entry {k} (σ "
                f"{sigma_in[k].item():g}, step {dt[k].item():g}): in float32 σ_up rounds up "
                "to σ_next when σ falls steeply, and diffusers' sample is NaN; use another "
                "step count, timestep_spacing or sigma schedule"
            )

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The half step to the midpoint, or the full step with the midpoint's slope.

        Returns the next states and each entry's step ``p = d dt`` (a second-stage entry
        subtracts its first stage's to step from its own state).

        Example:
            >>> rule = KDPM2Rule({}, 3)
            >>> c = {k: torch.as_tensor(v[:3]).reshape(-1, 1, 1) for k, v in
            ...      rule.coefficients.items()}
            >>> nxt, kept = rule.update(torch.ones(3, 1, 2), torch.zeros(3, 1, 2), c, None, None)
            >>> nxt.shape, kept.shape
            (torch.Size([3, 1, 2]), torch.Size([3, 1, 2]))
        """
        derivative = (x - self._denoised(x, out, c, c["sigma_in"])) / c["sigma_in"]
        step = derivative * c["dt"]
        p_prev = self._previous(step, history)
        nxt = x + torch.where(c["first"] > 0.5, step, step - p_prev)
        if noise is not None:  # zero at first-stage entries, where σ_up is 0 too
            nxt = nxt + noise * c["sigma_up"]
        return nxt, step


class KDPM2Rule(_KDPM2Base):
    """DPM-Solver-2 on the 2N - 1 loop entries of ``KDPM2DiscreteScheduler``.

    Args:
        config: a ``KDPM2DiscreteScheduler`` configuration (mapping): sigma schedules
            (karras, exponential, beta; ``sigma_min``/``sigma_max`` if the config carries
            them), spacings, prediction types epsilon and v_prediction (diffusers does
            not implement ``sample``: refused).
        num_inference_steps: N (diffusers' argument).

    Attributes:
        sigmas, sigmas_interpol: diffusers' interleaved grids (float32, 2N + 2).
        base_sigmas: σ_0 … σ_{N-1}, 0 (float32).

    Example:
        >>> rule = KDPM2Rule({"use_karras_sigmas": True}, 3)
        >>> rule.num_steps, rule.timesteps.dtype, bool(rule.noise_draws.any())
        (5, torch.float64, False)
    """


class KDPM2AncestralRule(_KDPM2Base):
    """Ancestral DPM-Solver-2 on the loop entries of ``KDPM2AncestralDiscreteScheduler``.

    Args:
        config: a ``KDPM2AncestralDiscreteScheduler`` configuration (mapping), the
            options of :class:`KDPM2Rule`.
        num_inference_steps: N (diffusers' argument).

    A noise tensor is drawn at each second-stage entry but the last step's (which has
    none): ``noise_draws`` is ``[False, True, False, True, …, False]``.

    Example:
        >>> rule = KDPM2AncestralRule({}, 3)
        >>> rule.noise_draws.tolist()
        [False, True, False, True, False]
    """

    ancestral = True


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> KDPM2Rule:
    """The rule of a ``KDPM2DiscreteScheduler`` config (its ``step`` takes no options).

    Args:
        config: a ``KDPM2DiscreteScheduler`` configuration (mapping).
        num_inference_steps: N, as passed to ``set_timesteps``.

    Returns:
        The :class:`KDPM2Rule` on diffusers' 2N - 1 loop entries.

    Example:
        >>> from_config({"timestep_spacing": "leading", "steps_offset": 1}, 4).num_steps
        7
    """
    return KDPM2Rule(config, num_inference_steps)


def ancestral_from_config(
    config: Mapping[str, Any], num_inference_steps: int
) -> KDPM2AncestralRule:
    """The rule of a ``KDPM2AncestralDiscreteScheduler`` config (``step`` takes a generator).

    Args:
        config: a ``KDPM2AncestralDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N, as passed to ``set_timesteps``.

    Returns:
        The :class:`KDPM2AncestralRule`; pass the pipeline's generator to the problem.

    Example:
        >>> int(ancestral_from_config({}, 10).noise_draws.sum())  # N - 1 draws
        9
    """
    return KDPM2AncestralRule(config, num_inference_steps)
