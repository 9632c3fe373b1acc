"""Argument validation shared by the front ends: clear errors that name the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


def check_state(name: str, x: Any) -> Tensor:
    """Check that ``x`` is a non-empty, finite, real floating tensor."""
    if isinstance(x, (tuple, list)):
        raise TypeError(
            f"{name} must be a torch.Tensor; tuples and lists of tensors are not supported "
            "(concatenate them into one tensor)"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(
            f"{name} must have a real floating dtype (float16, bfloat16, float32, float64), "
            f"got {x.dtype}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Check that ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int, default: Any) -> Any:
    """Check that ``value`` is ``None`` (meaning ``default``) or an integer >= ``minimum``."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    return check_int(name, value, minimum=minimum)


def check_nonneg(name: str, value: Any, *, positive: bool = False) -> float:
    """Check that ``value`` is a finite real number, >= 0 (or > 0 when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(
            f"{name} must be a finite number {'>' if positive else '>='} 0, got {value}"
        )
    return value


def check_callable(name: str, fn: Any) -> Callable[..., Any]:
    """Check that ``fn`` is callable."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    return fn


def check_batch_dims(batch_dims: Any, x0: Tensor, name: str = "batch_dims") -> int:
    """Check the number of leading sample dimensions of ``x0``."""
    n = check_int(name, batch_dims, minimum=0)
    if n > x0.ndim:
        raise ValueError(f"{name}={n} exceeds the number of dimensions of the state ({x0.ndim})")
    return n


def check_grid(t: Any, y0: Tensor) -> Tensor:
    """Check a time grid: 1-D, >= 2 points, finite, strictly monotone, on ``y0``'s device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"t must have a real floating dtype, got {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"t must be one-dimensional, got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"t must hold at least 2 time points, got {t.shape[0]}")
    if t.device != y0.device:
        raise ValueError(f"t is on {t.device} but y0 is on {y0.device}; put both on one device")
    tn = t.detach().cpu().double().numpy()  # checked on the host: once per solve
    if not np.isfinite(tn).all():
        raise ValueError("t contains NaN or Inf")
    dt = np.diff(tn)
    if not ((dt > 0).all() or (dt < 0).all()):
        bad = int(np.argmax(dt <= 0) if dt[0] > 0 else np.argmax(dt >= 0))
        raise ValueError(
            "t must be strictly increasing or strictly decreasing; "
            f"t[{bad}] = {tn[bad]:g} and t[{bad + 1}] = {tn[bad + 1]:g} break that"
        )
    return t


def named_or_object(
    name: str,
    value: Any,
    registry: Mapping[str, type],
    protocol: type,
    method: str,
    none: bool = False,
) -> Any:
    """``value`` as an object: a name of ``registry`` (built with its defaults) or an object.

    Args:
        name: the option's name, for the messages.
        value: a name or an object.
        registry: names → classes.
        protocol: the runtime-checkable protocol objects must follow.
        method: the protocol's method, for the messages (e.g. ``"begin(columns)"``).
        none: whether ``None`` is allowed too (the messages say so).

    Returns:
        The object.

    Raises:
        ValueError: an unknown name.
        TypeError: an object that does not follow ``protocol``.

    Example:
        >>> from picard.core.acceptance import ACCEPTANCES, Acceptance
        >>> named_or_object("acceptance", "first-unconverged", ACCEPTANCES, Acceptance,
        ...                 "stride(ok, lengths)")
        FirstUnconverged()
    """
    where = f"{protocol.__module__}.{protocol.__name__}"
    if isinstance(value, str):
        if value not in registry:
            raise ValueError(
                f"{name} must be {'None or ' if none else ''}one of {tuple(registry)} (or an "
                f"object with a {method} method, {where}), got {value!r}"
            )
        return registry[value]()
    if not isinstance(value, protocol):
        raise TypeError(
            f"{name} must be {'None, ' if none else ''}a name or an object with a {method} "
            f"method ({where}), got {type(value).__name__}"
        )
    return value
