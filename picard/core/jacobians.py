"""Per-sample Jacobians of a problem's increments along a trajectory, for small states.

Samples are independent (``batch_ndim``), so ``J_j = ∂Δ_j/∂x_j`` is one ``d × d`` block per
sample, ``d`` the per-sample state size: ``d`` vector–Jacobian products of one batched
forward call give every step's blocks at once. Rows ``k`` and ``l`` of a block that share
no column (read off the full Jacobian of a probe step) are recovered from one product
``(e_k + e_l)ᵀ J`` (Curtis, Powell and Reid's compression): a func that maps each row of
``y`` on its own needs as many products as one row has entries, not the whole state. Every
compressed call carries one more product with a random vector, checked against the
recovered rows: a mismatch (a dependence the probe missed) recomputes those steps with
one product per row, so the Jacobians are exact either way. Used by the exact adjoint
(:mod:`picard.core.dense_adjoint`) and Newton's verification (:mod:`picard.core.newton`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from picard.problem import Problem, per_sample_size

__all__ = ["DENSE_MAX", "MAX_ENTRIES", "Jacobians", "small_state"]

DENSE_MAX = 64
"""The largest per-sample state size whose Jacobians are formed."""

MAX_ENTRIES = 2**22
"""Jacobian entries held at once (steps × samples × d²): sets the chunk of steps."""


def small_state(problem: Problem, shape: torch.Size) -> bool:
    """Whether :class:`Jacobians` serves ``problem``: no memory, per-sample size ≤ DENSE_MAX.

    Args:
        problem: the problem.
        shape: the shape of one of its states.

    Returns:
        ``True`` where its increments read no earlier step and a sample has at most
        :data:`DENSE_MAX` numbers.

    Example:
        >>> import torch, picard
        >>> small_state(picard.Recursion(lambda i, x: -x, 3), torch.Size([4]))
        True
    """
    _, size = per_sample_size(shape, problem.batch_ndim)
    return problem.memory == 0 and size <= DENSE_MAX


class Jacobians:
    """The per-sample Jacobians of ``problem``'s increments at states given chunk by chunk.

    Args:
        problem: the problem (no memory).
        noise: what ``problem.init(x0)`` returned in the solve.
        states: a trajectory ``x_0 … x_N`` (working dtype) the probe reads.

    Attributes:
        samples: S, the samples; ``size``: d, each sample's numbers.
        products: vector–Jacobian products per step (``d``, or the colours and the check).
        rounds: rounds of batched calls spent on the probe and on rechecked chunks.
        fallbacks: chunks whose check failed.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x**2, 3, batch_dims=1)
        >>> xs = picard.sequential(rule, torch.ones(2, 1), save=True).ys
        >>> rows, inc = Jacobians(rule, None, xs).at(xs[:3], 0)
        >>> rows.shape, round(float(rows[0, 0, 0, 0]), 6)  # (d, steps, S, d); ∂(-0.1 x²)/∂x, x=1
        (torch.Size([1, 3, 2, 1]), -0.2)
    """

    def __init__(self, problem: Problem, noise: Any, states: Tensor):
        self.problem, self.noise = problem, noise
        self.shape = states.shape[1:]
        self.samples, self.size = per_sample_size(self.shape, problem.batch_ndim)
        self.eye = torch.eye(self.size, dtype=states.dtype, device=states.device)
        self.colors: Tensor | None = None
        self.rounds = self.fallbacks = 0
        n = states.shape[0] - 1
        if self.size > 2:  # one probe call, the last two steps: their full Jacobians
            lo = max(0, n - 2)
            full, _ = self._full(states[lo:n], lo)
            self.rounds = 1
            if full is not None:
                pattern = full.ne(0).any(1).any(1)  # (d, d): row k reads column a
                colors = _greedy_colors(pattern)
                if int(colors.max()) + 2 < self.size:  # fewer products, the check included
                    self.colors, self.pattern = colors, pattern
        self.products = self.size if self.colors is None else int(self.colors.max()) + 2

    def at(self, states: Tensor, lo: int) -> tuple[Tensor | None, Tensor | None]:
        """The Jacobians at ``states`` (steps ``lo …``), and their increments.

        Args:
            states: ``(m, *shape)``: the states of steps ``lo … lo + m - 1``.
            lo: the first step.

        Returns:
            ``(rows, inc)``: ``rows[k, j, s, a] = ∂Δ_{lo+j}[s, k]/∂x[s, a]``, shaped
            ``(d, m, S, d)`` (``None`` when no increment depends on its state), and the
            increments, with their graph kept where they have one.
        """
        if self.colors is None:
            return self._full(states, lo)
        count, d, s = states.shape[0], self.size, self.samples
        seeds = torch.zeros(
            int(self.colors.max()) + 1, d, dtype=self.eye.dtype, device=self.eye.device
        )
        seeds[self.colors, torch.arange(d)] = 1.0
        gen = torch.Generator().manual_seed(lo)
        check = torch.randn(count, s, d, generator=gen, dtype=torch.float64).to(self.eye)
        vectors = torch.cat([seeds[:, None, None, :].expand(-1, count, s, d), check[None]])
        out, inc = _vjps(
            self.problem, self.noise, states, lo, vectors.reshape(len(vectors), count, *self.shape)
        )
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
        return self._full(states, lo)

    def _full(self, states: Tensor, lo: int) -> tuple[Tensor | None, Tensor | None]:
        count = states.shape[0]
        basis = self.eye.reshape(self.size, 1, 1, self.size)
        basis = basis.expand(self.size, count, self.samples, self.size)
        out, inc = _vjps(
            self.problem, self.noise, states, lo, basis.reshape(self.size, count, *self.shape)
        )
        if out is None:
            return None, inc
        return out.reshape(self.size, count, self.samples, self.size), inc


def _vjps(
    problem: Problem, noise: Any, states: Tensor, lo: int, vectors: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """``vᵀ ∂Δ_j/∂x_j`` for each vector ``v`` (``(m, steps, *shape)``) at ``states``.

    One batched forward call and ``m`` products. Returns them (``None`` when no step
    depends on its state) and the increments, their graph kept where they have one.
    """
    with torch.enable_grad():
        rows = states.detach().requires_grad_(True)
        inc, _ = problem.increments(rows, lo, noise, None)
        if not inc.requires_grad:  # dy/dt = f(t): no graph
            return None, inc
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
