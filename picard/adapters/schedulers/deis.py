"""DEIS multistep (log-ρ AB), as diffusers' ``DEISMultistepScheduler`` steps it.

Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"
(ICLR; arXiv:2204.13902): the exponential integrator of the ε-form probability-flow ODE,
``d(x/α)/dρ = ε_θ(x, ρ)`` in ρ = σ/α, with the ε_θ of the last r steps extrapolated by
Lagrange polynomials in log ρ ("ρAB-DEIS", eq. 15 with the log-ρ basis) — diffusers'
``algorithm_type="deis"``, ``solver_type="logrho"``.

Symbols (diffusers -> paper):

- ``sigmas`` σ̃_i the VE grid (N + 1 values, the last the σ̃ of ᾱ_0, or a repeat of the
  last Karras/exponential/beta sigma); ``alpha_t`` α = 1/√(σ̃² + 1), ``sigma_t`` σ = σ̃ α.
- ``rho_t``, ``rho_s0``, ``rho_s1``, ``rho_s2``: ρ = σ/α at the target, the current and the
  two previous grid points (ρ_{i+1}, ρ_i, ρ_{i-1}, ρ_{i-2}).
- ``m0, m1, m2``: ε_θ at the current and two previous steps (``convert_model_output``
  forms x̂_0, thresholds it if asked, and returns ``(x − α x̂_0)/σ``).
- ``ind_fn``: ∫ of the log-ρ Lagrange basis polynomial, so ``coef_j`` = C_{ij} of eq. 15:
  ``x_{i+1} = α_{i+1} (x_i/α_i + Σ_j coef_j ε_{i−j})``. The first-order update is DDIM,
  ``x_{i+1} = (α_{i+1}/α_i) x_i − σ_{i+1} (e^h − 1) ε_i`` with h = λ_{i+1} − λ_i.
- Orders: warm-up (step i has at most order i + 1) and ``lower_order_final`` below 15
  steps (orders 1 and ≤ 2 for the last two steps), as DPM-Solver multistep.

Each step is ``x_{i+1} = cx x_i + k (x_i · inv_a + b0 m0 + b1 m1 + b2 m2)``: for the
first-order steps ``cx = α_{i+1}/α_i`` (a float32 quotient, as diffusers), ``k = 1``,
``inv_a = 0``; for the multistep ones ``cx = 0``, ``k = α_{i+1}``, ``inv_a = 1/α_i``. The
coefficients are computed with diffusers' own expressions on float32 0-d tensors (its
``np.log`` of a float32 tensor included) and combined in float64; diffusers' DEIS keeps
the latent's dtype (no float32 cast), so a float64 run is float64 throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.dpmsolver import step_orders
from picard.adapters.schedulers.multistep import (
    Restarting,
    alpha_sigma,
    check_first_timestep,
    check_order,
    check_vp,
    lambda_of,
    posterior_tol_scale,
    sigma_schedule,
    solver_options,
    threshold_options,
    vp_signal,
)
from picard.problem import extend_rows

__all__ = ["DEFAULTS", "DEISRule", "deis_grid", "from_config"]

DEFAULTS: dict[str, Any] = {
    **schedules.BETA_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    **schedules.THRESHOLD_DEFAULTS,
    "algorithm_type": "deis",
    "solver_type": "logrho",
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}
"""``DEISMultistepScheduler``'s options and defaults (other keys are ignored, as by diffusers)."""

# What diffusers' constructor silently maps to DEIS.
_ALGORITHM_ALIASES = dict.fromkeys(("dpmsolver", "dpmsolver++"), "deis")
_SOLVER_ALIASES = dict.fromkeys(("midpoint", "heun", "bh1", "bh2"), "logrho")


def _full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduler's own options (others dropped), defaults filled, aliases resolved."""
    full = solver_options(config, DEFAULTS, _ALGORITHM_ALIASES, _SOLVER_ALIASES)
    _check_config(full)
    return full


def _check_config(config: Mapping[str, Any]) -> None:
    """Refuse what the rule does not reproduce, naming the option."""
    if config["algorithm_type"] != "deis":
        raise ValueError(f"algorithm_type must be 'deis', got {config['algorithm_type']!r}")
    if config["solver_type"] != "logrho":
        raise ValueError(f"solver_type must be 'logrho', got {config['solver_type']!r}")
    check_order(config["solver_order"])
    check_vp(config, "DEIS")
    sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    schedules.prediction_type(config)


def deis_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The timesteps and sigmas of ``DEISMultistepScheduler.set_timesteps``.

    ``timestep_spacing`` (+ ``steps_offset``) as DPM-Solver multistep; the final sigma is
    σ̃ of ᾱ_0, except with Karras (timesteps rounded), exponential or beta sigmas
    (timesteps truncated), which repeat their last sigma.

    Args:
        config: a ``DEISMultistepScheduler`` configuration (mapping).
        num_inference_steps: N, in ``[1, num_train_timesteps]``.

    Returns:
        ``(timesteps, sigmas)``: int64 ``(M,)`` and float32 ``(M + 1,)``, descending (M = N,
        or diffusers' count where trailing spacing rounds to one more).

    Raises:
        ValueError: for an out-of-range N or an option the rule does not reproduce.

    Example:
        >>> t, s = deis_grid({"use_karras_sigmas": True}, 4)
        >>> t.tolist(), bool(s[-1] == s[-2])
        ([999, 775, 301, 0], True)
    """
    config = _full_config(config)
    n = schedules.check_steps(num_inference_steps, upper=int(config["num_train_timesteps"]))
    timesteps = schedules.solver_timesteps(config, n)
    train = schedules.train_sigmas(schedules.alphas_cumprod(config))
    lo, hi = train[0].item(), train[-1].item()
    kind = sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    if kind is None:
        sigmas = schedules.interp_sigmas(timesteps, train)
        sigmas = np.concatenate([sigmas, [lo]]).astype(np.float32)
        return timesteps.astype(np.int64), sigmas
    sigmas = schedules.convert_sigmas(kind, lo, hi, n, log=np.log)
    timesteps = schedules.sigmas_to_timesteps(sigmas, np.log(train))
    if kind == "use_karras_sigmas":
        timesteps = timesteps.round()
    sigmas = np.concatenate([sigmas, sigmas[-1:]]).astype(np.float32)
    return timesteps.astype(np.int64), sigmas


def _log(x: Tensor) -> Tensor:
    """``np.log`` of a float32 0-d tensor, as diffusers' ``ind_fn`` takes it (numpy's log)."""
    return torch.from_numpy(np.asarray(np.log(x.numpy())))


def _ind2(t: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The second-order ``ind_fn``: the integral of the log-ρ Lagrange basis."""
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _ind3(t: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """The third-order ``ind_fn`` of diffusers."""
    lt, lc, ld = _log(t), _log(c), _log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((_log(b) - lc) * (_log(b) - ld))


def _step_coefficients(order: int, sigmas: Tensor, i: int) -> tuple[float, ...]:
    """``(cx, k, inv_a, b0, b1, b2)`` of step i (float32 scalars as diffusers, in float64)."""
    alpha_t, sigma_t = alpha_sigma(sigmas[i + 1])
    alpha_s, sigma_s = alpha_sigma(sigmas[i])
    if order == 1:
        h = lambda_of(alpha_t, sigma_t) - lambda_of(alpha_s, sigma_s)
        c0 = -(sigma_t * (torch.exp(h) - 1.0))
        return float(alpha_t / alpha_s), 1.0, 0.0, float(c0), 0.0, 0.0
    rho = [
        s / a for a, s in (alpha_sigma(sigmas[j]) for j in (i + 1, i, i - 1, i - 2)[: order + 1])
    ]
    inv_a = 1.0 / float(alpha_s)
    if order == 2:
        t, s0, s1 = rho
        b0 = _ind2(t, s0, s1) - _ind2(s0, s0, s1)
        b1 = _ind2(t, s1, s0) - _ind2(s0, s1, s0)
        return 0.0, float(alpha_t), inv_a, float(b0), float(b1), 0.0
    t, s0, s1, s2 = rho
    b0 = _ind3(t, s0, s1, s2) - _ind3(s0, s0, s1, s2)
    b1 = _ind3(t, s1, s2, s0) - _ind3(s0, s1, s2, s0)
    b2 = _ind3(t, s2, s0, s1) - _ind3(s0, s2, s0, s1)
    return 0.0, float(alpha_t), inv_a, float(b0), float(b1), float(b2)


class DEISRule(Restarting):
    """DEIS (log-ρ multistep, orders 1–3) on the grid of ``num_inference_steps`` steps.

    Supports ``solver_order`` 1–3, ``lower_order_final``, ``timestep_spacing`` (+
    ``steps_offset``), Karras/exponential/beta sigmas, the three prediction types and
    ``thresholding``. ``algorithm_type`` dpmsolver/dpmsolver++ and ``solver_type``
    midpoint/heun/bh1/bh2 are read as deis/logrho, as diffusers' constructor maps them.
    Flow sigmas and dynamic shifting raise ``ValueError``.

    ``memory = solver_order - 1``: the ε_θ of earlier steps. ``tol_scale[i]`` is the DDPM
    posterior std between the grid's sigmas at i + 1 and i + 2 (VP units), 0 for the last.
    :meth:`tail` warms up again where the loop begins (:class:`Restarting`).

    Args:
        config: a ``DEISMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.
        begin_index: the step diffusers' loop begins at (``set_begin_index``): the orders
            warm up from there (the rule still covers the whole grid; :meth:`tail` cuts it).

    Attributes:
        orders: (N,) the order of each step's update.
        sigmas: (N + 1,) the float32 σ̃ grid (see :func:`deis_grid`).
        coefficients: ``alpha``, ``sigma`` (of each step's state) and the update weights
            ``cx``, ``k``, ``inv_a``, ``b0``, ``b1``, ``b2``.

    Example:
        >>> rule = DEISRule({"solver_order": 3}, 6)
        >>> rule.timesteps.tolist(), rule.orders.tolist(), rule.memory
        ([999, 832, 666, 500, 333, 166], [1, 2, 3, 3, 2, 1], 2)
    """

    signal_keys = ("alpha", "sigma")

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, *, begin_index: int = 0
    ):
        self.config = config = _full_config(config)
        self.num_inference_steps = num_inference_steps
        timesteps, sigmas = deis_grid(config, num_inference_steps)
        check_first_timestep(timesteps, num_inference_steps)
        n = len(timesteps)
        self.prediction_type = schedules.prediction_type(config)
        self.solver_order = int(config["solver_order"])
        self._threshold = threshold_options(config)
        self.orders = step_orders(
            {
                "solver_order": self.solver_order,
                "lower_order_final": config["lower_order_final"],
                "final_sigmas_type": "sigma_min",  # no zero final sigma, no euler_at_final
            },
            n,
            begin_index,
        )
        sig = torch.from_numpy(sigmas)
        names = ("cx", "k", "inv_a", "b0", "b1", "b2")
        weights = np.array(
            [_step_coefficients(int(k), sig, i) for i, k in enumerate(self.orders)],
            dtype=np.float64,
        ).reshape(n, len(names))
        self.num_steps = n
        self.timesteps = torch.from_numpy(timesteps)
        self.sigmas = sig
        self.coefficients = {
            **vp_signal(sig, n),
            **{name: weights[:, j].copy() for j, name in enumerate(names)},
        }
        self.noise_draws = np.zeros(n, dtype=bool)
        self.memory = self.solver_order - 1
        self.tol_scale = posterior_tol_scale(sig)

    def restart(self, begin_index: int) -> DEISRule:
        """The rule of steps ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> DEISRule({"solver_order": 3}, 8).restart(3).orders.tolist()
            [1, 2, 3, 2, 1]
        """
        rule = DEISRule(self.config, self.num_inference_steps, begin_index=begin_index)
        return rule.cut(begin_index)

    def convert(self, x: Tensor, out: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """ε_θ as diffusers forms it: x̂_0 (thresholded if asked), then ``(x − α x̂_0)/σ``.

        Example:
            >>> import torch
            >>> rule = DEISRule({"prediction_type": "sample"}, 3)
            >>> c = {"alpha": torch.ones(1, 1), "sigma": torch.ones(1, 1)}
            >>> rule.convert(torch.ones(1, 2), torch.zeros(1, 2), c).tolist()
            [[1.0, 1.0]]
        """
        alpha, sigma = c["alpha"], c["sigma"]
        x0 = schedules.predict_x0(self.prediction_type, x, out, alpha, sigma)
        x0 = schedules.clip_or_threshold(x0, self._threshold, x.ndim - 2)
        return (x - alpha * x0) / sigma

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One DEIS update per step of the window, all steps at once.

        Returns the next states and the ε_θ ``(w, B, ...)`` to remember.

        Example:
            >>> import torch
            >>> rule = DEISRule({"solver_order": 2}, 4)
            >>> c = {k: torch.as_tensor(v[:2]).reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> nxt, m = rule.update(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), c, None, None)
            >>> nxt.shape, m.shape
            (torch.Size([2, 1, 3]), torch.Size([2, 1, 3]))
        """
        m = self.convert(x, out, c)
        inner = x * c["inv_a"] + c["b0"] * m
        if self.memory:
            w, k = x.shape[0], self.memory
            ext = extend_rows(m, history, k)  # ext[k + j]: window step j
            inner = inner + c["b1"] * ext[k - 1 : k - 1 + w]
            if k == 2:
                inner = inner + c["b2"] * ext[:w]
        return c["cx"] * x + c["k"] * inner, m


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> DEISRule:
    """The rule of a ``DEISMultistepScheduler`` config (``step`` takes no options).

    Args:
        config: a ``DEISMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        The :class:`DEISRule` on N steps.

    Example:
        >>> from_config({"solver_order": 3}, 20).orders.tolist()[:4]
        [1, 2, 3, 3]
    """
    return DEISRule(config, num_inference_steps)
