"""The array operations of a sweep's bookkeeping, for one kind of device.

On the CPU the workspace is viewed as a numpy array (sharing memory with the tensors):
the same arithmetic at a fraction of torch's per-call overhead, which matters when the
model is small. On accelerators everything stays in torch, on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["NUMPY", "TORCH", "Arrays", "arrays_for"]


@dataclass(frozen=True)
class Arrays:
    """The operations a sweep needs, on numpy arrays or torch tensors.

    Attributes:
        view: a tensor as this kind of array, sharing memory.
        tensor: this kind of array as a tensor, sharing memory.
        copy: a copy.
        cumsum: the cumulative sum along dim 0.
        dots: ``(w, columns, size)`` twice to ``(w, columns)`` dot products.
        cumprod: the cumulative product along dim 0.
        host: to a host numpy array (the sweep's one synchronisation).
        index: host integers as this kind of index array.
        asarray: a host array as this kind, with another's dtype and device.
        nonzero: its argument, never 0 (numpy: plus the float64 tiny, so in float64).
        sq_norms: ``(w, columns, size)`` to ``(w, columns)`` squared norms.

    Example:
        >>> import torch
        >>> ops = arrays_for(torch.device("cpu"))
        >>> a = ops.view(torch.ones(2, 1, 3))
        >>> ops.sq_norms(a).tolist(), ops.cumsum(a)[-1].tolist()
        ([[3.0], [3.0]], [[2.0, 2.0, 2.0]])
    """

    view: Callable[[Tensor], Any]  # a tensor as this kind of array, sharing memory
    tensor: Callable[[Any], Tensor]  # this kind of array as a tensor, sharing memory
    copy: Callable[[Any], Any]
    cumsum: Callable[[Any], Any]  # along dim 0
    dots: Callable[[Any, Any], Any]  # (w, columns, size) twice -> (w, columns) dot products
    cumprod: Callable[[Any], Any]  # along dim 0
    host: Callable[[Any], np.ndarray]  # to a host numpy array: the one synchronisation
    index: Callable[[Any, torch.device | None], Any]  # host integers as this kind
    asarray: Callable[[np.ndarray, Any], Any]  # a host array as this kind, like another
    nonzero: Callable[[Any], Any]  # never 0 (numpy: + the float64 tiny, so in float64)
    sq_norms: Callable[[Any], Any]  # (w, columns, size) -> (w, columns) squared norms


NUMPY = Arrays(
    view=lambda t: t.detach().numpy(),
    tensor=torch.from_numpy,
    copy=np.array,
    cumsum=lambda a: np.add.accumulate(a, axis=0),
    dots=np.vecdot if hasattr(np, "vecdot") else (lambda a, b: np.einsum("wsk,wsk->ws", a, b)),
    cumprod=lambda a: np.multiply.accumulate(a, axis=0),
    host=lambda a: a,
    index=lambda a, device: np.asarray(a),
    asarray=lambda a, like: a.astype(like.dtype),
    nonzero=lambda a: a + np.finfo(np.float64).tiny,  # a numpy scalar: promotes to float64
    sq_norms=(
        (lambda d: np.vecdot(d, d))
        if hasattr(np, "vecdot")
        else (lambda d: np.einsum("wsk,wsk->ws", d, d))
    ),
)
"""Numpy views of CPU tensors."""

TORCH = Arrays(
    view=lambda t: t,
    tensor=lambda t: t,
    copy=torch.clone,
    cumsum=lambda a: torch.cumsum(a, 0),
    dots=lambda a, b: torch.sum(a * b, dim=-1),
    cumprod=lambda a: torch.cumprod(a, 0),
    host=lambda a: a.cpu().numpy(),
    index=lambda a, device: torch.as_tensor(np.asarray(a), device=device),
    asarray=lambda a, like: torch.as_tensor(a, dtype=like.dtype, device=like.device),
    nonzero=lambda a: a.clamp(min=torch.finfo(a.dtype).tiny),
    sq_norms=lambda d: torch.sum(d * d, dim=-1),
)
"""Torch tensors, on any device."""


def arrays_for(device: torch.device) -> Arrays:
    """:data:`NUMPY` on the CPU, :data:`TORCH` elsewhere.

    Args:
        device: where the solve's states are.

    Returns:
        The operations for that device.

    Example:
        >>> arrays_for(torch.device("cpu")) is NUMPY
        True
    """
    return NUMPY if device.type == "cpu" else TORCH
