"""Heun's method (Karras et al. 2022), as diffusers' ``HeunDiscreteScheduler`` steps it.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models"),
Algorithm 1 (the deterministic sampler, no churn): on the VE latent ``x = x_0 + σ n``,

- ``d_i = (x_i - D(x_i; σ_i))/σ_i`` and the Euler step ``x̃_{i+1} = x_i + (σ_{i+1} - σ_i) d_i``;
- if ``σ_{i+1} ≠ 0``: ``d'_i = (x̃_{i+1} - D(x̃_{i+1}; σ_{i+1}))/σ_{i+1}`` and the corrected
  step ``x_{i+1} = x_i + (σ_{i+1} - σ_i) (d_i + d'_i)/2`` (trapezoidal rule).

diffusers (names -> symbols): ``sigmas`` interleaves the grid, ``[σ_0, σ_1, σ_1, …,
σ_{N-1}, σ_{N-1}, 0]``, and ``timesteps`` likewise ``[t_0, t_1, t_1, …, t_{N-1}, t_{N-1}]``:
2N - 1 loop entries, one model call each. ``step`` alternates: the first stage (``dt is
None``) stores ``prev_derivative`` d_i, ``dt`` σ_{i+1} - σ_i and ``sample`` x_i and returns
x̃_{i+1}; the second returns x_{i+1}. The last entry (σ_N = 0) is a lone Euler step.
``pred_original_sample`` is D: ``x - σ ε̂`` (epsilon), the output (sample) or
``c_skip x + c_out v̂`` with ``c_skip = 1/(σ² + 1)``, ``c_out = -σ/√(σ² + 1)``
(v_prediction), clamped with ``clip_sample``; ``scale_model_input`` divides by ``√(σ² + 1)``.

For picard each loop entry k = 0 … 2N - 2 is one step of the recursion; its state is the
sample the model sees at entry k (x_i at k = 2i, x̃_{i+1} at k = 2i + 1). A second-stage
entry reads the previous entry's derivative d_i (``memory = 1``: each entry stores its
derivative). Its update is written as an increment of its own state,
``x_{i+1} = x̃_{i+1} + (d'_i - d_i)/2 · (σ_{i+1} - σ_i)`` — the same as diffusers'
``x_i + (d_i + d'_i)/2 · (σ_{i+1} - σ_i)`` because ``x̃_{i+1} = x_i + d_i (σ_{i+1} - σ_i)``.
Picard iterates increments ``Δ_k = F_k(x_k) - x_k``; diffusers' literal form makes ``Δ_k``
depend on x_k with slope -1 (and on the stored x_i with slope 1), which Picard handles
badly (gaussian denoiser, N = 50, default tol: 40 sweeps and 3e-2 error instead of 16
and 7e-4). The rewritten sum rounds differently: at ``tol=0`` picard matches diffusers to
float rounding (≈ 4e-7 of the sample's size in float32), not bitwise. The
grid's sigma schedules (karras, exponential, beta), spacings and schedule maths are
the Euler schedulers' (:mod:`~picard.adapters.schedulers.euler`,
:mod:`~picard.adapters.schedulers.schedules`); the other two-model-call samplers
(:mod:`~picard.adapters.schedulers.kdpm2`) reuse the helpers here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.sigma_rules import (
    VPDenoiser,
    chosen_sigma_schedule,
    convert_config_sigmas,
    init_noise_sigma,
    vp_scalings,
)

__all__ = [
    "HEUN_DEFAULTS",
    "HeunRule",
    "TwoStageRule",
    "check_first_timestep",
    "check_prediction",
    "entry_tol_scale",
    "from_config",
    "heun_grid",
    "karras_config",
    "karras_family_grid",
]

HEUN_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}
"""``HeunDiscreteScheduler``'s config keys and defaults (its ``beta_start``/``beta_end``
are Stable Diffusion's, not DDPM's)."""

_BOUNDS = ("sigma_min", "sigma_max")  # read if present (a config converted from Euler's)


def karras_config(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The config as a scheduler with these ``defaults`` sees it.

    Keys it does not know are dropped (diffusers ignores them, e.g. an Euler config's
    ``rescale_betas_zero_snr``), except ``sigma_min``/``sigma_max``: ``from_config`` keeps
    them and the Karras/exponential/beta conversions read them.

    Args:
        config: the scheduler configuration (mapping).
        defaults: the scheduler's keys and default values.

    Returns:
        A plain dict with every key of ``defaults`` (``None`` values take the default).

    Example:
        >>> cfg = karras_config({"rescale_betas_zero_snr": True, "sigma_min": 0.1}, HEUN_DEFAULTS)
        >>> "rescale_betas_zero_snr" in cfg, cfg["sigma_min"], cfg["beta_end"]
        (False, 0.1, 0.012)
    """
    out = schedules.with_defaults(config, defaults, known_only=True)
    out.update({k: config[k] for k in _BOUNDS if config.get(k) is not None})
    return out


def karras_family_grid(
    config: Mapping[str, Any], num_inference_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid before interleaving, as the Heun and KDPM2 schedulers' ``set_timesteps``.

    Args:
        config: a normalized config (see :func:`karras_config`).
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas, log_sigmas)``: the timesteps as diffusers holds them before
        interleaving (float32, or float64 after a sigma-schedule conversion), the grid's
        sigmas (float64, no final 0; N of them, or N + 1 where trailing spacing rounds
        to one more) and the training ``log σ`` (float32).

    Example:
        >>> t, s, _ = karras_family_grid(karras_config({}, HEUN_DEFAULTS), 3)
        >>> t.tolist(), [round(float(v), 3) for v in s]
        ([999.0, 499.5, 0.0], [25.146, 2.28, 0.029])
    """
    n = schedules.check_steps(num_inference_steps)
    kind = chosen_sigma_schedule(config)
    train = schedules.train_sigmas(schedules.alphas_cumprod(config))
    log_train = np.log(train)
    t = schedules.euler_timesteps(config, n)
    sigmas = schedules.interp_sigmas(t, train)
    if kind is not None:
        sigmas = convert_config_sigmas(kind, sigmas, n, config)
        t = schedules.sigmas_to_timesteps(sigmas, log_train)
    return t, sigmas, log_train


def check_prediction(config: Mapping[str, Any], allowed: tuple[str, ...], name: str) -> str:
    """The config's prediction type, if ``name`` supports it.

    Args:
        config: the scheduler configuration.
        allowed: the prediction types the scheduler implements.
        name: the scheduler's name, for the message.

    Returns:
        The prediction type.

    Raises:
        ValueError: naming ``prediction_type`` if it is not in ``allowed``.

    Example:
        >>> check_prediction({"prediction_type": "sample"}, ("epsilon", "sample"), "Heun")
        'sample'
    """
    kind = config.get("prediction_type", "epsilon")
    if kind not in allowed:
        raise ValueError(f"prediction_type must be one of {allowed} for {name}, got {kind!r}")
    return kind


def check_first_timestep(timesteps: Tensor) -> None:
    """Refuse a grid whose first timestep repeats: diffusers would start at the repeat.

    Args:
        timesteps: the interleaved timesteps.

    Raises:
        ValueError: if ``timesteps[0]`` occurs again, or a timestep is not finite.

    Example:
        >>> check_first_timestep(torch.tensor([999.0, 500.0, 500.0]))  # fine
    """
    if not torch.isfinite(timesteps).all():
        raise ValueError(
            "the timestep grid is not finite (diffusers' sample would be NaN); check the "
            "config's schedule options and the step count"
        )
    repeats = int((timesteps == timesteps[0]).sum())
    if repeats > 1:
        raise ValueError(
            f"the first timestep {timesteps[0].item():g} occurs {repeats} times in the "
            "interleaved grid; diffusers would start at the second occurrence (the wrong "
            "stage). Use fewer steps, another timestep_spacing or sigma_max inside the "
            "training range"
        )


def heun_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """``HeunDiscreteScheduler.set_timesteps``: its interleaved timesteps and sigmas.

    Args:
        config: a ``HeunDiscreteScheduler`` configuration (missing keys take
            :data:`HEUN_DEFAULTS`).
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas)`` as diffusers' ``scheduler.timesteps`` (float32, 2N - 1)
        and ``scheduler.sigmas`` (float32, 2N, ending at 0).

    Example:
        >>> t, s = heun_grid({}, 3)
        >>> t.tolist(), [round(v, 3) for v in s.tolist()]
        ([999.0, 499.5, 499.5, 0.0, 0.0], [25.146, 2.28, 2.28, 0.029, 0.029, 0.0])
    """
    config = karras_config(config, HEUN_DEFAULTS)
    t, sigmas, _ = karras_family_grid(config, num_inference_steps)
    base = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    steps = torch.from_numpy(t).to(torch.float32)
    timesteps = torch.cat([steps[:1], steps[1:].repeat_interleave(2)])
    check_first_timestep(timesteps)
    if not torch.isfinite(base).all():
        raise ValueError("the sigma grid is not finite; check the config's schedule options")
    return timesteps, torch.cat([base[:1], base[1:-1].repeat_interleave(2), base[-1:]])


def entry_tol_scale(base: Tensor, entries: int) -> np.ndarray:
    """The noise std scale of each entry's next state: the grid step it lies in.

    The state after entry k (k = 2j or 2j + 1) lies at or above σ_{j+1}; its scale is
    the ancestral std of the grid step ``σ_{j+1} -> σ_{j+2}`` (0 past the end).

    Args:
        base: the grid's sigmas (N + 1, ending at 0).
        entries: the number of loop entries (2N - 1).

    Returns:
        float64 ``(entries,)``, the last 0.

    Example:
        >>> entry_tol_scale(torch.tensor([4.0, 2.0, 1.0, 0.0]), 5).round(3).tolist()
        [0.866, 0.866, 0.0, 0.0, 0.0]
    """
    s = torch.cat([base.double(), torch.zeros(2, dtype=torch.float64)])
    j = torch.arange(entries) // 2
    std = schedules.ancestral_std(s[j + 1], s[j + 2]).nan_to_num(0.0).numpy()
    std[-1] = 0.0
    return std


class TwoStageRule(VPDenoiser):
    """What the two-model-call samplers share: per-entry σ, ``c_in`` and the denoiser.

    Subclasses fill ``coefficients`` with their step sizes, then call :meth:`_finish`
    with the σ of each entry's state and the first-stage flags, which adds
    ``sigma_in``, ``input_scale`` (√(σ² + 1)), the v-prediction constants and
    ``first`` (1.0 at first-stage entries). ``memory = 1``: a second-stage entry reads
    what its first stage stored.

    Example:
        >>> rule = HeunRule({}, 2)
        >>> isinstance(rule, TwoStageRule), rule.coefficients["first"].tolist()
        (True, [1.0, 0.0, 1.0])
    """

    memory = 1

    def tail(self, begin: int) -> UpdateRule:
        """The entries ``begin …``: the loop's own from a first-stage entry, sliced.

        A pipeline begins at ``t_start · order`` (``set_begin_index``), a first-stage
        entry, where diffusers' step finds no stored stage and each second stage reads its
        own first stage's, as in the whole loop. Beginning at a second-stage entry would
        make diffusers take it as a first stage of a shifted grid: not reproduced.

        Args:
            begin: the first entry kept.

        Returns:
            The rule of the entries from ``begin`` on.

        Raises:
            NotImplementedError: ``begin`` is a second-stage entry.

        Example:
            >>> HeunRule({}, 3).tail(2).coefficients["first"].tolist()
            [1.0, 0.0, 1.0]
        """
        if 0 < begin < self.num_steps and self.coefficients["first"][begin] < 0.5:
            raise NotImplementedError(
                f"{type(self).__name__} cannot begin at entry {begin}, the second model call "
                "of a step; begin at a step's first call (an even entry)"
            )
        return super().tail(begin)

    def _finish(self, sigma_in: Tensor, first: Tensor, epsilon_signal: bool = True) -> None:
        """Fill the coefficients every two-stage rule reads."""
        self.coefficients.update(
            {
                "sigma_in": sigma_in.numpy(),
                **vp_scalings(sigma_in),
                "first": first.to(torch.float32).numpy(),
            }
        )
        if epsilon_signal:  # x = 1 · x_0 + σ ε at every entry's state (the unscaled VE latent)
            self._unit_signal("sigma_in")

    @staticmethod
    def _previous(stored: Tensor, history: Tensor | None) -> Tensor:
        """The previous entry's stored values for each row of the window."""
        before = torch.zeros_like(stored[:1]) if history is None else history[-1:].to(stored.dtype)
        return torch.cat([before, stored[:-1]])


class HeunRule(TwoStageRule):
    """Heun's method on the 2N - 1 loop entries of ``HeunDiscreteScheduler``.

    Args:
        config: a ``HeunDiscreteScheduler`` configuration (mapping): every option —
            sigma schedules (karras, exponential, beta; ``sigma_min``/``sigma_max`` if
            the config carries them), spacings, the three prediction types,
            ``clip_sample``; ``beta_schedule="exp"`` is refused.
        num_inference_steps: N (diffusers' argument); the rule has 2N - 1 steps (2N + 1
            where trailing spacing rounds to N + 1 timesteps).

    Attributes:
        sigmas: diffusers' interleaved ``scheduler.sigmas`` (float32, ending at 0).
        base_sigmas: the grid σ_0 … σ_{N-1}, 0 (float32).

    Example:
        >>> rule = HeunRule({"use_karras_sigmas": True}, 4)
        >>> rule.num_steps, rule.memory, rule.coefficients["first"].tolist()
        (7, 1, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    """

    def __init__(self, config: Mapping[str, Any], num_inference_steps: int):
        self.config = full = karras_config(config, HEUN_DEFAULTS)
        self.prediction_type = check_prediction(
            full, ("epsilon", "v_prediction", "sample"), "HeunDiscreteScheduler"
        )
        self.timesteps, self.sigmas = heun_grid(full, num_inference_steps)
        m = len(self.timesteps)
        base = torch.cat([self.sigmas[::2], self.sigmas[-1:]])  # σ_0 … σ_{N-1}, 0
        self.base_sigmas = base
        self.num_steps = m
        self.init_noise_sigma = init_noise_sigma(full, self.sigmas)
        j = torch.arange(m) // 2
        first = torch.arange(m) % 2 == 0
        self.coefficients = {"dt": (base[j + 1] - base[j]).numpy()}
        self.noise_draws = np.zeros(m, dtype=bool)
        self.tol_scale = entry_tol_scale(base, m)
        self._clip = float(full["clip_sample_range"]) if full["clip_sample"] else None
        self._finish(self.sigmas[:m], first)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Euler at first-stage entries, the trapezoidal correction at second-stage ones.

        The correction is written as an increment of the entry's own state x̃_{i+1}:
        ``x̃_{i+1} + (d'_i - d_i)/2 · dt``, equal to diffusers' ``x_i + (d_i + d'_i)/2 · dt``
        since ``x̃_{i+1} = x_i + d_i dt`` (up to float rounding, see the module notes).
        Returns the next states and each entry's derivative d_k, which the next entry reads.

        Example:
            >>> rule = HeunRule({}, 3)
            >>> c = {k: torch.as_tensor(v[:3]).reshape(-1, 1, 1) for k, v in
            ...      rule.coefficients.items()}
            >>> nxt, kept = rule.update(torch.ones(3, 1, 2), torch.zeros(3, 1, 2), c, None, None)
            >>> nxt.shape, kept.shape
            (torch.Size([3, 1, 2]), torch.Size([3, 1, 2]))
        """
        denoised = self._denoised(x, out, c, c["sigma_in"])
        if self._clip is not None:
            denoised = denoised.clamp(-self._clip, self._clip)
        derivative = (x - denoised) / c["sigma_in"]
        d_prev = self._previous(derivative, history)
        step = torch.where(c["first"] > 0.5, derivative, (derivative - d_prev) / 2)
        return x + step * c["dt"], derivative


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> HeunRule:
    """The rule of a ``HeunDiscreteScheduler`` config (its ``step`` takes no options).

    Args:
        config: a ``HeunDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N, as passed to ``set_timesteps``.

    Returns:
        The :class:`HeunRule` on diffusers' 2N - 1 loop entries.

    Example:
        >>> rule = from_config({"timestep_spacing": "trailing"}, 2)
        >>> rule.timesteps.tolist(), rule.num_steps
        ([999.0, 499.0, 499.0], 3)
    """
    return HeunRule(config, num_inference_steps)
