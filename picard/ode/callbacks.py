"""torchdiffeq's step callbacks, called in step order once the steps are known.

torchdiffeq calls ``func.callback_step(t0, y0, dt)`` before every step it tries, then
``func.callback_accept_step`` or ``func.callback_reject_step`` (adaptive methods only)
with the same arguments. picard solves all steps at once, so it calls them after a solve,
in order, with the states the steps start from: for an adaptive solve, the steps a grid
refinement discarded as rejected (round by round) and the final grid's as accepted. A
fixed-grid method has nothing to accept or reject: a ``func`` with those callbacks gets
the warning torchdiffeq gives. picard's backward pass is an adjoint recursion over the
forward's accepted steps (for :func:`picard.odeint` as for :func:`picard.odeint_adjoint`):
the ``*_adjoint`` callbacks are called for each of them, last first, as the backward pass
runs, with the step's end time (where the backward step starts), the forward state at the
step's start, and the negated step; it rejects none.
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
        self.step_adjoint = getattr(func, "callback_step_adjoint", None)
        self.accept_adjoint = getattr(func, "callback_accept_step_adjoint", None)
        for name in ("accept", "reject", "accept_adjoint"):
            if not adaptive and getattr(self, name) is not None:
                warnings.warn(
                    f"func has callback_{name.replace('_adjoint', '')}_step"
                    f"{'_adjoint' if 'adjoint' in name else ''}, but a fixed-grid method "
                    "neither accepts nor rejects steps: it is not called",
                    UserWarning,
                    stacklevel=4,
                )
                setattr(self, name, None)
        self.taken: list[tuple[Tensor, Tensor, Tensor]] = []  # accepted steps, for backward

    @property
    def any(self) -> bool:
        """Whether there is a callback to call."""
        return any(
            c is not None
            for c in (self.step, self.accept, self.reject, self.step_adjoint, self.accept_adjoint)
        )

    @property
    def backward(self) -> bool:
        """Whether there are backward-pass callbacks (``*_adjoint``)."""
        return self.step_adjoint is not None or self.accept_adjoint is not None

    def attach(self, ys: Tensor) -> Tensor:
        """``ys`` whose backward pass calls the ``*_adjoint`` callbacks, last step first.

        Args:
            ys: the solve's output.

        Returns:
            ``ys`` itself when there is nothing to call, else an identity of it.
        """
        if not (self.backward and self.taken and ys.requires_grad):
            return ys
        return _Backward.apply(ys, self)

    def steps(self, grid: Tensor, ys: Tensor, accepted: bool = True) -> None:
        """Call the callbacks for each step of ``grid`` (from ``ys[i]``), in order.

        Args:
            grid: the steps' times (``N + 1``).
            ys: the states at them (at least the first ``N``).
            accepted: call ``callback_accept_step`` (else ``callback_reject_step``).
        """
        then = self.accept if accepted else self.reject
        if self.step is None and then is None and not self.backward:
            return
        with torch.no_grad():
            for i in range(grid.shape[0] - 1):
                args = (grid[i], ys[i], grid[i + 1] - grid[i])
                if self.step is not None:
                    self.step(*args)
                if then is not None:
                    then(*args)
                if accepted and self.backward:
                    self.taken.append((grid[i + 1], ys[i], -args[2]))


class _Backward(torch.autograd.Function):
    """The identity; its backward calls the ``*_adjoint`` callbacks for each step, last first."""

    @staticmethod
    def forward(ctx: Any, ys: Tensor, callbacks: Callbacks) -> Tensor:
        ctx.callbacks = callbacks
        return ys.view_as(ys)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        cb = ctx.callbacks
        for args in reversed(cb.taken):
            for call in (cb.step_adjoint, cb.accept_adjoint):
                if call is not None:
                    call(*args)
        return grad, None
