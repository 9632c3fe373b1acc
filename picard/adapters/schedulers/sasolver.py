"""SA-Solver, as diffusers' ``SASolverScheduler`` steps it.

SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of
Diffusion Models", §4) integrates the diffusion SDE with stochasticity τ(t) in
λ = log(α/σ) by a stochastic Adams–Bashforth predictor (SA-Predictor) and an
Adams–Moulton corrector (SA-Corrector) that reuses the model output at the predicted
point. Symbols (paper) and diffusers' names:

- ``sigmas`` σ̃_i: the grid's VE noise levels (N + 1 values; the last is σ̃ of ᾱ_0, or a
  repeat of the grid's last value for Karras, exponential, beta and flow sigmas);
  ``alpha_t`` α_t = 1/√(σ̃² + 1), ``sigma_t`` σ_t = σ̃ α_t (flow: α_t = 1 − σ̃, σ_t = σ̃).
- ``lambda_t`` λ_t = log α_t − log σ_t; ``h`` = λ_{i+1} − λ_i; ``tau`` τ_i =
  ``tau_func(t_i)`` (default 1 for 200 ≤ t ≤ 800, else 0).
- ``lagrange_polynomial_coefficient``: the Lagrange basis ℓ_j(λ) through the nodes
  ``lambda_list`` (λ_i, λ_{i−1}, … for the predictor from i; λ_{i+1}, λ_i, … for the
  corrector of i + 1); ``get_coefficients_exponential_positive/negative``: the integrals
  ∫ e^{(1+τ²)λ} λ^k dλ (data prediction) or ∫ e^{−λ} λ^k dλ (noise prediction) over the
  step; ``gradient_coefficients`` b_j = Σ_k ℓ_{j,k} ∫ … λ^k (the Adams weights of §4), with
  diffusers' O(h³) modification at order 2 (data prediction).
- SA-Predictor (data prediction): ``x_{i+1} = e^{−τ²h} (σ_{i+1}/σ_i) x^c_i +
  (1 + τ²) σ_{i+1} e^{−τ² λ_{i+1}} Σ_j b_j m_{i−j} + σ_{i+1} √(1 − e^{−2τ²h}) z_i``,
  m the converted outputs x_θ; noise prediction: ``(α_{i+1}/α_i) x^c_i −
  (1 + τ²) α_{i+1} Σ_j b_j ε_{i−j} + τ σ_{i+1} √(e^{2h} − 1) z_i``.
- SA-Corrector: the same step with the corrector's b^c over m_{i+1}, m_i, … and the
  *same* z_i, giving x^c_{i+1}.

diffusers' ``step`` at entry i converts the output at the uncorrected sample x_i, corrects
it (i > 0), draws z_i (every entry, even where τ = 0) and predicts: one model call per
entry, one noise draw per entry in the sequential order. Predictor and corrector share
x^c_{i−1}, the linear factor and the noise term, so the correction is a combination of
model outputs: ``x^c_i = x_i + Σ_l d_l m_{i−l}`` (``d_l`` = the corrector's weight of
m_{i−l} minus the predictor's from i − 1). Hence the recursion on the uncorrected states
``x_{i+1} = cx (x_i + Σ_l d_l m_{i−l}) + Σ_l p_l m_{i−l} + cz z_i``, whose memory holds
the last converted outputs. The scalars are computed in float32 one step at a time on 0-d
tensors as diffusers computes them, and combined in float64; the noise is drawn in the
model output's (the latent's) dtype, and the step keeps the sample's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.multistep import (
    PredictorCorrector,
    alpha_sigma,
    check_first_timestep,
    lambda_at,
    posterior_tol_scale,
    sigma_schedule,
)
from picard.adapters.schedulers.sigma_rules import convert_config_sigmas

__all__ = [
    "ALGORITHM_TYPES",
    "SASOLVER_DEFAULTS",
    "SASolverRule",
    "default_tau",
    "from_config",
    "sasolver_grid",
    "step_orders",
]

SASOLVER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "predictor_order": 2,
    "corrector_order": 2,
    "prediction_type": "epsilon",
    "tau_func": None,
    **schedules.THRESHOLD_DEFAULTS,
    "algorithm_type": "data_prediction",
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "lambda_min_clipped": -math.inf,
    "variance_type": None,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}
"""The defaults of diffusers' ``SASolverScheduler`` (a plain mapping falls back to them)."""

ALGORITHM_TYPES = ("data_prediction", "noise_prediction")
"""What SA-Solver integrates: x_θ (``data_prediction``) or ε_θ."""

_PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")


def default_tau(t: Any) -> int:
    """The default stochasticity of diffusers: τ = 1 for 200 ≤ t ≤ 800, else 0 (an ODE step).

    Args:
        t: a timestep.

    Returns:
        τ at ``t``.

    Example:
        >>> [default_tau(t) for t in (999, 800, 500, 199)]
        [0, 1, 1, 0]
    """
    return 1 if t >= 200 and t <= 800 else 0


def _full(config: Mapping[str, Any]) -> dict[str, Any]:
    return {**SASOLVER_DEFAULTS, **dict(config)}


def _check_order(config: Mapping[str, Any], key: str) -> None:
    order = config[key]
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 1 <= order <= 4:
        raise ValueError(f"{key} must be 1, 2, 3 or 4 (as diffusers), got {order!r}")


def _check_config(config: Mapping[str, Any]) -> None:
    """Refuse what the rule does not reproduce (or where diffusers' step fails)."""
    _check_order(config, "predictor_order")
    _check_order(config, "corrector_order")
    algorithm = config["algorithm_type"]
    if algorithm not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {algorithm!r}")
    kind = config["prediction_type"]
    if kind not in _PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {_PREDICTIONS}, got {kind!r}")
    noise = algorithm == "noise_prediction"
    if noise and kind == "flow_prediction":
        raise ValueError(
            "prediction_type='flow_prediction' needs algorithm_type='data_prediction' "
            "(diffusers' step raises for the noise-prediction form)"
        )
    if noise and config["thresholding"]:
        raise ValueError(
            "thresholding=True with algorithm_type='noise_prediction' is not supported: "
            "diffusers indexes its ᾱ table with a missing timestep there and its step fails"
        )
    if config["variance_type"] is not None:
        raise ValueError(
            f"variance_type={config['variance_type']!r} is not supported: diffusers draws the "
            "SA-Solver noise with the model output's (doubled) channels and its step fails"
        )
    if not callable(config["tau_func"]) and config["tau_func"] is not None:
        raise ValueError(f"tau_func must be callable or None, got {config['tau_func']!r}")
    kind = sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    if kind and config["use_flow_sigmas"]:
        raise ValueError(
            f"{kind}=True with use_flow_sigmas=True: diffusers builds VE sigmas above 1, "
            "so α = 1 − σ < 0 and λ = log α is NaN"
        )


def sasolver_grid(
    config: Mapping[str, Any], num_inference_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """SA-Solver's timesteps and sigmas, as ``SASolverScheduler.set_timesteps``.

    Handles ``timestep_spacing`` (+ ``steps_offset``), ``lambda_min_clipped`` and the
    Karras, exponential, beta and flow (``flow_shift``) sigma schedules.

    Args:
        config: a ``SASolverScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas)``: int64 ``(N,)`` and float32 ``(N + 1,)``.

    Example:
        >>> t, s = sasolver_grid({}, 4)
        >>> t.tolist(), round(s[-1].item(), 5)
        ([999, 749, 500, 250], 0.01)
    """
    config = _full(config)
    _check_config(config)
    total = int(config["num_train_timesteps"])
    n = schedules.check_steps(num_inference_steps, upper=total)
    ab = schedules.alphas_cumprod(config)
    last = total - schedules.lambda_clipped(ab, config["lambda_min_clipped"])
    timesteps: np.ndarray = schedules.solver_timesteps(config, n, last)
    train = schedules.train_sigmas(ab)
    kind = sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    if kind is not None:
        sig = convert_config_sigmas(kind, np.flip(train).copy(), n, config)
        timesteps = schedules.sigmas_to_timesteps(sig, np.log(train))
        if kind == "use_karras_sigmas":
            timesteps = timesteps.round()
        out = np.concatenate([sig, sig[-1:]])
    elif config["use_flow_sigmas"]:
        shift = config["flow_shift"]
        s = 1.0 - np.linspace(1, 1 / total, n + 1)
        sig = np.flip(shift * s / (1 + (shift - 1) * s))[:-1].copy()
        timesteps = sig * total
        out = np.concatenate([sig, sig[-1:]])
    else:
        sig = schedules.interp_sigmas(timesteps, train)
        out = np.concatenate([sig, [train[0]]])
    return np.asarray(timesteps).astype(np.int64), out.astype(np.float32)


def step_orders(
    config: Mapping[str, Any], num_steps: int, begin_index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The orders of diffusers' SA-Predictor at each entry, and of the next corrector.

    Warm-up: entry i has predictor order ≤ i + 1 and sets the corrector order ≤ i + 2 of
    entry i + 1 (counted from ``begin_index`` when the loop begins there:
    ``set_begin_index``); ``lower_order_final`` caps them at N − i and N − i + 1.

    Args:
        config: a ``SASolverScheduler`` configuration (``predictor_order``,
            ``corrector_order``, ``lower_order_final``).
        num_steps: N.
        begin_index: the entry the loop begins at (those before it, never run, get the
            first entry's orders).

    Returns:
        ``(predictor, corrector)``: int64 ``(N,)`` each; ``corrector[i]`` is the order of
        the corrector that entry i + 1 applies (the last is never used).

    Example:
        >>> p, c = step_orders({"predictor_order": 3, "corrector_order": 4}, 6)
        >>> p.tolist(), c.tolist()
        ([1, 2, 3, 3, 2, 1], [2, 3, 4, 4, 3, 2])
        >>> p, c = step_orders({"predictor_order": 3, "corrector_order": 4}, 6, begin_index=3)
        >>> p.tolist(), c.tolist()
        ([1, 1, 1, 1, 2, 1], [2, 2, 2, 2, 3, 2])
    """
    config = _full(config)
    pred, corr = int(config["predictor_order"]), int(config["corrector_order"])
    i = np.arange(num_steps)
    done = np.minimum(np.maximum(i - begin_index, 0), max(pred, corr - 1))  # lower_order_nums
    if config["lower_order_final"]:
        cap_p, cap_c = np.minimum(pred, num_steps - i), np.minimum(corr, num_steps - i + 1)
    else:
        cap_p, cap_c = np.full(num_steps, pred), np.full(num_steps, corr)
    return np.minimum(cap_p, done + 1), np.minimum(cap_c, done + 2)


def _exp_negative(k: int, start: Tensor, end: Tensor) -> Tensor:
    """∫_start^end e^{−λ} λ^k dλ, as diffusers writes it."""
    grow = torch.exp(end - start)
    if k == 0:
        return torch.exp(-end) * (grow - 1)
    if k == 1:
        return torch.exp(-end) * ((start + 1) * grow - (end + 1))
    if k == 2:
        return torch.exp(-end) * ((start**2 + 2 * start + 2) * grow - (end**2 + 2 * end + 2))
    return torch.exp(-end) * (
        (start**3 + 3 * start**2 + 6 * start + 6) * grow - (end**3 + 3 * end**2 + 6 * end + 6)
    )


def _exp_positive(k: int, start: Tensor, end: Tensor, tau: Any) -> Tensor:
    """∫_start^end e^{(1+τ²)λ} λ^k dλ, as diffusers writes it."""
    e, s = (1 + tau**2) * end, (1 + tau**2) * start
    decay = torch.exp(-(e - s))
    if k == 0:
        return torch.exp(e) * (1 - decay) / (1 + tau**2)
    if k == 1:
        return torch.exp(e) * ((e - 1) - (s - 1) * decay) / ((1 + tau**2) ** 2)
    if k == 2:
        return (
            torch.exp(e) * ((e**2 - 2 * e + 2) - (s**2 - 2 * s + 2) * decay) / ((1 + tau**2) ** 3)
        )
    return (
        torch.exp(e)
        * ((e**3 - 3 * e**2 + 6 * e - 6) - (s**3 - 3 * s**2 + 6 * s - 6) * decay)
        / ((1 + tau**2) ** 4)
    )


def _lagrange(lams: list[Tensor]) -> list[list[Any]]:
    """The Lagrange basis through ``lams`` in powers of λ (highest first), as diffusers."""
    if len(lams) == 1:
        return [[1]]
    rows = []
    for i, li in enumerate(lams):
        others = [lj for j, lj in enumerate(lams) if j != i]
        den = li - others[0]
        for lj in others[1:]:
            den = den * (li - lj)
        if len(lams) == 2:
            rows.append([1 / den, -others[0] / den])
        elif len(lams) == 3:
            a, b = others
            rows.append([1 / den, (-a - b) / den, a * b / den])
        else:
            a, b, c = others
            rows.append(
                [1 / den, (-a - b - c) / den, (a * b + a * c + b * c) / den, (-a * b * c) / den]
            )
    return rows


def _gradient(x0: bool, start: Tensor, end: Tensor, lams: list[Tensor], tau: Any) -> list[Any]:
    """The ``get_coefficients_fn`` of diffusers: the weights b_j of the outputs at ``lams``."""
    order = len(lams)
    basis = _lagrange(lams)
    out = []
    for i in range(order):
        total: Any = 0
        for j in range(order):
            k = order - 1 - j
            moment = _exp_positive(k, start, end, tau) if x0 else _exp_negative(k, start, end)
            total = total + basis[i][j] * moment
        out.append(total)
    return out


def _step(
    sig: Tensor,
    flow: bool,
    x0: bool,
    s0: int,
    lams_from: int,
    order: int,
    tau: Any,
    corrector: bool,
) -> tuple[float, float, list[float]]:
    """``(cx, cz, weights)`` of one SA update from σ_{s0} to σ_{s0+1}.

    The weights multiply the outputs at the nodes ``lams_from``, ``lams_from − 1``, …
    (s0 for the predictor, s0 + 1 for the corrector).
    """
    alpha_t, sigma_t = alpha_sigma(sig[s0 + 1], flow)
    alpha_s0, sigma_s0 = alpha_sigma(sig[s0], flow)
    lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
    lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
    h = lambda_t - lambda_s0
    lams = [lambda_at(sig[lams_from - i], flow) for i in range(order)]
    b = _gradient(x0, lambda_s0, lambda_t, lams, tau)
    if x0 and order == 2:  # diffusers' O(h³) modification
        q = 1 + tau**2
        inner = h * q - 1 + torch.exp(q * (-h))
        if corrector:
            extra = 1.0 * torch.exp(q * lambda_t) * (h / 2 - inner / (q**2 * h))
        else:
            extra = (
                1.0
                * torch.exp(q * lambda_t)
                * (h**2 / 2 - inner / (q**2))
                / (lambda_s0 - lambda_at(sig[s0 - 1], flow))
            )
        b[0] = b[0] + extra
        b[1] = b[1] - extra
    if x0:
        scale = (1 + tau**2) * sigma_t * torch.exp(-(tau**2) * lambda_t)
        weights = [float(scale * bj) for bj in b]
        cx = torch.exp(-(tau**2) * h) * (sigma_t / sigma_s0)
        cz = sigma_t * torch.sqrt(1 - torch.exp(-2 * tau**2 * h))
    else:
        weights = [float(-(1 + tau**2) * alpha_t * bj) for bj in b]
        cx = alpha_t / alpha_s0
        cz = tau * sigma_t * torch.sqrt(torch.exp(2 * h) - 1)
    return float(cx), float(cz), weights


class SASolverRule(PredictorCorrector):
    """SA-Solver (SA-Predictor + SA-Corrector) on the grid of ``num_inference_steps`` entries.

    The state is the uncorrected sample the model sees at each entry; the corrector of
    entry i and the predictor from the corrected sample are one update (module notes).
    A noise tensor is drawn at every entry, in the latent's dtype (as diffusers draws it
    in the model output's). Supports ``predictor_order`` and ``corrector_order`` 1–4,
    ``tau_func`` (any callable of the timestep; default :func:`default_tau`),
    ``algorithm_type`` data/noise prediction, ``lower_order_final``,
    ``lambda_min_clipped``, the sigma schedules of :func:`sasolver_grid`, the prediction
    types (``flow_prediction`` with data prediction) and ``thresholding`` (data
    prediction). Refused (``ValueError``), as diffusers' step fails there:
    ``variance_type`` and thresholding with noise prediction.

    :meth:`tail` starts mid-grid as diffusers' loop after ``set_begin_index``: no
    correction at the first entry, the orders warming up again (:class:`Restarting`).

    Args:
        config: a ``SASolverScheduler`` configuration (mapping).
        num_inference_steps: N.
        begin_index: the entry diffusers' loop begins at (``set_begin_index``): the orders
            warm up from there and the corrector starts after it (the rule still covers
            the whole grid; :meth:`tail` cuts it).

    Attributes:
        orders: (N,) the SA-Predictor's order at each entry.
        corrector_orders: (N,) the order of the SA-Corrector at each entry (0 at the
            loop's first entry).
        taus: the N values τ_i = ``tau_func(t_i)``.
        sigmas: (N + 1,) the float32 σ̃ grid (see :func:`sasolver_grid`).
        coefficients: ``alpha``, ``sigma``, ``sigma_raw`` (σ̃ for ``flow_prediction``),
            ``cx``, ``cz`` and the output weights ``p0`` … (predictor) and ``d0`` …
            (correction).

    Example:
        >>> rule = SASolverRule({"predictor_order": 3, "corrector_order": 3}, 5)
        >>> rule.orders.tolist(), rule.corrector_orders.tolist(), rule.memory
        ([1, 2, 3, 2, 1], [0, 2, 3, 3, 3], 3)
    """

    per_step = ("orders", "corrector_orders", "taus")

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, *, begin_index: int = 0
    ):
        self.config = config = _full(config)
        self.num_inference_steps = num_inference_steps
        timesteps, grid = sasolver_grid(config, num_inference_steps)
        n = len(timesteps)
        check_first_timestep(timesteps, num_inference_steps)
        self._setup(config, timesteps, grid, config["algorithm_type"] == "data_prediction")
        tau_func: Callable[[Any], Any] = config["tau_func"] or default_tau
        self.taus = [tau_func(t) for t in self.timesteps]  # 0-d int64 tensors, as the loop's
        self.orders, corr = step_orders(config, n, begin_index)
        self.corrector_orders = np.concatenate([[0], corr[:-1]]).astype(np.int64)
        self.corrector_orders[: begin_index + 1] = 0
        lags = [int(self.orders.max()) - 1]
        lags += [
            max(int(c) - 1, int(p))
            for c, p in zip(self.corrector_orders[1:], self.orders[:-1], strict=True)
        ]
        self.memory = max(lags)
        self.coefficients = self._coefficients()
        self.noise_draws = np.ones(n, dtype=bool)
        self.tol_scale = posterior_tol_scale(self.sigmas, self.flow)

    def _coefficients(self) -> dict[str, np.ndarray]:
        """Every entry's conversion, predictor and correction scalars (float64 arrays)."""
        n, sig, flow, x0, k = self.num_steps, self.sigmas, self.flow, self.predict_x0, self.memory
        co = {name: np.zeros(n) for name in ("alpha", "sigma", "sigma_raw", "cx", "cz")}
        co.update({f"p{j}": np.zeros(n) for j in range(k + 1)})
        co.update({f"d{j}": np.zeros(n) for j in range(k + 1)})
        previous: list[float] = []
        for i in range(n):
            self._signal_at(co, i)
            order = int(self.corrector_orders[i])
            if order:  # the corrector of the step i − 1 -> i, with τ_{i−1}
                _, _, weights = _step(sig, flow, x0, i - 1, i, order, self.taus[i - 1], True)
                for j, w in enumerate(weights):
                    co[f"d{j}"][i] += w
                for j, w in enumerate(previous):  # minus the predictor's weight of m_{i−1−j}
                    co[f"d{j + 1}"][i] -= w
            cx, cz, previous = _step(sig, flow, x0, i, i, int(self.orders[i]), self.taus[i], False)
            co["cx"][i], co["cz"][i] = cx, cz
            for j, w in enumerate(previous):
                co[f"p{j}"][i] = w
        co = self._checked(
            co,
            np.zeros(n, dtype=bool),
            lambda i: (
                f"diffusers' SA-Solver step {i} (timestep {int(self.timesteps[i])}) has "
                "non-finite coefficients for this configuration, so its sample is NaN/Inf; "
                "use lower_order_final=True, lower orders or another sigma schedule"
            ),
        )
        return {name: v for name, v in co.items() if name[0] not in "pd" or v.any()}

    def restart(self, begin_index: int) -> SASolverRule:
        """The rule of entries ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> tail = SASolverRule({"predictor_order": 3, "corrector_order": 3}, 8).restart(4)
            >>> tail.orders.tolist(), tail.corrector_orders.tolist()
            ([1, 2, 2, 1], [0, 2, 3, 3])
        """
        rule = SASolverRule(self.config, self.num_inference_steps, begin_index=begin_index)
        return rule.cut(begin_index)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Correct each entry's sample and take the stochastic Adams step, all at once.

        Returns the next (uncorrected) states and the converted outputs to remember.

        Example:
            >>> import torch
            >>> rule = SASolverRule({}, 4)
            >>> c = {k: torch.as_tensor(v[:2]).reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> z = torch.zeros(2, 1, 3)
            >>> nxt, m = rule.update(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), c, z, None)
            >>> nxt.shape, m.shape
            (torch.Size([2, 1, 3]), torch.Size([2, 1, 3]))
        """
        m = self.convert(x, out, c)
        lag, k = self._lags(m, history), self.memory
        for d in range(k + 1):
            if f"d{d}" in c:
                x = x + c[f"d{d}"] * lag(d)
        nxt = c["cx"] * x
        for d in range(k + 1):
            if f"p{d}" in c:
                nxt = nxt + c[f"p{d}"] * lag(d)
        if noise is not None:
            nxt = nxt + c["cz"] * noise
        return nxt, m


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> SASolverRule:
    """The rule of a ``SASolverScheduler`` config (the sampler takes no step options).

    Args:
        config: a ``SASolverScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        The rule.

    Example:
        >>> rule = from_config({"tau_func": lambda t: 0}, 10)  # the ODE: no noise weight
        >>> bool((rule.coefficients["cz"] == 0).all()), bool(rule.noise_draws.all())
        (True, True)
    """
    return SASolverRule(config, num_inference_steps)
