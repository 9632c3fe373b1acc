"""DPM-Solver and DPM-Solver++ multistep, as diffusers' ``DPMSolverMultistepScheduler`` steps it.

Symbols (Lu et al. 2022a, DPM-Solver; Lu et al. 2022b, DPM-Solver++) and diffusers' names:

- ``sigmas``: the grid's VE noise levels σ̃_i = σ_{t_i}/α_{t_i} (N + 1 values, the last
  0 or σ̃ of ᾱ_0 by ``final_sigmas_type``); ``_sigma_to_alpha_sigma_t`` turns one into
  the VP pair ``alpha_t`` α_t = 1/√(σ̃² + 1) and ``sigma_t`` σ_t = σ̃ α_t.
- ``lambda_t`` λ_t = log α_t − log σ_t (half the log-SNR); ``h = lambda_t - lambda_s0``
  the step h_i = λ_{t_i} − λ_{t_{i-1}}; ``h_0``, ``h_1`` the two steps before it and
  ``r0 = h_0/h``, ``r1 = h_1/h`` the step ratios r_i.
- ``m0, m1, m2``: the converted model outputs of the current and the two previous steps:
  the data prediction x_θ for ``dpmsolver++`` (DPM-Solver++ solves the ODE of x_θ) and the
  noise prediction ε_θ for ``dpmsolver``; ``D0 = m0``, ``D1 ≈ h x_θ'`` and ``D2 ≈ h² x_θ''/2``
  their divided differences.
- DPM-Solver++(1) (= DDIM): ``x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0``;
  DPM-Solver++(2M) (Lu 2022b, Algorithm 2) adds ``−½ α_t (e^{−h} − 1) D1`` (``midpoint``)
  or ``α_t ((e^{−h} − 1)/h + 1) D1`` (``heun``, the φ₂ form); the third-order multistep
  adds ``−α_t ((e^{−h} − 1 + h)/h² − ½) D2``. DPM-Solver (ε form) uses ``α_t/α_s`` and
  ``σ_t (e^h − 1)`` instead; the ``sde-`` variants add ``σ_t √(1 − e^{−2h}) z``
  (``sde-dpmsolver++``) or ``σ_t √(e^{2h} − 1) z`` (``sde-dpmsolver``).

Here each step is the linear combination
``x_{i+1} = cx x_i + c0 m0 + c01 (m0 − m1) + c12 (m1 − m2) + cz z`` whose per-step
coefficients encode the order diffusers picks at that step (warm-up while fewer earlier
outputs exist, ``lower_order_final`` below 15 steps, ``euler_at_final``, a zero final
sigma). The scalars are computed in float32, one step at a time, exactly as diffusers
computes them (on 0-d tensors, as its ``step`` does), and combined in float64.
``cx x_i`` and ``cz z`` are float32 products even in a float64 run: diffusers' ``step``
casts the sample to float32 before the update and draws its noise in float32, while the
model outputs keep the latent's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.config import read_option
from picard.adapters.schedulers.multistep import (
    Restarting,
    alpha_sigma,
    base_coefficients,
    check_final,
    check_first_timestep,
    check_order,
    check_variance,
    check_vp,
    lambda_at,
    lambda_of,
    multistep_weights,
    posterior_tol_scale,
    sigma_schedule,
    threshold_options,
    vp_signal,
)
from picard.problem import extend_rows

__all__ = [
    "ALGORITHM_TYPES",
    "DEFAULTS",
    "SOLVER_TYPES",
    "DPMSolverRule",
    "solver_grid",
    "step_orders",
]

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver")
"""The algorithm types picard reproduces (the ``sde-`` ones draw noise every step)."""

SOLVER_TYPES = ("midpoint", "heun")
"""The second-order solver types."""

_SIGMA_SCHEDULES = (
    "use_karras_sigmas",
    "use_lu_lambdas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
)


DEFAULTS: dict[str, Any] = {"timestep_spacing": "linspace", "steps_offset": 0}
"""``DPMSolverMultistepScheduler``'s defaults that differ from the schedule helpers' (DDPM's)."""


def _with_defaults(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return {**DEFAULTS, **config} if isinstance(config, Mapping) else config


def _check_config(config: Mapping[str, Any]) -> None:
    """Refuse what the rule does not reproduce, naming the option."""
    algorithm = read_option(config, "algorithm_type", "dpmsolver++")
    if algorithm not in ALGORITHM_TYPES:
        raise ValueError(
            f"algorithm_type must be one of {ALGORITHM_TYPES} for DPM-Solver, got {algorithm!r}"
        )
    solver_type = read_option(config, "solver_type", "midpoint")
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    order = read_option(config, "solver_order", 2)
    check_order(order)
    if algorithm == "sde-dpmsolver" and order == 3:
        raise ValueError(
            "solver_order=3 is not supported with algorithm_type='sde-dpmsolver' (diffusers "
            "has no third-order update for it); use solver_order 1 or 2, or 'sde-dpmsolver++'"
        )
    final = read_option(config, "final_sigmas_type", "zero")
    check_final(final)
    if final == "zero" and not algorithm.endswith("++"):
        raise ValueError(
            f"final_sigmas_type='zero' is not supported with algorithm_type={algorithm!r} "
            "(as in diffusers); use final_sigmas_type='sigma_min'"
        )
    check_vp(config, "DPM-Solver", "Karras, Lu, exponential or beta")
    sigma_schedule(config, _SIGMA_SCHEDULES)
    check_variance(config)


def solver_grid(
    config: Mapping[str, Any], num_inference_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """DPM-Solver's timesteps and sigmas, as ``DPMSolverMultistepScheduler.set_timesteps``.

    Handles ``timestep_spacing`` (+ ``steps_offset``), ``lambda_min_clipped``, the Karras,
    Lu, exponential and beta sigma schedules and ``final_sigmas_type``.

    Args:
        config: a ``DPMSolverMultistepScheduler`` configuration (mapping).
        num_inference_steps: the N asked for (trailing spacing with a clipped λ may give
            fewer steps, as in diffusers).

    Returns:
        ``(timesteps, sigmas)``: int64 ``(N,)`` and float32 ``(N + 1,)``, descending.

    Example:
        >>> t, s = solver_grid({"num_train_timesteps": 1000}, 4)
        >>> t.tolist(), s[-1].item()
        ([999, 749, 500, 250], 0.0)
    """
    config = _with_defaults(config)
    _check_config(config)
    n = int(num_inference_steps)
    total = int(read_option(config, "num_train_timesteps", 1000))
    if not 1 <= n <= total:
        raise ValueError(f"num_inference_steps must be in [1, {total}], got {n}")
    ab = schedules.alphas_cumprod(config, terminal_floor=True)
    last = total - schedules.lambda_clipped(
        ab, read_option(config, "lambda_min_clipped", -math.inf)
    )
    timesteps = schedules.solver_timesteps(config, n, last)
    train = schedules.train_sigmas(ab)  # float32, ascending in t
    log_sigmas = np.log(train)
    lo, hi = train[0].item(), train[-1].item()
    kind = sigma_schedule(config, _SIGMA_SCHEDULES)
    if kind == "use_lu_lambdas":
        lam_min, lam_max = log_sigmas[0].item(), log_sigmas[-1].item()
        sigmas = np.exp(lam_max + np.linspace(0, 1, n) * (lam_min - lam_max))
    elif kind is not None:
        sigmas = schedules.convert_sigmas(kind, lo, hi, n)
    else:
        sigmas = schedules.interp_sigmas(timesteps, train)
    if kind is not None:
        t = schedules.sigmas_to_timesteps(sigmas, log_sigmas)
        rounded = kind in ("use_karras_sigmas", "use_lu_lambdas")
        if rounded and read_option(config, "beta_schedule", "linear") != "squaredcos_cap_v2":
            t = t.round()
        timesteps = t.astype(np.int64)  # truncates fractional timesteps, as diffusers
    final = 0.0 if read_option(config, "final_sigmas_type", "zero") == "zero" else lo
    sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
    return timesteps.astype(np.int64), sigmas


def step_orders(config: Mapping[str, Any], num_steps: int, begin_index: int = 0) -> np.ndarray:
    """The order diffusers' ``step`` uses at each of ``num_steps`` steps.

    Warm-up: step i has at most order i + 1 — or i − ``begin_index`` + 1 when the loop
    begins at ``begin_index`` (``set_begin_index``: the history starts empty there).
    ``lower_order_final`` (only below 15 steps) lowers the last two steps of the whole
    grid to orders 1 and 2; ``euler_at_final`` or a zero final sigma makes the last step
    first order.

    Args:
        config: a ``DPMSolverMultistepScheduler`` configuration (mapping); reads
            ``solver_order``, ``lower_order_final``, ``euler_at_final`` and
            ``final_sigmas_type``.
        num_steps: the number of steps N of the grid.
        begin_index: the step the loop begins at (the steps before it, never run, are
            given order 1).

    Returns:
        int64 ``(N,)``: the order (1, 2 or 3) of each step.

    Example:
        >>> step_orders({"solver_order": 3}, 6).tolist()
        [1, 2, 3, 3, 2, 1]
        >>> step_orders({"final_sigmas_type": "sigma_min"}, 20).tolist()[-3:]  # no lowering
        [2, 2, 2]
        >>> step_orders({"solver_order": 3}, 6, begin_index=2).tolist()
        [1, 1, 1, 2, 2, 1]
    """
    order = int(read_option(config, "solver_order", 2))
    few = bool(read_option(config, "lower_order_final", True)) and num_steps < 15
    euler_last = (
        bool(read_option(config, "euler_at_final", False))
        or few
        or read_option(config, "final_sigmas_type", "zero") == "zero"
    )
    out = np.empty(num_steps, dtype=np.int64)
    for i in range(num_steps):
        done = min(max(i - begin_index, 0), order)  # diffusers' lower_order_nums
        if order == 1 or done < 1 or (i == num_steps - 1 and euler_last):
            out[i] = 1
        elif order == 2 or done < 2 or (i == num_steps - 2 and few):
            out[i] = 2
        else:
            out[i] = 3
    return out


def _step_coefficients(
    algorithm: str, heun: bool, order: int, sigmas: Tensor, i: int
) -> tuple[float, float, float, float, float]:
    """``(cx, c0, c01, c12, cz)`` of step i: float32 scalars as diffusers, combined in float64."""
    alpha_t, sigma_t = alpha_sigma(sigmas[i + 1])
    alpha_s, sigma_s = alpha_sigma(sigmas[i])
    lam_t, lam_s = lambda_of(alpha_t, sigma_t), lambda_of(alpha_s, sigma_s)
    h = lam_t - lam_s
    cx, c0, cz = base_coefficients(algorithm, alpha_t, sigma_t, alpha_s, sigma_s, h)
    if order == 1:
        return cx, c0, 0.0, 0.0, cz
    lambdas = [lam_s, *(lambda_at(sigmas[i - j]) for j in range(1, order))]
    c01, c12 = multistep_weights(algorithm, heun, order, h, alpha_t, sigma_t, lambdas)
    return cx, c0, c01, c12, cz


class DPMSolverRule(Restarting):
    """DPM-Solver(++) multistep on the grid of ``num_inference_steps`` steps.

    Supports ``algorithm_type`` in :data:`ALGORITHM_TYPES` (except order 3 with
    ``sde-dpmsolver``), ``solver_order`` 1–3, ``solver_type`` midpoint/heun,
    ``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``, the sigma schedules
    of :func:`solver_grid`, ``lambda_min_clipped``, the three prediction types,
    ``thresholding`` and ``variance_type`` learned/learned_range (epsilon prediction).
    Flow sigmas and dynamic shifting raise ``ValueError``.

    ``memory = solver_order - 1``: :meth:`update` reads the converted outputs of the steps
    before the window from ``history`` and stores the window's own (x_θ for the ``++``
    types, ε_θ otherwise). ``tol_scale[i]`` is the DDPM posterior std of step i + 1
    between its grid points, ``√((1-ᾱ')/(1-ᾱ) (1 - ᾱ/ᾱ'))`` with ᾱ = 1/(σ̃² + 1) of
    the grid's sigmas at i + 1 and i + 2 (ᾱ' = 1 for a zero final sigma) — in the VP
    latent's units — and 0 for the last state. The ``sde-`` types draw their noise at
    every step in float32 (``noise_dtype``), as diffusers does for any latent dtype.

    :meth:`tail` starts the rule mid-grid as diffusers' loop after ``set_begin_index``
    (img2img's ``strength``): the warm-up again from there (:class:`Restarting`).

    Args:
        config: a ``DPMSolverMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.
        begin_index: the step diffusers' loop begins at (``set_begin_index``): the orders
            warm up from there (the rule still covers the whole grid; :meth:`tail` cuts it).

    Attributes:
        orders: (N,) the order of each step's update (see :func:`step_orders`).
        sigmas: (N + 1,) the float32 σ̃ grid (see :func:`solver_grid`).
        coefficients: ``alpha``, ``sigma`` (α_s, σ_s of each step's state, to convert the
            model output) and the update weights ``cx``, ``c0``, ``c01``, ``c12``, ``cz``.

    Example:
        >>> rule = DPMSolverRule({"num_train_timesteps": 1000, "solver_order": 2}, 5)
        >>> rule.timesteps.tolist(), rule.memory
        ([999, 799, 599, 400, 200], 1)
    """

    signal_keys = ("alpha", "sigma")

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, *, begin_index: int = 0
    ):
        self.config = config = _with_defaults(config)
        self.num_inference_steps = num_inference_steps
        timesteps, sigmas = solver_grid(config, num_inference_steps)
        check_first_timestep(timesteps, num_inference_steps)
        self.algorithm_type: str = read_option(config, "algorithm_type", "dpmsolver++")
        self.prediction_type = schedules.prediction_type(config)
        self.solver_order = int(read_option(config, "solver_order", 2))
        self._threshold = threshold_options(config)
        n = len(timesteps)
        heun = read_option(config, "solver_type", "midpoint") == "heun"
        self.orders = step_orders(config, n, begin_index)
        sig = torch.from_numpy(sigmas)
        steps = np.array(
            [
                _step_coefficients(self.algorithm_type, heun, int(k), sig, i)
                for i, k in enumerate(self.orders)
            ],
            dtype=np.float64,
        ).reshape(n, 5)
        self.num_steps = n
        self.timesteps = torch.from_numpy(timesteps)
        self.sigmas = sig
        self.coefficients = {
            **vp_signal(sig, n),
            **{name: steps[:, j].copy() for j, name in enumerate(("cx", "c0", "c01", "c12", "cz"))},
        }
        self.noise_draws = np.full(n, self.algorithm_type.startswith("sde"))
        # diffusers draws the SDE noise in float32 whatever the latent's dtype
        self.noise_dtype = torch.float32 if self.noise_draws.any() else None
        self.memory = self.solver_order - 1
        self.output_channels = 1 if read_option(config, "variance_type") is None else 2
        self.tol_scale = posterior_tol_scale(sig)

    def restart(self, begin_index: int) -> DPMSolverRule:
        """The rule of steps ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> DPMSolverRule({"solver_order": 2}, 6).restart(3).orders.tolist()
            [1, 2, 1]
        """
        rule = DPMSolverRule(self.config, self.num_inference_steps, begin_index=begin_index)
        return rule.cut(begin_index)

    def convert(self, x: Tensor, out: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """The model outputs as the solver integrates them: x_θ (``++`` types) or ε_θ.

        Example:
            >>> import torch
            >>> rule = DPMSolverRule({"prediction_type": "sample"}, 3)
            >>> c = {"alpha": torch.ones(1, 1), "sigma": torch.ones(1, 1)}
            >>> rule.convert(torch.ones(1, 2), torch.zeros(1, 2), c).tolist()
            [[0.0, 0.0]]
        """
        if self.output_channels == 2:  # drop the predicted variance (diffusers: [:, :3])
            out = out[:, :, : x.shape[2]]
        alpha, sigma = c["alpha"], c["sigma"]
        ndim = x.ndim - 2
        if self.algorithm_type.endswith("++"):
            x0 = schedules.predict_x0(self.prediction_type, x, out, alpha, sigma)
            return schedules.clip_or_threshold(x0, self._threshold, ndim)
        eps = schedules.predict_eps(self.prediction_type, x, out, alpha, sigma)
        if self._threshold["thresholding"]:
            x0 = schedules.clip_or_threshold((x - sigma * eps) / alpha, self._threshold, ndim)
            eps = (x - alpha * x0) / sigma
        return eps

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One multistep update per step of the window, all steps at once.

        Returns the next states and the converted outputs ``(w, B, ...)`` to remember.

        Example:
            >>> import torch
            >>> rule = DPMSolverRule({"solver_order": 2}, 4)
            >>> c = {k: torch.as_tensor(v[:2]).float().reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> nxt, m = rule.update(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), c, None, None)
            >>> nxt.shape, m.shape
            (torch.Size([2, 1, 3]), torch.Size([2, 1, 3]))
        """
        m = self.convert(x, out, c)
        # diffusers casts the sample (not the model outputs) to float32 for the update, so
        # the state's term is a float32 product even in a float64 run
        nxt = (c["cx"].float() * x.float()).to(x.dtype) + c["c0"] * m
        if self.memory:
            w, k = x.shape[0], self.memory
            ext = extend_rows(m, history, k)  # ext[k + j] = output of window step j
            m1 = ext[k - 1 : k - 1 + w]
            nxt = nxt + c["c01"] * (m - m1)
            if k == 2:
                nxt = nxt + c["c12"] * (m1 - ext[:w])
        if noise is not None:  # a float32 product too: diffusers' noise is float32
            nxt = nxt + (c["cz"].float() * noise.float()).to(x.dtype)
        return nxt, m


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> DPMSolverRule:
    """The rule of a ``DPMSolverMultistepScheduler`` config (the sampler takes no step options).

    Example:
        >>> from_config({"solver_order": 3}, 10).orders.tolist()
        [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    """
    return DPMSolverRule(config, num_inference_steps)
