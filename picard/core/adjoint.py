"""Gradients through a solve: the adjoint recursion, solved in parallel by picard's own loop.

A solve finds states ``x_1 … x_N`` with ``x_{i+1} = x_i + Δ_i`` (``Δ_i`` of ``x_i``, of
earlier states through a multistep rule's memory, and of the parameters θ). For a loss
``L`` of the returned states, the adjoints ``μ_i`` (the gradient flowing into step i's
increment) satisfy, backwards from ``μ_{N-1} = ∂L/∂x_N``,

    μ_{j-1} = ∂L/∂x_j + μ_j + Σ_{i>=j} (∂Δ_i/∂x_j)ᵀ μ_i          (j = N-1 … 0)

with ``μ_{-1} = ∂L/∂x_0``, and ``∂L/∂θ = Σ_i (∂Δ_i/∂θ)ᵀ μ_i``. The first line is itself a
recursion of N steps — run backwards, its increments are vector–Jacobian products of the
forward increments at the converged states — so picard solves it with the same loop: a
sweep recomputes a window of forward increments with autograd on, in one batched call,
and takes one batched VJP. Memory: the forward trajectory's states (O(N × state)) and one
window's activations, never every step's. At ``tol = 0`` the gradients are autograd's
through the sequential loop (to rounding); at ``tol > 0`` the backward solve stops where
each adjoint's RMS change is below ``tol`` times its RMS. Where a sample's state is small
and the rule has no memory, the recursion is solved exactly from per-sample Jacobians
instead (:mod:`picard.core.dense_adjoint`), at any ``tol``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from picard.core.dense_adjoint import dense_applies, solve_dense
from picard.problem import Problem, working_dtype
from picard.solution import Solution

__all__ = [
    "AdjointProblem",
    "Adjoints",
    "differentiable",
    "every_parameter",
    "gradient_inputs",
    "used_leaves",
]


class AdjointProblem(Problem):
    """The adjoint recursion of a solved problem, backwards, as a problem of its own.

    State ``k`` is the adjoint ``μ_{N-1-k}`` (state 0: ``∂L/∂x_N``; state N: ``∂L/∂x_0``);
    its increment ``∂L/∂x_j + Σ_{i>=j} (∂Δ_i/∂x_j)ᵀ μ_i`` (``j = N-1-k``) comes from one
    batched VJP of the forward increments over the window's rows. A forward problem with
    memory couples each increment to earlier states: its rows are all evaluated together
    (the adjoint solve then uses one window of all steps).

    Args:
        forward: the forward problem.
        states: the forward trajectory ``x_0 … x_N`` (working dtype).
        state: what ``forward.init`` returned in the forward solve (its noise).
        direct: ``(N, *x.shape)``, row j the loss's ``∂L/∂x_j`` of the states it reads
            directly (``x_N``'s starts the recursion), or ``None`` when it reads none.

    Example:
        >>> import picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 3)
        >>> xs = picard.sequential(rule, torch.ones(1), save=True).ys
        >>> adjoint = AdjointProblem(rule, xs, None, None)
        >>> float(picard.solve(adjoint, torch.ones(1), tol=0).final)  # d x_3 / d x_0 = 0.9³
        0.7289...
    """

    relative_tol = True

    def __init__(self, forward: Problem, states: Tensor, state: Any, direct: Tensor | None):
        self.forward, self.states, self.state, self.direct = forward, states, state, direct
        self.num_steps = forward.num_steps
        self.batch_ndim = forward.batch_ndim
        self.coupled = forward.memory > 0  # every row in one call, every adjoint at hand
        self.memory = self.num_steps if self.coupled else 0

    def increments(
        self, x: Tensor, start: int, state: Any, history: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """``∂L/∂x_j + Σ_i (∂Δ_i/∂x_j)ᵀ μ_i`` for the window's rows (one batched VJP).

        Without memory, the window's forward rows alone; with memory, every forward row
        (the adjoints of later steps, final already, come back through ``history``).
        """
        n, w = self.num_steps, x.shape[0]
        j_lo, j_hi = n - start - w, n - start  # forward states of the window, ascending
        mu = x.flip(0)  # μ_{j_lo} … μ_{j_hi - 1}: the window, forward order
        lo, hi = j_lo, j_hi
        if self.coupled:  # rows 0 … N-1: μ of the later ones from history
            if j_lo != 0:
                raise ValueError("a multistep problem's adjoint runs with one window of all steps")
            later = x.new_zeros((0, *x.shape[1:])) if history is None else history.flip(0)
            mu, hi = torch.cat([mu, later]), n
        with torch.enable_grad():
            rows = self.states[lo:hi].detach().requires_grad_(True)
            inc, _ = self.forward.increments(rows, lo, self.state, None)
            vjp = None
            if inc.requires_grad:  # else no step depends on its state (dy/dt = f(t))
                (vjp,) = torch.autograd.grad(inc, rows, grad_outputs=mu, allow_unused=True)
        vjp = torch.zeros_like(mu) if vjp is None else vjp
        vjp = vjp[: j_hi - lo]
        if self.direct is not None:
            vjp = vjp + self.direct[j_lo:j_hi]
        return vjp.flip(0).detach(), (x if self.coupled else None)


class _Solve(torch.autograd.Function):
    """``(final, kept states)`` of a solve, with the parallel adjoint as their backward."""

    @staticmethod
    def forward(ctx: Any, job: _Job, x0: Tensor, *params: Tensor) -> tuple[Tensor, Tensor]:
        ctx.job = job
        sol = job.sol
        kept = sol.final.new_empty(0) if job.keep is None else sol.ys[list(job.keep)]
        return sol.final.to(x0.dtype, copy=True), kept.to(x0.dtype)

    @staticmethod
    @once_differentiable  # the backward solve is not itself differentiated (a clear error)
    def backward(ctx: Any, grad_final: Tensor, grad_kept: Tensor) -> tuple[Any, ...]:
        job = ctx.job
        dx0, dparams = job.backward(grad_final, grad_kept)
        return (None, dx0, *dparams)


class _Job:
    """One differentiable solve: its forward result and how to run its backward."""

    def __init__(
        self,
        problem: Problem,
        sol: Solution,
        state: Any,
        keep: Sequence[int] | None,
        params: list[Tensor],
        solve_adjoint: Callable[[Problem, Tensor, int], Solution],
        zeros: bool = False,
    ):
        self.problem, self.sol, self.state, self.keep = problem, sol, state, keep
        self.params, self.solve_adjoint, self.zeros = params, solve_adjoint, zeros
        assert sol.ys is not None  # every state was saved
        self.states = sol.ys

    def backward(self, grad_final: Tensor | None, grad_kept: Tensor | None) -> Any:
        """``(∂L/∂x_0, ∂L/∂params)`` from the gradients of the returned states."""
        states, n = self.states, self.problem.num_steps
        work = states.dtype
        start = torch.zeros_like(states[0]) if grad_final is None else grad_final.to(work)
        direct = None
        if self.keep is not None and grad_kept is not None and bool(grad_kept.any()):
            direct = states.new_zeros(states.shape)  # ∂L/∂x_j by state, j = 0 … N
            at = torch.as_tensor(list(self.keep), device=states.device)
            direct.index_add_(0, at, grad_kept.to(work))
            start = start + direct[n]
            direct = direct[:n]
        adjoint = AdjointProblem(self.problem, states, self.state, direct)
        if dense_applies(adjoint):  # small states: exact, parameters from the same calls
            back, sums = solve_dense(adjoint, start, self.params)
        else:
            window = n if self.problem.memory else None
            back, sums = self.solve_adjoint(adjoint, start, window or 0), None
        self.sol.stats.backward.append(back.stats)
        assert back.ys is not None
        dx0 = back.ys[n]  # μ_{-1}: the recursion's last step adds ∂L/∂x_0
        if sums is None:
            sums = self._parameter_sums(back.ys[:n].flip(0), back.stats.window)  # μ_0 … μ_{N-1}
        return dx0.to(states.dtype), [
            (torch.zeros_like(p) if self.zeros else None) if t is None else t.to(p.dtype)
            for t, p in zip(sums, self.params, strict=True)
        ]

    def _parameter_sums(self, mu: Tensor, window: int) -> list[Tensor | None]:
        """``Σ_i (∂Δ_i/∂θ)ᵀ μ_i``, one batched VJP per window of rows.

        A multistep problem's rows are taken all at once (they are coupled).
        """
        if not self.params:
            return []
        n = self.problem.num_steps
        size = n if self.problem.memory else max(1, window)
        total: list[Tensor | None] = [None] * len(self.params)
        for lo in range(0, n, size):
            hi = min(n, lo + size)
            with torch.enable_grad():
                inc, _ = self.problem.increments(self.states[lo:hi], lo, self.state, None)
                grads = (
                    torch.autograd.grad(inc, self.params, grad_outputs=mu[lo:hi], allow_unused=True)
                    if inc.requires_grad
                    else (None,) * len(self.params)  # no parameter is used
                )
            total = [
                g if t is None else (t if g is None else t + g)
                for t, g in zip(total, grads, strict=True)
            ]
        return total


class Adjoints(Protocol):
    """What :func:`differentiable` needs of a solve (:class:`picard.core.run.Solver`).

    Example:
        >>> from picard.core.run import Solver
        >>> hasattr(Solver, "adjoint") and hasattr(Solver, "noise")
        True
    """

    problem: Problem
    x0: Tensor
    noise: Any

    def adjoint(self, adjoint: Problem, start: Tensor, window: int) -> Solution:
        """Solve the backward recursion from ``start`` (window 0: the forward's)."""
        ...


def differentiable(
    solver: Adjoints,
    sol: Solution,
    keep: Sequence[int] | None,
    params: Iterable[Tensor],
    zeros: bool = False,
) -> Solution:
    """``sol`` (a forward solve that kept every state) with gradients to ``x0`` and ``params``.

    Args:
        solver: the forward solve: its problem, ``x0``, noise, and how it solves the
            backward recursion (:meth:`picard.core.run.Solver.adjoint`, keeping every state).
        sol: the forward solution, every state kept (working dtype).
        keep: the state indices the caller asked for (``None``: only the final state).
        params: the parameters gradients flow to.
        zeros: give a parameter the solve does not use a zero gradient (as torchdiffeq's
            adjoint gives its ``adjoint_params``), not ``None`` (as autograd).

    Returns:
        The solution the caller asked for; ``final`` and ``ys`` are differentiable and
        ``stats.backward`` lists the stats of each backward pass run.

    Example:
        >>> import picard
        >>> x0 = torch.ones(1, requires_grad=True)
        >>> sol = picard.solve(picard.Recursion(lambda i, x: -0.1 * x, 3), x0, tol=0)
        >>> sol.final.backward()
        >>> x0.grad, len(sol.stats.backward)
        (tensor([0.7290]), 1)
    """
    params = list(params)
    job = _Job(solver.problem, sol, solver.noise, keep, params, solver.adjoint, zeros)
    final, kept = _Solve.apply(job, solver.x0, *params)
    return Solution(final=final, ys=None if keep is None else kept, steps=keep, stats=sol.stats)


def used_leaves(output: Tensor) -> list[Tensor]:
    """The leaf tensors requiring grad that ``output`` was computed from.

    They are the ``AccumulateGrad`` nodes of its graph, in the order first met.

    Args:
        output: a tensor computed with autograd on.

    Returns:
        The leaves (each once).

    Example:
        >>> w, b = torch.ones(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        >>> leaves = used_leaves((2 * w + b.exp()).sum())
        >>> leaves[0] is w, leaves[1] is b
        (True, True)
    """
    leaves: dict[int, Tensor] = {}
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            leaves.setdefault(id(variable), variable)
        stack.extend(reversed([f for f, _ in node.next_functions]))
    return list(leaves.values())


def gradient_inputs(
    problem: Problem, x0: Tensor, state: Any, given: Iterable[Tensor] | None
) -> list[Tensor] | None:
    """The tensors a solve's gradients flow to besides ``x0``, or ``None`` if none needs them.

    ``given`` (``adjoint_params``) when set; otherwise the problem's declared
    :meth:`~picard.Problem.parameters` (an ``nn.Module`` model's) and every tensor
    requiring grad that one traced call of the first step uses (a closure's
    ``nn.Module``, a conditioning embedding), so that ``odeint(lambda t, y: net(y), y0,
    t)`` trains ``net`` as autograd through torchdiffeq's loop does. The trace is one
    increment of one row with autograd on, once per solve, not counted in
    :class:`~picard.Stats`; ``torch.no_grad()`` or ``adjoint_params`` skip it.

    Args:
        problem: the forward problem.
        x0: the initial state.
        state: what ``problem.init(x0)`` returned (the trace reuses it: no new noise).
        given: the caller's ``adjoint_params`` (``None``: find them).

    Returns:
        The tensors requiring grad, or ``None`` when neither ``x0`` nor any of them does.

    Example:
        >>> import picard
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> rule = picard.Recursion(lambda i, x: -w * x, 3)  # a closure over w
        >>> found = gradient_inputs(rule, torch.ones(1), None, None)
        >>> len(found), found[0] is w
        (1, True)
        >>> print(gradient_inputs(rule, torch.ones(1), None, ()))  # adjoint_params=()
        None
    """
    if given is not None:
        candidates = list(given)
    else:
        candidates = list(
            {id(p): p for p in [*problem.parameters(), *_traced(problem, x0, state)]}.values()
        )
    params = [p for p in candidates if p.requires_grad]
    if not x0.requires_grad and not params:
        return None
    return params


def _traced(problem: Problem, x0: Tensor, state: Any) -> list[Tensor]:
    """The leaves requiring grad that the first step's increment of one row uses."""
    with torch.enable_grad():
        inc, _ = problem.increments(x0.detach().to(working_dtype(x0.dtype))[None], 0, state, None)
    return used_leaves(inc) if isinstance(inc, Tensor) and inc.requires_grad else []


def every_parameter(ys: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``ys`` unchanged, with a gradient for every parameter (zero where the solve uses none).

    torchdiffeq's and torchsde's adjoints give each of their adjoint parameters a gradient,
    and their outputs require one whenever a parameter does; autograd alone would give an
    unused parameter none (and an output that uses no parameter no graph at all).

    Args:
        ys: a solve's output.
        params: the parameters (those requiring gradients are connected).

    Returns:
        ``ys``, connected to ``params``.

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> out = every_parameter(torch.ones(3), [w])
        >>> out.sum().backward()
        >>> w.grad
        tensor([0., 0.])
    """
    wanted = [p for p in params if p.requires_grad]
    if not wanted or not torch.is_grad_enabled():
        return ys
    return _EveryParameter.apply(ys, *wanted)


class _EveryParameter(torch.autograd.Function):
    """The autograd function of :func:`every_parameter`."""

    @staticmethod
    def forward(ctx: Any, ys: Tensor, *params: Tensor) -> Tensor:
        ctx.shapes = [(p.shape, p.dtype, p.device) for p in params]
        return ys.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        return (grad, *(torch.zeros(s, dtype=d, device=v) for s, d, v in ctx.shapes))
