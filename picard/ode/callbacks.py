"""torchdiffeq's step callbacks, called in step order once the steps are known.

torchdiffeq calls ``func.callback_step(t0, y0, dt)`` before every step it tries, then
``func.callback_accept_step`` or ``func.callback_reject_step`` (adaptive methods only)
with the same arguments. picard solves all steps at once, so it calls them after a solve,
in order, with the states the steps start from: for an adaptive solve, the steps a grid
refinement discarded as rejected (round by round) and the final grid's as accepted. A
fixed-grid method has nothing to accept or reject: a ``func`` with those callbacks gets
the warning torchdiffeq gives. The backward pass's callbacks (``*_adjoint``) are not
called.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["Callbacks"]


class Callbacks:
    """The step callbacks a ``func`` carries (none, some or all).

    Args:
        func: the user's ``func``.
        adaptive: whether the method accepts and rejects steps.

    Example:
        >>> class F(torch.nn.Module):
        ...     seen = []
        ...     def forward(self, t, y): return -y
        ...     def callback_step(self, t0, y0, dt): self.seen.append(float(dt))
        >>> f = F()
        >>> Callbacks(f, adaptive=False).steps(torch.tensor([0.0, 0.5, 1.0]), torch.zeros(3, 1))
        >>> f.seen
        [0.5, 0.5]
    """

    def __init__(self, func: Any, adaptive: bool):
        self.step = getattr(func, "callback_step", None)
        self.accept = getattr(func, "callback_accept_step", None)
        self.reject = getattr(func, "callback_reject_step", None)
        if not adaptive and (self.accept is not None or self.reject is not None):
            warnings.warn(
                "func has callback_accept_step or callback_reject_step, but a fixed-grid "
                "method neither accepts nor rejects steps: they are not called",
                UserWarning,
                stacklevel=4,
            )
            self.accept = self.reject = None

    @property
    def any(self) -> bool:
        """Whether there is a callback to call."""
        return any(c is not None for c in (self.step, self.accept, self.reject))

    def steps(self, grid: Tensor, ys: Tensor, accepted: bool = True) -> None:
        """Call the callbacks for each step of ``grid`` (from ``ys[i]``), in order.

        Args:
            grid: the steps' times (``N + 1``).
            ys: the states at them (at least the first ``N``).
            accepted: call ``callback_accept_step`` (else ``callback_reject_step``).
        """
        then = self.accept if accepted else self.reject
        if self.step is None and then is None:
            return
        with torch.no_grad():
            for i in range(grid.shape[0] - 1):
                args = (grid[i], ys[i], grid[i + 1] - grid[i])
                if self.step is not None:
                    self.step(*args)
                if then is not None:
                    then(*args)
