"""Linear multistep (LMS) on the sigma grid, as diffusers' ``LMSDiscreteScheduler``.

The probability-flow ODE of Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", eq. 1 with σ(t) = t): ``dx/dσ = (x − D(x; σ))/σ``,
integrated by the Adams–Bashforth-type linear multistep of k-diffusion's ``sample_lms``
(Crowson): the derivative is interpolated by the Lagrange polynomial through the last
``order`` grid points and integrated exactly over the step. Variables (diffusers -> paper):

- ``sigmas[i]`` σ_i (float32, a final 0 appended); ``timesteps[i]`` the (float) training
  timestep the model receives; the state is the VE latent ``x = x_0 + σ n`` and
  ``scale_model_input`` gives the model ``x/√(σ_i² + 1)`` (``c_in``, Table 1).
- ``pred_original_sample`` D(x_i; σ_i): ``x − σ ε̂`` (epsilon), the output (sample) or
  ``c_out v̂ + x/(σ² + 1)`` with ``c_out = −σ/√(σ² + 1)`` (v_prediction).
- ``derivative`` d_i = (x_i − D)/σ_i; ``derivatives`` the last ``order`` of them.
- ``get_lms_coefficient(order, i, j)`` c_{ij} = ∫_{σ_i}^{σ_{i+1}} ∏_{k≠j} (τ − σ_{i−k}) /
  (σ_{i−j} − σ_{i−k}) dτ (``scipy.integrate.quad``, ``epsrel=1e-4``); the step is
  ``x_{i+1} = x_i + Σ_j c_{ij} d_{i−j}`` with order min(i + 1, ``order``) (warm-up).

The coefficients are a pure function of the sigma grid: they are computed once per
(grid, order) with diffusers' own integrand and quadrature call — float32 arithmetic
inside ``quad`` — so they are, bit for bit, the numbers diffusers' ``step`` recomputes at
every call.
The grid follows ``set_timesteps``: ``timestep_spacing`` (+ ``steps_offset``), Karras
(eq. 5, ρ = 7), exponential or beta sigmas between the interpolated grid's ends, and the
trailing grid's extra step (N = 61 of 1000 gives 62 timesteps, the last -1; diffusers runs
all of them, and so does this rule). diffusers' LMS ``step`` keeps the sample's dtype
(no float32 cast), so float64 runs agree to ~1e-15.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.multistep import Restarting
from picard.adapters.schedulers.sigma_rules import check_grid, convert_config_sigmas

__all__ = ["LMS_DEFAULTS", "LMSRule", "from_config", "lms_coefficients", "lms_grid"]

LMS_DEFAULTS: dict[str, Any] = {
    **schedules.BETA_DEFAULTS,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}
"""The defaults of diffusers' ``LMSDiscreteScheduler``: a plain mapping falls back to them."""

_PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _checked(config: Mapping[str, Any]) -> dict[str, Any]:
    full = schedules.with_defaults(config, LMS_DEFAULTS)
    kind = full["prediction_type"]
    if kind not in _PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {_PREDICTIONS} for LMS, got {kind!r}")
    keys = schedules.SIGMA_SCHEDULES
    chosen = [k for k in keys if full[k]]
    if len(chosen) > 1:
        raise ValueError(f"only one of {', '.join(keys)} can be set, got {chosen}")
    if full.get("rescale_betas_zero_snr"):
        raise ValueError(
            "rescale_betas_zero_snr=True is not an option of LMSDiscreteScheduler; supported: False"
        )
    return full


def lms_grid(config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """``LMSDiscreteScheduler.set_timesteps``: the float32 timesteps and sigmas.

    Args:
        config: an ``LMSDiscreteScheduler`` configuration (missing keys take
            :data:`LMS_DEFAULTS`).
        num_inference_steps: N.

    Returns:
        ``(timesteps, sigmas)``: float32 ``(M,)`` and ``(M + 1,)`` (M = N, or N + 1 for
        the trailing grids that ``np.arange`` rounds to one more entry), the last σ 0.

    Raises:
        ValueError: an unsupported option, N < 1, or a grid diffusers would step wrongly
            (non-finite, or a repeated first timestep).

    Example:
        >>> t, s = lms_grid({}, 4)
        >>> t.tolist(), round(s[0].item(), 3), s[-1].item()
        ([999.0, 666.0, 333.0, 0.0], 157.407, 0.0)
    """
    full = _checked(config)
    n = schedules.check_steps(num_inference_steps)
    ab = schedules.alphas_cumprod(full)
    train = schedules.train_sigmas(ab)
    t = schedules.euler_timesteps(full, n)
    sigmas = schedules.interp_sigmas(t, train)
    kind = next((k for k in schedules.SIGMA_SCHEDULES if full[k]), None)
    if kind is not None:  # between the interpolated grid's ends: LMS has no sigma_min/max
        sigmas = convert_config_sigmas(kind, sigmas, n, {})
        t = schedules.sigmas_to_timesteps(sigmas, np.log(train))
    out = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    timesteps = torch.from_numpy(np.asarray(t).astype(np.float32))
    check_grid(timesteps, out)
    return timesteps, out


@functools.lru_cache(maxsize=64)
def _coefficients(sigma_bytes: bytes, steps: int, order: int) -> np.ndarray:
    from scipy import integrate

    sigmas = np.frombuffer(sigma_bytes, dtype=np.float32)
    out = np.zeros((steps, order))
    with warnings.catch_warnings():  # quad's round-off notice (diffusers' step gets it too)
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for i in range(steps):
            k = min(i + 1, order)
            for j in range(k):
                out[i, j] = _coefficient(integrate.quad, sigmas, k, i, j)
    out.setflags(write=False)
    return out


def _coefficient(quad: Any, sigmas: np.ndarray, order: int, t: int, current: int) -> float:
    """The integrand of diffusers' ``get_lms_coefficient``, in float32 arithmetic.

    diffusers evaluates it on float32 0-d tensors (τ rounded to float32 first); explicit
    ``np.float32`` scalars give the same values bit for bit, ~10x faster.
    """
    f32 = np.float32

    def lms_derivative(tau: float) -> float:
        tau32, prod = f32(tau), f32(1.0)
        for k in range(order):
            if current == k:
                continue
            prod = prod * ((tau32 - sigmas[t - k]) / (sigmas[t - current] - sigmas[t - k]))
        return float(prod)

    return quad(lms_derivative, float(sigmas[t]), float(sigmas[t + 1]), epsrel=1e-4)[0]


def lms_coefficients(sigmas: Tensor, steps: int, order: int) -> np.ndarray:
    """The LMS weights c_{ij} of each step: ``x_{i+1} = x_i + Σ_j c_{ij} d_{i−j}``.

    Computed once per (grid, order) and cached; zero where j ≥ min(i + 1, order).

    Args:
        sigmas: the float32 σ grid (``steps + 1`` or more values).
        steps: the number of steps M.
        order: the LMS order (``step``'s ``order``, 4 by default).

    Returns:
        A read-only float64 array ``(M, order)``.

    Example:
        >>> c = lms_coefficients(torch.tensor([2.0, 1.0, 0.0]), 2, 2)
        >>> c.round(6).tolist()  # Euler first (−1), then ∫ of the linear interpolant
        [[-1.0, 0.0], [-1.5, 0.5]]
    """
    s = sigmas.to(torch.float32).contiguous().numpy()
    return _coefficients(s.tobytes(), int(steps), int(order))


class LMSRule(Restarting):
    """LMS (k-diffusion's ``sample_lms``), as ``LMSDiscreteScheduler`` steps it.

    Supports the beta schedules of :func:`picard.adapters.schedulers.schedules.betas`, the three
    spacings with ``steps_offset``, Karras/exponential/beta sigmas, the prediction types
    epsilon, sample and v_prediction, and ``step``'s ``order`` (any int ≥ 1).
    ``memory = order - 1`` derivatives; ``model_input`` is ``scale_model_input``;
    ``tol_scale[i]`` the ancestral std ``σ_↑(σ_{i+1}, σ_{i+2})`` (VE units, 0 last);
    ``signal_keys`` ``(1, σ)`` for epsilon prediction (the VE latent ``x = x_0 + σ ε``).

    Started mid-grid (:meth:`tail`, as diffusers' loop after ``set_begin_index``), the
    derivative list starts empty: step i still computes the weights of order
    min(i + 1, ``order``) from its position in the whole grid, but ``zip`` pairs them with
    the derivatives it has, so a step j steps after the loop began uses the first j + 1
    weights only (:class:`Restarting`).

    Args:
        config: an ``LMSDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N.
        order: the order of the multistep (``step``'s ``order`` argument).
        begin_index: the step diffusers' loop begins at (``set_begin_index``): later
            steps drop the weights of derivatives from before it (the rule still covers
            the whole grid; :meth:`tail` cuts it).

    Attributes:
        sigmas: diffusers' ``scheduler.sigmas`` (float32, ending at 0).
        weights: ``(M, order)`` the LMS coefficients (see :func:`lms_coefficients`).

    Example:
        >>> rule = LMSRule({"use_karras_sigmas": True}, 5, order=3)
        >>> rule.num_steps, rule.memory, rule.weights.shape
        (5, 2, (5, 3))
    """

    per_step = ()

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        order: int = 4,
        *,
        begin_index: int = 0,
    ):
        if isinstance(order, bool) or not isinstance(order, int | np.integer):
            raise TypeError(f"order must be an int, got {type(order).__name__}")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        full = _checked(config)
        self.config, self.num_inference_steps = full, num_inference_steps
        self.prediction_type = full["prediction_type"]
        self.order = int(order)
        timesteps, sigmas = lms_grid(full, num_inference_steps)
        m = len(timesteps)
        self.num_steps = m
        self.timesteps = timesteps
        self.sigmas = sigmas
        top = sigmas.max()
        spread = full["timestep_spacing"] in ("linspace", "trailing")
        self.init_noise_sigma = float(top if spread else (top**2 + 1) ** 0.5)
        self.weights = lms_coefficients(sigmas, m, self.order)
        # diffusers zips the weights with the derivatives since the loop began: the others drop
        since = np.maximum(np.arange(m) - begin_index, 0)[:, None]
        used = np.where(np.arange(self.order)[None, :] <= since, self.weights, 0.0)
        sigma = sigmas[:m]
        self.coefficients = {
            "sigma": sigma.double().numpy(),
            "input_scale": ((sigma**2 + 1) ** 0.5).double().numpy(),
            "c_out": (-sigma / (sigma**2 + 1) ** 0.5).double().numpy(),
            "c_skip_inv": (sigma**2 + 1).double().numpy(),
            **{f"lms{j}": used[:, j].copy() for j in range(self.order)},
        }
        if self.prediction_type == "epsilon":
            self.coefficients["unit"] = np.ones(m)
            self.signal_keys = ("unit", "sigma")
        self.noise_draws = np.zeros(m, dtype=bool)
        self.memory = min(self.order, m) - 1
        s = sigmas.double()
        std = schedules.ancestral_std(s[1:m], s[2 : m + 1]).numpy()
        self.tol_scale = np.append(np.nan_to_num(std, nan=0.0), 0.0)

    def restart(self, begin_index: int) -> LMSRule:
        """The rule of steps ``begin_index …`` as diffusers' loop set to begin there runs them.

        Example:
            >>> tail = LMSRule({}, 6, order=3).restart(2)
            >>> [int((tail.coefficients[f"lms{j}"] != 0).sum()) for j in range(3)]
            [4, 3, 2]
        """
        rule = LMSRule(self.config, self.num_inference_steps, self.order, begin_index=begin_index)
        return rule.cut(begin_index)

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """``scale_model_input``: ``x / √(σ_i² + 1)``."""
        return x / c["input_scale"]

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The LMS step of every step of the window; returns the states and derivatives.

        Example:
            >>> import torch
            >>> rule = LMSRule({}, 3, order=2)
            >>> c = {k: torch.as_tensor(v).float().reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> nxt, d = rule.update(torch.ones(3, 1, 2), torch.zeros(3, 1, 2), c, None, None)
            >>> nxt[-1].tolist(), d.shape
            ([[1.0, 1.0]], torch.Size([3, 1, 2]))
        """
        sigma = c["sigma"]
        if self.prediction_type == "epsilon":
            denoised = x - sigma * out
        elif self.prediction_type == "v_prediction":
            denoised = out * c["c_out"] + (x / c["c_skip_inv"])
        else:
            denoised = out
        d = (x - denoised) / sigma
        total = c["lms0"] * d
        if self.memory:
            w, k = x.shape[0], self.memory
            before = d[:0] if history is None else history.to(d.dtype)
            pad = d.new_zeros((k - before.shape[0], *d.shape[1:]))
            ext = torch.cat([pad, before, d])  # ext[k + j] = derivative of window row j
            for j in range(1, k + 1):  # added in diffusers' order: newest first
                total = total + c[f"lms{j}"] * ext[k - j : k - j + w]
        return x + total, d


def from_config(config: Mapping[str, Any], num_inference_steps: int, *, order: int = 4) -> LMSRule:
    """The rule of an ``LMSDiscreteScheduler`` config, with ``step``'s ``order`` option.

    Args:
        config: an ``LMSDiscreteScheduler`` configuration (mapping).
        num_inference_steps: N.
        order: the LMS order (diffusers' ``step(..., order=4)``).

    Returns:
        The :class:`LMSRule` on diffusers' grid.

    Example:
        >>> from diffusers import LMSDiscreteScheduler
        >>> rule = from_config(LMSDiscreteScheduler().config, 10, order=2)
        >>> rule.num_steps, rule.memory
        (10, 1)
    """
    return LMSRule(config, num_inference_steps, order=order)
