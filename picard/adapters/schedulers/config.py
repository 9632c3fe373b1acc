"""Reading a scheduler's configuration: defaults, option lists, step-count checks.

Part of :mod:`~picard.adapters.schedulers.schedules` (see its notes on the symbols).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "BETA_DEFAULTS",
    "PREDICTION_TYPES",
    "SIGMA_SCHEDULES",
    "SPACINGS",
    "THRESHOLD_DEFAULTS",
    "check_steps",
    "with_defaults",
]

SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
"""The config flags of the sigma schedules that :func:`convert_sigmas` builds."""
BETA_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}
"""diffusers' defaults of the training schedule's keys (DDPM's linear betas)."""
THRESHOLD_DEFAULTS: dict[str, Any] = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}
"""diffusers' defaults of the dynamic-thresholding keys (see :func:`clip_or_threshold`)."""


def read_option(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``config[key]`` (a mapping) or ``config.key`` (an object), else ``default``."""
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def with_defaults(
    config: Mapping[str, Any], defaults: Mapping[str, Any], *, known_only: bool = False
) -> dict[str, Any]:
    """The config over a scheduler's defaults, ``None`` values taking the default.

    Args:
        config: the scheduler configuration (mapping).
        defaults: the scheduler's keys and default values.
        known_only: drop the keys ``defaults`` does not have (as a scheduler whose
            constructor ignores them); else keep them after the defaults.

    Returns:
        A new dict with every key of ``defaults``.

    Example:
        >>> with_defaults({"shift": None, "extra": 1}, {"shift": 1.0})
        {'shift': 1.0, 'extra': 1}
        >>> with_defaults({"extra": 1}, {"shift": 1.0}, known_only=True)
        {'shift': 1.0}
    """
    given = {k: v for k, v in dict(config).items() if v is not None}
    if known_only:
        return {k: given.get(k, v) for k, v in defaults.items()}
    return {**defaults, **given}


def check_steps(value: Any, name: str = "num_inference_steps", upper: int | None = None) -> int:
    """``value`` as an int >= 1 (and at most ``upper``), else a ``ValueError`` naming ``name``.

    Args:
        value: the step count to check.
        name: the option's name, for the message.
        upper: the largest count allowed (``num_train_timesteps``, say), or ``None``.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: if ``value`` is not an int (``bool`` is not) in range.

    Example:
        >>> check_steps(4), check_steps(4, upper=1000)
        (4, 4)
        >>> check_steps(0, "original_inference_steps")
        Traceback (most recent call last):
            ...
        ValueError: original_inference_steps must be an int >= 1, got 0
    """
    if upper is None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    elif (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not 1 <= value <= upper
    ):
        raise ValueError(f"{name} must be an int in [1, {upper}], got {value!r}")
    return int(value)
