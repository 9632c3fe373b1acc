"""``odeint``: torchdiffeq's call, solved in parallel sweeps.

Each explicit Runge–Kutta method is its Butcher tableau (:mod:`picard.ode.tableaus`); every
stage is one batched call of ``func`` over the window, so a sweep of an s-stage method
makes s calls. An embedded pair with no step size (the default, ``dopri5``) chooses its
grid by torchdiffeq's error test (:mod:`picard.ode.adaptive`); otherwise the grid is ``t``
itself, ``t`` refined (``step_size=``), or torchdiffeq's own grids (``options={"step_size":
h}`` or ``{"grid_constructor": ...}``, read back onto ``t`` by its linear interpolation).
``func`` may be written for one time and one state, as for torchdiffeq
(:mod:`picard.ode.batching`), and gradients flow to ``y0`` and its parameters through a
parallel backward pass (:mod:`picard.core.adjoint`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from picard.checks import (
    check_batch_dims,
    check_callable,
    check_grid,
    check_int,
    check_nonneg,
    check_state,
)
from picard.core.acceleration import acceleration_of
from picard.core.adjoint import every_parameter
from picard.core.newton import newton_applies
from picard.core.options import Options
from picard.ode.adams import ADAMS, MAX_ORDER, AdamsProblem
from picard.ode.batching import batched_form
from picard.ode.callbacks import Callbacks
from picard.ode.grids import constructed_grid, interpolate, refine_grid, step_size_grid
from picard.ode.implicit import IMPLICIT, ImplicitODEProblem
from picard.ode.paths import (
    PATHS,
    Clock,
    adjoint_steps,
    in_adjoint,
    in_sweeps_only,
    path_choice,
)
from picard.ode.runge_kutta import (
    GUESS_STEPS,
    ODEProblem,
    combine,
    differentiable_steps,
    stage_times,
)
from picard.ode.scipy_adjoint import scipy_with_gradients
from picard.ode.tableaus import ADAPTIVE, METHODS, Tableau, tableau_for
from picard.problem import Problem, call_batched, model_parameters
from picard.solution import Solution, no_steps
from picard.solver import solve_with

__all__ = [
    "GUESS_STEPS",
    "METHODS",
    "STEP_OPTIONS",
    "ODEProblem",
    "combine",
    "odeint",
    "odeint_adjoint",
]

DEFAULT_METHOD = "dopri5"
"""torchdiffeq's default method: Dormand–Prince 5(4), error-controlled."""

TORCHDIFFEQ_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp")
"""The keys of torchdiffeq's fixed-grid ``options`` that ``odeint`` reads."""

METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "rk": (),
    "adams": ("max_order", "max_iters"),
    "implicit": ("max_iters",),
    "scipy": ("solver",),  # and scipy's own solve_ivp keywords, passed on
}
"""The ``options`` keys each family of methods reads besides the grid's (torchdiffeq's)."""

DEFAULT_RTOL, DEFAULT_ATOL = 1e-7, 1e-9
"""torchdiffeq's default tolerances."""

STEP_OPTIONS = (
    "first_step", "max_step", "min_step", "step_t", "jump_t", "norm", "dtype", "max_num_steps",
    "safety", "ifactor", "dfactor",
)  # fmt: skip
"""The keys of torchdiffeq's adaptive ``options`` that ``odeint`` reads (``dtype``, the time
dtype of torchdiffeq's arithmetic, is accepted: picard's time arithmetic is float64)."""


def odeint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Any = None,
    batched: bool | str = "auto",
    return_stats: bool = False,
    step_size: float | None = None,
    batch_dims: int = 0,
    **solve_options: Any,
) -> Any:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, in parallel sweeps.

    torchdiffeq's call (``odeint(func, y0, t, rtol=, atol=, method=, options=)``) gives an
    answer as accurate as torchdiffeq's: by default (``method="dopri5"``, ``rtol=1e-7``,
    ``atol=1e-9``) every step passes torchdiffeq's local error test, on a grid picard
    refines between solves (:mod:`picard.ode.adaptive`); a fixed-grid method gives its
    sequential answer to within the tolerance. Gradients flow to ``y0`` and to ``func``'s
    parameters.

    Args:
        func: the drift ``func(t, y)``, for one time and a state of ``y0``'s shape (as for
            torchdiffeq) or for a batch of rows (``t: (M,)``, ``y: (M, *y0.shape)``).
        y0: initial state, any shape, real floating dtype; or a tuple of them (as for
            torchdiffeq: ``func`` then takes and returns tuples, and so does the result).
        t: 1-D strictly increasing or decreasing output times on ``y0``'s device.

    Other Arguments:
        rtol: for an adaptive method, torchdiffeq's local error test and the sweeps' test
            (default 1e-7). For a fixed-grid method, with ``atol``, the mixed convergence
            test (torchdiffeq's fixed-grid solvers ignore them): the RMS of a state's
            change between sweeps, weighted by ``1 / (atol + rtol |y|)``, at most 1
            (``rtol`` floored at 16 units of the dtype's precision; either alone takes
            torchdiffeq's default for the other, 1e-7 or 1e-9). Neither: ``tol``.
        atol: see ``rtol`` (default 1e-9).
        method: ``None`` (``"dopri5"``, torchdiffeq's default), an adaptive pair
            (``"dopri5"``, ``"dopri8"``, ``"tsit5"``, ``"bosh3"``, ``"fehlberg2"``,
            ``"adaptive_heun"``: steps controlled by ``rtol``/``atol``; at fixed steps with
            a step size), a fixed-grid method: ``"euler"``, ``"midpoint"``,
            ``"heun2"`` (``"heun"``), ``"heun3"``, ``"rk4"`` (Kutta's 3/8 rule, as
            torchdiffeq's), the Adams methods ``"explicit_adams"``, ``"implicit_adams"``
            (``"fixed_adams"``) (:mod:`picard.ode.adams`), the implicit Runge–Kutta
            methods ``"implicit_euler"``, ``"implicit_midpoint"``, ``"trapezoid"``,
            ``"radauIIA3"``, ``"gl4"``, ``"radauIIA5"``, ``"gl6"``, ``"sdirk2"``,
            ``"trbdf2"`` (:mod:`picard.ode.implicit`), or ``"scipy_solver"`` (scipy,
            sequentially; gradients by the continuous adjoint).
        options: torchdiffeq's fixed-grid options: ``step_size`` (grid ``t[0] + k h``,
            interpolated onto ``t``), ``grid_constructor`` (``f(func, y0, t)`` → grid),
            ``interp`` (``"linear"`` or ``"cubic"``), ``perturb`` (stages at a step's ends
            evaluated just inside it); the adaptive methods' ``first_step``, ``max_step``,
            ``min_step``, ``step_t``, ``jump_t``, ``norm``, ``max_num_steps``, ``dtype``,
            ``safety``, ``ifactor``, ``dfactor``;
            the Adams methods' ``max_order``, ``max_iters``; the implicit methods'
            ``max_iters``; scipy's ``solver`` and ``solve_ivp`` keywords. Unknown keys
            raise.
        event_fn: torchdiffeq's ``event_fn(t, y)``: solve from ``t[0]`` (in the direction
            of ``t[1]``) until it reaches zero, and return ``(event_t, ys)`` with ``ys =
            stack([y0, y(event_t)])`` (:mod:`picard.ode.events`).
        batched: how ``func`` takes rows (:func:`picard.ode.batching.batched_form`):
            ``"auto"`` checks once that a batch of rows equals the rows one by one and
            else vectorises with :func:`torch.func.vmap` (or, where vmap cannot, calls row
            by row with one :class:`picard.PerformanceWarning`); ``True``: it takes rows;
            ``False``: vectorise it.
        return_stats: also return the :class:`picard.Stats`.
        step_size: each interval of ``t`` split into equal substeps no longer than this.
        batch_dims: leading dimensions of ``y0`` that index independent samples.
        **solve_options: the solve's options (:class:`picard.Options`), e.g. ``window``,
            ``tol`` (fixed-grid methods: default 1e-5, in the units of ``y``; ``0``: the
            sequential solver to float rounding), ``max_iters``, ``accelerate``, ``init``,
            ``verify``. Adaptive methods take ``rtol``/``atol`` instead of ``tol`` and
            ``init``; where the sweeps meet NaN or Inf (unless ``on_nonfinite`` is given)
            or need more than one sweep per 4 steps (unless ``max_iters`` is), they step
            one step after another, as torchdiffeq does (``stats.sequential_steps``).

    Returns:
        ``ys`` of shape ``(len(t), *y0.shape)`` with ``ys[0] = y0``, in ``y0.dtype``; or
        ``(ys, stats)`` with ``return_stats=True``.

    Raises:
        TypeError, ValueError: a bad argument (the message names it).

    Example:
        >>> import torch, picard
        >>> t = torch.linspace(0, 1, 101)
        >>> ys = picard.odeint(lambda t, y: -y, torch.ones(2), t)  # dopri5, rtol 1e-7
        >>> ys.shape, abs(float(ys[-1, 0]) - 0.36787944) < 1e-6  # exp(-1), float32
        (torch.Size([101, 2]), True)
        >>> euler = picard.odeint(lambda t, y: -y, torch.ones(2), t, method="euler", tol=1e-7)
        >>> round(float(euler[-1, 0]), 4)  # Euler on t: (1 - 0.01)^100
        0.366
    """
    func = check_callable("func", func)
    if isinstance(y0, (tuple, list)):  # torchdiffeq's tuple states: one flat state
        from picard.ode.tuples import flat_state

        if batch_dims:
            raise ValueError("batch_dims does not combine with a tuple y0")
        flat, y = flat_state(y0)
        if options is not None and callable(options.get("norm")):  # torchdiffeq: on the tuple
            norm = options["norm"]
            options = {**options, "norm": lambda x: norm(flat.split(x))}
        flat_event = None
        if event_fn is not None:
            user_event = event_fn

            def flat_event(t: Tensor, y: Tensor) -> Tensor:
                return user_event(t, flat.split(y))

        out = odeint(
            flat.func(func), y, t, rtol=rtol, atol=atol, method=method, options=options,
            event_fn=flat_event, batched=batched, return_stats=return_stats,
            step_size=step_size, **solve_options,
        )  # fmt: skip
        out = out if isinstance(out, tuple) else (out,)
        ys_at = 1 if event_fn is not None else 0  # (event_t, ys[, stats]) or (ys[, stats])
        out = (*out[:ys_at], flat.split(out[ys_at]), *out[ys_at + 1 :])
        return out if len(out) > 1 else out[0]
    y0 = check_state("y0", y0)
    if isinstance(t, Tensor) and t.ndim == 1 and t.shape[0] <= 1:  # torchdiffeq: no steps
        if t.shape[0] == 0:
            raise ValueError("t must hold at least one time point, got 0")
        if t.device != y0.device:
            raise ValueError(f"t is on {t.device} but y0 is on {y0.device}; put both on one device")
        method_family(DEFAULT_METHOD if method is None else method)
        ys = y0[None].clone()
        return (ys, no_steps()) if return_stats else ys
    t = check_grid(t, y0)
    if event_fn is not None:  # torchdiffeq's events: t[0] and the direction only
        return _until_event(
            func, y0, t, event_fn, rtol, atol, method, dict(options or {}), batched,
            return_stats, step_size, batch_dims, solve_options,
        )  # fmt: skip
    if t.requires_grad and torch.is_grad_enabled():  # gradients to the times too
        from picard.ode.times import with_time_gradients

        def again(y: Tensor, times: Tensor) -> Any:
            return odeint(
                func, y, times, rtol=rtol, atol=atol, method=method, options=options,
                event_fn=event_fn, batched=batched, return_stats=return_stats,
                step_size=step_size, batch_dims=batch_dims, **solve_options,
            )  # fmt: skip

        drift = batched_form(func, "func", batched, t.detach(), y0)
        return with_time_gradients(again, drift, y0, t)
    if not isinstance(return_stats, bool):
        raise TypeError(f"return_stats must be a bool, got {type(return_stats).__name__}")
    method = DEFAULT_METHOD if method is None else method
    family = method_family(method)
    options = dict(options or {})
    own = {k: options.pop(k) for k in METHOD_OPTIONS[family] if k in options}
    if family == "scipy":
        return _scipy(func, y0, t, rtol, atol, own | options, return_stats, solve_options)
    adaptive = {k: v for k, v in options.items() if k in STEP_OPTIONS}
    fixed = {k: v for k, v in options.items() if k not in STEP_OPTIONS}
    grid, placement = _grid(func, y0, t, fixed, step_size)
    tableau = tableau_for(method, fixed_steps=placement is not None) if family == "rk" else None
    if adaptive and (tableau is None or placement is not None or tableau.error is None):
        raise ValueError(
            f"options[{sorted(adaptive)[0]!r}] is an adaptive solver's option; method="
            f"{method!r} runs at fixed steps here"
        )
    opts = Options.of(rtol=rtol, atol=atol, **solve_options)
    batch_ndim = check_batch_dims(batch_dims, y0)
    perturb = bool(fixed.get("perturb", False))
    if tableau is not None and placement is None and tableau.error is not None:  # adaptive
        if perturb:
            raise ValueError("options['perturb'] applies to fixed-grid methods (or a step size)")
        from picard.ode.adaptive import solve_adaptive, step_options

        if opts.tol is not None or opts.init is not None:
            raise ValueError(
                f"method={method!r} controls its steps by rtol/atol: give those, not "
                f"{'tol' if opts.tol is not None else 'init'} (or a step size to run it at "
                "fixed steps)"
            )
        drift = batched_form(func, "func", batched, t, y0)
        step_on = "on_nonfinite" not in solve_options  # where the sweeps diverge
        callbacks = Callbacks(func, adaptive=True)
        steps = step_options(adaptive)
        sized = ODEProblem(drift, t, tableau, y0.dtype, batch_ndim)  # what Newton asks of it
        clock, path, opts = _way(func, drift, y0, sized, (rtol, atol, steps), opts, solve_options)
        x0 = y0 if clock is None else clock.entry(y0)
        ys, stats = solve_adaptive(
            drift, x0, t, tableau, batch_ndim, opts, step_on=step_on, steps=steps,
            callbacks=callbacks, stepping=path == "steps", adjoint=in_adjoint(),
        )  # fmt: skip
        ys = ys if clock is None else clock.exit(ys)
        ys = callbacks.attach(ys)
        return (ys, stats) if return_stats else ys
    if opts.init is not None and placement is not None:
        raise ValueError("init (a warm start on t) cannot be combined with step_size or a grid")
    if rtol is None and atol is None and opts.tol is None and opts.relative is None:  # the sweeps
        opts = replace(opts, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)  # converge to torchdiffeq's
    if "on_nonfinite" not in solve_options:  # diverging sweeps finish as the sequential solver
        opts = replace(opts, on_nonfinite="sequential")
    probe = stage_times(grid, 0.0, perturb) if perturb else grid  # never an exact node
    drift = batched_form(func, "func", batched, probe, y0)
    problem = _fixed_problem(
        method, family, tableau, drift, grid, y0.dtype, batch_ndim, perturb, own, rtol, atol
    )
    callbacks = Callbacks(func, adaptive=False)
    every = placement is None or placement == "interpolate" or callbacks.any
    clock, path = None, "sweeps"
    if family == "rk":  # explicit Runge–Kutta: sweeps, steps or Newton
        assert isinstance(problem, ODEProblem)
        tolerances = (rtol, atol, perturb)
        clock, path, opts = _way(func, drift, y0, problem, tolerances, opts, solve_options)
    x0 = y0 if clock is None else clock.entry(y0)
    if path == "steps":  # one step after another: the sequential result itself
        assert isinstance(problem, ODEProblem)
        sol, every = _step_by_step(problem, x0, opts), True  # every state of the grid
    else:  # the sweeps, or Newton's method (its options say so)
        sol = solve_with(problem, x0, opts, save=True if every else placement)
    assert sol.ys is not None
    if isinstance(problem, AdamsProblem):
        problem.warn_unconverged()
    callbacks.steps(grid, sol.ys)
    if placement == "interpolate":
        cubic = fixed.get("interp", "linear") == "cubic"
        slopes = call_batched(drift, "func", grid, sol.ys, y0.dtype) if cubic else None
        ys = interpolate(grid, sol.ys, t, slopes)
    else:
        ys = sol.ys[placement] if every and placement is not None else sol.ys
    ys = ys if clock is None else clock.exit(ys)
    ys = callbacks.attach(ys)
    return (ys, sol.stats) if return_stats else ys


def _until_event(
    func: Any,
    y0: Tensor,
    t: Tensor,
    event_fn: Any,
    rtol: float | None,
    atol: float | None,
    method: str | None,
    options: dict[str, Any],
    batched: bool | str,
    return_stats: bool,
    step_size: float | None,
    batch_dims: int,
    solve_options: Mapping[str, Any],
) -> Any:
    """``odeint(event_fn=...)``: solve until the event (:mod:`picard.ode.events`)."""
    from picard.ode.events import EventSearch, solve_until_event

    method = DEFAULT_METHOD if method is None else method
    family = method_family(method)
    h = options.pop("step_size", None) if step_size is None else step_size
    cubic = options.pop("interp", "linear") == "cubic"
    adaptive = family == "rk" and h is None and tableau_for(method, True).error is not None
    if family == "scipy":
        raise ValueError(
            "event_fn is not supported with method='scipy_solver' (nor by torchdiffeq)"
        )
    if not adaptive and h is None:
        raise ValueError(
            f"event_fn with the fixed-grid method {method!r} needs options['step_size'] "
            "(as torchdiffeq's)"
        )
    step = None if adaptive else check_nonneg("options['step_size']", h, positive=True)

    def solve(y: Tensor, times: Tensor) -> tuple[Tensor, Any]:
        out = odeint(
            func, y, times.to(t.dtype), rtol=rtol, atol=atol, method=method, options=options,
            batched=probed, return_stats=True, batch_dims=batch_dims, **solve_options,
        )  # fmt: skip
        return out[0], out[1]

    t64 = t.detach().double()
    forward = t64.shape[0] < 2 or bool(t64[1] > t64[0])
    span = abs(float(t64[1] - t64[0])) if t64.shape[0] > 1 else 1.0
    drift = batched_form(func, "func", batched, t, y0)
    probed: Any = True  # the form found once, not probed again per solve: batched,
    if drift is not func:  # vectorised by vmap, or (probed again) row by row
        probed = batched if getattr(drift, "picard_row_by_row", False) else False
    search = EventSearch(
        solve, drift, step, cubic, DEFAULT_ATOL if atol is None else atol, span or 1.0
    )
    event_t, ys, stats = solve_until_event(search, event_fn, y0, t64[0], 1.0 if forward else -1.0)
    event_t = event_t.to(t.dtype)
    return (event_t, ys, stats) if return_stats else (event_t, ys)


def method_family(method: object) -> str:
    """Which kind of solver runs ``method``: a key of :data:`METHOD_OPTIONS`.

    Args:
        method: a method name.

    Returns:
        ``"rk"`` (a tableau of :mod:`picard.ode.tableaus`), ``"adams"``
        (:mod:`picard.ode.adams`), ``"implicit"`` (:mod:`picard.ode.implicit`) or
        ``"scipy"`` (:mod:`picard.ode.scipy_solver`).

    Raises:
        TypeError: ``method`` is not a string.
        ValueError: no method has this name.

    Example:
        >>> method_family("dopri5"), method_family("implicit_adams"), method_family("gl6")
        ('rk', 'adams', 'implicit')
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method in ADAMS:
        return "adams"
    if method in IMPLICIT:
        return "implicit"
    if method == "scipy_solver":
        return "scipy"
    try:
        tableau_for(method, fixed_steps=True)
    except ValueError:
        names = sorted([*METHODS, "heun", *ADAPTIVE, *ADAMS, *IMPLICIT, "scipy_solver"])
        raise ValueError(f"method must be one of {names}, got {method!r}") from None
    return "rk"


def _way(
    func: Any,
    drift: Any,
    y0: Tensor,
    problem: ODEProblem,
    tolerances: tuple[Any, ...],
    opts: Options,
    solve_options: Mapping[str, Any],
) -> tuple[Clock | None, str, Options]:
    """How a Runge–Kutta solve runs: the sweeps, the steps or Newton (:mod:`picard.ode.paths`).

    Returns the :class:`~picard.ode.paths.Clock` that times the call (``None`` where
    nothing is learned), the way, and the options to solve with (``accelerate="newton"``
    for Newton's way, each round's solve by it). Newton's method is a way where the state
    is small (:func:`~picard.core.newton.newton_applies`; ``problem`` is on the grid or
    the output times). Learned for torchdiffeq's own call: one that sets a sweep's option
    (``window``, ``tol``, ``on_nonfinite``, ...) runs the sweeps it asks for. A ``func``
    evaluated row by row steps from the first call (a sweep would call it once per row),
    except within :func:`~picard.ode.paths.sweeps_only`.
    """
    learns = not set(solve_options) - {"adjoint_params"}
    if getattr(drift, "picard_row_by_row", False) and learns and not in_sweeps_only():
        return None, "steps", opts
    choice = path_choice(func, y0, problem.t, problem.tableau, tolerances) if learns else None
    if choice is None:
        return None, "sweeps", opts
    path = choice.pick(PATHS if newton_applies(problem, y0, opts) else PATHS[:2])
    if path == "newton":
        opts = replace(opts, accelerate=acceleration_of("newton"))
    inputs = [y0, *model_parameters(getattr(func, "picard_model", func))]
    return Clock(choice, path, inputs), path, opts


def _step_by_step(problem: ODEProblem, x0: Tensor, opts: Options) -> Solution:
    """``problem`` one step after another: the sequential result.

    Under ``odeint_adjoint`` the steps are taken without autograd and their backward pass
    is the adjoint recursion (:func:`picard.solver.with_gradients`); else autograd's.
    """
    quiet = in_adjoint() and torch.is_grad_enabled()
    with torch.no_grad() if quiet else contextlib.nullcontext():
        ys, stats = problem.step_by_step(x0)
    ys = (differentiable_steps(problem, x0, opts, ys, stats) if quiet else ys).to(x0.dtype)
    return Solution(ys[-1], ys, range(len(ys)), stats)


def _fixed_problem(
    method: str,
    family: str,
    tableau: Tableau | None,
    drift: Callable[[Tensor, Tensor], Tensor],
    grid: Tensor,
    in_dtype: torch.dtype,
    batch_ndim: int,
    perturb: bool,
    own: Mapping[str, Any],
    rtol: float | None,
    atol: float | None,
) -> Problem:
    """The problem of a fixed-grid method: its family's, with its own options."""
    if family == "adams":
        return AdamsProblem(
            drift, grid, in_dtype, batch_ndim, perturb, implicit=ADAMS[method],
            max_order=check_int("options['max_order']", own.get("max_order", MAX_ORDER), minimum=1),
            max_iters=check_int("options['max_iters']", own.get("max_iters", 4), minimum=1),
            rtol=DEFAULT_RTOL if rtol is None else rtol,
            atol=DEFAULT_ATOL if atol is None else atol,
        )  # fmt: skip
    if family == "implicit":
        iters = check_int("options['max_iters']", own.get("max_iters", 100), minimum=1)
        return ImplicitODEProblem(
            drift, grid, IMPLICIT[method], in_dtype, batch_ndim, perturb, max_iters=iters
        )
    assert tableau is not None
    return ODEProblem(drift, grid, tableau, in_dtype, batch_ndim, perturb=perturb)


def _scipy(
    func: Any,
    y0: Tensor,
    t: Tensor,
    rtol: float | None,
    atol: float | None,
    options: dict[str, Any],
    return_stats: bool,
    solve_options: Mapping[str, Any],
) -> Any:
    """``method="scipy_solver"``: scipy's ``solve_ivp``, one step after another.

    Gradients (to ``y0`` and ``func``'s parameters, or ``odeint_adjoint``'s
    ``adjoint_params``) by the continuous adjoint, solved by scipy as well.
    """
    solve_options = dict(solve_options)
    params = solve_options.pop("adjoint_params", None)
    if solve_options:
        raise ValueError(
            f"{sorted(solve_options)[0]} does not apply to method='scipy_solver', which scipy "
            "runs sequentially"
        )
    rtol = DEFAULT_RTOL if rtol is None else check_nonneg("rtol", rtol)
    atol = DEFAULT_ATOL if atol is None else check_nonneg("atol", atol)
    named = [c for c in ("callback_step", "callback_accept_step", "callback_reject_step")
             if getattr(func, c, None) is not None]  # fmt: skip
    if named:  # as torchdiffeq: scipy's steps happen inside scipy
        warnings.warn(
            f"func has {named[0]}, but method='scipy_solver' steps inside scipy: it is not called",
            UserWarning,
            stacklevel=3,
        )
    if params is None and torch.is_grad_enabled():  # those the first slope uses
        from picard.core.adjoint import used_leaves

        out = func(t[0].detach(), y0.detach())
        params = used_leaves(out) if isinstance(out, Tensor) and out.requires_grad else ()
    ys, stats = scipy_with_gradients(func, y0, t, rtol, atol, options, tuple(params or ()))
    return (ys, stats) if return_stats else ys


def _grid(
    func: Any, y0: Tensor, t: Tensor, options: Mapping[str, Any] | None, step_size: Any
) -> tuple[Tensor, Any]:
    """The solve's grid, and where the output lies on it.

    ``None``: the grid is ``t``; a list: the indices of ``t`` in it; ``"interpolate"``:
    torchdiffeq's grids, read back onto ``t``.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(TORCHDIFFEQ_OPTIONS))
    if unknown:
        raise ValueError(
            f"options has unknown key {unknown[0]!r}; picard reads {TORCHDIFFEQ_OPTIONS} and, "
            f"for the adaptive methods, {STEP_OPTIONS}"
        )
    if options.get("interp", "linear") not in ("linear", "cubic"):
        raise ValueError(
            f"options['interp'] must be 'linear' or 'cubic', got {options['interp']!r}"
        )
    given = [k for k in ("step_size", "grid_constructor") if options.get(k) is not None]
    if step_size is not None:
        given.append("step_size=")
    if len(given) > 1:
        raise ValueError(f"give one of options['step_size'], options['grid_constructor'] and "
                         f"step_size=, got {given}")  # fmt: skip
    if step_size is not None:
        grid, index = refine_grid(t, check_nonneg("step_size", step_size, positive=True))
        return grid, index
    if options.get("step_size") is not None:
        h = check_nonneg("options['step_size']", options["step_size"], positive=True)
        return step_size_grid(t, h), "interpolate"
    if options.get("grid_constructor") is not None:
        grid = constructed_grid(options["grid_constructor"], func, y0, t)
        return check_grid(grid, y0), "interpolate"
    return t, None


def odeint_adjoint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Any = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Iterable[Tensor] | None = None,
    **kwargs: Any,
) -> Any:
    """Torchdiffeq's ``odeint_adjoint`` call: :func:`odeint`, gradients by picard's adjoint.

    picard's backward pass is always the adjoint recursion, solved in parallel and at the
    forward's grid (so the gradients are those of the discrete solution, as autograd
    through the loop gives them); this function takes torchdiffeq's signature so that
    code written for it runs unchanged. ``adjoint_params`` are the tensors gradients flow
    to (default: ``func``'s parameters, when it is an ``nn.Module``).

    Args:
        func: as for :func:`odeint`.
        y0: as for :func:`odeint`.
        t: as for :func:`odeint`.
        rtol: as for :func:`odeint`.
        atol: as for :func:`odeint`.
        method: as for :func:`odeint`.
        options: as for :func:`odeint`.
        event_fn: not supported.
        adjoint_rtol: ignored unless different from ``rtol`` (then refused: the backward
            runs at the forward's tolerance).
        adjoint_atol: as ``adjoint_rtol``, for ``atol``.
        adjoint_method: ``None`` or ``method`` (the backward follows the forward's grid).
        adjoint_options: ``None``, ``options``, ``{}``, or only a named ``norm``
            (torchdiffeq's ``{"norm": "seminorm"}``): picard's backward has no error test
            of its own, so it changes nothing; a callable norm, which would never be
            called, raises.
        adjoint_params: the tensors gradients flow to besides ``y0``.
        **kwargs: further arguments of :func:`odeint`.

    Returns:
        As :func:`odeint`.

    Example:
        >>> import torch, picard
        >>> net = torch.nn.Linear(2, 2)
        >>> ys = picard.odeint_adjoint(lambda t, y: net(y), torch.ones(2), torch.linspace(0, 1, 5),
        ...                            adjoint_params=net.parameters())
        >>> ys[-1].sum().backward()
        >>> net.weight.grad.shape
        torch.Size([2, 2])
    """
    for name, value, same in (
        ("adjoint_rtol", adjoint_rtol, rtol), ("adjoint_atol", adjoint_atol, atol),
        ("adjoint_method", adjoint_method, method), ("adjoint_options", adjoint_options, options),
    ):  # fmt: skip
        if (
            name == "adjoint_options"
            and value is not None
            and set(value) <= {"norm"}
            and (value.get("norm") is None or isinstance(value["norm"], str))
        ):
            continue  # the backward has no error test of its own for a named norm to act on
        if value is not None and value != same:
            raise ValueError(
                f"{name} must match the forward's: picard's backward pass solves the adjoint "
                "recursion of the forward's own steps"
            )
    # torchdiffeq's adjoint gives every adjoint parameter (by default a module func's
    # parameters) a gradient, zero where unused; a closure's are found by tracing
    found = model_parameters(getattr(func, "picard_model", func))
    given = adjoint_params if adjoint_params is not None else (found or None)
    params = None if given is None else tuple(given)
    with adjoint_steps():  # a stepped solve's backward pass is the adjoint recursion too
        out = odeint(
            func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
            event_fn=event_fn, adjoint_params=params, **kwargs,
        )  # fmt: skip
    wanted = [p for p in params or () if p.requires_grad]
    if not wanted or not torch.is_grad_enabled():
        return out
    return_stats = bool(kwargs.get("return_stats", False))
    ys, rest = (out[0], out[1:]) if return_stats else (out, ())
    if isinstance(ys, tuple):
        ys = tuple(every_parameter(y, wanted) for y in ys)
    else:
        ys = every_parameter(ys, wanted)
    return (ys, *rest) if return_stats else ys
