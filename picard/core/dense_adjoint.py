"""The adjoint recursion solved exactly from per-sample Jacobians, where states are small.

Without memory the adjoint recursion (:mod:`picard.core.adjoint`) is linear,

    μ_{j-1} = ∂L/∂x_j + (I + J_j)ᵀ μ_j,        J_j = ∂Δ_j/∂x_j at the converged x_j,

so once every ``J_j`` is known it needs no further model call: Newton on it converges in
one step (DEER, Lim et al., ICLR 2024, for a linear recursion). Samples are independent
(``batch_ndim``), so ``J_j`` is one ``d × d`` block per sample, ``d`` the per-sample state
size: ``d`` vector–Jacobian products of one batched forward call give every step's blocks
at once. Where ``d`` is small (:data:`DENSE_MAX`) that round of calls replaces the Picard
sweeps of the backward solve, and the gradients are autograd's through the sequential
loop to rounding, at any ``tol``. Steps are taken in chunks from the last one back, so
that the Jacobians held at once stay under :data:`MAX_ENTRIES`; each chunk is one round.
A chunk's call holds its steps' activations, as autograd through the sequential loop
holds every step's (the Picard sweeps hold one window's: bounding chunks by the window
made the backward slower than the sweeps on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from picard.problem import per_sample_size
from picard.solution import Solution, Stats

if TYPE_CHECKING:
    from picard.core.adjoint import AdjointProblem

__all__ = ["DENSE_MAX", "MAX_ENTRIES", "dense_applies", "solve_dense"]

DENSE_MAX = 64
"""The largest per-sample state size whose adjoint is solved from dense Jacobians."""

MAX_ENTRIES = 2**22
"""Jacobian entries held at once (steps × samples × d²): sets the chunk of steps."""


def dense_applies(problem: AdjointProblem) -> bool:
    """Whether :func:`solve_dense` solves ``problem``: no memory, per-sample size ≤ DENSE_MAX.

    Args:
        problem: the adjoint problem of a solve.

    Returns:
        ``True`` where its rule reads no earlier step and a sample has at most
        :data:`DENSE_MAX` numbers.

    Example:
        >>> import torch, picard
        >>> from picard.core.adjoint import AdjointProblem
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 3)
        >>> xs = picard.sequential(rule, torch.ones(2), save=True).ys
        >>> dense_applies(AdjointProblem(rule, xs, None, None))
        True
    """
    _, size = per_sample_size(problem.states.shape[1:], problem.batch_ndim)
    return not problem.coupled and size <= DENSE_MAX


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
    chunk = max(1, min(n, MAX_ENTRIES // (samples * size * size)))
    mus = states.new_empty((n + 1, samples, size, 1))  # columns for bmm
    mus[0] = start.to(states.dtype).reshape(samples, size, 1)
    direct = None if problem.direct is None else problem.direct.reshape(n, samples, size, 1)
    eye = torch.eye(size, dtype=states.dtype, device=states.device)
    starts: list[int] = []
    total: list[Tensor | None] = [None] * len(params)
    columns = _Columns(problem, samples, size)
    for hi in range(n, 0, -chunk):
        lo = max(0, hi - chunk)
        starts.append(n - hi)
        rows, inc = columns.rows(lo, hi)  # rows[k, j, s, a] = J_j[s, k, a]
        # μ_{j-1} = (I + J_jᵀ) μ_j + ∂L/∂x_j: one batched product per step, written in place
        step = eye if rows is None else eye + rows.permute(1, 2, 3, 0)  # (.., S, a, k)
        step = step.expand(hi - lo, samples, size, size)
        for j in range(hi - 1, lo - 1, -1):
            k = n - j
            if direct is None:
                torch.bmm(step[j - lo], mus[k - 1], out=mus[k])
            else:
                torch.baddbmm(direct[j], step[j - lo], mus[k - 1], out=mus[k])
        if params and inc is not None:  # μ_lo … μ_{hi-1} are states n-1-lo … n-hi
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


def _vjps(
    problem: AdjointProblem, lo: int, hi: int, vectors: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """``vᵀ ∂Δ_j/∂x_j`` for each vector ``v`` (``(m, hi - lo, *shape)``), steps ``lo … hi-1``.

    One batched forward call and ``m`` products. Returns them (``None`` when no step
    depends on its state) and the increments, their graph kept (``None`` without one).
    """
    with torch.enable_grad():
        rows = problem.states[lo:hi].detach().requires_grad_(True)
        inc, _ = problem.forward.increments(rows, lo, problem.state, None)
        if not inc.requires_grad:  # dy/dt = f(t): no graph
            return None, None
        try:
            (out,) = torch.autograd.grad(
                inc, rows, grad_outputs=vectors, is_grads_batched=True, retain_graph=True,
                allow_unused=True,
            )  # fmt: skip
        except RuntimeError:  # an op vmap cannot batch: one product at a time
            each = [
                torch.autograd.grad(
                    inc, rows, grad_outputs=v, retain_graph=True, allow_unused=True
                )[0]
                for v in vectors
            ]
            out = None if each[0] is None else torch.stack(each)
    return (None if out is None else out.detach()), inc


class _Columns:
    """Which products give a chunk's Jacobian rows: one per row, or one per colour.

    Rows ``k`` and ``l`` of a per-sample Jacobian that share no column (read off the
    Jacobians at a few probe steps) are recovered from one product ``(e_k + e_l)ᵀ J``
    (Curtis, Powell and Reid's compression): a func that maps each row of ``y`` on its
    own needs as many products as one row has entries, not the whole state. Every
    compressed chunk carries one more product with a random vector, checked against the
    recovered rows: a mismatch (a dependence the probes missed) recomputes that chunk with
    one product per row, so the Jacobians are exact either way.
    """

    def __init__(self, problem: AdjointProblem, samples: int, size: int):
        self.problem, self.samples, self.size = problem, samples, size
        self.shape = problem.states.shape[1:]
        states = problem.states
        self.eye = torch.eye(size, dtype=states.dtype, device=states.device)
        self.colors: Tensor | None = None
        self.rounds = 0  # rounds of batched calls spent besides one per chunk
        n = problem.num_steps
        if size > 2:
            probes = sorted({n // 2, n - 1})
            full = [self._full(j, j + 1)[0] for j in probes]
            if all(f is not None for f in full):
                pattern = torch.stack([f.ne(0).any(1).any(1) for f in full]).any(0)  # (d, d)
                colors = _greedy_colors(pattern)
                if int(colors.max()) + 2 < size:  # fewer products, the check included
                    self.colors, self.pattern = colors, pattern
            self.rounds = len(probes)
        self.products = size if self.colors is None else int(self.colors.max()) + 2
        self.fallbacks = 0

    def rows(self, lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
        """``J_j[s, k, :]`` for steps ``lo … hi-1``, as ``(d, hi - lo, S, d)`` (``None``: 0).

        And the chunk's increments with their graph (``None`` without one).
        """
        if self.colors is None:
            return self._full(lo, hi)
        count, d, s = hi - lo, self.size, self.samples
        seeds = torch.zeros(
            int(self.colors.max()) + 1, d, dtype=self.eye.dtype, device=self.eye.device
        )
        seeds[self.colors, torch.arange(d)] = 1.0
        gen = torch.Generator().manual_seed(lo)
        check = torch.randn(count, s, d, generator=gen, dtype=torch.float64).to(self.eye)
        vectors = torch.cat([seeds[:, None, None, :].expand(-1, count, s, d), check[None]])
        out, inc = _vjps(self.problem, lo, hi, vectors.reshape(len(vectors), count, *self.shape))
        if out is None:
            return None, inc
        out = out.reshape(len(vectors), count, s, d)
        rows = out[self.colors] * self.pattern[:, None, None, :]  # (d, count, s, d)
        expected = torch.einsum("kcsa,csk->csa", rows, check)
        scale = torch.einsum("kcsa,csk->csa", rows.abs(), check.abs()) + out[-1].abs()
        eps = torch.finfo(out.dtype).eps
        if bool(((expected - out[-1]).abs() <= 64 * d * eps * scale).all()):
            return rows, inc
        self.fallbacks += 1
        self.rounds += 1
        return self._full(lo, hi)

    def _full(self, lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
        count = hi - lo
        basis = self.eye.reshape(self.size, 1, 1, self.size)
        basis = basis.expand(self.size, count, self.samples, self.size)
        out, inc = _vjps(self.problem, lo, hi, basis.reshape(self.size, count, *self.shape))
        if out is None:
            return None, inc
        return out.reshape(self.size, count, self.samples, self.size), inc


def _greedy_colors(pattern: Tensor) -> Tensor:
    """A colour per row of ``pattern`` (``(d, d)`` bool); rows of a colour share no column."""
    colors: list[int] = []
    used: list[Tensor] = []  # the columns each colour's rows cover
    for row in pattern:
        for c, cover in enumerate(used):
            if not bool((cover & row).any()):
                colors.append(c)
                used[c] = cover | row
                break
        else:
            colors.append(len(used))
            used.append(row.clone())
    return torch.tensor(colors, device=pattern.device)
