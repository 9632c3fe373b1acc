"""Tuple states, as torchdiffeq takes them: solved as one flat state.

``y0 = (a, b, ...)`` becomes the concatenation of the flattened tensors; ``func`` is called
with the tuple rebuilt (``(M, *a.shape)``, ... for a batch of rows) and its tuple of
slopes is flattened back; the solution is split into ``(len(t), *a.shape)``, ....
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Flat", "flat_state"]


class Flat:
    """How a tuple state maps to one flat state and back.

    Args:
        shapes: the tensors' shapes.

    Example:
        >>> flat = Flat([torch.Size([2]), torch.Size([])])
        >>> y = flat.join((torch.ones(2), torch.tensor(3.0)))
        >>> y.tolist(), [p.tolist() for p in flat.split(y)]
        ([1.0, 1.0, 3.0], [[1.0, 1.0], 3.0])
    """

    def __init__(self, shapes: Sequence[torch.Size]):
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [s.numel() for s in self.shapes]

    def join(self, parts: Sequence[Tensor], lead: tuple[int, ...] = ()) -> Tensor:
        """The parts (each ``(*lead, *shape)``) as one ``(*lead, total)`` tensor."""
        return torch.cat([p.reshape(*lead, -1) for p in parts], dim=-1)

    def split(self, y: Tensor) -> tuple[Tensor, ...]:
        """A ``(*lead, total)`` tensor as the parts, each ``(*lead, *shape)``."""
        lead = y.shape[:-1]
        pieces = torch.split(y, self.sizes, dim=-1)
        return tuple(p.reshape((*lead, *s)) for p, s in zip(pieces, self.shapes, strict=True))

    def func(self, func: Callable[[Tensor, Any], Any]) -> Callable[[Tensor, Tensor], Tensor]:
        """``func`` on tuples as a function of the flat state (its parameters kept)."""

        def flat(t: Tensor, y: Tensor) -> Tensor:
            out = func(t, self.split(y))
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise TypeError(
                    f"func must return a tuple of {len(self.shapes)} tensors for a tuple y0, "
                    f"got {type(out).__name__}"
                )
            return self.join(out, tuple(y.shape[:-1]))

        flat.picard_model = getattr(func, "picard_model", func)  # type: ignore[attr-defined]
        return flat


def flat_state(y0: Sequence[Any]) -> tuple[Flat, Tensor]:
    """A tuple ``y0`` checked and flattened.

    Args:
        y0: the tuple (or list) of tensors.

    Returns:
        ``(flat, y)``: the mapping and the flat initial state.

    Raises:
        TypeError: an entry is not a floating tensor.
        ValueError: no entries, or entries of different dtypes or devices.

    Example:
        >>> flat, y = flat_state((torch.zeros(2, 2), torch.ones(1)))
        >>> y.shape, flat.shapes
        (torch.Size([5]), [torch.Size([2, 2]), torch.Size([1])])
    """
    parts = list(y0)
    if not parts:
        raise ValueError("y0 must hold at least one tensor")
    for k, p in enumerate(parts):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise TypeError(f"y0[{k}] must be a floating torch.Tensor, got {type(p).__name__}")
    if len({p.dtype for p in parts}) > 1 or len({p.device for p in parts}) > 1:
        raise ValueError("the tensors of a tuple y0 must share one dtype and one device")
    flat = Flat([p.shape for p in parts])
    return flat, flat.join(parts)
