"""The adjoint recursion solved exactly from per-sample Jacobians, where states are small.

Without memory the adjoint recursion (:mod:`picard.core.adjoint`) is linear,

    μ_{j-1} = ∂L/∂x_j + (I + J_j)ᵀ μ_j,        J_j = ∂Δ_j/∂x_j at the converged x_j,

so once every ``J_j`` is known it needs no further model call: Newton on it converges in
one step (DEER, Lim et al., ICLR 2024, for a linear recursion). Where a sample's state is
small (:data:`picard.core.jacobians.DENSE_MAX`), one batched call gives every step's
Jacobian (:class:`~picard.core.jacobians.Jacobians`); that round replaces the Picard
sweeps of the backward solve, and the gradients are autograd's through the sequential
loop to rounding, at any ``tol``. Steps are taken in chunks from the last one back, so
that the Jacobians held at once stay under :data:`~picard.core.jacobians.MAX_ENTRIES`;
each chunk is one round. A chunk's call holds its steps' activations, as autograd
through the sequential loop holds every step's (the Picard sweeps hold one window's:
bounding chunks by the window made the backward slower than the sweeps on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from picard.core import jacobians
from picard.core.jacobians import Jacobians, small_state
from picard.problem import per_sample_size
from picard.solution import Solution, Stats

if TYPE_CHECKING:
    from picard.core.adjoint import AdjointProblem

__all__ = ["dense_applies", "solve_dense"]


def dense_applies(problem: AdjointProblem) -> bool:
    """Whether :func:`solve_dense` solves ``problem``: a small state, no memory.

    Args:
        problem: the adjoint problem of a solve.

    Returns:
        ``True`` where its rule reads no earlier step and a sample has at most
        :data:`~picard.core.jacobians.DENSE_MAX` numbers.

    Example:
        >>> import torch, picard
        >>> from picard.core.adjoint import AdjointProblem
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 3)
        >>> xs = picard.sequential(rule, torch.ones(2), save=True).ys
        >>> dense_applies(AdjointProblem(rule, xs, None, None))
        True
    """
    return not problem.coupled and small_state(problem.forward, problem.states.shape[1:])


def solve_dense(
    problem: AdjointProblem, start: Tensor, params: Sequence[Tensor] = ()
) -> tuple[Solution, list[Tensor | None]]:
    """The adjoint recursion, every state kept, from per-sample Jacobians.

    Args:
        problem: the adjoint problem (no memory; see :func:`dense_applies`).
        start: its initial state, ``∂L/∂x_N``.
        params: parameters of the forward increments whose gradients
            ``Σ_j (∂Δ_j/∂θ)ᵀ μ_j`` to sum, from the same calls.

    Returns:
        ``(solution, grads)``: the adjoint solution (state ``k`` is ``μ_{N-1-k}``, state
        N is ``∂L/∂x_0``) and a gradient per parameter (``None`` where none flows).
        ``stats.iterations`` counts the rounds of batched calls (one per chunk, the probes'
        and any rechecked chunk's), ``stats.acceleration["jacobian_products"]`` the
        products per step and ``["fallbacks"]`` the chunks whose check failed.

    Example:
        >>> import torch, picard
        >>> from picard.core.adjoint import AdjointProblem
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 3)
        >>> xs = picard.sequential(rule, torch.ones(1), save=True).ys
        >>> sol, _ = solve_dense(AdjointProblem(rule, xs, None, None), torch.ones(1))
        >>> round(float(sol.final), 6), sol.stats.iterations  # d x_3 / d x_0 = 0.9³
        (0.729, 1)
    """
    forward, states, n = problem.forward, problem.states, problem.num_steps
    shape = states.shape[1:]
    samples, size = per_sample_size(shape, problem.batch_ndim)
    chunk = max(1, min(n, jacobians.MAX_ENTRIES // (samples * size * size)))
    mus = states.new_empty((n + 1, samples, size, 1))  # columns for bmm
    mus[0] = start.to(states.dtype).reshape(samples, size, 1)
    direct = None if problem.direct is None else problem.direct.reshape(n, samples, size, 1)
    eye = torch.eye(size, dtype=states.dtype, device=states.device)
    starts: list[int] = []
    total: list[Tensor | None] = [None] * len(params)
    columns = Jacobians(forward, problem.state, states)
    for hi in range(n, 0, -chunk):
        lo = max(0, hi - chunk)
        starts.append(n - hi)
        rows, inc = columns.at(states[lo:hi], lo)  # rows[k, j, s, a] = J_j[s, k, a]
        # μ_{j-1} = (I + J_jᵀ) μ_j + ∂L/∂x_j: one batched product per step, written in place
        step = eye if rows is None else eye + rows.permute(1, 2, 3, 0)  # (.., S, a, k)
        step = step.expand(hi - lo, samples, size, size)
        for j in range(hi - 1, lo - 1, -1):
            k = n - j
            if direct is None:
                torch.bmm(step[j - lo], mus[k - 1], out=mus[k])
            else:
                torch.baddbmm(direct[j], step[j - lo], mus[k - 1], out=mus[k])
        if (
            params and inc is not None and inc.requires_grad
        ):  # μ_lo … μ_{hi-1} are states n-1-lo … n-hi
            mu = mus[n - hi : n - lo].flip(0).reshape(hi - lo, *shape)
            grads = torch.autograd.grad(inc, params, grad_outputs=mu, allow_unused=True)
            total = [
                g if t is None else (t if g is None else t + g)
                for t, g in zip(total, grads, strict=True)
            ]
    mus = mus.reshape(n + 1, *shape)
    stats = Stats(
        num_steps=n,
        window=chunk,
        tol=0.0,
        iterations=len(starts) + columns.rounds,
        evaluations=n * samples,
        stages=forward.stages,
        window_starts=tuple(starts),
        rows_per_evaluation=forward.rows_per_evaluation,
        acceleration={"jacobian_products": columns.products, "fallbacks": columns.fallbacks},
    )
    return Solution(final=mus[n], ys=mus, steps=range(n + 1), stats=stats), total
