"""Model outputs: prediction types, x_0/ε from an output, clipping and thresholding.

Part of :mod:`~picard.adapters.schedulers.schedules` (see its notes on the symbols).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.schedulers.config import PREDICTION_TYPES, read_option

__all__ = ["clip_or_threshold", "predict_eps", "predict_x0", "prediction_type"]


def prediction_type(config: Mapping[str, Any]) -> str:
    """The config's prediction type, checked.

    Args:
        config: the scheduler configuration (key ``prediction_type``).

    Returns:
        One of :data:`PREDICTION_TYPES`; ``"epsilon"`` when the config has none.

    Raises:
        ValueError: if the prediction type is not one of :data:`PREDICTION_TYPES`.

    Example:
        >>> prediction_type({}), prediction_type({"prediction_type": "v_prediction"})
        ('epsilon', 'v_prediction')
    """
    kind = read_option(config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")
    return kind


def predict_x0(kind: str, x: Tensor, out: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The model's estimate of x_0 from ``x = α x_0 + σ ε`` and its output.

    ``kind`` is the prediction type: epsilon (out = ε), sample (out = x_0) or v_prediction
    (out = α ε - σ x_0, Salimans & Ho 2022).

    Args:
        kind: the prediction type, one of :data:`PREDICTION_TYPES`.
        x: the noisy latent.
        out: the model output at ``x``, shaped like ``x``.
        alpha: the signal scale α (``√ᾱ_t`` in VP units), broadcastable to ``x``.
        sigma: the noise scale σ (``√(1-ᾱ_t)`` in VP units), broadcastable to ``x``; the
            v_prediction formula assumes ``α² + σ² = 1``.

    Returns:
        The estimate of x_0, shaped like ``x``.

    Raises:
        ValueError: if ``kind`` is not one of :data:`PREDICTION_TYPES`.

    Example:
        >>> a, s = torch.tensor(0.6), torch.tensor(0.8)
        >>> x, out = torch.tensor([1.0]), torch.tensor([0.5])
        >>> [round(predict_x0(k, x, out, a, s).item(), 4) for k in PREDICTION_TYPES]
        [1.0, 0.5, 0.2]
    """
    if kind == "epsilon":
        return (x - sigma * out) / alpha
    if kind == "sample":
        return out
    if kind == "v_prediction":
        return alpha * x - sigma * out
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")


def predict_eps(kind: str, x: Tensor, out: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The model's estimate of ε from ``x = α x_0 + σ ε`` and its output (see predict_x0).

    Args:
        kind: the prediction type, one of :data:`PREDICTION_TYPES`.
        x: the noisy latent.
        out: the model output at ``x``, shaped like ``x``.
        alpha: the signal scale α (``√ᾱ_t`` in VP units), broadcastable to ``x``.
        sigma: the noise scale σ (``√(1-ᾱ_t)`` in VP units), broadcastable to ``x``; the
            v_prediction formula assumes ``α² + σ² = 1``.

    Returns:
        The estimate of ε, shaped like ``x``.

    Raises:
        ValueError: if ``kind`` is not one of :data:`PREDICTION_TYPES`.

    Example:
        >>> a, s = torch.tensor(0.6), torch.tensor(0.8)
        >>> x, out = torch.tensor([1.0]), torch.tensor([0.5])
        >>> eps = predict_eps("v_prediction", x, out, a, s)
        >>> round(eps.item(), 4)
        1.1
        >>> torch.allclose(a * predict_x0("v_prediction", x, out, a, s) + s * eps, x)
        True
    """
    if kind == "epsilon":
        return out
    if kind == "sample":
        return (x - alpha * out) / sigma
    if kind == "v_prediction":
        return alpha * out + sigma * x
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")


def output_for_x0(kind: str, x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The model output whose estimate of x_0 at ``x`` is ``x0`` (inverts predict_x0).

    Example:
        >>> a, s = torch.tensor(0.6), torch.tensor(0.8)
        >>> x, x0 = torch.tensor([1.0]), torch.tensor([0.5])
        >>> predict_x0("v_prediction", x, output_for_x0("v_prediction", x, x0, a, s), a, s)
        tensor([0.5000])
    """
    if kind == "epsilon":
        return (x - alpha * x0) / sigma
    if kind == "sample":
        return x0
    if kind == "v_prediction":  # α ε - σ x_0 with ε = (x - α x_0) / σ, α² + σ² = 1
        return (alpha * x - (alpha * alpha + sigma * sigma) * x0) / sigma
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kind!r}")


def gaussian_slopes(a: Tensor, b: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Per step, ``∂Δ_i/∂x_i`` of ``x_{i+1} = a_i x_i + b_i x̂_0`` when the data are N(0, I).

    Under unit Gaussian data the ideal denoiser is linear, ``x̂_0 = α x / (α² + σ²)``
    (``x = α x_0 + σ ε``), so the increment ``Δ_i = x_{i+1} - x_i`` has the slope
    ``a_i + b_i α_i / (α_i² + σ_i²) - 1``: the secant update's start for rows with no
    history (:attr:`picard.Traits.slopes`).

    Args:
        a: the update's coefficient of ``x_i`` with ``x̂_0`` held fixed, per step.
        b: its coefficient of ``x̂_0``, per step.
        alpha: the signal scale α_i, per step.
        sigma: the noise scale σ_i, per step.

    Returns:
        The slopes, per step.

    Example:
        >>> a, b = torch.tensor([0.9]), torch.tensor([0.2])
        >>> round(gaussian_slopes(a, b, torch.tensor(0.6), torch.tensor(0.8)).item(), 4)
        0.02
    """
    return a + b * alpha / (alpha * alpha + sigma * sigma) - 1


def clip_or_threshold(x0: Tensor, config: Mapping[str, Any], sample_ndim: int) -> Tensor:
    """Apply the config's dynamic thresholding (Imagen, Saharia et al. 2022) or clipping.

    ``x0`` has ``sample_ndim`` trailing dimensions per sample (``(..., C, H, W)``); the
    quantile runs over each sample, as diffusers' ``_threshold_sample`` does.

    Args:
        x0: the estimate of x_0, shape ``(..., *sample_shape)``.
        config: the scheduler configuration: ``thresholding`` (with
            ``dynamic_thresholding_ratio``, default 0.995, and ``sample_max_value``,
            default 1) takes precedence over ``clip_sample`` (with ``clip_sample_range``,
            default 1); with neither set, ``x0`` is returned as is.
        sample_ndim: the number of trailing dimensions that make up one sample.

    Returns:
        The thresholded or clipped ``x0``, same shape and dtype.

    Example:
        >>> x0 = torch.tensor([[-4.0, 2.0], [0.5, 0.25]])
        >>> clip_or_threshold(x0, {"clip_sample": True}, 1).tolist()
        [[-1.0, 1.0], [0.5, 0.25]]
        >>> cfg = {"thresholding": True, "dynamic_thresholding_ratio": 1.0, "sample_max_value": 2.0}
        >>> clip_or_threshold(x0, cfg, 1).tolist()  # per-sample s = clamp(max |x0|, 1, 2)
        [[-1.0, 1.0], [0.5, 0.25]]
        >>> clip_or_threshold(x0, {}, 1) is x0
        True
    """
    if read_option(config, "thresholding", False):
        lead = x0.shape[: x0.ndim - sample_ndim]
        flat = x0.reshape(*lead, -1)
        upcast = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(
            upcast.abs(), read_option(config, "dynamic_thresholding_ratio", 0.995), dim=-1
        )
        s = (
            s.clamp(min=1, max=read_option(config, "sample_max_value", 1.0))
            .unsqueeze(-1)
            .to(x0.dtype)
        )
        return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)
    if read_option(config, "clip_sample", False):
        r = read_option(config, "clip_sample_range", 1.0)
        return x0.clamp(-r, r)
    return x0
