"""torchdiffeq's ``method="scipy_solver"``: scipy's ``solve_ivp``, one step after another.

Picard cannot sweep scipy's solvers (their steps run inside scipy), so this solve is
sequential, and its :class:`picard.Stats` say so: every call of ``func`` is a sequential
round. The result is computed in float64 (complex128 for a complex ``y0``) and returned
in ``y0``'s dtype and device, at the times ``t`` exactly (scipy's dense output, as
``t_eval``). scipy cannot differentiate: the result is detached, with a warning where a
gradient was asked for (torchdiffeq detaches silently).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_callable, check_grid
from picard.errors import NonFiniteError
from picard.solution import Stats, no_steps

__all__ = ["DEFAULT_SOLVER", "SOLVERS", "solve_scipy"]

SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
"""scipy's methods, the choices of ``options["solver"]``."""

DEFAULT_SOLVER = "LSODA"
"""torchdiffeq's default ``options["solver"]`` (its ``ScipyWrapperODESolver``)."""

# solve_ivp's arguments that solve_scipy passes itself.
_RESERVED = ("fun", "t_span", "y0", "t_eval", "method", "rtol", "atol")
# solve_ivp's arguments that would change what ``ys`` holds or how ``func`` is called.
_UNSUPPORTED = ("vectorized", "args", "events", "dense_output")
# Options torchdiffeq's wrapper takes and ignores (odeint's generic ones).
_IGNORED = ("norm", "grid_points", "eps")
# Warnings point at odeint's caller: user → odeint → integrate._scipy → solve_scipy.
_CALLER = 4
# Accepted steps in a row that leave t unchanged before the solve fails.
_STALLED = 10
# The methods solve_ivp runs on complex states ("Radau" and "LSODA" refuse them).
_COMPLEX_SOLVERS = ("RK45", "RK23", "DOP853", "BDF")


def solve_scipy(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    rtol: float,
    atol: float,
    options: Mapping[str, Any] | None,
) -> tuple[Tensor, Stats]:
    """Solve ``dy/dt = func(t, y)`` with scipy's ``solve_ivp``, reporting at ``t``.

    ``func`` is called as torchdiffeq calls it, once per evaluation under
    :func:`torch.no_grad`: a 0-d time in ``y0``'s real dtype and a state shaped and typed
    like ``y0`` on its device. ``t`` may decrease (scipy integrates backwards).

    Args:
        func: the drift, ``func(t, y) -> dy/dt`` for one time.
        y0: the initial state, any shape; a floating dtype, or complex for the solvers
            that support it (``"RK45"``, ``"RK23"``, ``"DOP853"``, ``"BDF"``).
        t: the output times (1-D, strictly monotone, on ``y0``'s device).
        rtol: scipy's relative tolerance.
        atol: scipy's absolute tolerance.
        options: ``solver``: scipy's method, one of :data:`SOLVERS` (default
            :data:`DEFAULT_SOLVER`, ``"LSODA"``, as torchdiffeq); any other key is passed
            to ``solve_ivp`` (``max_step``, ``min_step``, ``first_step``, ``jac``, ...;
            scipy warns about one its method does not use). ``norm``, ``grid_points`` and
            ``eps`` are ignored as torchdiffeq ignores them (a non-``None`` one warns).

    Returns:
        ``(ys, stats)``: ``ys`` of shape ``(len(t), *y0.shape)`` in ``y0``'s dtype and
        device, ``ys[0] = y0``, detached (but for one time point: ``y0[None]``).
        ``stats``: ``num_steps`` and ``sequential_steps`` count scipy's accepted steps
        (its rejected trials stay inside scipy); ``iterations`` and ``evaluations``
        count the calls of ``func``, each a sequential round (with the finite-difference
        Jacobians of ``"Radau"`` and ``"BDF"``, which scipy's ``nfev`` leaves out);
        ``stages`` is 1, so ``nfe`` is that count too; ``window`` is 1 (no step swept
        with another); ``window_starts`` holds, per call, the number of steps accepted
        before it; ``tol`` is ``rtol``.

    Raises:
        TypeError: ``y0``, ``t`` or ``func``'s result of an unsupported type or dtype
            (complex with ``"Radau"`` or ``"LSODA"``).
        ValueError: a bad ``options["solver"]``, a reserved or unsupported option key, or
            a bad ``t``.
        picard.NonFiniteError: ``func`` returned NaN or Inf at the initial state, the
            result holds NaN or Inf, or scipy failed after a non-finite evaluation
            (scipy alone would loop forever, return NaN, or fail with a message about
            step size or LU factors).
        RuntimeError: scipy failed otherwise (its message is included).

    Example:
        >>> import torch
        >>> t = torch.linspace(0, 1, 3, dtype=torch.float64)
        >>> ys, stats = solve_scipy(lambda t, y: -y, torch.ones(2, dtype=torch.float64), t,
        ...                         1e-8, 1e-10, {"solver": "RK45"})
        >>> ys.shape, abs(float(ys[-1, 0]) - 0.36787944117) < 1e-7  # exp(-1)
        (torch.Size([3, 2]), True)
        >>> stats.num_steps == stats.sequential_steps > 0, stats.nfe == stats.iterations
        (True, True)
    """
    func = check_callable("func", func)
    solver, extra = _solver_options(options)
    _check_y0(y0, solver)
    if isinstance(t, Tensor) and t.ndim == 1 and t.shape[0] == 1:  # nothing to integrate
        return y0[None].clone(), no_steps()  # as odeint: the identity, differentiable
    t = check_grid(t, y0)
    grad_wanted = torch.is_grad_enabled()
    gets_grad = grad_wanted and (y0.requires_grad or t.requires_grad)

    from scipy.integrate import solve_ivp

    drift = _Drift(func, y0, grad_wanted)
    times = t.detach().cpu().double().numpy()
    start = y0.detach().to(drift.work).cpu().numpy().reshape(-1)
    try:
        sol = solve_ivp(
            drift,
            t_span=(float(times[0]), float(times[-1])),
            y0=start,
            method=_counting(solver, drift),
            t_eval=times,
            rtol=float(rtol),
            atol=float(atol),
            **extra,
        )
    except NonFiniteError:
        raise
    except Exception as err:
        if drift.nonfinite:  # e.g. "Radau"/"BDF": "array must not contain infs or NaNs"
            raise NonFiniteError(
                f"scipy_solver ({solver}): func returned NaN or Inf {drift.nonfinite} "
                f"time(s), first at t={drift.first_bad:g}; scipy then failed: {err}"
            ) from err
        raise
    steps = drift.steps
    if not sol.success:
        if drift.nonfinite:
            raise NonFiniteError(
                f"scipy_solver ({solver}) failed after func returned NaN or Inf "
                f"{drift.nonfinite} time(s), first at t={drift.first_bad:g}: {sol.message}",
                step=steps,
            )
        raise RuntimeError(f"scipy_solver ({solver}) failed: {sol.message}")
    values = torch.from_numpy(np.ascontiguousarray(sol.y.T))
    if not bool(torch.isfinite(values).all()):  # "LSODA" reports success with NaN
        first = int(np.argmax(~np.isfinite(sol.y).all(axis=0)))
        raise NonFiniteError(
            f"scipy_solver ({solver}): the solution holds NaN or Inf from t[{first}] = "
            f"{times[first]:g} on" + drift.tally()
        )
    ys = values.reshape(len(times), *y0.shape).to(device=y0.device, dtype=y0.dtype)
    ys[0] = y0.detach()
    if gets_grad or drift.gets_grad:
        warnings.warn(
            "scipy_solver gives no gradients: scipy cannot differentiate, so the result "
            "is detached from y0, t and func's parameters; use a torch method (e.g. "
            "'dopri5') for gradients, or run under torch.no_grad() to silence this",
            UserWarning,
            stacklevel=_CALLER,
        )
    calls = drift.calls
    stats = Stats(
        num_steps=steps,
        window=1,
        tol=float(rtol),
        iterations=calls,
        evaluations=calls,
        stages=1,
        window_starts=tuple(drift.starts),
        sequential_steps=steps,
    )
    return ys, stats


def _solver_options(options: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``options["solver"]``, checked, and the keywords for ``solve_ivp``."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    extra = dict(options)
    solver = extra.pop("solver", DEFAULT_SOLVER)
    if not isinstance(solver, str) or solver not in SOLVERS:
        choices = ", ".join(repr(s) for s in SOLVERS)
        raise ValueError(f"options['solver'] must be one of {choices}; got {solver!r}")
    for key in extra:
        if not isinstance(key, str):
            raise TypeError(f"options keys must be strings, got {key!r}")
        if key in _RESERVED:
            raise ValueError(
                f"options[{key!r}] is set by scipy_solver itself (solve_ivp's {key} comes "
                "from func, y0, t, rtol, atol and options['solver']); remove it"
            )
        if key in _UNSUPPORTED:
            raise ValueError(
                f"options[{key!r}] is not supported by scipy_solver: it returns the states "
                "at t only and calls func with one state of y0's shape"
            )
    ignored = [k for k in _IGNORED if extra.pop(k, None) is not None]
    if ignored:
        warnings.warn(
            f"scipy_solver ignores options {ignored} (as torchdiffeq does): scipy's "
            "solve_ivp has its own error norm and step control",
            UserWarning,
            stacklevel=_CALLER + 1,
        )
    return solver, extra


def _check_y0(y0: Any, solver: str) -> None:
    """Check that ``y0`` is a floating tensor, complex only for a solver that takes it."""
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.is_complex():
        if solver not in _COMPLEX_SOLVERS:
            raise TypeError(
                f"y0 is complex ({y0.dtype}), but scipy's {solver} integrates real states "
                f"only; use one of {', '.join(_COMPLEX_SOLVERS)}, or split y0 into real "
                "and imaginary parts"
            )
    elif not y0.is_floating_point():
        raise TypeError(f"y0 must have a floating (or complex) dtype, got {y0.dtype}")


class _Drift:
    """``func`` as scipy calls it: flat numpy in, flat float64 (complex128) numpy out.

    Counts the calls, the steps accepted (``steps``, by :func:`_counting`) before each,
    and the non-finite results. The first call runs in the caller's grad mode, to see
    whether ``func``'s result would carry a gradient (its parameters); the others run
    under :func:`torch.no_grad`.
    """

    def __init__(self, func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, grad: bool):
        self.func = func
        self.shape = y0.shape
        self.dtype = y0.dtype
        self.device = y0.device
        self.time_dtype = y0.dtype.to_real()
        self.work = torch.complex128 if y0.is_complex() else torch.float64
        self.grad = grad
        self.gets_grad = False
        self.calls = 0
        self.starts: list[int] = []
        self.steps = 0
        self.nonfinite = 0
        self.first_bad = float("nan")

    def tally(self) -> str:
        """`` (func returned NaN or Inf k time(s), first at t=...)``, or ``""``."""
        if not self.nonfinite:
            return ""
        return (
            f" (func returned NaN or Inf {self.nonfinite} time(s), first at t={self.first_bad:g})"
        )

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        time = torch.tensor(float(t), dtype=self.time_dtype, device=self.device)
        state = torch.tensor(y, device=self.device).reshape(self.shape).to(self.dtype)
        first = self.calls == 0
        with torch.set_grad_enabled(self.grad and first):
            out = self.func(time, state)
        if not isinstance(out, Tensor):
            raise TypeError(f"func must return a torch.Tensor, got {type(out).__name__}")
        if out.numel() != state.numel():
            raise ValueError(
                f"func returned shape {tuple(out.shape)} for a state of shape "
                f"{tuple(self.shape)}; it must return dy/dt shaped like y"
            )
        if out.is_complex() and not self.work.is_complex:
            raise TypeError(f"func returned {out.dtype} for a real y0 ({self.dtype})")
        self.gets_grad = self.gets_grad or out.requires_grad
        result = out.detach().to(self.work).cpu().numpy().reshape(-1)
        self.starts.append(self.steps)
        self.calls += 1
        if not np.isfinite(result).all():
            self.nonfinite += 1
            if self.nonfinite == 1:
                self.first_bad = float(t)
            if first:  # every method starts from it (the explicit ones would loop forever)
                raise NonFiniteError(
                    f"scipy_solver: func returned NaN or Inf at the initial time t={t:g}",
                    step=0,
                )
        return result


def _counting(solver: str, drift: _Drift) -> Any:
    """A subclass of scipy's ``solver`` that counts its accepted steps in ``drift.steps``.

    ``solve_ivp`` takes an ``OdeSolver`` subclass as ``method``; each ``step()`` is one
    accepted step (its rejected trials inside) or the failure. Steps too small to move
    ``t`` fail the solve after :data:`_STALLED` in a row, as scipy's other methods fail at
    once ("LSODA" would step in place forever, e.g. just before a blow-up).
    """
    from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, Radau

    base = {"RK45": RK45, "RK23": RK23, "DOP853": DOP853, "Radau": Radau, "BDF": BDF}
    cls = base.get(solver, LSODA)
    stalled = 0

    def step(self: Any) -> Any:
        nonlocal stalled
        before = self.t
        message = cls.step(self)
        if self.status != "failed" and self.n > 0:
            drift.steps += 1
            stalled = stalled + 1 if self.t == before else 0
            if stalled >= _STALLED:
                self.status = "failed"
                message = (
                    f"{stalled} steps in a row too small to change t={self.t:g} (the "
                    "step size fell below the spacing of floating-point numbers)"
                )
        return message

    return type(cls.__name__, (cls,), {"step": step})
