"""Gradients with respect to the output times of an ODE solve.

For the flow of ``dy/dt = f(t, y)``, an output ``y(t_k)`` moves with its own time at the
rate ``f(t_k, y(t_k))`` and with the initial time at ``-(∂y(t_k)/∂y_0) f(t_0, y_0)``; no
other time matters to it. So ``dL/dt_k = <dL/dy_k, f(t_k, y_k)>`` for ``k >= 1`` and
``dL/dt_0 = -<dL/dy_0, f(t_0, y_0)>``, where ``dL/dy_0`` is the gradient the solve's own
backward pass gives ``y_0`` (torchdiffeq's adjoint computes the same). Two small autograd
functions put these on ``t``: one on the outputs, one on the initial state, each with one
batched call of ``f`` in its backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from picard.problem import call_batched

__all__ = ["with_time_gradients"]


def with_time_gradients(
    solve: Callable[[Tensor, Tensor], Any],
    drift: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
) -> Any:
    """``solve(y0, t)`` with gradients flowing to ``t`` as well (when it requires them).

    Args:
        solve: ``solve(y0, t) -> ys`` or ``(ys, stats)``, differentiable in ``y0``; it gets
            ``t`` detached.
        drift: the batched drift ``f(t: (M,), y: (M, *shape))``.
        y0: the initial state.
        t: the output times.

    Returns:
        What ``solve`` returns, its ``ys`` differentiable in ``t``.

    Example:
        >>> t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
        >>> y0 = torch.ones(1, dtype=torch.float64)
        >>> solve = lambda y, s: torch.stack([y, y * torch.exp(-(s[1] - s[0]))])
        >>> ys = with_time_gradients(solve, lambda s, y: -y, y0, t)
        >>> ys[-1].sum().backward()
        >>> [round(g, 4) for g in t.grad.tolist()]  # d e^{-(t1 - t0)} / d(t0, t1)
        [0.3679, -0.3679]
    """
    if not (t.requires_grad and torch.is_grad_enabled()):
        return solve(y0, t)
    fixed = t.detach()
    start = _InitialTime.apply(y0, t, drift)
    out = solve(start, fixed)
    ys, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
    ys = _OutputTimes.apply(ys, t, drift)
    return ys if rest is None else (ys, *rest)


def _slopes(drift: Callable[[Tensor, Tensor], Tensor], t: Tensor, ys: Tensor) -> Tensor:
    with torch.no_grad():
        return call_batched(drift, "func", t.detach(), ys.detach(), ys.dtype)


class _InitialTime(torch.autograd.Function):
    """``y0`` unchanged; its backward puts ``-<dL/dy0, f(t0, y0)>`` on ``t[0]``."""

    @staticmethod
    def forward(ctx: Any, y0: Tensor, t: Tensor, drift: Any) -> Tensor:
        ctx.save_for_backward(y0, t)
        ctx.drift = drift
        return y0.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        y0, t = ctx.saved_tensors
        grad_t = None
        if ctx.needs_input_grad[1]:
            slope = _slopes(ctx.drift, t[:1], y0[None])[0]
            grad_t = torch.zeros_like(t)
            grad_t[0] = -(grad * slope).sum().to(t.dtype)
        return (grad if ctx.needs_input_grad[0] else None), grad_t, None


class _OutputTimes(torch.autograd.Function):
    """``ys`` unchanged; its backward puts ``<dL/dy_k, f(t_k, y_k)>`` on ``t[k]``.

    ``ys[0]`` is ``y0`` whatever ``t[0]``: its term on ``t[0]`` cancels the one
    :class:`_InitialTime` puts there through ``ys[0]``'s own gradient.
    """

    @staticmethod
    def forward(ctx: Any, ys: Tensor, t: Tensor, drift: Any) -> Tensor:
        ctx.save_for_backward(ys, t)
        ctx.drift = drift
        return ys.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        ys, t = ctx.saved_tensors
        grad_t = None
        if ctx.needs_input_grad[1]:
            slopes = _slopes(ctx.drift, t, ys)
            grad_t = (grad * slopes).reshape(t.shape[0], -1).sum(1).to(t.dtype)
        return grad, grad_t, None
