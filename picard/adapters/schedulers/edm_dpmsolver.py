"""EDM DPM-Solver++ multistep, as diffusers' ``EDMDPMSolverMultistepScheduler`` steps it.

Karras et al. 2022 (EDM, Table 1 preconditioning and eq. 5 noise levels) with the
DPM-Solver++ multistep update of Lu et al. 2022b (Algorithm 2) in the EDM latent
``x = x_0 + σ n``: α = 1 and λ = −log σ. Variables (diffusers -> paper):

- ``sigmas`` σ_i: eq. (5) with ``rho`` ρ (``sigma_schedule="karras"``, float32
  ``ramp``) or log-linear from σ_max to σ_min (``"exponential"``), then the final σ
  (0, or σ_min with ``final_sigmas_type="sigma_min"``).
- ``precondition_inputs``/``scale_model_input``: ``c_in = 1/√(σ² + σ_d²)`` (σ_d =
  ``sigma_data``); ``precondition_noise``: ``c_noise = ¼ ln σ`` — diffusers'
  ``timesteps``, the float32 value the model receives.
- ``precondition_outputs``: ``x_θ = D = c_skip x + c_out F`` with
  ``c_skip = σ_d²/(σ² + σ_d²)`` and ``c_out = ± σ σ_d/√(σ² + σ_d²)`` (+ for
  ``prediction_type="epsilon"``, − for ``"v_prediction"``), thresholded if asked.
- ``_sigma_to_alpha_sigma_t``: α_t = 1, σ_t = σ; ``lambda_t`` = −log σ; ``h``, ``r0``,
  ``r1``, ``D0``, ``D1``, ``D2`` as DPM-Solver++ multistep (see
  :mod:`picard.adapters.schedulers.dpmsolver`): DPM-Solver++(1) ``x_t = (σ_t/σ_s) x_s + (1 − e^{−h})
  D0``, (2M) adds the midpoint or Heun D1 term, (3M) the D1/D2 terms; ``sde-dpmsolver++``
  uses ``(σ_t/σ_s) e^{−h}``, ``1 − e^{−2h}`` and adds ``σ_t √(1 − e^{−2h}) z``.

Each step is ``x_{i+1} = cx x_i + c0 m0 + c01 (m0 − m1) + c12 (m1 − m2) + cz z`` with
per-step weights that encode the order diffusers picks (warm-up, ``lower_order_final``
below 15 steps, ``euler_at_final``, a zero final sigma: see
:func:`picard.adapters.schedulers.dpmsolver.step_orders`). The scalars are computed in float32 on
0-d tensors as diffusers computes them and combined in float64; diffusers' EDM ``step``
keeps the latent's dtype and draws the SDE noise in the model output's dtype, so a
float64 run is float64 throughout. ``init_noise_sigma`` is diffusers' √(σ_max² + 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.dpmsolver import step_orders
from picard.adapters.schedulers.edm_euler import EDM_EULER_DEFAULTS
from picard.adapters.schedulers.multistep import (
    DPM_ALGORITHM_ALIASES,
    DPM_SOLVER_ALIASES,
    Restarting,
    base_coefficients,
    check_final,
    check_order,
    check_solver_type,
    multistep_weights,
    solver_options,
    threshold_options,
)
from picard.adapters.schedulers.sigma_rules import ancestral_tol_scale
from picard.problem import extend_rows

__all__ = ["DEFAULTS", "EDMDPMSolverRule", "edm_grid", "from_config"]

DEFAULTS: dict[str, Any] = {
    **EDM_EULER_DEFAULTS,
    "solver_order": 2,
    **schedules.THRESHOLD_DEFAULTS,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
}
"""``EDMDPMSolverMultistepScheduler``'s options and defaults (other keys are ignored)."""

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")
"""The algorithm types of the EDM scheduler (``sde-dpmsolver++`` up to order 2)."""


def _full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduler's own options (others dropped), defaults filled, aliases resolved."""
    full = solver_options(config, DEFAULTS, DPM_ALGORITHM_ALIASES, DPM_SOLVER_ALIASES)
    _check_config(full)
    return full


def _check_config(config: Mapping[str, Any]) -> None:
    """Refuse what the rule does not reproduce (or diffusers cannot run), naming the option."""
    algorithm = config["algorithm_type"]
    if algorithm not in ALGORITHM_TYPES:
        raise ValueError(
            f"algorithm_type must be one of {ALGORITHM_TYPES} for EDM DPM-Solver, got {algorithm!r}"
        )
    check_solver_type(config["solver_type"])
    order = config["solver_order"]
    check_order(order)
    if algorithm == "sde-dpmsolver++" and order == 3:
        raise ValueError(
            "solver_order=3 is not supported with algorithm_type='sde-dpmsolver++': diffusers' "
            "EDM third-order update has no SDE branch (UnboundLocalError); use solver_order "
            "1 or 2"
        )
    if config["sigma_schedule"] not in ("karras", "exponential"):
        raise ValueError(
            f"sigma_schedule must be 'karras' or 'exponential', got {config['sigma_schedule']!r}"
        )
    check_final(config["final_sigmas_type"])
    kind = config["prediction_type"]
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type must be 'epsilon' or 'v_prediction' for EDM (diffusers' "
            f"precondition_outputs supports no other), got {kind!r}"
        )
    for key in ("sigma_min", "sigma_max", "sigma_data", "rho"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")


def edm_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """The timesteps (c_noise) and sigmas of ``EDMDPMSolverMultistepScheduler.set_timesteps``.

    Args:
        config: an ``EDMDPMSolverMultistepScheduler`` configuration (mapping).
        num_inference_steps: N ≥ 1.

    Returns:
        ``(timesteps, sigmas)``: float32 ``(N,)`` (``¼ ln σ_i``) and float32 ``(N + 1,)``.

    Raises:
        ValueError: for N < 1 or an option the rule does not reproduce.

    Example:
        >>> t, s = edm_grid({}, 3)
        >>> [round(v, 4) for v in s.tolist()], [round(v, 4) for v in t.tolist()]
        ([80.0, 2.5152, 0.002, 0.0], [1.0955, 0.2306, -1.5537])
    """
    config = _full_config(config)
    ramp = torch.linspace(0, 1, schedules.check_steps(num_inference_steps))
    lo, hi = config["sigma_min"], config["sigma_max"]
    if config["sigma_schedule"] == "karras":
        rho = config["rho"]
        min_inv_rho, max_inv_rho = lo ** (1 / rho), hi ** (1 / rho)
        sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    else:
        sigmas = torch.linspace(math.log(lo), math.log(hi), len(ramp)).exp().flip(0)
    sigmas = sigmas.to(torch.float32)
    timesteps = 0.25 * torch.log(sigmas)
    last = lo if config["final_sigmas_type"] == "sigma_min" else 0
    return timesteps, torch.cat([sigmas, torch.tensor([last], dtype=torch.float32)])


def _lambda(sigma: Tensor) -> Tensor:
    """λ = log α − log σ with diffusers' α = ``torch.tensor(1)``."""
    return torch.log(torch.tensor(1)) - torch.log(sigma)


def _step_coefficients(
    algorithm: str, heun: bool, order: int, sigmas: Tensor, i: int
) -> tuple[float, float, float, float, float]:
    """``(cx, c0, c01, c12, cz)`` of step i: float32 scalars as diffusers, combined in float64."""
    one = torch.tensor(1)  # diffusers' alpha_t (an integer tensor)
    sigma_t, sigma_s = sigmas[i + 1], sigmas[i]
    lam_s = _lambda(sigma_s)
    h = _lambda(sigma_t) - lam_s
    cx, c0, cz = base_coefficients(algorithm, one, sigma_t, one, sigma_s, h)
    if order == 1:
        return cx, c0, 0.0, 0.0, cz
    # order 3: dpmsolver++ only, no noise term
    lambdas = [lam_s, *(_lambda(sigmas[i - j]) for j in range(1, order))]
    c01, c12 = multistep_weights(algorithm, heun, order, h, one, sigma_t, lambdas)
    return cx, c0, c01, c12, cz


def _preconditioning(config: Mapping[str, Any], sigma: Tensor) -> tuple[float, float, float]:
    """``(c_in, c_skip, c_out)`` at one σ, on a float32 0-d tensor as diffusers computes them."""
    sd = config["sigma_data"]
    c_in = 1 / ((sigma**2 + sd**2) ** 0.5)
    c_skip = sd**2 / (sigma**2 + sd**2)
    if config["prediction_type"] == "v_prediction":
        c_out = -sigma * sd / (sigma**2 + sd**2) ** 0.5
    else:
        c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
    return float(c_in), float(c_skip), float(c_out)


class EDMDPMSolverRule(Restarting):
    """EDM-preconditioned DPM-Solver++ multistep on the grid of ``num_inference_steps`` steps.

    Supports ``sigma_schedule`` karras/exponential (``sigma_min``, ``sigma_max``,
    ``rho``), ``sigma_data``, ``prediction_type`` epsilon/v_prediction, ``solver_order``
    1–3, ``solver_type`` midpoint/heun, ``algorithm_type`` dpmsolver++ and
    sde-dpmsolver++ (orders 1–2: diffusers' third-order update has no SDE branch),
    ``lower_order_final``, ``euler_at_final``, ``final_sigmas_type`` and
    ``thresholding``.

    The model receives ``c_in(σ_i) x_i`` (:meth:`model_input`, as ``scale_model_input``)
    and ``timesteps[i] = c_noise(σ_i)``. ``memory = solver_order - 1`` (the x_θ of earlier
    steps). ``tol_scale[i]`` is the ancestral std from σ_{i+1} to σ_{i+2} (VE units), 0 for
    the last state. With ``prediction_type="epsilon"`` the guesses of new steps hold x_θ
    fixed through the signal coefficients ``(1/c_skip, −c_out/c_skip)``, with which
    ``(x − σ F)/α`` is ``c_skip x + c_out F``.

    :meth:`tail` warms up again where the loop begins (:class:`Restarting`).

    Args:
        config: an ``EDMDPMSolverMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.
        begin_index: the step diffusers' loop begins at (``set_begin_index``): the orders
            warm up from there (the rule still covers the whole grid; :meth:`tail` cuts it).

    Attributes:
        orders: (N,) the order of each step's update.
        sigmas: (N + 1,) the float32 σ grid (see :func:`edm_grid`).
        coefficients: ``c_in``, ``c_skip``, ``c_out`` and the update weights ``cx``,
            ``c0``, ``c01``, ``c12``, ``cz``.

    Example:
        >>> rule = EDMDPMSolverRule({"solver_order": 3}, 5)
        >>> rule.orders.tolist(), round(rule.init_noise_sigma, 3), rule.timesteps.dtype
        ([1, 2, 3, 2, 1], 80.006, torch.float32)
    """

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, *, begin_index: int = 0
    ):
        self.config = config = _full_config(config)
        self.num_inference_steps = num_inference_steps
        timesteps, sigmas = edm_grid(config, num_inference_steps)
        if int((timesteps == timesteps[0]).sum()) > 1:
            raise ValueError(
                f"the grid repeats its first timestep {timesteps[0].item():g} "
                f"(num_inference_steps={num_inference_steps}): diffusers would start at the "
                "repeat; use sigma_min < sigma_max"
            )
        n = len(timesteps)
        self.algorithm_type: str = config["algorithm_type"]
        self.prediction_type = config["prediction_type"]
        self.solver_order = int(config["solver_order"])
        self._threshold = threshold_options(config)
        heun = config["solver_type"] == "heun"
        self.orders = step_orders(config, n, begin_index)
        names = ("cx", "c0", "c01", "c12", "cz")
        weights = np.array(
            [
                _step_coefficients(self.algorithm_type, heun, int(k), sigmas, i)
                for i, k in enumerate(self.orders)
            ],
            dtype=np.float64,
        ).reshape(n, len(names))
        pre = np.array([_preconditioning(config, sigmas[i]) for i in range(n)]).reshape(n, 3)
        self.num_steps = n
        self.timesteps = timesteps
        self.sigmas = sigmas
        self.init_noise_sigma = (config["sigma_max"] ** 2 + 1) ** 0.5
        self.coefficients = {
            **{name: pre[:, j].copy() for j, name in enumerate(("c_in", "c_skip", "c_out"))},
            **{name: weights[:, j].copy() for j, name in enumerate(names)},
        }
        if self.prediction_type == "epsilon":
            c_skip, c_out = pre[:, 1], pre[:, 2]
            self.coefficients["signal_alpha"] = 1 / c_skip
            self.coefficients["signal_sigma"] = -c_out / c_skip
            self.signal_keys = ("signal_alpha", "signal_sigma")
        self.noise_draws = np.full(n, self.algorithm_type == "sde-dpmsolver++")
        self.memory = self.solver_order - 1
        self.tol_scale = ancestral_tol_scale(sigmas, n)

    def restart(self, begin_index: int) -> EDMDPMSolverRule:
        """The rule of steps ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> EDMDPMSolverRule({"solver_order": 3}, 8).restart(3).orders.tolist()
            [1, 2, 3, 2, 1]
        """
        rule = EDMDPMSolverRule(self.config, self.num_inference_steps, begin_index=begin_index)
        return rule.cut(begin_index)

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """``precondition_inputs``: ``c_in(σ_i) x``, as ``scale_model_input``.

        Example:
            >>> import torch
            >>> rule = EDMDPMSolverRule({}, 3)
            >>> c = {"c_in": torch.as_tensor(rule.coefficients["c_in"]).reshape(-1, 1, 1)}
            >>> [round(v, 4) for v in rule.model_input(torch.ones(3, 1, 1), c).flatten().tolist()]
            [0.0125, 0.3899, 2.0]
        """
        return x * c["c_in"]

    def convert(self, x: Tensor, out: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """x_θ = ``c_skip x + c_out F`` (``precondition_outputs``), thresholded if asked.

        Example:
            >>> import torch
            >>> rule = EDMDPMSolverRule({}, 3)
            >>> c = {"c_skip": torch.full((1, 1), 0.5), "c_out": torch.full((1, 1), 2.0)}
            >>> rule.convert(torch.ones(1, 2), torch.ones(1, 2), c).tolist()
            [[2.5, 2.5]]
        """
        x0 = c["c_skip"] * x + c["c_out"] * out
        return schedules.clip_or_threshold(x0, self._threshold, x.ndim - 2)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One multistep update per step of the window, all steps at once.

        Returns the next states and the x_θ ``(w, B, ...)`` to remember.

        Example:
            >>> import torch
            >>> rule = EDMDPMSolverRule({"solver_order": 2}, 4)
            >>> c = {k: torch.as_tensor(v[:2]).reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> nxt, m = rule.update(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), c, None, None)
            >>> nxt.shape, m.shape
            (torch.Size([2, 1, 3]), torch.Size([2, 1, 3]))
        """
        m = self.convert(x, out, c)
        nxt = c["cx"] * x + c["c0"] * m
        if self.memory:
            w, k = x.shape[0], self.memory
            ext = extend_rows(m, history, k)  # ext[k + j]: window step j
            m1 = ext[k - 1 : k - 1 + w]
            nxt = nxt + c["c01"] * (m - m1)
            if k == 2:
                nxt = nxt + c["c12"] * (m1 - ext[:w])
        if noise is not None:
            nxt = nxt + c["cz"] * noise
        return nxt, m


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> EDMDPMSolverRule:
    """The rule of an ``EDMDPMSolverMultistepScheduler`` config (``step`` takes no options).

    Args:
        config: an ``EDMDPMSolverMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        The :class:`EDMDPMSolverRule` on N steps.

    Example:
        >>> from_config({"sigma_schedule": "exponential"}, 20).num_steps
        20
    """
    return EDMDPMSolverRule(config, num_inference_steps)
