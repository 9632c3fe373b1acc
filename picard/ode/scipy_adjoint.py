"""Gradients of ``method="scipy_solver"``: the continuous adjoint, solved by scipy too.

scipy cannot differentiate its own steps, so, as torchdiffeq's ``odeint_adjoint`` does,
the backward pass integrates the adjoint system backward from each output time to the
one before, with the same solver and tolerances:

    dy/dt = f(t, y),   da/dt = -aᵀ ∂f/∂y,   dg/dt = -aᵀ ∂f/∂θ,

restarting ``y`` from the forward's state at each output time and adding that output's
gradient to ``a``. Then ``a(t_0) = ∂L/∂y_0`` and ``g(t_0) = ∂L/∂θ``. The gradients are
those of the exact flow, to the solver's tolerance (not of scipy's discrete steps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from picard.ode.scipy_solver import solve_scipy
from picard.solution import Stats

__all__ = ["scipy_with_gradients"]


def scipy_with_gradients(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    rtol: float,
    atol: float,
    options: Mapping[str, Any] | None,
    params: Sequence[Tensor],
) -> tuple[Tensor, Stats]:
    """:func:`~picard.ode.scipy_solver.solve_scipy`, differentiable in ``y0`` and ``params``.

    Args:
        func: the drift, for one time and one state.
        y0: the initial state.
        t: the output times (not differentiated here: see :mod:`picard.ode.times`).
        rtol: scipy's relative tolerance, forward and backward.
        atol: its absolute tolerance.
        options: as for ``solve_scipy``.
        params: the tensors ``func`` depends on that gradients flow to.

    Returns:
        ``(ys, stats)`` of the forward solve; ``ys`` carries the adjoint's gradients.

    Example:
        >>> w = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
        >>> ys, _ = scipy_with_gradients(lambda t, y: w * y, torch.ones(1, dtype=torch.float64),
        ...                              torch.tensor([0.0, 1.0], dtype=torch.float64),
        ...                              1e-10, 1e-12, {}, [w])
        >>> ys[-1].sum().backward()
        >>> round(float(w.grad), 6)  # d e^{w} / dw = e^{-0.5}
        0.606531
    """
    params = [p for p in params if p.requires_grad]
    if not (torch.is_grad_enabled() and (y0.requires_grad or params)):
        return solve_scipy(func, y0, t, rtol, atol, options)
    with torch.no_grad():
        ys, stats = solve_scipy(func, y0.detach(), t.detach(), rtol, atol, options)
    job = (func, ys, t.detach(), rtol, atol, options)
    return _Adjoint.apply(job, y0, *params), stats


class _Adjoint(torch.autograd.Function):
    """``ys`` of the forward scipy solve; the backward pass solves the adjoint system."""

    @staticmethod
    def forward(ctx: Any, job: tuple[Any, ...], y0: Tensor, *params: Tensor) -> Tensor:
        ctx.job, ctx.params = job, params
        return job[1].clone()

    @staticmethod
    def backward(ctx: Any, grad_ys: Tensor) -> tuple[Any, ...]:
        func, ys, t, rtol, atol, options = ctx.job
        params = ctx.params
        n = ys[0].numel()
        sizes = [p.numel() for p in params]  # g: the parameters' gradients, flat

        def augmented(time: Tensor, z: Tensor) -> Tensor:
            y = z[:n].reshape(ys.shape[1:]).to(ys.dtype).detach().requires_grad_(True)
            a = z[n : 2 * n].reshape(ys.shape[1:]).to(ys.dtype)
            with torch.enable_grad():
                f = func(time.to(t.dtype), y)
                grads = torch.autograd.grad(f, (y, *params), grad_outputs=-a, allow_unused=True)
            parts = [f.detach()] + [
                torch.zeros_like(ref) if g is None else g
                for g, ref in zip(grads, (y, *params), strict=True)
            ]
            return torch.cat([p.reshape(-1).to(z.dtype) for p in parts])

        adj = grad_ys[-1].reshape(-1).double()
        acc = torch.zeros(sum(sizes), dtype=torch.float64, device=ys.device)
        for k in range(ys.shape[0] - 1, 0, -1):
            z = torch.cat([ys[k].reshape(-1).double(), adj, acc])
            with torch.no_grad():
                out, _ = solve_scipy(augmented, z, t[k - 1 : k + 1].flip(0), rtol, atol, options)
            adj = out[-1, n : 2 * n] + grad_ys[k - 1].reshape(-1).double()
            acc = out[-1, 2 * n :]
        grad_y0 = adj.reshape(ys.shape[1:]).to(ys.dtype)
        grads, start = [], 0
        for p, s in zip(params, sizes, strict=True):
            grads.append(acc[start : start + s].reshape(p.shape).to(p.dtype))
            start += s
        return (None, grad_y0, *grads)
