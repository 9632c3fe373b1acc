"""UniPC multistep, as diffusers' ``UniPCMultistepScheduler`` steps it.

UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", §3) integrates the diffusion ODE in λ = log(α/σ) with a
multistep predictor UniP-p and a corrector UniC-p that reuses the model output at the
predicted point. Symbols (paper) and diffusers' names:

- ``sigmas`` σ̃_i: the grid's VE noise levels (N + 1 values, the last 0 or the grid's
  minimum by ``final_sigmas_type``); ``_sigma_to_alpha_sigma_t`` gives ``alpha_t`` α_t =
  1/√(σ̃² + 1) and ``sigma_t`` σ_t = σ̃ α_t (with ``use_flow_sigmas``: α_t = 1 − σ̃, σ_t = σ̃).
- ``lambda_t`` λ_t = log α_t − log σ_t; ``h`` h_i = λ_{t_{i+1}} − λ_{t_i}; ``hh`` = −h for
  the data prediction (``predict_x0``: the model output converted to x_θ) and h for the
  noise prediction (ε_θ); ``rks`` r_k = (λ_{t_{i−k}} − λ_{t_i})/h, the step ratios, and
  ``D1s`` D_k = (m_{i−k} − m_i)/r_k, the scaled differences of the converted outputs m.
- ``B_h`` B: ``bh1`` B₁ = hh, ``bh2`` B₂ = e^{hh} − 1 (the paper's B₁(h) = h and
  B₂(h) = e^h − 1, in the sign convention of the prediction); ``h_phi_1`` = e^{hh} − 1 =
  hh φ₁(hh); ``R`` the matrix of powers r_k^{j−1} and ``b`` the vector
  hh φ_{j+1}(hh) j!/B, so that ``rhos`` ρ solve R ρ = b (the order conditions of §3.1):
  ``rhos_p`` ρ^p for UniP (0.5 at order 2), ``rhos_c`` ρ^c for UniC (0.5 at order 1).
- UniP-p (data prediction): ``x_{i+1} = (σ_{i+1}/σ_i) x^c_i − α_{i+1} hφ₁ m_i −
  α_{i+1} B Σ_k ρ^p_k D_k``; UniC-p corrects ``x_{i+1}`` once ``m_{i+1}`` is known:
  ``x^c_{i+1} = (σ_{i+1}/σ_i) x^c_i − α_{i+1} hφ₁ m_i − α_{i+1} B (Σ_k ρ^c_k D_k +
  ρ^c_p (m_{i+1} − m_i))``. The noise prediction swaps α/σ (``α_{i+1}/α_i`` and σ_{i+1}).

diffusers' ``step`` at entry i converts the output at the *uncorrected* sample x_i, corrects
x_i with UniC (unless ``i − 1`` is in ``disable_corrector``), then takes UniP from the
corrected x^c_i: one model call per entry. Both updates share the start point x^c_{i−1},
m_{i−1} and the D_k (those of the step from i − 1), so the correction is a combination of
model outputs only: ``x^c_i = x_i + α_i B (Σ_k (ρ^p_k − ρ^c_k) D_k − ρ^c_p (m_i − m_{i−1}))``
(ρ^p, ρ^c and B of the step i − 1 → i; in float arithmetic, up to rounding). Hence the
recursion on the uncorrected states,
``x_{i+1} = cx (x_i + cc (m_i − m_{i−1}) + Σ_k c_k (m_{i−1−k} − m_{i−1})) + c0 m_i +
Σ_k p_k (m_{i−k} − m_i)``, whose memory holds the last converted outputs. The scalars are
computed in float32 one step at a time on 0-d tensors exactly as diffusers computes them
(``torch.linalg.solve`` for ρ, on the host) and combined in float64. diffusers' UniPC step
keeps the sample's dtype (no float32 upcast).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
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
    "PREDICTION_TYPES",
    "SOLVER_TYPES",
    "UNIPC_DEFAULTS",
    "UniPCRule",
    "from_config",
    "step_orders",
    "unipc_grid",
]

UNIPC_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "solver_order": 2,
    "prediction_type": "epsilon",
    **schedules.THRESHOLD_DEFAULTS,
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "disable_corrector": [],
    "solver_p": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "final_sigmas_type": "zero",
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "sigma_min": None,
    "sigma_max": None,
    "shift_terminal": None,
}
"""The defaults of diffusers' ``UniPCMultistepScheduler`` (a plain mapping falls back to them)."""

SOLVER_TYPES = ("bh1", "bh2")
"""UniPC's B(h) variants (diffusers maps ``midpoint``, ``heun`` and ``logrho`` to ``bh2``)."""

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
"""The model parametrizations UniPC converts (``flow_prediction`` with ``predict_x0`` only)."""


def _full(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config over :data:`UNIPC_DEFAULTS`, with diffusers' solver_type aliases."""
    full = {**UNIPC_DEFAULTS, **dict(config)}
    if full["solver_type"] in ("midpoint", "heun", "logrho"):  # as diffusers' __init__
        full["solver_type"] = "bh2"
    return full


def _check_config(config: Mapping[str, Any], mu: float | None) -> None:
    """Refuse what the rule does not reproduce (or where diffusers' sample is NaN)."""
    if config["solver_p"] is not None:
        raise ValueError("solver_p (an external predictor) is not supported; use solver_p=None")
    order = config["solver_order"]
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise ValueError(f"solver_order must be an int >= 1, got {order!r}")
    if config["solver_type"] not in SOLVER_TYPES:
        raise ValueError(
            f"solver_type must be one of {SOLVER_TYPES}, got {config['solver_type']!r}"
        )
    kind = config["prediction_type"]
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")
    if kind == "flow_prediction" and not config["predict_x0"]:
        raise ValueError(
            "prediction_type='flow_prediction' needs predict_x0=True (diffusers' step raises "
            "for the noise-prediction form)"
        )
    final = config["final_sigmas_type"]
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {final!r}")
    if final == "zero" and not config["predict_x0"]:
        raise ValueError(
            "final_sigmas_type='zero' with predict_x0=False: diffusers' last step computes "
            "σ_t (e^h − 1) = 0 · ∞ and returns NaN; use final_sigmas_type='sigma_min'"
        )
    if final == "zero" and config["solver_type"] == "bh1":
        raise ValueError(
            "final_sigmas_type='zero' with solver_type='bh1': diffusers' last step multiplies "
            "B(h) = h = −∞ by 0 and returns NaN; use solver_type='bh2' or "
            "final_sigmas_type='sigma_min'"
        )
    kind = sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    if config["use_flow_sigmas"] and kind and kind != "use_karras_sigmas":
        raise ValueError(
            f"{kind}=True with use_flow_sigmas=True: the VE sigmas exceed 1, so "
            "α = 1 − σ < 0 and diffusers' λ = log α is NaN; use Karras or plain flow sigmas"
        )
    if config["shift_terminal"] is not None and not config["use_flow_sigmas"]:
        raise ValueError("shift_terminal is only supported with use_flow_sigmas=True")
    if config["time_shift_type"] not in ("exponential", "linear"):
        raise ValueError(
            f"time_shift_type must be 'exponential' or 'linear', got {config['time_shift_type']!r}"
        )
    if config["use_dynamic_shifting"] and mu is None:
        raise ValueError(
            "use_dynamic_shifting=True needs mu (what the pipeline passes to set_timesteps); "
            "pass mu=..."
        )
    disabled = config["disable_corrector"]
    if not isinstance(disabled, Iterable) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in disabled
    ):
        raise ValueError(f"disable_corrector must be a list of step indices, got {disabled!r}")


def _steps(config: Mapping[str, Any], n: Any, sigmas: Any) -> int:
    """The checked step count (``len(sigmas)`` when custom sigmas are given)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"num_inference_steps must be an int, got {n!r}")
    total = int(config["num_train_timesteps"])
    if sigmas is not None:
        if not config["use_flow_sigmas"]:
            raise ValueError(
                "custom sigmas need use_flow_sigmas=True (as diffusers' set_timesteps)"
            )
        if len(sigmas) != n:
            raise ValueError(
                f"sigmas has {len(sigmas)} values but num_inference_steps is {n}; they must agree"
            )
    if not 1 <= n <= total:
        raise ValueError(f"num_inference_steps must be in [1, {total}], got {n}")
    return int(n)


def _flow_grid(config: Mapping[str, Any], n: int, sigmas: Any, mu: float | None) -> np.ndarray:
    """The shifted flow sigmas of ``set_timesteps`` (no terminal value)."""
    total = int(config["num_train_timesteps"])
    sig = np.linspace(1, 1 / total, n + 1)[:-1] if sigmas is None else np.array(sigmas)
    if config["use_dynamic_shifting"]:
        assert mu is not None
        scale = math.exp(mu) if config["time_shift_type"] == "exponential" else mu
        sig = scale / (scale + (1 / sig - 1) ** 1.0)
    else:
        shift = config["flow_shift"]
        sig = shift * sig / (1 + (shift - 1) * sig)
    if config["shift_terminal"]:
        one_minus = 1 - sig
        sig = 1 - one_minus / (one_minus[-1] / (1 - config["shift_terminal"]))
    if np.fabs(sig[0] - 1) < 1e-6:  # diffusers: keeps log α finite at the first step
        sig = np.array(sig, copy=True)
        sig[0] -= 1e-6
    return sig


def unipc_grid(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    sigmas: Sequence[float] | np.ndarray | None = None,
    mu: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """UniPC's timesteps and sigmas, as ``UniPCMultistepScheduler.set_timesteps``.

    Handles ``timestep_spacing`` (+ ``steps_offset``), Karras, exponential, beta and flow
    sigmas (``flow_shift``, dynamic shifting by ``mu``, ``shift_terminal``), ``sigma_min``
    / ``sigma_max`` and ``final_sigmas_type``.

    Args:
        config: a ``UniPCMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.
        sigmas: custom flow sigmas (with ``use_flow_sigmas``), as pipelines pass them.
        mu: the dynamic shift (``use_dynamic_shifting``).

    Returns:
        ``(timesteps, sigmas)``: int64 ``(N,)`` and float32 ``(N + 1,)``, descending.

    Example:
        >>> t, s = unipc_grid({}, 4)
        >>> t.tolist(), s[-1].item()
        ([999, 749, 500, 250], 0.0)
        >>> unipc_grid({"use_flow_sigmas": True, "flow_shift": 3.0}, 3)[0].tolist()
        [999, 857, 600]
    """
    config = _full(config)
    _check_config(config, mu)
    n = _steps(config, num_inference_steps, sigmas)
    total = int(config["num_train_timesteps"])
    timesteps: np.ndarray = schedules.solver_timesteps(config, n)
    train = schedules.train_sigmas(schedules.alphas_cumprod(config, terminal_floor=True))
    kind = sigma_schedule(config, schedules.SIGMA_SCHEDULES)
    flow = bool(config["use_flow_sigmas"])
    if kind is not None:
        base = train if sigmas is None else np.array(sigmas)
        sig = convert_config_sigmas(kind, np.flip(base).copy(), n, config)
        if flow:  # only Karras gets here (see _check_config)
            sig = sig / (sig + 1)
            timesteps = sig * total
        else:
            timesteps = schedules.sigmas_to_timesteps(sig, np.log(base))
            if kind == "use_karras_sigmas":
                timesteps = timesteps.round()
        last = sig[-1]
    elif flow:
        sig = _flow_grid(config, n, sigmas, mu)
        timesteps = sig * total
        last = sig[-1]
    else:
        sig = schedules.interp_sigmas(timesteps, train)
        last = train[0]
    if config["final_sigmas_type"] == "zero":
        last = 0
    out = np.concatenate([sig, [last]]).astype(np.float32)
    # torch's float -> int64 cast truncates, as numpy's does
    return np.asarray(timesteps).astype(np.int64), out


def step_orders(config: Mapping[str, Any], num_steps: int, begin_index: int = 0) -> np.ndarray:
    """The UniP order diffusers' ``step`` uses at each of ``num_steps`` entries.

    Warm-up: entry i has at most order i + 1 — or i − ``begin_index`` + 1 when the loop
    begins at ``begin_index`` (``set_begin_index``); ``lower_order_final`` (at any N,
    unlike DPM-Solver) caps entry i at N − i. The corrector at entry i has the order of
    entry i − 1.

    Args:
        config: a ``UniPCMultistepScheduler`` configuration (``solver_order``,
            ``lower_order_final``).
        num_steps: N.
        begin_index: the entry the loop begins at (those before it, never run, get 1).

    Returns:
        int64 ``(N,)``: the order of each entry's predictor.

    Example:
        >>> step_orders({"solver_order": 3}, 6).tolist()
        [1, 2, 3, 3, 2, 1]
        >>> step_orders({"solver_order": 3, "lower_order_final": False}, 4).tolist()
        [1, 2, 3, 3]
        >>> step_orders({"solver_order": 3}, 6, begin_index=3).tolist()
        [1, 1, 1, 1, 2, 1]
    """
    config = _full(config)
    order = int(config["solver_order"])
    final = bool(config["lower_order_final"])
    steps = np.arange(num_steps)
    cap = np.minimum(order, num_steps - steps) if final else np.full(num_steps, order)
    return np.minimum(cap, np.maximum(steps - begin_index, 0) + 1).astype(np.int64)


class _BH:
    """The preamble UniP and UniC share: diffusers' scalars from σ_s0 to σ_t.

    ``ratio`` (σ_t/σ_s0 or α_t/α_s0), ``c0`` (α_t hφ₁ or σ_t hφ₁), ``k`` (α_t B(h) or
    σ_t B(h)), the step ratios ``rks`` (r_1, …, r_{p−1}, 1) and ``R``, ``b`` of order p.
    """

    def __init__(self, sig: Tensor, flow: bool, x0: bool, bh2: bool, t: int, s0: int, order: int):
        alpha_t, sigma_t = alpha_sigma(sig[t], flow)
        alpha_s0, sigma_s0 = alpha_sigma(sig[s0], flow)
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        rks = [(lambda_at(sig[s0 - k], flow) - lambda_s0) / h for k in range(1, order)]
        rks.append(torch.ones((), dtype=torch.float32))
        self.rks = torch.stack(rks)
        hh = -h if x0 else h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = torch.expm1(hh) if bh2 else hh
        rows, b = [], []
        for j in range(1, order + 1):
            rows.append(torch.pow(self.rks, j - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        self.R, self.b = torch.stack(rows), torch.stack(b)
        scale = alpha_t if x0 else sigma_t
        self.ratio = sigma_t / sigma_s0 if x0 else alpha_t / alpha_s0
        self.c0 = scale * h_phi_1
        self.k = scale * b_h
        self.order = order

    def rhos_p(self) -> Tensor:
        """UniP's ρ^p (order − 1 values; 0.5 at order 2, as diffusers simplifies)."""
        if self.order == 1:
            return torch.zeros(0)
        if self.order == 2:
            return torch.full((1,), 0.5)
        return torch.linalg.solve(self.R[:-1, :-1], self.b[:-1])

    def rhos_c(self) -> Tensor:
        """UniC's ρ^c (order values; 0.5 at order 1)."""
        if self.order == 1:
            return torch.full((1,), 0.5)
        return torch.linalg.solve(self.R, self.b)


def _predictor(bh: _BH) -> tuple[float, float, list[float], float]:
    """``(cx, c0, [p_k], k)``: x_{i+1} = cx x^c + c0 m_i + Σ_k p_k (m_{i−k} − m_i)."""
    k = float(bh.k)
    rhos, rks = bh.rhos_p().tolist(), bh.rks.tolist()
    lags = [-k * rho / r for rho, r in zip(rhos, rks, strict=False)]
    return float(bh.ratio), -float(bh.c0), lags, k


def _corrector(bh: _BH) -> tuple[float, list[float]]:
    """``(cc, [c_k])``: x^c_i − x_i = cc (m_i − m_{i−1}) + Σ_k c_k (m_{i−1−k} − m_{i−1})."""
    k = float(bh.k)
    rho_p, rho_c, rks = bh.rhos_p().tolist(), bh.rhos_c().tolist(), bh.rks.tolist()
    lags = [k * (p - c) / r for p, c, r in zip(rho_p, rho_c, rks, strict=False)]
    return -k * rho_c[-1], lags


class UniPCRule(PredictorCorrector):
    """UniPC (UniP-p + UniC-p) on the grid of ``num_inference_steps`` entries.

    The state is the uncorrected sample the model sees at each entry; the corrector of
    entry i and the predictor from the corrected sample are one update (module notes).
    Supports ``solver_order`` ≥ 1, ``solver_type`` bh1/bh2, ``predict_x0`` True/False,
    ``disable_corrector``, ``lower_order_final``, ``final_sigmas_type``, the sigma
    schedules of :func:`unipc_grid`, the prediction types of :data:`PREDICTION_TYPES`,
    ``thresholding`` (diffusers applies it to x_θ only: it has no effect with
    ``predict_x0=False``) and ``rescale_betas_zero_snr``. Refused (``ValueError``):
    ``solver_p``, and the configurations where diffusers' sample is NaN/Inf (a zero final
    sigma with bh1, with ``predict_x0=False`` or with a last step of order ≥ 2;
    exponential/beta with flow sigmas; any other non-finite step coefficient).

    ``memory`` is the longest lag of converted outputs read (``solver_order`` with the
    corrector); ``tol_scale[i]`` is the DDPM posterior std of step i + 1 between its grid
    points (flow sigmas: the flow latent's ancestral std), 0 for the last state.

    :meth:`tail` starts mid-grid as diffusers' loop after ``set_begin_index``: no
    correction at the first entry, the orders warming up again (:class:`Restarting`).

    Args:
        config: a ``UniPCMultistepScheduler`` configuration (mapping).
        num_inference_steps: N.
        sigmas: custom flow sigmas (``use_flow_sigmas``), as passed to ``set_timesteps``.
        mu: the dynamic shift (``use_dynamic_shifting``).
        begin_index: the entry diffusers' loop begins at (``set_begin_index``): the orders
            warm up from there and the corrector starts after it (the rule still covers
            the whole grid; :meth:`tail` cuts it).

    Attributes:
        orders: (N,) the predictor's order at each entry (see :func:`step_orders`).
        corrects: (N,) whether entry i corrects its sample (UniC).
        sigmas: (N + 1,) the float32 σ̃ grid (see :func:`unipc_grid`).
        coefficients: ``alpha``, ``sigma`` (of each entry's state), ``sigma_raw`` (σ̃ for
            ``flow_prediction``), the predictor's ``cx``, ``c0``, ``p1`` … and the
            corrector's ``cc``, ``c1`` ….

    Example:
        >>> rule = UniPCRule({"solver_order": 3}, 5)
        >>> rule.timesteps.tolist(), rule.orders.tolist(), rule.memory
        ([999, 799, 599, 400, 200], [1, 2, 3, 2, 1], 3)
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        *,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
        begin_index: int = 0,
    ):
        self.config = config = _full(config)
        self.num_inference_steps, self._grid_options = num_inference_steps, (sigmas, mu)
        timesteps, grid = unipc_grid(config, num_inference_steps, sigmas=sigmas, mu=mu)
        n = len(timesteps)
        check_first_timestep(timesteps, num_inference_steps)
        order = int(config["solver_order"])
        zero = config["final_sigmas_type"] == "zero"
        if zero and not config["lower_order_final"] and order > 1 and n > 1:
            raise ValueError(
                "lower_order_final=False with final_sigmas_type='zero' and solver_order "
                f"{order}: diffusers' last step divides by r_k = 0 (λ = ∞ at σ = 0) and "
                "returns Inf/NaN; use lower_order_final=True or final_sigmas_type='sigma_min'"
            )
        self._setup(config, timesteps, grid, bool(config["predict_x0"]))
        disabled = {int(v) for v in config["disable_corrector"]}
        self.orders = step_orders(config, n, begin_index)
        self.corrects = np.array([i > begin_index and i - 1 not in disabled for i in range(n)])
        self._pred_lags = int(self.orders.max()) - 1
        corr_orders = self.orders[:-1][self.corrects[1:]]
        self._corr_lags = int(corr_orders.max()) - 1 if len(corr_orders) else -1
        self.memory = max(self._pred_lags, self._corr_lags + 1)
        self.coefficients = self._coefficients(timesteps)
        self.tol_scale = posterior_tol_scale(self.sigmas, self.flow)
        self.noise_draws = np.zeros(n, dtype=bool)

    per_step = ("orders", "corrects")

    def restart(self, begin_index: int) -> UniPCRule:
        """The rule of entries ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> tail = UniPCRule({"solver_order": 3}, 8).restart(4)
            >>> tail.orders.tolist(), tail.corrects.tolist()
            ([1, 2, 2, 1], [False, True, True, True])
        """
        sigmas, mu = self._grid_options
        rule = UniPCRule(
            self.config, self.num_inference_steps, sigmas=sigmas, mu=mu, begin_index=begin_index
        )
        return rule.cut(begin_index)

    def _coefficients(self, timesteps: np.ndarray) -> dict[str, np.ndarray]:
        """Every entry's conversion, predictor and corrector scalars (float64 arrays)."""
        n, sig, flow, x0 = self.num_steps, self.sigmas, self.flow, self.predict_x0
        bh2 = self.config["solver_type"] == "bh2"
        co: dict[str, np.ndarray] = {
            name: np.zeros(n) for name in ("alpha", "sigma", "sigma_raw", "cx", "c0", "cc")
        }
        for k in range(1, self._pred_lags + 1):
            co[f"p{k}"] = np.zeros(n)
        for k in range(1, self._corr_lags + 1):
            co[f"c{k}"] = np.zeros(n)
        scale = np.zeros(n)  # α B(h) / σ B(h): diffusers multiplies it by 0 at order 1
        for i in range(n):
            self._signal_at(co, i)
            pred = _BH(sig, flow, x0, bh2, i + 1, i, int(self.orders[i]))
            co["cx"][i], co["c0"][i], lags, scale[i] = _predictor(pred)
            for k, value in enumerate(lags, start=1):
                co[f"p{k}"][i] = value
            if self.corrects[i]:
                corr = _BH(sig, flow, x0, bh2, i, i - 1, int(self.orders[i - 1]))
                co["cc"][i], lags = _corrector(corr)
                for k, value in enumerate(lags, start=1):
                    co[f"c{k}"][i] = value
        return self._checked(
            co,
            ~np.isfinite(scale),
            lambda i: (
                f"diffusers' UniPC step {i} (timestep {timesteps[i]}, σ {float(sig[i]):g} "
                f"-> {float(sig[i + 1]):g}, order {self.orders[i]}) has non-finite coefficients "
                "for this configuration, so its sample is NaN/Inf; use lower_order_final=True, "
                "another final_sigmas_type or another sigma schedule"
            ),
        )

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Correct each entry's sample (UniC) and predict the next (UniP), all at once.

        Returns the next (uncorrected) states and the converted outputs to remember.

        Example:
            >>> import torch
            >>> rule = UniPCRule({"solver_order": 2}, 4)
            >>> c = {k: torch.as_tensor(v[:2]).reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> nxt, m = rule.update(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), c, None, None)
            >>> nxt.shape, m.shape
            (torch.Size([2, 1, 3]), torch.Size([2, 1, 3]))
        """
        m = self.convert(x, out, c)
        lag = self._lags(m, history)
        if self._corr_lags >= 0:
            prev = lag(1)
            x = x + c["cc"] * (m - prev)
            for d in range(1, self._corr_lags + 1):
                x = x + c[f"c{d}"] * (lag(d + 1) - prev)
        nxt = c["cx"] * x + c["c0"] * m
        for d in range(1, self._pred_lags + 1):
            nxt = nxt + c[f"p{d}"] * (lag(d) - m)
        return nxt, m


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    sigmas: Sequence[float] | np.ndarray | None = None,
    mu: float | None = None,
) -> UniPCRule:
    """The rule of a ``UniPCMultistepScheduler`` config, with set_timesteps' options.

    Args:
        config: a ``UniPCMultistepScheduler`` configuration (missing keys take
            :data:`UNIPC_DEFAULTS`).
        num_inference_steps: N.
        sigmas: custom flow sigmas (with ``use_flow_sigmas``).
        mu: the dynamic shift (required with ``use_dynamic_shifting``).

    Returns:
        The :class:`UniPCRule` on N entries.

    Example:
        >>> from_config({"solver_order": 3, "disable_corrector": [0]}, 6).corrects.tolist()
        [False, False, True, True, True, True]
    """
    return UniPCRule(config, num_inference_steps, sigmas=sigmas, mu=mu)
