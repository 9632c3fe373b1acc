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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_batch_dims, check_callable, check_grid, check_nonneg, check_state
from picard.core.options import Options
from picard.ode.batching import batched_form
from picard.ode.callbacks import Callbacks
from picard.ode.grids import constructed_grid, interpolate, refine_grid, step_size_grid
from picard.ode.tableaus import METHODS, Tableau, tableau_for
from picard.problem import Problem, call_batched, model_parameters, working_dtype
from picard.solution import no_steps
from picard.solver import solve_with

__all__ = ["METHODS", "STEP_OPTIONS", "ODEProblem", "combine", "odeint", "odeint_adjoint"]

DEFAULT_METHOD = "dopri5"
"""torchdiffeq's default method: Dormand–Prince 5(4), error-controlled."""

TORCHDIFFEQ_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp")

STEP_OPTIONS = ("first_step", "max_step", "step_t", "jump_t", "norm", "dtype", "max_num_steps")
"""The keys of torchdiffeq's adaptive ``options`` that ``odeint`` reads (``dtype``, the time
dtype of torchdiffeq's arithmetic, is accepted: picard's time arithmetic is float64)."""
"""The keys of torchdiffeq's fixed-grid ``options`` that ``odeint`` reads."""


def combine(ks: list[Tensor], coeffs: tuple[float, ...]) -> Tensor | None:
    """``Σ coeffs[j] * ks[j]`` over the non-zero coefficients (``None`` if all are zero).

    Args:
        ks: the stages' slopes.
        coeffs: a weight per slope (extra weights, past ``ks``, are ignored).

    Returns:
        The weighted sum, or ``None`` when every weight is zero.

    Example:
        >>> combine([torch.ones(1), torch.full((1,), 2.0)], (0.5, 0.25))
        tensor([1.])
    """
    total: Tensor | None = None
    for k, c in zip(ks, coeffs, strict=False):
        if c == 0.0:
            continue
        term = k if c == 1.0 else c * k
        total = term if total is None else total + term
    return total


GUESS_STEPS = 16
"""How many entering steps the ODE guess extrapolates with the frozen slope."""


@dataclass
class _ODEState:
    """A solve's step sizes and the newest slope (for guesses)."""

    dt: Tensor
    slope: list[Tensor] = field(default_factory=list)
    elapsed: np.ndarray | None = None  # cumulative step sizes (N + 1,), for guesses


class ODEProblem(Problem):
    """``dy/dt = func(t, y)`` on the grid ``t``, stepped by an explicit Runge–Kutta method.

    Args:
        func: batched drift, ``func(t: (M,), y: (M, *y0.shape)) -> (M, *y0.shape)``.
        t: the grid (1-D, strictly monotone); N = ``len(t) - 1`` steps.
        method: a name of :data:`~picard.ode.tableaus.METHODS` or
            :data:`~picard.ode.tableaus.ADAPTIVE` (run at this grid's steps), or a tableau.
        in_dtype: the dtype ``func`` receives ``y`` in (the user's ``y0.dtype``).
        batch_ndim: leading dimensions of ``y0`` that index independent samples.
        perturb: torchdiffeq's ``options={"perturb": True}``: a stage at a step's start
            is evaluated just after it, one at its end just before it (the adjacent
            floats), so a ``func`` with a jump at a grid time sees the side it steps on.

    Example:
        >>> import torch, picard
        >>> p = ODEProblem(lambda t, y: -y, torch.linspace(0, 1, 11), "rk4", torch.float32)
        >>> float(picard.solve(p, torch.ones(1), tol=0).final)  # exp(-1) = 0.36788
        0.36787...
    """

    def __init__(
        self,
        func: Callable[[Tensor, Tensor], Tensor],
        t: Tensor,
        method: str | Tableau,
        in_dtype: torch.dtype,
        batch_ndim: int = 0,
        perturb: bool = False,
    ):
        self.func = func
        self.model = getattr(func, "picard_model", func)  # the user's callable, for parameters
        self.tableau = method if isinstance(method, Tableau) else tableau_for(method, True)
        self.num_steps = t.shape[0] - 1
        self.batch_ndim = batch_ndim
        self.stages = self.tableau.stages
        self.in_dtype = in_dtype
        self.t = t
        self._dt = t[1:] - t[:-1]
        self._stage_t = [_stage_times(t, c, perturb) for c in self.tableau.c]

    def init(self, x0: Tensor) -> _ODEState:
        """The step sizes in the working dtype, shaped to broadcast against a window."""
        return _ODEState(self._dt.to(working_dtype(x0.dtype)).reshape(-1, *([1] * x0.ndim)))

    def increments(
        self, x: Tensor, start: int, state: _ODEState, history: Tensor | None
    ) -> tuple[Tensor, None]:
        """Runge–Kutta increments ``h_i Σ b_s k_s`` of the steps of ``x`` (s calls)."""
        h = state.dt[start : start + x.shape[0]]
        ks = self.slopes(x, start, h)
        total = combine(ks, self.tableau.b)
        assert total is not None
        state.slope[:] = [total[-1]]  # the last row's slope, for guesses
        return h * total, None

    def slopes(self, x: Tensor, start: int, h: Tensor) -> list[Tensor]:
        """The stages' slopes ``k_s`` of the steps ``start …`` from the states ``x``.

        Args:
            x: the states the steps start from, ``(w, *shape)`` in the working dtype.
            start: the first step's index.
            h: their step sizes, shaped to broadcast against ``x``.

        Returns:
            One ``(w, *shape)`` tensor per stage (one batched call of ``func`` each).
        """
        stop = start + x.shape[0]
        ks: list[Tensor] = []
        for s, row in enumerate(self.tableau.a):
            slope = combine(ks, row)
            y = x if slope is None else x + h * slope
            ks.append(
                call_batched(self.func, "func", self._stage_t[s][start:stop], y, self.in_dtype)
            )
        return ks

    def guess(self, x: Tensor, start: int, count: int, state: _ODEState) -> Tensor | None:
        """Euler steps from ``x`` with the last call's last slope held fixed (no call).

        A frozen-slope roll-out of the first :data:`GUESS_STEPS` steps entering the
        window (the rest copy its end: extrapolating far ahead made stiff problems
        diverge): 3–17% fewer sweeps than copies on the project's test ODEs.
        """
        if not state.slope:
            return None
        if state.elapsed is None:  # on the host: a few numpy operations per sweep
            dt = state.dt.reshape(-1).double().cpu().numpy()
            state.elapsed = np.concatenate([[0.0], np.cumsum(dt)])
        span = state.elapsed[start + 1 : start + 1 + count] - state.elapsed[start]
        if count > GUESS_STEPS:
            span[GUESS_STEPS:] = span[GUESS_STEPS - 1]
        span_t = torch.from_numpy(span).to(x.device, x.dtype).reshape(-1, *([1] * x.ndim))
        return torch.addcmul(x, span_t, state.slope[0])

    def step_label(self, step: int) -> str:
        """Name a step by its index and time."""
        return f"step {step} (t = {self.t[step].item():g})"

    def parameters(self) -> Iterable[Tensor]:
        """The drift's parameters (an ``nn.Module`` or a bound method of one)."""
        return model_parameters(self.model)


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
            a step size), or a fixed-grid method: ``"euler"``, ``"midpoint"``,
            ``"heun2"`` (``"heun"``), ``"heun3"``, ``"rk4"`` (Kutta's 3/8 rule, as
            torchdiffeq's).
        options: torchdiffeq's fixed-grid options: ``step_size`` (grid ``t[0] + k h``,
            interpolated onto ``t``), ``grid_constructor`` (``f(func, y0, t)`` → grid),
            ``interp="linear"``, ``perturb`` (stages at a step's ends evaluated just
            inside it); the adaptive methods' ``first_step``, ``max_step``, ``step_t``,
            ``jump_t``, ``norm``, ``max_num_steps``, ``dtype``. Unknown keys raise.
        event_fn: not supported (a ``TypeError`` says so).
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
        out = odeint(
            flat.func(func), y, t, rtol=rtol, atol=atol, method=method, options=options,
            event_fn=event_fn, batched=batched, return_stats=return_stats,
            step_size=step_size, **solve_options,
        )  # fmt: skip
        ys, stats = out if return_stats else (out, None)
        parts = flat.split(ys)
        return (parts, stats) if return_stats else parts
    y0 = check_state("y0", y0)
    if isinstance(t, Tensor) and t.ndim == 1 and t.shape[0] <= 1:  # torchdiffeq: no steps
        if t.shape[0] == 0:
            raise ValueError("t must hold at least one time point, got 0")
        if t.device != y0.device:
            raise ValueError(f"t is on {t.device} but y0 is on {y0.device}; put both on one device")
        tableau_for(DEFAULT_METHOD if method is None else method, fixed_steps=True)
        ys = y0[None].clone()
        return (ys, no_steps()) if return_stats else ys
    t = check_grid(t, y0)
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
    if event_fn is not None:
        raise TypeError("event_fn (torchdiffeq's event handling) is not supported by picard")
    if not isinstance(return_stats, bool):
        raise TypeError(f"return_stats must be a bool, got {type(return_stats).__name__}")
    method = DEFAULT_METHOD if method is None else method
    adaptive = {k: v for k, v in dict(options or {}).items() if k in STEP_OPTIONS}
    fixed = {k: v for k, v in dict(options or {}).items() if k not in STEP_OPTIONS}
    grid, placement = _grid(func, y0, t, fixed, step_size)
    tableau = tableau_for(method, fixed_steps=placement is not None)
    if adaptive and (placement is not None or tableau.error is None):
        raise ValueError(
            f"options[{sorted(adaptive)[0]!r}] is an adaptive solver's option; method="
            f"{method!r} runs at fixed steps here"
        )
    opts = Options.of(rtol=rtol, atol=atol, **solve_options)
    batch_ndim = check_batch_dims(batch_dims, y0)
    perturb = bool(fixed.get("perturb", False))
    if placement is None and tableau.error is not None:  # torchdiffeq's adaptive steps
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
        ys, stats = solve_adaptive(
            drift, y0, t, tableau, batch_ndim, opts, step_on=step_on,
            steps=step_options(adaptive), callbacks=Callbacks(func, adaptive=True),
        )  # fmt: skip
        return (ys, stats) if return_stats else ys
    if opts.init is not None and placement is not None:
        raise ValueError("init (a warm start on t) cannot be combined with step_size or a grid")
    probe = _stage_times(grid, 0.0, perturb) if perturb else grid  # never an exact node
    drift = batched_form(func, "func", batched, probe, y0)
    problem = ODEProblem(drift, grid, tableau, y0.dtype, batch_ndim, perturb=perturb)
    callbacks = Callbacks(func, adaptive=False)
    every = placement is None or placement == "interpolate" or callbacks.any
    sol = solve_with(problem, y0, opts, save=True if every else placement)
    assert sol.ys is not None
    callbacks.steps(grid, sol.ys)
    if placement == "interpolate":
        ys = interpolate(grid, sol.ys, t)
    else:
        ys = sol.ys[placement] if every and placement is not None else sol.ys
    return (ys, sol.stats) if return_stats else ys


def _stage_times(t: Tensor, c: float, perturb: bool) -> Tensor:
    """The times of a stage at node ``c`` of every step of the grid ``t``."""
    if c == 0:
        return torch.nextafter(t[:-1], t[1:]) if perturb else t[:-1]
    if c == 1 and perturb:
        return torch.nextafter(t[1:], t[:-1])
    return t[:-1] + c * (t[1:] - t[:-1])


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
    if options.get("interp", "linear") != "linear":
        raise ValueError(f"options['interp'] must be 'linear', got {options['interp']!r}")
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
        adjoint_options: ``None``, ``options``, or only a named ``norm`` (torchdiffeq's
            ``{"norm": "seminorm"}``): picard's backward has no error test of its own, so
            it changes nothing; a callable norm, which would never be called, raises.
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
            and isinstance(value.get("norm"), str)
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
    out = odeint(
        func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn,
        adjoint_params=params, **kwargs,
    )  # fmt: skip
    wanted = [p for p in params or () if p.requires_grad]
    if not wanted or not torch.is_grad_enabled():
        return out
    return_stats = bool(kwargs.get("return_stats", False))
    ys, rest = (out[0], out[1:]) if return_stats else (out, ())
    if isinstance(ys, tuple):
        ys = tuple(_EveryParameter.apply(y, *wanted) for y in ys)
    else:
        ys = _EveryParameter.apply(ys, *wanted)
    return (ys, *rest) if return_stats else ys


class _EveryParameter(torch.autograd.Function):
    """``ys`` unchanged; every parameter gets a gradient, zero where the solve does not use it.

    torchdiffeq's adjoint gives its ``adjoint_params`` one each; autograd would give none.
    """

    @staticmethod
    def forward(ctx: Any, ys: Tensor, *params: Tensor) -> Tensor:
        ctx.shapes = [(p.shape, p.dtype, p.device) for p in params]
        return ys.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        return (grad, *(torch.zeros(s, dtype=d, device=v) for s, d, v in ctx.shapes))
