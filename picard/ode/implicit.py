"""torchdiffeq's fixed-grid implicit Runge–Kutta methods, solved in parallel sweeps.

An implicit method's step is itself a fixed point: step i's stage slopes solve

    K_s = f(t_i + c_s h_i, x_i + h_i Σ_j a_sj K_j)        (s = 1 … stages)

and the increment is ``h_i Σ_s b_s K_s``. :class:`ImplicitODEProblem` solves these stage
equations for every row of a window together: the rows' (and samples') systems are
independent, so each iteration is one batched call of ``func`` over rows × stages, and a
system that has converged is frozen (its rows leave the calls once all their samples
have). A stage whose row of A is zero (the first of ``trapezoid`` and ``trbdf2``) is
evaluated once, not solved.

The iteration starts from ``K_s = f(t_i, x_i)`` (one call) and is

- simplified Newton when a system is small (``stages × d <= 512``, d the elements of one
  sample's state): ``J = ∂f/∂y`` at the step's start by autograd (one call on d copies of
  the rows), ``I - h (A ⊗ J)`` factored once per call, then per iteration one call and
  one batched LU solve — stiff problems converge where functional iteration diverges;
- functional iteration ``K ← f(t + c h, x + h A K)`` otherwise.

A system stops when the 2-norm of its residual ``K - f(t + c h, x + h A K)`` is below
the tolerance (torchdiffeq's: 1e-6 for float32 states, 1e-8 for float64); after
``max_iters`` iterations a warning says the iteration did not converge, as torchdiffeq's
does. Per-sample systems (``batch_ndim > 0``) assume ``func`` treats samples
independently, as picard's convergence test does.

Gradients (picard's parallel adjoint differentiates :meth:`ImplicitODEProblem.increments`)
are those of the implicit function theorem: the solve runs without autograd, then one
evaluation ``F = f(t + c h, x + h A K*)`` with autograd (``K*`` detached) gives the
returned slopes ``K* + (F - F.detach())`` — the same values — whose backward hook turns an
incoming gradient ``g`` into ``(I - h (A ⊗ J*))^{-T} g`` (``J*`` at the stage points):
exactly by a linear solve for small systems, by the Neumann series of VJPs
``u ← g + h Aᵀ J*ᵀ u`` (which converges where functional iteration does) for large ones.
The gradients are exact up to the forward's residual; they are not themselves
differentiable (no double backward).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from picard.ode.runge_kutta import GridProblem, GridState, stage_times
from picard.problem import call_batched, per_sample_size

__all__ = ["IMPLICIT", "NEWTON_MAX_SIZE", "ImplicitODEProblem", "ImplicitTableau"]

NEWTON_MAX_SIZE = 512
"""Newton's method for systems of at most this many unknowns (implicit stages × d)."""

JACOBIAN_ELEMENTS = 1 << 24
"""About how many state elements one Jacobian call evaluates (copies of the rows)."""


@dataclass(frozen=True)
class ImplicitTableau:
    """The Butcher tableau of an implicit Runge–Kutta method.

    Attributes:
        c: the stages' nodes (fractions of the step).
        a: the stage matrix, one row per stage (a full square matrix).
        b: the weights of the stages' slopes in the increment.
        order: the method's order of accuracy.

    Example:
        >>> gl4 = IMPLICIT["gl4"]
        >>> gl4.stages, gl4.order, gl4.explicit
        (2, 4, (False, False))
        >>> IMPLICIT["trbdf2"].explicit  # its first stage is f(t_i, x_i)
        (True, False, False)
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        s = len(self.c)
        if s == 0 or len(self.b) != s or len(self.a) != s or any(len(r) != s for r in self.a):
            raise ValueError(
                f"an implicit tableau needs c and b of one length s and an s × s matrix a; got "
                f"{len(self.c)} nodes, {len(self.b)} weights and rows of {[len(r) for r in self.a]}"
            )

    @property
    def stages(self) -> int:
        """The number of stages (slopes per step)."""
        return len(self.c)

    @property
    def explicit(self) -> tuple[bool, ...]:
        """Per stage: whether its row of ``a`` is zero (its slope is ``f(t + c h, x)``)."""
        return tuple(all(v == 0 for v in row) for row in self.a)


_S2, _S3, _S6, _S15 = math.sqrt(2), math.sqrt(3), math.sqrt(6), math.sqrt(15)
_G, _BETA = 1 - _S2 / 2, _S2 / 4  # trbdf2's γ (its first stage is the trapezoid's)
_GS = (2 - _S2) / 2  # sdirk2's γ
_R5 = (4 / 9 - _S6 / 36, 4 / 9 + _S6 / 36, 1 / 9)  # radauIIA5's weights (its last row)

IMPLICIT: dict[str, ImplicitTableau] = {
    "implicit_euler": ImplicitTableau((1.0,), ((1.0,),), (1.0,), 1),
    "implicit_midpoint": ImplicitTableau((0.5,), ((0.5,),), (1.0,), 2),
    "trapezoid": ImplicitTableau((0.0, 1.0), ((0.0, 0.0), (0.5, 0.5)), (0.5, 0.5), 2),
    "radauIIA3": ImplicitTableau(
        (1 / 3, 1.0), ((5 / 12, -1 / 12), (3 / 4, 1 / 4)), (3 / 4, 1 / 4), 3
    ),
    # The Gauss–Legendre nodes 1/2 ∓ √3/6. torchdiffeq's table has 1/2 - √3/6 twice (a typo:
    # its second stage is evaluated at the wrong time, which costs the method its order on
    # non-autonomous problems); picard uses the correct nodes.
    "gl4": ImplicitTableau(
        (0.5 - _S3 / 6, 0.5 + _S3 / 6),
        ((1 / 4, 1 / 4 - _S3 / 6), (1 / 4 + _S3 / 6, 1 / 4)),
        (0.5, 0.5),
        4,
    ),
    "radauIIA5": ImplicitTableau(
        (2 / 5 - _S6 / 10, 2 / 5 + _S6 / 10, 1.0),
        (
            (11 / 45 - 7 * _S6 / 360, 37 / 225 - 169 * _S6 / 1800, -2 / 225 + _S6 / 75),
            (37 / 225 + 169 * _S6 / 1800, 11 / 45 + 7 * _S6 / 360, -2 / 225 - _S6 / 75),
            _R5,
        ),
        _R5,
        5,
    ),
    "gl6": ImplicitTableau(
        (0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
        (
            (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
            (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
            (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36),
        ),
        (5 / 18, 4 / 9, 5 / 18),
        6,
    ),
    "sdirk2": ImplicitTableau((_GS, 1.0), ((_GS, 0.0), (1 - _GS, _GS)), (1 - _GS, _GS), 2),
    "trbdf2": ImplicitTableau(
        (0.0, 2 * _G, 1.0),
        ((0.0, 0.0, 0.0), (_G, _G, 0.0), (_BETA, _BETA, _G)),
        (_BETA, _BETA, _G),
        2,
    ),
}
"""torchdiffeq's fixed-grid implicit methods by name (orders 1, 2, 2, 3, 4, 5, 6, 2, 2)."""


class ImplicitODEProblem(GridProblem):
    """``dy/dt = func(t, y)`` on the grid ``t``, stepped by an implicit Runge–Kutta method.

    Each call of :meth:`increments` solves the stage equations of all the window's rows
    together (see the module's description): Newton's method for small states,
    functional iteration for large ones.

    Args:
        func: batched drift, ``func(t: (M,), y: (M, *y0.shape)) -> (M, *y0.shape)``;
            rows (and, with ``batch_ndim``, samples) must be independent.
        t: the grid (1-D, strictly monotone); N = ``len(t) - 1`` steps.
        tableau: an :class:`ImplicitTableau` or a name of :data:`IMPLICIT`.
        in_dtype: the dtype ``func`` receives ``y`` in (the user's ``y0.dtype``).
        batch_ndim: leading dimensions of ``y0`` that index independent samples.
        perturb: torchdiffeq's ``options={"perturb": True}``: a stage at a step's start
            is evaluated just after it, one at its end just before it.
        max_iters: at most this many iterations of the stage equations per call.
        tol: a system stops when its residual's 2-norm is below this (default:
            torchdiffeq's 1e-6 for float32 states, 1e-8 for float64).

    Attributes:
        newton_max_size: Newton's method for systems of at most this many unknowns
            (implicit stages × elements of one sample), functional iteration above
            (default :data:`NEWTON_MAX_SIZE`; 0 forces functional iteration).

    Example:
        >>> import torch, picard
        >>> t = torch.linspace(0, 1, 11, dtype=torch.float64)
        >>> p = ImplicitODEProblem(lambda t, y: -y, t, "implicit_euler", torch.float64)
        >>> float(picard.solve(p, torch.ones(1, dtype=torch.float64), tol=0).final)
        0.3855432...
        >>> round(1.1**-10, 7)  # (1 + h)^-N
        0.3855433
    """

    newton_max_size: int = NEWTON_MAX_SIZE

    def __init__(
        self,
        func: Callable[[Tensor, Tensor], Tensor],
        t: Tensor,
        tableau: ImplicitTableau | str,
        in_dtype: torch.dtype,
        batch_ndim: int = 0,
        perturb: bool = False,
        max_iters: int = 100,
        *,
        tol: float | None = None,
    ):
        if isinstance(tableau, str):
            if tableau not in IMPLICIT:
                raise ValueError(f"unknown implicit method {tableau!r}; one of {sorted(IMPLICIT)}")
            tableau = IMPLICIT[tableau]
        if not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
        super().__init__(func, t, in_dtype, batch_ndim)
        self.tableau = tableau
        self.stages = tableau.stages
        self.max_iters = max_iters
        self.tol = tol
        self._start_t = stage_times(t, 0.0, perturb)
        self._stage_t = torch.stack([stage_times(t, c, perturb) for c in tableau.c], 1)
        self._implicit = [s for s, e in enumerate(tableau.explicit) if not e]
        self._explicit = [s for s, e in enumerate(tableau.explicit) if e]
        self._warned = False

    def increments(
        self, x: Tensor, start: int, state: GridState, history: Tensor | None
    ) -> tuple[Tensor, None]:
        """Increments ``h_i Σ b_s K_s`` of the window's steps, their stages solved together.

        Differentiable (with autograd on) by the implicit function theorem.
        """
        w, shape = x.shape[0], x.shape[1:]
        stop = start + w
        samples, d = per_sample_size(shape, self.batch_ndim)
        h_b = state.dt[start:stop]  # broadcasts against x
        h = h_b.reshape(w)
        times = self._stage_t[start:stop]  # (w, s)
        f0 = self._call(self._start_t[start:stop], x)
        ks: list[Tensor | None] = [None] * self.stages
        for s in self._explicit:
            k = f0 if self.tableau.c[s] == 0 else self._call(times[:, s], x)
            ks[s] = k.reshape(w, samples, d)
        if self._implicit:
            imp = self._implicit
            a = torch.tensor(self.tableau.a, dtype=x.dtype, device=x.device)
            a_ii = a[imp][:, imp]
            base = x.reshape(w, 1, samples, d).expand(w, len(imp), samples, d)
            if self._explicit:
                k_e = torch.stack([_known(ks[s]) for s in self._explicit], 1)
                a_ie = a[imp][:, self._explicit]
                base = base + h[:, None, None, None] * torch.einsum("pq,wqbd->wpbd", a_ie, k_e)
            t_imp = times[:, imp]
            guess = f0.detach().reshape(w, 1, samples, d).expand(w, len(imp), samples, d)
            with torch.no_grad():
                k_imp = self._solve(
                    base.detach(), guess.clone(), h, a_ii, t_imp, x.detach(), start, shape
                )
            if torch.is_grad_enabled():
                k_imp = self._attach(k_imp, base, h, a_ii, t_imp, shape)
            for j, s in enumerate(imp):
                ks[s] = k_imp[:, j]
        b = torch.tensor(self.tableau.b, dtype=x.dtype, device=x.device)
        slope = torch.einsum("s,swbd->wbd", b, torch.stack([_known(k) for k in ks]))
        return h_b * slope.reshape(x.shape), None

    def _call(self, times: Tensor, y: Tensor) -> Tensor:
        """One batched call of ``func`` on the rows ``y`` at ``times``."""
        return call_batched(self.func, "func", times, y, self.in_dtype)

    def _tol(self, dtype: torch.dtype) -> float:
        if self.tol is not None:
            return self.tol
        return 1e-6 if dtype == torch.float32 else 1e-8

    def _stage_values(
        self, base: Tensor, k: Tensor, h: Tensor, a_ii: Tensor, times: Tensor, shape: torch.Size
    ) -> Tensor:
        """``f(t + c h, base + h A K)`` at the implicit stages of ``k`` (one call)."""
        y = base + h[:, None, None, None] * torch.einsum("pq,wqbd->wpbd", a_ii, k)
        return self._call(times.reshape(-1), y.reshape(-1, *shape)).reshape(k.shape)

    def _solve(
        self,
        base: Tensor,
        k: Tensor,
        h: Tensor,
        a_ii: Tensor,
        times: Tensor,
        x: Tensor,
        start: int,
        shape: torch.Size,
    ) -> Tensor:
        """The implicit stages' slopes ``(w, stages, samples, d)`` (Newton or functional).

        Every unfinished system of the window is evaluated in one call per iteration.
        """
        w, si, samples, d = k.shape
        tol = self._tol(k.dtype)
        newton = si * d <= self.newton_max_size
        if newton:
            jac = self._jacobian(self._start_t[start : start + w], x, samples, d)
            lu, pivots = torch.linalg.lu_factor(_newton_matrix(a_ii, h, jac))
            lu, pivots = lu.reshape(w, samples, si * d, si * d), pivots.reshape(w, samples, -1)
        active = torch.ones(w, samples, dtype=torch.bool, device=k.device)
        failed = torch.zeros_like(active)
        worst = 0.0
        for _ in range(self.max_iters):
            rows = active.any(1).nonzero().squeeze(1)
            k_rows = k[rows]
            values = self._stage_values(base[rows], k_rows, h[rows], a_ii, times[rows], shape)
            residual = k_rows - values
            norm = torch.linalg.vector_norm(residual.transpose(1, 2).flatten(2), dim=-1)
            finite = torch.isfinite(norm)
            failed[rows] |= active[rows] & ~finite
            still = active[rows] & finite & (norm >= tol)
            active[rows] = still
            if not bool(still.any()):
                break
            worst = float(norm[still].max())
            if newton:
                rhs = residual.transpose(1, 2).reshape(-1, si * d, 1)
                step = torch.linalg.lu_solve(
                    lu[rows].flatten(0, 1), pivots[rows].flatten(0, 1), rhs
                )
                update = k_rows - step.reshape(-1, samples, si, d).transpose(1, 2)
            else:
                update = values
            k[rows] = torch.where(still[:, None, :, None], update, k_rows)
        if bool(active.any()) or bool(failed.any()):
            what = "Newton's iteration" if newton else "Functional iteration"
            lo, hi = start, start + w - 1
            if bool(failed.any()):
                why = "met a non-finite residual"
            else:
                why = f"did not converge in {self.max_iters} iterations (largest residual "
                why += f"{worst:.3g}, tol {tol:g})"
            self._warn(
                f"{what} on the implicit stage equations {why} at some of steps {lo}…{hi}; "
                "the solution may be incorrect"
            )
        return k

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _jacobian(self, times: Tensor, y: Tensor, samples: int, d: int) -> Tensor:
        """Per row and sample, ``∂f/∂y`` at ``(times, y)``: ``(n, samples, d, d)``.

        Copy k of the rows seeds output element k of every sample: one call of ``func``
        on ``d`` copies (split when they are many) and one backward give every Jacobian.
        """
        n, shape = y.shape[0], y.shape[1:]
        chunk = max(1, JACOBIAN_ELEMENTS // max(1, y.numel()))
        parts = []
        y = y.detach()
        for k0 in range(0, d, chunk):
            kc = min(chunk, d - k0)
            copies = y.unsqueeze(0).expand(kc, *y.shape).reshape(kc * n, *shape).clone()
            seed = y.new_zeros(kc, n, samples, d)
            seed[torch.arange(kc), :, :, torch.arange(k0, k0 + kc)] = 1
            with torch.enable_grad():
                copies.requires_grad_(True)
                out = self._call(times.repeat(kc), copies)
                if out.requires_grad:
                    (g,) = torch.autograd.grad(
                        out, copies, seed.reshape(out.shape), allow_unused=True
                    )
                else:
                    g = None
            parts.append(seed.new_zeros(seed.shape) if g is None else g.reshape(seed.shape))
        return torch.cat(parts).permute(1, 2, 0, 3)  # rows: output elements

    def _attach(
        self, k: Tensor, base: Tensor, h: Tensor, a_ii: Tensor, times: Tensor, shape: torch.Size
    ) -> Tensor:
        """``k`` (solved, detached) with the implicit function theorem's gradients."""
        y = base + h[:, None, None, None] * torch.einsum("pq,wqbd->wpbd", a_ii, k)
        values = self._call(times.reshape(-1), y.reshape(-1, *shape)).reshape(k.shape)
        if not values.requires_grad:
            return k
        hook = partial(self._adjoint_hook, y.detach(), h, a_ii, times, shape)
        values.register_hook(hook)
        return k + (values - values.detach())

    def _adjoint_hook(
        self,
        y: Tensor,
        h: Tensor,
        a_ii: Tensor,
        times: Tensor,
        shape: torch.Size,
        grad: Tensor,
    ) -> Tensor:
        """``(I - h (A ⊗ J))^{-T} grad``, ``J`` per stage at the stage points ``y``."""
        w, si, samples, d = grad.shape
        grad = grad.detach()
        if si * d <= self.newton_max_size:
            jac = self._jacobian(times.reshape(-1), y.reshape(-1, *shape), samples, d)
            matrix = _newton_matrix(a_ii, h, jac.reshape(w, si, samples, d, d))
            rhs = grad.transpose(1, 2).reshape(-1, si * d, 1)
            u = torch.linalg.solve(matrix.mT, rhs)
            return u.reshape(w, samples, si, d).transpose(1, 2)
        tol = self._tol(grad.dtype)
        scale = torch.linalg.vector_norm(grad.transpose(1, 2).flatten(2), dim=-1)
        with torch.enable_grad():
            at = y.clone().requires_grad_(True)
            values = self._call(times.reshape(-1), at.reshape(-1, *shape)).reshape(at.shape)
            u = grad
            for _ in range(self.max_iters):
                (vjp,) = torch.autograd.grad(values, at, u, retain_graph=True, allow_unused=True)
                if vjp is None:
                    return grad
                new = grad + h[:, None, None, None] * torch.einsum("pq,wpbd->wqbd", a_ii, vjp)
                change = torch.linalg.vector_norm((new - u).transpose(1, 2).flatten(2), dim=-1)
                u = new.detach()
                if bool((change <= tol * scale).all()):
                    return u
        self._warn(
            "Functional iteration on the implicit stage equations' adjoint did not converge "
            f"in {self.max_iters} iterations; the gradients may be incorrect"
        )
        return u

    def guess(self, x: Tensor, start: int, count: int, state: Any) -> Tensor | None:
        """No guess: the entering steps start from copies of the window's last state."""
        return None


def _known(k: Tensor | None) -> Tensor:
    """A stage's slope, computed by now."""
    assert k is not None
    return k


def _newton_matrix(a: Tensor, h: Tensor, jac: Tensor) -> Tensor:
    """``I - h (A ⊗ J)`` per row and sample: ``(w * samples, s d, s d)``.

    ``jac`` is ``(w, samples, d, d)`` (one Jacobian per system) or ``(w, s, samples, d, d)``
    (one per stage: block ``(p, q)`` is ``a_pq J_p``).
    """
    s = a.shape[0]
    if jac.ndim == 4:
        jac = jac[:, None].expand(jac.shape[0], s, *jac.shape[1:])
    w, _, samples, d, _ = jac.shape
    per_stage = jac.permute(0, 2, 1, 3, 4)[:, :, :, :, None, :]  # (w, samples, p, i, 1, j)
    blocks = h[:, None, None, None, None, None] * a[None, None, :, None, :, None] * per_stage
    eye = torch.eye(s * d, dtype=jac.dtype, device=jac.device)
    return eye - blocks.reshape(w * samples, s * d, s * d)
