"""What the multistep solvers share: options, checks, α/σ of the grid, DPM-Solver's weights.

DPM-Solver (multistep and single-step), DEIS, EDM DPM-Solver, UniPC and SA-Solver read
their configs, refuse what they do not reproduce, turn the VE grid σ̃ into the VP pair
``α = 1/√(σ̃² + 1)``, ``σ = σ̃ α`` (flow sigmas: ``α = 1 − σ̃``, ``σ = σ̃``) and
``λ = log α − log σ``, and extend a window's converted outputs by those remembered from
earlier steps, all alike; the helpers here do it once. The DPM-Solver weights (the D0,
D1 and D2 terms of Lu et al. 2022a/b) are computed as diffusers computes them: in
float32, on 0-d tensors, one step at a time. The names here are the rule modules' shared
helpers, not picard's API (``__all__`` is empty). :class:`Restarting` is how they start
mid-grid (img2img's ``strength``): as diffusers' loop set by ``set_begin_index`` does.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.config import read_option
from picard.adapters.schedulers.flow import flow_tol_scale
from picard.problem import extend_rows

__all__: list[str] = []

# What diffusers' DPM-Solver constructors (single-step, EDM) silently map to a supported value.
DPM_ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
DPM_SOLVER_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


def solver_options(
    config: Mapping[str, Any],
    defaults: Mapping[str, Any],
    algorithms: Mapping[str, str] | None = None,
    solvers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The scheduler's own options (others dropped), defaults filled, aliases resolved.

    ``algorithms``/``solvers`` map the ``algorithm_type``/``solver_type`` values that
    diffusers' constructor silently replaces to their replacement.
    """
    full = {key: read_option(config, key, default) for key, default in defaults.items()}
    for key, aliases in (("algorithm_type", algorithms), ("solver_type", solvers)):
        if aliases:
            full[key] = aliases.get(full[key], full[key])
    return full


def threshold_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The thresholding options of the config (for :func:`schedules.clip_or_threshold`)."""
    return {
        key: read_option(config, key, default)
        for key, default in schedules.THRESHOLD_DEFAULTS.items()
    }


def check_solver_type(solver_type: Any) -> None:
    """Refuse a ``solver_type`` other than midpoint or heun."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")


def check_order(order: Any) -> None:
    """Refuse a ``solver_order`` other than 1, 2 or 3."""
    if order not in (1, 2, 3):
        raise ValueError(f"solver_order must be 1, 2 or 3, got {order!r}")


def check_final(final: Any) -> None:
    """Refuse a ``final_sigmas_type`` other than zero or sigma_min."""
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {final!r}")


def check_vp(config: Mapping[str, Any], name: str, sigmas: str = "Karras, exponential or beta"):
    """Refuse flow sigmas and dynamic shifting: the VP solvers reproduce beta schedules."""
    for key in ("use_flow_sigmas", "use_dynamic_shifting"):
        if read_option(config, key, False):
            raise ValueError(
                f"{key}=True is not supported for {name}; picard reproduces the VP schedules "
                f"(beta schedules, optionally with {sigmas} sigmas)"
            )


def sigma_schedule(config: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """Which of the sigma schedules ``keys`` the config sets (at most one)."""
    chosen = [key for key in keys if read_option(config, key, False)]
    if len(chosen) > 1:
        raise ValueError(f"only one of {', '.join(keys)} may be set, got {chosen}")
    return chosen[0] if chosen else None


def check_variance(config: Mapping[str, Any]) -> None:
    """A learned variance (diffusers drops its channels) with epsilon prediction only."""
    variance = read_option(config, "variance_type")
    if variance not in (None, "learned", "learned_range"):
        raise ValueError(
            f"variance_type must be None, 'learned' or 'learned_range', got {variance!r}"
        )
    kind = schedules.prediction_type(config)
    if variance is not None and kind != "epsilon":
        raise ValueError(
            f"variance_type={variance!r} is supported with prediction_type='epsilon' only "
            f"(diffusers drops the variance channels for epsilon only), got {kind!r}"
        )


def check_first_timestep(timesteps: np.ndarray, n: int, other: str = "spacing") -> None:
    """Refuse a grid that repeats its first timestep: diffusers would start at the repeat."""
    if np.count_nonzero(timesteps == timesteps[0]) > 1:
        raise ValueError(
            f"the timestep grid repeats its first timestep {timesteps[0]} "
            f"(num_inference_steps={n}): diffusers' step would start "
            f"at the repeat and run past the grid; use fewer steps or another {other}"
        )


def alpha_sigma(sigma: Tensor, flow: bool = False) -> tuple[Tensor, Tensor]:
    """The ``_sigma_to_alpha_sigma_t`` of diffusers, on one 0-d float32 σ̃."""
    if flow:
        return 1 - sigma, sigma
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


def lambda_of(alpha: Tensor, sigma: Tensor) -> Tensor:
    """λ = log α − log σ."""
    return torch.log(alpha) - torch.log(sigma)


def lambda_at(sigma: Tensor, flow: bool = False) -> Tensor:
    """λ of the grid point σ̃."""
    return lambda_of(*alpha_sigma(sigma, flow))


def vp_signal(sigmas: Tensor, n: int) -> dict[str, np.ndarray]:
    """``alpha`` and ``sigma`` of the first n grid points (float32 values, as float64)."""
    alpha, sigma = zip(*(alpha_sigma(sigmas[i]) for i in range(n)), strict=True)
    return {
        "alpha": np.array([float(a) for a in alpha]),
        "sigma": np.array([float(s) for s in sigma]),
    }


def posterior_tol_scale(sigmas: Tensor, flow: bool = False) -> np.ndarray:
    """The noise std of each step's next state, 0 for the last (N + 1 sigmas, N states).

    The DDPM posterior std between the grid's sigmas at i + 1 and i + 2 in VP units (flow
    sigmas: the flow latent's ancestral std).
    """
    if flow:
        s = sigmas.double().numpy()
        std = flow_tol_scale(s[1:-1], s[2:])
    else:
        ab = 1 / (sigmas.double() ** 2 + 1)
        std = schedules.posterior_std(ab[1:-1], ab[2:]).numpy()
    return np.append(std, 0.0)


def base_coefficients(
    algorithm: str, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor, h: Tensor
) -> tuple[float, float, float]:
    """``(cx, c0, cz)``: the first-order weights of x_s, D0 and z, shared by every order."""
    if algorithm == "dpmsolver++":
        return float(sigma_t / sigma_s), float(-(alpha_t * (torch.exp(-h) - 1.0))), 0.0
    if algorithm == "sde-dpmsolver++":
        return (
            float(sigma_t / sigma_s * torch.exp(-h)),
            float(alpha_t * (1 - torch.exp(-2.0 * h))),
            float(sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))),
        )
    c0 = -(sigma_t * (torch.exp(h) - 1.0))
    if algorithm == "dpmsolver":
        return float(alpha_t / alpha_s), float(c0), 0.0
    return (  # sde-dpmsolver
        float(alpha_t / alpha_s),
        float(2.0 * c0),
        float(sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0)),
    )


def second_order_d1(
    algorithm: str, heun: bool, h: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> Tensor:
    """The weight of D1 in the second-order update."""
    if algorithm == "dpmsolver++":
        if heun:
            return alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
        return -(0.5 * (alpha_t * (torch.exp(-h) - 1.0)))
    if algorithm == "sde-dpmsolver++":
        if heun:
            return alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
        return 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h)))
    if algorithm == "dpmsolver":
        if heun:
            return -(sigma_t * ((torch.exp(h) - 1.0) / h - 1.0))
        return -(0.5 * (sigma_t * (torch.exp(h) - 1.0)))
    if heun:  # sde-dpmsolver
        return -(2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)))
    return -(sigma_t * (torch.exp(h) - 1.0))


def third_order_d1_d2(
    algorithm: str, h: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> tuple[Tensor, Tensor]:
    """The weights of D1 and D2 in the third-order update."""
    if algorithm == "dpmsolver++":
        return (
            alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0),
            -(alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)),
        )
    if algorithm == "sde-dpmsolver++":
        return (
            alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0),
            alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5),
        )
    return (  # dpmsolver
        -(sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)),
        -(sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)),
    )


def multistep_weights(
    algorithm: str,
    heun: bool,
    order: int,
    h: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    lambdas: tuple[Tensor, ...],
) -> tuple[float, float]:
    """``(c01, c12)``: the weights of ``m0 − m1`` and ``m1 − m2`` of a multistep update.

    ``lambdas`` are λ at the current step and the one (order 2) or two (order 3) before.
    """
    lam_s, lam_1 = lambdas[:2]
    r0 = (lam_s - lam_1) / h
    inv_r0 = float(1.0 / r0)
    if order == 2:
        return float(second_order_d1(algorithm, heun, h, alpha_t, sigma_t)) * inv_r0, 0.0
    r1 = (lam_1 - lambdas[2]) / h
    inv_r1 = float(1.0 / r1)
    q, p = float(r0 / (r0 + r1)), float(1.0 / (r0 + r1))
    d1, d2 = (float(k) for k in third_order_d1_d2(algorithm, h, alpha_t, sigma_t))
    return (d1 * (1 + q) + d2 * p) * inv_r0, -(d1 * q + d2 * p) * inv_r1


class Restarting(UpdateRule):
    """A rule with memory whose loop restarts where a scheduler set to begin mid-grid begins.

    diffusers' img2img, inpainting and SDXL pipelines call ``set_begin_index(begin)`` and
    step through ``timesteps[begin:]``: a multistep scheduler starts that loop with an
    empty history, so its warm-up (the lower orders while few earlier outputs exist) counts
    from ``begin``, while the choices that read the position in the whole grid (the
    lower-order final steps) still read it there. :meth:`tail` rebuilds the rule as that
    loop runs it (:meth:`restart`) instead of slicing it.

    Attributes:
        first_step: the step of diffusers' whole grid that this rule's step 0 is (0, or
            where :meth:`tail` started it).
        per_step: the names of the per-step attributes (besides the coefficients) that
            :meth:`cut` slices with them.
    """

    first_step: int = 0
    per_step: tuple[str, ...] = ("orders",)  # per-step arrays besides the coefficients

    def tail(self, begin: int) -> UpdateRule:
        """The rule of steps ``begin …``, as the loop of a scheduler set to begin there runs them.

        Args:
            begin: the first step kept (of this rule's steps).

        Returns:
            The rebuilt rule of the last ``num_steps - begin`` steps (this rule's last
            step kept: a head stays a head).

        Example:
            >>> from picard.adapters.schedulers.dpmsolver import DPMSolverRule
            >>> rule = DPMSolverRule({"solver_order": 3}, 10)
            >>> rule.orders.tolist()
            [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
            >>> tail = rule.tail(4)  # the warm-up again, from step 4
            >>> tail.first_step, tail.orders.tolist(), tail.timesteps.tolist()[:2]
            (4, [1, 2, 3, 3, 2, 1], [599, 500])
        """
        if not 0 < begin < self.num_steps:
            return super().tail(begin)  # begin 0: the rule itself; else the range error
        return self.restart(self.first_step + begin).head(self.num_steps - begin)

    @abstractmethod
    def restart(self, begin_index: int) -> UpdateRule:
        """The rule of the grid's steps ``begin_index …``, as diffusers' loop runs them.

        That is, after ``set_begin_index(begin_index)``; its ``first_step`` is ``begin_index``.
        """

    def cut(self, begin_index: int) -> UpdateRule:
        """This rule, built for a loop that begins at ``begin_index``, cut to start there.

        Args:
            begin_index: the step the loop begins at (the rule's warm-up counts from it).

        Returns:
            The rule of steps ``begin_index …`` (``first_step = begin_index``).
        """
        rule = UpdateRule.tail(self, begin_index)
        assert isinstance(rule, Restarting)
        rule.first_step = begin_index
        for name in self.per_step:
            setattr(rule, name, getattr(self, name)[begin_index:])
        return rule


class PredictorCorrector(Restarting):
    """UniPC and SA-Solver: a predictor and a corrector over converted outputs.

    The state is the uncorrected sample the model sees at each entry; the memory holds
    the last converted outputs m (x_θ for data prediction, ε_θ for noise prediction).
    """

    flow: bool
    predict_x0: bool
    memory: int

    def _setup(
        self, config: Mapping[str, Any], timesteps: np.ndarray, grid: np.ndarray, predict_x0: bool
    ) -> None:
        """The grid and the conversion options."""
        self.num_steps = len(timesteps)
        self.timesteps = torch.from_numpy(timesteps)
        self.sigmas = torch.from_numpy(grid)
        self.flow = bool(config["use_flow_sigmas"])
        self.predict_x0 = predict_x0
        self.prediction_type = config["prediction_type"]
        self.signal_keys = None if self.prediction_type == "flow_prediction" else ("alpha", "sigma")
        self._threshold = threshold_options(config)

    def _signal_at(self, co: dict[str, np.ndarray], i: int) -> None:
        """Entry i's ``alpha``, ``sigma`` and ``sigma_raw`` (σ̃, for ``flow_prediction``)."""
        alpha, sigma = alpha_sigma(self.sigmas[i], self.flow)
        co["alpha"][i], co["sigma"][i] = float(alpha), float(sigma)
        co["sigma_raw"][i] = float(self.sigmas[i])

    def _checked(
        self, co: dict[str, np.ndarray], bad: np.ndarray, message: Callable[[int], str]
    ) -> dict[str, np.ndarray]:
        """Refuse non-finite coefficients (diffusers' sample is NaN/Inf there).

        ``bad`` flags entries already known to be non-finite; ``sigma_raw`` is dropped
        unless the model predicts the flow.
        """
        for v in co.values():
            bad |= ~np.isfinite(v)
        if bad.any():
            raise ValueError(message(int(bad.argmax())))
        if self.prediction_type != "flow_prediction":
            del co["sigma_raw"]
        return co

    def convert(self, x: Tensor, out: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """The model outputs as the solver integrates them: x_θ (data prediction) or ε_θ.

        diffusers thresholds x_θ only.

        Example:
            >>> import torch
            >>> from picard.adapters.schedulers.unipc import UniPCRule
            >>> rule = UniPCRule({"prediction_type": "sample"}, 3)
            >>> c = {"alpha": torch.ones(1, 1), "sigma": torch.ones(1, 1)}
            >>> rule.convert(torch.ones(1, 2), torch.zeros(1, 2), c).tolist()
            [[0.0, 0.0]]
        """
        alpha, sigma = c["alpha"], c["sigma"]
        if not self.predict_x0:
            return schedules.predict_eps(self.prediction_type, x, out, alpha, sigma)
        if self.prediction_type == "flow_prediction":
            x0 = x - c["sigma_raw"] * out
        else:
            x0 = schedules.predict_x0(self.prediction_type, x, out, alpha, sigma)
        return schedules.clip_or_threshold(x0, self._threshold, x.ndim - 2)

    def _lags(self, m: Tensor, history: Tensor | None) -> Callable[[int], Tensor]:
        """``lag(d)``: m_{i−d} for every row i of the window (remembered rows before it)."""
        w, k = m.shape[0], self.memory
        ext = extend_rows(m, history, k)  # ext[k + j]: the output of window row j
        return lambda d: ext[k - d : k - d + w]
