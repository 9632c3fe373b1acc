"""Flow-matching Euler (SD3, Flux), as diffusers' ``FlowMatchEulerDiscreteScheduler``.

Rectified flow (Lipman et al. 2023; Esser et al. 2024): ``x_σ = (1 - σ) x_0 + σ ε``, and
the model predicts the velocity ``v = dx/dσ = ε - x_0``. Variables (diffusers -> paper):

- ``sigmas[i]`` σ_i = t_i of the papers (1 noise, 0 data), after the shift;
  ``timesteps[i]`` = 1000 σ_i (``num_train_timesteps`` σ_i), what the model receives.
- ``shift`` s: the static timestep shift (Esser et al. 2024, eq. 23)
  ``σ' = s σ / (1 + (s - 1) σ)``; with ``use_dynamic_shifting`` the resolution-dependent
  shift by ``mu`` μ (Flux): ``σ' = e^μ / (e^μ + 1/σ - 1)`` (exponential) or
  ``μ / (μ + 1/σ - 1)`` (linear).
- ``shift_terminal``: the grid stretched so that ``1 - σ`` ends at ``1 - shift_terminal``.
- ``step``: the Euler step of the flow ODE, ``x_{i+1} = x_i + (σ_{i+1} - σ_i) v̂``; with
  ``stochastic_sampling``: ``x̂_0 = x_i - σ_i v̂``, ``x_{i+1} = (1 - σ_{i+1}) x̂_0 + σ_{i+1} z``.

diffusers' default grid is shifted twice (``__init__`` shifts the training sigmas whose
ends bound ``set_timesteps``'s linspace, which is shifted again); reproduced here via
:func:`picard.adapters.schedulers.schedules.flow_sigmas`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.sigma_rules import (
    check_grid,
    chosen_sigma_schedule,
    convert_config_sigmas,
)

__all__ = ["FLOW_DEFAULTS", "FlowMatchEulerRule", "flow_grid", "flow_tol_scale", "from_config"]

FLOW_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}
"""The defaults of diffusers' ``FlowMatchEulerDiscreteScheduler`` that the grid reads."""


def _checked(config: Mapping[str, Any], mu: float | None) -> dict[str, Any]:
    full = schedules.with_defaults(config, FLOW_DEFAULTS)
    if full["invert_sigmas"]:
        raise ValueError(
            "invert_sigmas=True (Mochi's inverted schedule) is not supported; supported: "
            "invert_sigmas=False"
        )
    if full["time_shift_type"] not in ("exponential", "linear"):
        raise ValueError(
            "time_shift_type must be one of ('exponential', 'linear'), got "
            f"{full['time_shift_type']!r}"
        )
    chosen_sigma_schedule(full)
    if full["use_dynamic_shifting"] and mu is None:
        raise ValueError(
            "use_dynamic_shifting=True needs mu (the resolution-dependent shift the "
            "pipeline passes to set_timesteps); pass mu=..."
        )
    return full


def flow_grid(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    sigmas: Sequence[float] | np.ndarray | None = None,
    mu: float | None = None,
    timesteps: Sequence[float] | np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """``FlowMatchEulerDiscreteScheduler.set_timesteps``: float32 timesteps and sigmas.

    Args:
        config: a ``FlowMatchEulerDiscreteScheduler`` configuration (missing keys take
            :data:`FLOW_DEFAULTS`).
        num_inference_steps: N.
        sigmas: custom sigmas (N of them, before the shift), as pipelines pass them.
        mu: the dynamic shift (required with ``use_dynamic_shifting``).
        timesteps: custom model timesteps (N); without ``sigmas`` the sigmas are
            ``timesteps / num_train_timesteps``, shifted.

    Returns:
        ``(timesteps (N,), sigmas (N + 1,))``, the last sigma 0.

    Example:
        >>> t, s = flow_grid({"shift": 3.0}, 4)
        >>> [round(v, 1) for v in t.tolist()], s[-1].item()
        ([1000.0, 857.7, 602.2, 8.9], 0.0)
    """
    full = _checked(config, mu)
    n = schedules.check_steps(num_inference_steps)
    total = int(full["num_train_timesteps"])
    for name, given in (("sigmas", sigmas), ("timesteps", timesteps)):
        if given is not None and len(given) != n:
            raise ValueError(
                f"{name} has {len(given)} values but num_inference_steps is {n}; they must agree"
            )
    custom_t = None if timesteps is None else np.array(timesteps).astype(np.float32)
    if sigmas is None and custom_t is not None:
        sigmas = custom_t / total
    given = None if sigmas is None else np.asarray(sigmas)
    sig = schedules.flow_sigmas(full, n, sigmas=given, mu=mu)
    terminal = full["shift_terminal"]
    if terminal:  # LTX-Video's stretch: 1 - σ ends at 1 - shift_terminal
        one_minus = 1 - sig
        with np.errstate(divide="ignore", invalid="ignore"):  # checked just below
            sig = 1 - one_minus / (one_minus[-1] / (1 - terminal))
    kind = chosen_sigma_schedule(full)
    if kind is not None:
        sig = convert_config_sigmas(kind, sig, n, full)  # the grid's ends unless sigma_min/max
    out = torch.from_numpy(np.ascontiguousarray(sig)).to(torch.float32)
    model_t = out * total if custom_t is None else torch.from_numpy(custom_t)
    out = torch.cat([out, torch.zeros(1)])
    check_grid(model_t, out)
    return model_t, out


def flow_tol_scale(sigma_from: np.ndarray, sigma_to: np.ndarray) -> np.ndarray:
    """The ancestral std of flow steps ``σ_from -> σ_to``, in the flow latent's units.

    Converted through the VE latent ``x / (1 - σ)`` (VE sigma ``σ/(1 - σ)``) and back:
    ``(1 - σ_to) · ancestral_std(σ_from/(1 - σ_from), σ_to/(1 - σ_to))``, which simplifies
    to ``σ_to √(1 - r²)`` with ``r = σ_to (1 - σ_from) / (σ_from (1 - σ_to))`` — finite at
    σ_from = 1, where it tends to σ_to (pure noise: the posterior std is the whole σ_to).

    Args:
        sigma_from: the flow sigmas σ_from the steps start at (in [0, 1]).
        sigma_to: the flow sigmas σ_to they end at, the same shape.

    Returns:
        float64 array of the same shape: each step's ancestral std (0 where σ_to = 0).

    Example:
        >>> flow_tol_scale(np.array([1.0, 0.5, 0.2]), np.array([0.5, 0.2, 0.0])).round(4)
        array([0.5   , 0.1936, 0.    ])
    """
    sf = np.asarray(sigma_from, dtype=np.float64)
    st = np.asarray(sigma_to, dtype=np.float64)
    num, den = st * (1 - sf), sf * (1 - st)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 0.0, np.inf))
    return st * np.sqrt(np.clip(1 - r**2, 0.0, None))


class FlowMatchEulerRule(UpdateRule):
    """Flow-matching Euler on N steps, as ``FlowMatchEulerDiscreteScheduler`` steps it.

    Args:
        config: a ``FlowMatchEulerDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N.
        sigmas: custom sigmas, as SD3/Flux pipelines pass to ``set_timesteps``.
        mu: the dynamic shift (``use_dynamic_shifting``).
        timesteps: custom model timesteps.

    With ``stochastic_sampling`` a noise tensor is drawn at every step; diffusers draws it
    in float32 (the dtype it upcasts the sample to), so the sample matches diffusers' for
    float32 latents; :attr:`noise_dtype` records this, and the problem draws it so.
    Re-noising makes ``x_{i+1}`` depend on ``x_i`` only through ``(1 - σ_{i+1}) x̂_0``, far
    from the identity that Picard sweeps need: expect about N sweeps (exact, no speed-up).
    ``scheduler.set_shift(s)`` changes diffusers' shift outside its config: pass such a
    shift in ``config`` (``{**scheduler.config, "shift": s}``).

    Attributes:
        sigmas: (N + 1,) float32, the grid ending at 0.
        noise_dtype: the dtype diffusers draws the step noise in (float32), or None.

    Example:
        >>> rule = FlowMatchEulerRule({"use_dynamic_shifting": True}, 4, mu=0.8)
        >>> [round(v, 1) for v in rule.timesteps.tolist()], rule.init_noise_sigma
        ([1000.0, 816.8, 527.4, 2.2], 1.0)
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        *,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | np.ndarray | None = None,
    ):
        self.config = _checked(config, mu)
        self.timesteps, self.sigmas = flow_grid(
            config, num_inference_steps, sigmas=sigmas, mu=mu, timesteps=timesteps
        )
        n = len(self.timesteps)
        self.num_steps = n
        self.stochastic = bool(self.config["stochastic_sampling"])
        sigma, nxt = self.sigmas[:n], self.sigmas[1:]
        self.coefficients = {
            "sigma": sigma.numpy(),
            "dt": (nxt - sigma).numpy(),
            "one_minus_next": (1.0 - nxt).numpy(),
            "next": nxt.numpy(),
        }
        self.noise_draws = np.full(n, self.stochastic)
        self.noise_dtype = torch.float32 if self.stochastic else None
        s = self.sigmas.double().numpy()
        self.tol_scale = np.append(flow_tol_scale(s[1:n], s[2 : n + 1]), 0.0)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """The Euler step ``x + (σ_{i+1} - σ_i) v̂`` (or the stochastic re-noising)."""
        if not self.stochastic:
            return x + c["dt"] * out, None
        if noise is None:  # pragma: no cover - stochastic rules always draw
            raise RuntimeError("stochastic_sampling needs the pre-drawn noise")
        x0 = x - c["sigma"] * out
        return c["one_minus_next"] * x0 + c["next"] * noise, None


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    sigmas: Sequence[float] | np.ndarray | None = None,
    mu: float | None = None,
    timesteps: Sequence[float] | np.ndarray | None = None,
) -> FlowMatchEulerRule:
    """The rule of a ``FlowMatchEulerDiscreteScheduler`` config, with set_timesteps' options.

    ``sigmas``, ``mu`` and ``timesteps`` are what SD3/Flux pipelines pass to it.

    Args:
        config: a ``FlowMatchEulerDiscreteScheduler`` configuration (missing keys take
            :data:`FLOW_DEFAULTS`).
        num_inference_steps: N.
        sigmas: custom sigmas (N of them, before the shift).
        mu: the dynamic shift (required with ``use_dynamic_shifting``).
        timesteps: custom model timesteps (N).

    Returns:
        The :class:`FlowMatchEulerRule` on N steps.

    Example:
        >>> from_config({"shift": 3.0}, 28, sigmas=np.linspace(1.0, 1 / 28, 28)).num_steps
        28
        >>> rule = from_config({"shift": 3.0}, 28, sigmas=np.linspace(1.0, 1 / 28, 28))
        >>> rule.sigmas[0].item(), rule.sigmas[-1].item()  # from pure noise down to 0
        (1.0, 0.0)
    """
    return FlowMatchEulerRule(
        config, num_inference_steps, sigmas=sigmas, mu=mu, timesteps=timesteps
    )
