"""DPM-Solver(++) single-step, as diffusers' ``DPMSolverSinglestepScheduler`` steps it.

Lu et al. 2022a (DPM-Solver, Algorithms 1 and 2: DPM-Solver-2 and -3) and Lu et al. 2022b
(DPM-Solver++, Algorithm 1: the single-step solver of x_θ). A single-step solver of order k
spends k model calls on one step from ``s`` to ``t``: the first k − 1 at intermediate
points, each reached by a lower-order update from ``s``. diffusers lays the calls out as
loop entries: ``get_order_list`` gives entry i its order, in groups ``1, 2, …, k`` (the
entry of order j in a group is the group's j-th call), and ``step`` at an entry of order
j takes the group's start sample ``self.sample`` (stored at the group's order-1 entry) from
σ_s to the next grid sigma with the j outputs of the group so far. So the sample diffusers
returns at a group's intermediate entries is the intermediate point of the single-step
solver, and the one it returns at the group's last entry is the step's result.

Symbols (diffusers -> paper):

- ``sigmas`` σ̃_i = σ_{t_i}/α_{t_i} the grid (N + 1 values, the last 0 or σ̃ of ᾱ_0 by
  ``final_sigmas_type``); ``alpha_t`` α_t = 1/√(σ̃² + 1), ``sigma_t`` σ_t = σ̃ α_t,
  ``lambda_t`` λ_t = log α_t − log σ_t.
- At an entry i of order j with group start ``s = i − j + 1``: ``h = lambda_t − lambda_s``
  the step h from λ_s to λ_{t_{i+1}}; ``r0 = h_0/h`` (r₂ of Algorithm 2 for the current
  point, r₁ of the second-order entry), ``r1 = h_1/h`` (the middle point, order 3).
- ``m0``, ``m1``, ``m2`` the converted outputs (x_θ for ``dpmsolver++`` and
  ``sde-dpmsolver++``, ε_θ for ``dpmsolver``) at the current entry, the one before and the
  group's start; ``D0`` the start's output and ``D1``, ``D2`` the divided differences
  (first and second derivatives times h, h²/2).
- ``dpmsolver++`` first order (DDIM): ``x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0``; the
  second-order entry adds ``−½ α_t (e^{−h} − 1) D1`` (``midpoint``) or
  ``α_t ((e^{−h} − 1)/h + 1) D1`` (``heun``); the third-order entry (Algorithm 2 of Lu
  2022a in x_θ form) ``α_t ((e^{−h} − 1)/h + 1) D1_1`` (``midpoint``) or the φ₂/φ₃ terms in
  ``D1``, ``D2`` (``heun``). ``dpmsolver`` uses ``α_t/α_s`` and ``σ_t (e^h − 1)``;
  ``sde-dpmsolver++`` uses ``(σ_t/σ_s) e^{−h}``, ``α_t (1 − e^{−2h})`` and adds
  ``σ_t √(1 − e^{−2h}) z`` (a fresh z at every entry).

Here entry i's update is ``x_{i+1} = cx x_s + c0 m_s + cmid (m_{s+1} − m_s)
+ cend (m_i − m_s) + cz z_i`` with ``lag = i − s`` ∈ {0, 1, 2}; ``update`` stores
``[m_i, x_i]`` (concatenated on the channel dimension) so that later entries read the
group's start state and outputs from ``history``. The scalars are computed as diffusers
computes them (float32, on 0-d tensors), and combined in float64. diffusers' single-step
``step`` does not cast the sample to float32 and draws the SDE noise in the model
output's dtype, so a float64 run is float64 throughout (unlike the multistep solver).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.multistep import (
    DPM_ALGORITHM_ALIASES,
    DPM_SOLVER_ALIASES,
    Restarting,
    alpha_sigma,
    base_coefficients,
    check_final,
    check_first_timestep,
    check_order,
    check_solver_type,
    check_variance,
    check_vp,
    lambda_of,
    posterior_tol_scale,
    second_order_d1,
    sigma_schedule,
    solver_options,
    third_order_d1_d2,
    threshold_options,
    vp_signal,
)
from picard.problem import extend_rows

__all__ = [
    "ALGORITHM_TYPES",
    "DEFAULTS",
    "DPMSolverSinglestepRule",
    "from_config",
    "order_list",
    "singlestep_grid",
]

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
"""The algorithm types of ``DPMSolverSinglestepScheduler`` (all reproduced)."""

DEFAULTS: dict[str, Any] = {
    **schedules.BETA_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    **schedules.THRESHOLD_DEFAULTS,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -math.inf,
    "variance_type": None,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}
"""``DPMSolverSinglestepScheduler``'s options and defaults. Other keys of a config (a
``timestep_spacing`` carried over from another scheduler's config, say) are ignored, as
diffusers ignores them: its single-step grid is always ``linspace``."""


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
            f"algorithm_type must be one of {ALGORITHM_TYPES} for single-step DPM-Solver, "
            f"got {algorithm!r}"
        )
    check_solver_type(config["solver_type"])
    check_order(config["solver_order"])
    final = config["final_sigmas_type"]
    check_final(final)
    if final == "zero" and algorithm == "dpmsolver":
        raise ValueError(
            "final_sigmas_type='zero' is not supported with algorithm_type='dpmsolver' (as in "
            "diffusers); use final_sigmas_type='sigma_min'"
        )
    check_vp(config, "single-step DPM-Solver")
    sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    schedules.prediction_type(config)
    check_variance(config)
    if config["thresholding"] and algorithm == "dpmsolver":
        raise ValueError(
            "thresholding=True is not supported with algorithm_type='dpmsolver': diffusers' "
            "single-step convert_model_output indexes alpha_t[None] there and fails (its "
            "timestep argument is no longer passed); use algorithm_type='dpmsolver++'"
        )


def singlestep_grid(
    config: Mapping[str, Any], num_inference_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The timesteps and sigmas of ``DPMSolverSinglestepScheduler.set_timesteps``.

    ``linspace`` timesteps below ``lambda_min_clipped``'s cut, or Karras (timesteps
    rounded), exponential or beta sigmas (timesteps truncated), then the final sigma.

    Args:
        config: a ``DPMSolverSinglestepScheduler`` configuration (mapping).
        num_inference_steps: N, in ``[1, num_train_timesteps]``.

    Returns:
        ``(timesteps, sigmas)``: int64 ``(N,)`` and float32 ``(N + 1,)``, descending.

    Raises:
        ValueError: for an out-of-range N or an option the rule does not reproduce.

    Example:
        >>> t, s = singlestep_grid({}, 4)
        >>> t.tolist(), s[-1].item()
        ([999, 749, 500, 250], 0.0)
    """
    config = _full_config(config)
    total = int(config["num_train_timesteps"])
    n = schedules.check_steps(num_inference_steps, upper=total)
    ab = schedules.alphas_cumprod(config)
    clipped = schedules.lambda_clipped(ab, config["lambda_min_clipped"])
    timesteps = np.linspace(0, total - 1 - clipped, n + 1).round()[::-1][:-1].copy()
    train = schedules.train_sigmas(ab)
    lo, hi = train[0].item(), train[-1].item()
    kind = sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    if kind is None:
        sigmas = schedules.interp_sigmas(timesteps, train)
    else:
        sigmas = schedules.convert_sigmas(kind, lo, hi, n)
        timesteps = schedules.sigmas_to_timesteps(sigmas, np.log(train))
        if kind == "use_karras_sigmas":
            timesteps = timesteps.round()
    final = 0.0 if config["final_sigmas_type"] == "zero" else lo
    sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
    return timesteps.astype(np.int64), sigmas


def order_list(config: Mapping[str, Any], num_inference_steps: int) -> np.ndarray:
    """The order of each loop entry, as diffusers' ``get_order_list`` after ``set_timesteps``.

    ``set_timesteps`` turns ``lower_order_final`` on (in the scheduler's config, for good)
    when N is not a multiple of ``solver_order`` or the final sigma is zero; a zero final
    sigma also makes the last entry first order.

    Args:
        config: a ``DPMSolverSinglestepScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        int64 ``(N,)``: entry i's order; an entry of order j is the j-th of its group.

    Example:
        >>> order_list({"solver_order": 3}, 7).tolist()
        [1, 2, 3, 1, 2, 3, 1]
        >>> order_list({"solver_order": 3, "final_sigmas_type": "sigma_min"}, 6).tolist()
        [1, 2, 3, 1, 2, 3]
        >>> order_list({"solver_order": 3, "lower_order_final": True}, 6).tolist()
        [1, 2, 3, 1, 2, 1]
    """
    config = _full_config(config)
    steps, order = int(num_inference_steps), int(config["solver_order"])
    zero = config["final_sigmas_type"] == "zero"
    lower = bool(config["lower_order_final"]) or steps % order != 0 or zero
    groups, rest = divmod(steps, order)
    if lower and rest == 0 and order > 1:  # the last full group is split: [1..k-1] + [1]
        orders = list(range(1, order + 1)) * (groups - 1) + list(range(1, order)) + [1]
    else:
        orders = list(range(1, order + 1)) * groups + list(range(1, rest + 1))
    if zero:
        orders[-1] = 1
    return np.array(orders, dtype=np.int64)


def _entry_coefficients(
    algorithm: str, heun: bool, order: int, sigmas: Tensor, i: int
) -> tuple[float, float, float, float, float]:
    """``(cx, c0, cmid, cend, cz)`` of entry i of the given order (float32 scalars as diffusers)."""
    s = i - order + 1  # the group's start
    alpha_t, sigma_t = alpha_sigma(sigmas[i + 1])
    alpha_s, sigma_s = alpha_sigma(sigmas[s])
    lam_t, lam_s = lambda_of(alpha_t, sigma_t), lambda_of(alpha_s, sigma_s)
    h = lam_t - lam_s
    cx, c0, cz = base_coefficients(algorithm, alpha_t, sigma_t, alpha_s, sigma_s, h)
    if order == 1:
        return cx, c0, 0.0, 0.0, cz
    r0 = (lambda_of(*alpha_sigma(sigmas[i])) - lam_s) / h
    inv_r0 = float(1.0 / r0)
    if order == 2:
        k1 = float(second_order_d1(algorithm, heun, h, alpha_t, sigma_t))
        return cx, c0, 0.0, k1 * inv_r0, cz
    r1 = (lambda_of(*alpha_sigma(sigmas[i - 1])) - lam_s) / h
    if not heun:  # midpoint: D1_1 only, with the φ₂ weight
        k1 = float(second_order_d1(algorithm, True, h, alpha_t, sigma_t))
        return cx, c0, 0.0, k1 * inv_r0, cz
    # D1 = (r0 D1_0 − r1 D1_1)/(r0 − r1), D2 = 2 (D1_1 − D1_0)/(r0 − r1),
    # D1_0 = (m1 − m2)/r1 (the middle point), D1_1 = (m0 − m2)/r0 (the current one)
    k1, k2 = (float(k) for k in third_order_d1_d2(algorithm, h, alpha_t, sigma_t))
    den, inv_r1 = float(r0 - r1), float(1.0 / r1)
    cmid = inv_r1 * (k1 * float(r0) - 2.0 * k2) / den
    cend = inv_r0 * (2.0 * k2 - k1 * float(r1)) / den
    return cx, c0, cmid, cend, cz


class DPMSolverSinglestepRule(Restarting):
    """DPM-Solver(++) single-step: one step of the rule per diffusers loop entry.

    Supports ``algorithm_type`` in :data:`ALGORITHM_TYPES`, ``solver_order`` 1–3 (with
    diffusers' order list and ``lower_order_final``), ``solver_type`` midpoint/heun,
    ``final_sigmas_type``, Karras/exponential/beta sigmas, ``lambda_min_clipped``, the
    three prediction types, ``thresholding`` (not with ``dpmsolver``, where diffusers
    fails) and ``variance_type`` learned/learned_range (epsilon prediction). Flow sigmas
    and dynamic shifting raise ``ValueError``.

    ``memory = solver_order - 1``: each entry stores its converted output and its state,
    ``[m_i, x_i]`` on the channel dimension, and an entry of order j reads the group's
    first j − 1 from ``history`` or the window. ``tol_scale[i]`` is the DDPM posterior std
    between the grid's sigmas at i + 1 and i + 2 (VP units), 0 for the last state.
    ``sde-dpmsolver++`` draws noise at every entry, in the latent's dtype.

    :meth:`tail` starts mid-grid as diffusers' loop after ``set_begin_index``: its
    stored outputs start empty there, so an entry of order j with fewer than j outputs
    since the loop began takes the order it has outputs for (diffusers lowers it "for
    img2img"), and a group restarts at the loop's first entry (:class:`Restarting`).

    Args:
        config: a ``DPMSolverSinglestepScheduler`` configuration (mapping).
        num_inference_steps: N.
        begin_index: the entry diffusers' loop begins at (``set_begin_index``): entry i
            has at most order i − begin_index + 1 (the rule still covers the whole grid;
            :meth:`tail` cuts it).

    Attributes:
        orders: (N,) each entry's order (see :func:`order_list`), lowered after
            ``begin_index``.
        sigmas: (N + 1,) the float32 σ̃ grid (see :func:`singlestep_grid`).
        coefficients: ``alpha``, ``sigma`` (of each entry's state, to convert the model
            output), ``lag`` (entries back to the group's start) and the update weights
            ``cx``, ``c0``, ``cmid``, ``cend``, ``cz``.

    Example:
        >>> rule = DPMSolverSinglestepRule({"solver_order": 3}, 5)
        >>> rule.timesteps.tolist(), rule.orders.tolist(), rule.memory
        ([999, 799, 599, 400, 200], [1, 2, 3, 1, 1], 2)
    """

    signal_keys = ("alpha", "sigma")

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, *, begin_index: int = 0
    ):
        self.config = config = _full_config(config)
        self.num_inference_steps = num_inference_steps
        timesteps, sigmas = singlestep_grid(config, num_inference_steps)
        check_first_timestep(timesteps, num_inference_steps, "schedule")
        n = len(timesteps)
        self.algorithm_type: str = config["algorithm_type"]
        self.prediction_type = schedules.prediction_type(config)
        self.solver_order = int(config["solver_order"])
        self._threshold = threshold_options(config)
        heun = config["solver_type"] == "heun"
        # diffusers' step lowers the order while model_outputs[-order] is None: an entry has
        # at most as many outputs as entries run since the loop began
        since = np.maximum(np.arange(n) - begin_index, 0)
        self.orders = np.minimum(order_list(config, n), since + 1)
        sig = torch.from_numpy(sigmas)
        weights = np.array(
            [
                _entry_coefficients(self.algorithm_type, heun, int(k), sig, i)
                for i, k in enumerate(self.orders)
            ],
            dtype=np.float64,
        ).reshape(n, 5)
        self.num_steps = n
        self.timesteps = torch.from_numpy(timesteps)
        self.sigmas = sig
        names = ("cx", "c0", "cmid", "cend", "cz")
        self.coefficients = {
            **vp_signal(sig, n),
            "lag": (self.orders - 1).astype(np.float64),
            **{name: weights[:, j].copy() for j, name in enumerate(names)},
        }
        self.noise_draws = np.full(n, self.algorithm_type == "sde-dpmsolver++")
        self.memory = self.solver_order - 1
        self.output_channels = 1 if config["variance_type"] is None else 2
        self.tol_scale = posterior_tol_scale(sig)

    def restart(self, begin_index: int) -> DPMSolverSinglestepRule:
        """The rule of entries ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> rule = DPMSolverSinglestepRule({"solver_order": 3}, 8)
            >>> rule.orders.tolist(), rule.restart(2).orders.tolist()
            ([1, 2, 3, 1, 2, 3, 1, 1], [1, 1, 2, 3, 1, 1])
        """
        rule = DPMSolverSinglestepRule(
            self.config, self.num_inference_steps, begin_index=begin_index
        )
        return rule.cut(begin_index)

    def convert(self, x: Tensor, out: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """The model outputs as the solver integrates them: x_θ (``++`` types) or ε_θ.

        Example:
            >>> import torch
            >>> rule = DPMSolverSinglestepRule({"prediction_type": "sample"}, 3)
            >>> c = {"alpha": torch.ones(1, 1), "sigma": torch.ones(1, 1)}
            >>> rule.convert(torch.ones(1, 2), torch.zeros(1, 2), c).tolist()
            [[0.0, 0.0]]
        """
        if self.output_channels == 2:  # drop the predicted variance (diffusers: [:, :3])
            out = out[:, :, : x.shape[2]]
        alpha, sigma = c["alpha"], c["sigma"]
        if self.algorithm_type == "dpmsolver":
            return schedules.predict_eps(self.prediction_type, x, out, alpha, sigma)
        x0 = schedules.predict_x0(self.prediction_type, x, out, alpha, sigma)
        return schedules.clip_or_threshold(x0, self._threshold, x.ndim - 2)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Every entry of the window at once, each from its group's start state.

        Returns the next states and ``[m_i, x_i]`` (channel-concatenated) to remember.

        Example:
            >>> import torch
            >>> rule = DPMSolverSinglestepRule({"solver_order": 2}, 4)
            >>> c = {k: torch.as_tensor(v[:2]).reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> nxt, kept = rule.update(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), c, None, None)
            >>> nxt.shape, kept.shape
            (torch.Size([2, 1, 3]), torch.Size([2, 1, 6]))
        """
        m = self.convert(x, out, c)
        kept = torch.cat([m, x.to(m.dtype)], dim=2)
        x_s, m_s, d_mid = x, m, None
        if self.memory:
            w, k, ch = x.shape[0], self.memory, x.shape[2]
            ext = extend_rows(kept, _history(history, kept), k)  # ext[k + j]: window entry j
            lag = c["lag"]
            back1 = ext[k - 1 : k - 1 + w]
            x_s = torch.where(lag == 1, back1[:, :, ch:], x_s)
            m_s = torch.where(lag == 1, back1[:, :, :ch], m_s)
            if k == 2:
                back2 = ext[:w]
                x_s = torch.where(lag == 2, back2[:, :, ch:], x_s)
                m_s = torch.where(lag == 2, back2[:, :, :ch], m_s)
                d_mid = torch.where(lag == 2, back1[:, :, :ch] - m_s, 0.0)
        nxt = c["cx"] * x_s + c["c0"] * m_s + c["cend"] * (m - m_s)
        if d_mid is not None:
            nxt = nxt + c["cmid"] * d_mid
        if noise is not None:
            nxt = nxt + c["cz"] * noise
        return nxt, kept


def _history(history: Tensor | None, kept: Tensor) -> Tensor:
    """The stored ``[m, x]`` rows before the window (none if absent).

    The guess roll-out of :class:`picard.adapters.rule.DiffusionProblem` passes zeros
    shaped like the states, not like the stored rows: they stand for a zero history.
    """
    if history is None:
        return kept[:0]
    if history.shape[2:] != kept.shape[2:]:
        return kept.new_zeros((history.shape[0], *kept.shape[1:]))
    return history.to(kept.dtype)


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> DPMSolverSinglestepRule:
    """The rule of a ``DPMSolverSinglestepScheduler`` config (``step`` takes no options).

    Args:
        config: a ``DPMSolverSinglestepScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        The :class:`DPMSolverSinglestepRule` on N loop entries.

    Example:
        >>> from_config({"solver_order": 2, "final_sigmas_type": "sigma_min"}, 6).orders.tolist()
        [1, 2, 1, 2, 1, 2]
    """
    return DPMSolverSinglestepRule(config, num_inference_steps)
