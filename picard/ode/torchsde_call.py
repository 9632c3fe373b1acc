"""torchsde's ``sdeint(sde, y0, ts, bm, method, dt, adaptive, ...)``, solved in parallel sweeps.

The grid is torchsde's: steps of ``dt`` from ``ts[0]``, the last cut at ``ts[-1]``, read back
onto ``ts`` by linear interpolation. The Brownian object is queried once per step, in order,
before the sweeps (with the Lévy area where the method needs it), so the parallel path is
torchsde's path with the same ``bm`` (to within ``tol``; to rounding at ``tol=0``). Without
``bm``, torchsde's ``BrownianInterval`` is made as torchsde makes it (when torchsde is
installed; else picard draws the increments, for the methods that need nothing more).
``adaptive=True`` meets torchsde's step-doubling error test in parallel: each round
solves a grid's half steps in sweeps, checks every full step against them in one batched
call, and splits the failing steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_nonneg
from picard.core.adjoint import every_parameter
from picard.core.options import Options
from picard.ode.grids import interpolate, refine_grid
from picard.ode.sde_functions import SDEFunctions
from picard.ode.sde_methods import SDE_METHODS, SDEMethod, default_method
from picard.problem import Problem, model_parameters, working_dtype
from picard.solution import Stats, summed
from picard.solver import solve_with, with_gradients

__all__ = [
    "SchemeProblem",
    "sdeint_adjoint",
    "torchsde_grid",
    "torchsde_sdeint",
]

EULER_ADAPTIVE_WARNING = (
    "Numerical solution is not guaranteed to converge to the correct solution when using "
    "adaptive time-stepping with the Euler--Maruyama method with non-additive noise."
)
"""The warning torchsde gives (the same text)."""


class SchemeProblem(Problem):
    """torchsde's SDE on a grid, stepped by one of :data:`SDE_METHODS`.

    Args:
        fns: the SDE's functions.
        method: the method.
        t: the grid.
        dW: the Brownian increments per step, ``(N, batch, m)``.
        area: the space-time Lévy areas per step (``None`` unless the method reads them).
        options: the method's options (``grad_free`` for Milstein).

    Example:
        >>> import picard
        >>> class SDE:
        ...     noise_type, sde_type = "diagonal", "ito"
        ...     def f(self, t, y): return -y
        ...     def g(self, t, y): return torch.zeros_like(y)
        >>> t = torch.linspace(0, 1, 5)
        >>> p = SchemeProblem(SDEFunctions(SDE()), SDE_METHODS["euler"], t, torch.zeros(4, 1, 1))
        >>> picard.solve(p, torch.ones(1, 1), tol=0).final  # no noise: Euler, (3/4)^4
        tensor([[0.3164]])
    """

    batch_ndim = 1

    def __init__(
        self,
        fns: SDEFunctions,
        method: SDEMethod,
        t: Tensor,
        dW: Tensor,
        area: Tensor | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.fns, self.method, self.t = fns, method, t
        self.num_steps = t.shape[0] - 1
        self.stages = method.calls
        self.dW, self.area, self.options = dW, area, dict(options or {})

    def init(self, x0: Tensor) -> dict[str, Any]:
        """Step sizes shaped to broadcast, increments in the working dtype."""
        work = working_dtype(x0.dtype)
        h = (self.t[1:] - self.t[:-1]).to(work).reshape(-1, 1, 1)
        area = None if self.area is None else self.area.to(work)
        return {"h": h, "dW": self.dW.to(work), "area": area}

    def increments(
        self, x: Tensor, start: int, state: dict[str, Any], history: Tensor | None
    ) -> tuple[Tensor, None]:
        """``y_{i+1} - y_i`` of the window's steps, torchsde's step on every row at once."""
        stop = start + x.shape[0]
        area = None if state["area"] is None else state["area"][start:stop]
        new = self.method.step(
            self.fns, self.t[start:stop].to(x.dtype), state["h"][start:stop], x,
            state["dW"][start:stop], area, self.options,
        )  # fmt: skip
        return new - x, None

    def parameters(self) -> Iterable[Tensor]:
        """The ``sde`` object's parameters (an ``nn.Module``)."""
        return model_parameters(self.fns.model)

    def step_label(self, step: int) -> str:
        """Name a step by its index and time."""
        return f"step {step} (t = {self.t[step].item():g})"


def torchsde_sdeint(
    sde: Any,
    y0: Any,
    ts: Any,
    bm: Any = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any = None,
    *,
    return_stats: bool = False,
    generator: torch.Generator | None = None,
    **solve_options: Any,
) -> Any:
    """Torchsde's ``sdeint``: the same call, the same path, in parallel sweeps.

    Args:
        sde: torchsde's ``sde`` object: ``noise_type``, ``sde_type`` and ``f``/``g`` (or
            ``f_and_g``, ``g_prod``, ``f_and_g_prod``; ``h`` for ``logqp``).
        y0: the initial state ``(batch, d)``.
        ts: the output times (increasing).
        bm: torchsde's Brownian object, ``bm(ta, tb)`` (``return_U=True`` for ``srk``).
        method: a name of :data:`~picard.ode.sde_methods.SDE_METHODS`; ``None``:
            torchsde's default (``srk`` for Itô SDEs but general noise, ``euler`` there,
            ``midpoint`` for Stratonovich).
        dt: the step.
        adaptive: torchsde's step-doubling error control, met in parallel rounds.
        rtol: its relative tolerance.
        atol: its absolute tolerance.
        dt_min: its smallest step.
        options: the method's options (``grad_free`` for Milstein).
        names: torchsde's renaming of the ``sde``'s methods.
        logqp: also return torchsde's log-ratio increments ``(len(ts) - 1, batch)``.
        extra: also return the solver's extra state (empty: the methods here keep none).
        extra_solver_state: the extra state to start from (``None`` or empty).
        return_stats: also return the :class:`picard.Stats` (last).
        generator: draws the increments where there is no ``bm`` and no torchsde.
        **solve_options: the solve's options (``window``, ``tol``, ...).

    Returns:
        As torchsde: ``ys``, or ``(ys, log_ratio)``, with the extra state after them.

    Raises:
        ValueError: what torchsde refuses (method, SDE type, noise type, shapes, ...), or a
            method picard does not run.

    Example:
        >>> class SDE(torch.nn.Module):
        ...     noise_type, sde_type = "diagonal", "ito"
        ...     def f(self, t, y): return -y
        ...     def g(self, t, y): return 0.1 * torch.ones_like(y)
        >>> ys = torchsde_sdeint(SDE(), torch.ones(4, 2), torch.tensor([0.0, 0.5, 1.0]),
        ...                      method="euler", dt=0.05)
        >>> ys.shape
        torch.Size([3, 4, 2])
    """
    fns = SDEFunctions(sde, names, logqp)
    if not isinstance(y0, Tensor):
        raise ValueError("y0 must be a torch.Tensor")
    if y0.dim() != 2:
        raise ValueError(
            f"y0 must be 2-dimensional, (batch, channels); got shape {tuple(y0.shape)}"
        )
    ts = _times(ts, y0)
    dt = check_nonneg("dt", dt, positive=True)
    method = default_method(fns.sde_type, fns.noise_type) if method is None else method
    scheme = _method(method, fns, adaptive)
    if logqp:
        y0 = torch.cat([y0, y0.new_zeros((y0.shape[0], 1))], dim=1)
    options = dict(options or {})
    z0 = _start_z(extra_solver_state, scheme, y0)
    noise = _noise_size(fns, ts, y0, bm)
    if bm is None:
        bm = _default_brownian(ts, (y0.shape[0], noise), y0, scheme, adaptive, generator)
    elif getattr(bm, "levy_area_approximation", "none") not in scheme.approximations:
        raise ValueError(
            f"method={method!r} needs a bm with levy_area_approximation in "
            f"{scheme.approximations}, got {getattr(bm, 'levy_area_approximation', 'none')!r}"
        )
    x0 = y0 if z0 is None else torch.cat([y0, z0], dim=-1)
    if adaptive:
        solve_options = {"on_nonfinite": "sequential", **solve_options}
        ys, stats = _adaptive(
            fns, scheme, x0, ts, bm, dt, rtol, atol, dt_min, options, solve_options
        )
    else:
        grid = torchsde_grid(ts, dt)
        if bm is None:  # no torchsde: picard draws the increments, as Euler needs only them
            h = (grid[1:] - grid[:-1]).abs().sqrt().to(y0.dtype).reshape(-1, 1, 1)
            shape = (grid.shape[0] - 1, y0.shape[0], noise)
            dW = torch.randn(shape, generator=generator, dtype=y0.dtype, device=y0.device) * h
            area = None
        else:
            dW, area = _queried(bm, grid, y0, scheme.area)
            if dW.shape[1:] != (y0.shape[0], noise):
                raise ValueError(
                    f"bm returned increments of shape {tuple(dW.shape[1:])}; expected "
                    f"(batch, noise channels) = {(y0.shape[0], noise)}"
                )
        problem = SchemeProblem(fns, scheme, grid, dW, area, options)
        # sweeps that diverge finish one step after another, as torchsde steps
        solve_options = {"on_nonfinite": "sequential", **solve_options}
        if scheme.carries_z:  # z's recursion, z' = 2y - z + ..., makes Picard's error grow
            solve_options.setdefault("window", 1)  # as 2^k: one step a sweep, sequentially
        sol = solve_with(problem, x0, Options.of(**solve_options), save=True)
        assert sol.ys is not None
        ys, stats = interpolate(grid, sol.ys, ts), sol.stats
    state: tuple[Tensor, ...] = ()
    if z0 is not None:  # torchsde's extra state: f, g at the last z, and z
        ys, z = ys.chunk(2, dim=-1)
        end_z = z[-1]
        f_end, g_end = fns.base.f_and_g(ts[-1], end_z)
        state = (f_end, g_end, end_z)
    out: tuple[Any, ...]
    if logqp:
        ys, log_ratio = ys[..., :-1], ys[..., -1]
        out = (ys, log_ratio[1:] - log_ratio[:-1])
    else:
        out = (ys,)
    if extra:
        out = (*out, state)
    if return_stats:
        out = (*out, stats)
    return out if len(out) > 1 else out[0]


def torchsde_grid(ts: Tensor, dt: float) -> Tensor:
    """Torchsde's steps: from ``ts[0]`` by ``dt``, accumulated as it accumulates them.

    The last step is cut at ``ts[-1]``.

    Args:
        ts: the output times (increasing).
        dt: the step.

    Returns:
        The grid, from ``ts[0]`` to ``ts[-1]``.

    Example:
        >>> torchsde_grid(torch.tensor([0.0, 0.25]), 0.1).tolist()
        [0.0, 0.10000000149011612, 0.20000000298023224, 0.25]
    """
    grid, now, end = [ts[0]], ts[0], ts[-1]
    while bool(now < end):
        now = torch.minimum(now + dt, end)
        grid.append(now)
    return torch.stack(grid)


def _times(ts: Any, y0: Tensor) -> Tensor:
    if not isinstance(ts, Tensor):
        if not isinstance(ts, (tuple, list)) or not all(isinstance(t, (float, int)) for t in ts):
            raise ValueError("ts must be a 1-D Tensor or a list/tuple of floats")
        ts = torch.tensor(ts, dtype=y0.dtype, device=y0.device)
    if ts.dim() != 1 or ts.shape[0] < 1:
        raise ValueError(f"ts must be 1-D and non-empty, got shape {tuple(ts.shape)}")
    if ts.shape[0] > 1 and not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError("ts must be strictly increasing (as torchsde requires)")
    return ts


def _method(method: Any, fns: SDEFunctions, adaptive: bool) -> SDEMethod:
    """The method, checked against the SDE as torchsde checks it."""
    if method not in SDE_METHODS:
        raise ValueError(f"method must be one of {sorted(SDE_METHODS)}, got {method!r}")
    scheme = SDE_METHODS[method]
    if adaptive and method == "euler" and fns.noise_type != "additive":  # before, as torchsde
        warnings.warn(EULER_ADAPTIVE_WARNING, UserWarning, stacklevel=4)
    if fns.sde_type not in scheme.sde_types:
        raise ValueError(
            f"method={method!r} solves {'/'.join(scheme.sde_types)} SDEs; sde.sde_type is "
            f"{fns.sde_type!r}"
        )
    if fns.noise_type not in scheme.noise_types:
        raise ValueError(
            f"method={method!r} does not take noise_type={fns.noise_type!r} (it takes "
            f"{', '.join(scheme.noise_types)})"
        )
    return scheme


def _start_z(extra_solver_state: Any, scheme: SDEMethod, y0: Tensor) -> Tensor | None:
    """Reversible Heun's first ``z``: ``extra_solver_state[2]``, else ``y0`` (as torchsde)."""
    given = () if extra_solver_state is None else tuple(extra_solver_state)
    if not scheme.carries_z:
        if given:
            raise ValueError("extra_solver_state: this method keeps no extra state (pass ())")
        return None
    if not given:
        return y0
    if len(given) != 3 or given[2].shape != y0.shape:
        raise ValueError("extra_solver_state must be reversible Heun's (f, g, z), z like y0")
    return given[2].to(y0.dtype)


def _noise_size(fns: SDEFunctions, ts: Tensor, y0: Tensor, bm: Any) -> int:
    """The Brownian channels, from the diffusion's shape at ``(ts[0], y0)`` or ``bm``'s."""
    sizes = []
    if bm is not None and hasattr(bm, "shape"):  # torchsde's Brownian objects (a plain
        shape = tuple(bm.shape)  # function bm(ta, tb) is checked by its increments)
        if len(shape) != 2:
            raise ValueError("bm must be of shape (batch, noise_channels)")
        if shape[0] != y0.shape[0]:
            raise ValueError(f"bm has batch {shape[0]}, y0 has {y0.shape[0]}")
        sizes.append(shape[1])
    try:
        with torch.no_grad():
            g = fns.base.g(ts[0], y0)
    except ValueError:
        g = None  # only g_prod: the noise size comes from bm
    if g is not None:
        expected = 2 if fns.diagonal else 3
        if g.dim() != expected or g.shape[:2] != y0.shape:
            raise ValueError(
                f"the diffusion must be of shape (batch, d{'' if fns.diagonal else ', m'}) = "
                f"{(*y0.shape,) + (() if fns.diagonal else ('m',))}, got {tuple(g.shape)}"
            )
        sizes.append(g.shape[-1])
    if not sizes:
        raise ValueError("cannot infer the noise size: pass bm, or give the sde a g or f_and_g")
    if any(s != sizes[0] for s in sizes):
        raise ValueError(f"noise sizes disagree: bm and the diffusion give {sizes}")
    if fns.noise_type == "scalar" and sizes[0] != 1:
        raise ValueError(f"scalar noise must have one channel; the diffusion has {sizes[0]}")
    return sizes[0]


def _default_brownian(
    ts: Tensor, size: tuple[int, int], y0: Tensor, scheme: SDEMethod, adaptive: bool,
    generator: torch.Generator | None,
) -> Any:  # fmt: skip
    """Torchsde's ``BrownianInterval`` as torchsde makes it (``None`` without torchsde)."""
    try:
        from torchsde import BrownianInterval
    except ImportError:
        if adaptive or scheme.area:
            raise ValueError(
                "without torchsde installed, pass bm (this method or adaptive stepping queries "
                "Brownian motion at arbitrary times)"
            ) from None
        return None
    entropy = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    return BrownianInterval(
        t0=ts[0], t1=ts[-1], size=size, dtype=y0.dtype, device=y0.device, entropy=entropy,
        levy_area_approximation={"U": "space-time", "A": "foster"}.get(scheme.area, "none"),
    )  # fmt: skip


def _query(bm: Any, ta: Tensor, tb: Tensor, area: str | None) -> tuple[Tensor, Tensor | None]:
    if area is not None:  # "U": the space-time Lévy area; "A": the Lévy area
        w, a = bm(ta, tb, **{f"return_{area}": True})
        return w, a
    return bm(ta, tb), None


def _queried(bm: Any, grid: Tensor, y0: Tensor, area: str | None) -> tuple[Tensor, Tensor | None]:
    """``bm`` over every step, in order (as the sequential loop queries it)."""
    if not callable(bm):
        raise TypeError(f"bm must be callable as bm(ta, tb), got {type(bm).__name__}")
    steps = [_query(bm, grid[i], grid[i + 1], area) for i in range(grid.shape[0] - 1)]
    dW = torch.stack([torch.as_tensor(w, dtype=y0.dtype, device=y0.device) for w, _ in steps])
    areas = None if area is None else torch.stack([u for _, u in steps])  # type: ignore[misc]
    return dW, areas


MAX_ROUNDS = 30
"""Grid refinements an adaptive solve may take."""


def _adaptive(
    fns: SDEFunctions, scheme: SDEMethod, x0: Tensor, ts: Tensor, bm: Any, dt: float,
    rtol: float, atol: float, dt_min: float, options: dict[str, Any],
    solve_options: dict[str, Any],
) -> tuple[Tensor, Stats]:  # fmt: skip
    """Torchsde's error test met in parallel: every step of the final grid passes it.

    torchsde takes a full step and two half steps, keeps the halves if the scaled RMS of
    their difference is at most 1, and else retries shorter. Here each round solves the
    whole grid's half steps in parallel sweeps (the grid with its midpoints), takes every
    full step in one batched call from the states it reached, and splits the failing steps
    (torchsde's controller: safety 0.9, shrinking to at most 0.2, order 1.5), until none
    fails or they reach ``dt_min``. The answer is the final grid's halves, as torchsde keeps
    them: not torchsde's grid, its test.
    """
    from picard.ode.adaptive import StepOptions, regrid

    control = StepOptions(min_step=dt_min, safety=0.9, ifactor=1.4, dfactor=0.2)
    grid, index = refine_grid(ts, dt)
    width = x0.shape[-1] // 2 if scheme.carries_z else x0.shape[-1]  # y's columns
    parts: list[Stats] = []
    init = None
    for _ in range(MAX_ROUNDS):
        fine = torch.stack([grid[:-1], (grid[:-1] + grid[1:]) / 2], 1).reshape(-1)
        fine = torch.cat([fine, grid[-1:]])
        dW, area = _queried(bm, fine, x0, scheme.area)
        problem = SchemeProblem(fns, scheme, fine, dW, area, options)
        with torch.no_grad():
            sol = solve_with(problem, x0, Options.of(**solve_options, init=init), save=True)
        assert sol.ys is not None
        parts.append(sol.stats)
        halves = sol.ys
        ratios = _step_errors(fns, scheme, grid, halves, bm, x0, width, rtol, atol, options)
        h = (grid[1:] - grid[:-1]).abs().double().cpu().numpy()
        ratios = np.where(h <= dt_min * (1 + 1e-12), np.minimum(ratios, 1.0), ratios)
        if bool((ratios <= 1).all()):
            break
        new, index = regrid(grid, index, ratios, 1.5, merge=False, steps=control)  # type: ignore[arg-type]
        new_fine = torch.stack([new[:-1], (new[:-1] + new[1:]) / 2], 1).reshape(-1)
        init = interpolate(fine, halves, torch.cat([new_fine, new[-1:]]))
        grid = new
    else:
        raise RuntimeError(f"adaptive: no grid passed torchsde's test in {MAX_ROUNDS} rounds")
    # the answer, with gradients attached to the passing grid's solution (no solve again)
    sol = with_gradients(problem, x0, Options.of(**solve_options), sol)
    assert sol.ys is not None
    return sol.ys[[2 * i for i in index]], summed(parts)


def _step_errors(
    fns: SDEFunctions, scheme: SDEMethod, grid: Tensor, halves: Tensor, bm: Any, x0: Tensor,
    width: int, rtol: float, atol: float, options: dict[str, Any],
) -> np.ndarray:  # fmt: skip
    """Torchsde's error of every step: its full step against the two halves taken."""
    dW, area = _queried(bm, grid, x0, scheme.area)
    h = (grid[1:] - grid[:-1]).to(halves.dtype).reshape(-1, 1, 1)
    with torch.no_grad():
        full = scheme.step(fns, grid[:-1].to(halves.dtype), h, halves[0:-1:2], dW, area, options)
        a, b = full[..., :width], halves[2::2][..., :width]
        bound = (rtol * torch.maximum(a.abs(), b.abs()) + atol).clamp_min(1e-7)
        error = ((a - b) / bound).pow(2).reshape(a.shape[0], -1).mean(1).sqrt().clamp_min(1e-7)
    if bool(torch.isnan(error).any()):
        raise ValueError("NaN in the adaptive error estimate: loosen the tolerances")
    return error.double().cpu().numpy()


def sdeint_adjoint(
    sde: Any,
    y0: Tensor,
    ts: Any,
    bm: Any = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float = 1e-5,
    adjoint_rtol: float = 1e-5,
    atol: float = 1e-4,
    adjoint_atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Any = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any = None,
    **solve_options: Any,
) -> Any:
    """Torchsde's ``sdeint_adjoint`` call: :func:`torchsde_sdeint`, gradients by picard's adjoint.

    picard's backward pass is the adjoint recursion of the forward's own steps, solved in
    parallel: the gradients of the discrete path (autograd through the sequential loop
    gives the same), to ``y0``, ``sde``'s parameters and ``adjoint_params``. torchsde's
    continuous adjoint solves another SDE backward, with its own method and tolerances:
    ``adjoint_method``, ``adjoint_adaptive``, ``adjoint_rtol``, ``adjoint_atol`` and
    ``adjoint_options`` are accepted and have nothing to act on.

    Args:
        sde: as for :func:`torchsde_sdeint`.
        y0: as for :func:`torchsde_sdeint`.
        ts: as for :func:`torchsde_sdeint`.
        bm: as for :func:`torchsde_sdeint`.
        method: as for :func:`torchsde_sdeint`.
        adjoint_method: torchsde's backward method (nothing to act on).
        dt: as for :func:`torchsde_sdeint`.
        adaptive: as for :func:`torchsde_sdeint`.
        adjoint_adaptive: torchsde's (nothing to act on).
        rtol: as for :func:`torchsde_sdeint`.
        adjoint_rtol: torchsde's (nothing to act on).
        atol: as for :func:`torchsde_sdeint`.
        adjoint_atol: torchsde's (nothing to act on).
        dt_min: as for :func:`torchsde_sdeint`.
        options: as for :func:`torchsde_sdeint`.
        adjoint_options: torchsde's (nothing to act on).
        adjoint_params: the tensors gradients flow to (default: ``sde``'s parameters).
        names: as for :func:`torchsde_sdeint`.
        logqp: as for :func:`torchsde_sdeint`.
        extra: as for :func:`torchsde_sdeint`.
        extra_solver_state: as for :func:`torchsde_sdeint`.
        **solve_options: the solve's options.

    Returns:
        As :func:`torchsde_sdeint`.

    Example:
        >>> class SDE(torch.nn.Module):
        ...     noise_type, sde_type = "diagonal", "ito"
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.k = torch.nn.Parameter(torch.tensor(0.5))
        ...     def f(self, t, y): return -self.k * y
        ...     def g(self, t, y): return 0.1 * torch.ones_like(y)
        >>> sde = SDE()
        >>> ys = sdeint_adjoint(sde, torch.ones(2, 1), torch.tensor([0.0, 1.0]), method="euler",
        ...                     dt=0.1)
        >>> ys[-1].sum().backward()
        >>> sde.k.grad.shape
        torch.Size([])
    """
    params = tuple(model_parameters(sde) if adjoint_params is None else adjoint_params)
    if adjoint_params is not None:
        solve_options["adjoint_params"] = params
    out = torchsde_sdeint(
        sde, y0, ts, bm, method=method, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol,
        dt_min=dt_min, options=options, names=names, logqp=logqp, extra=extra,
        extra_solver_state=extra_solver_state, **solve_options,
    )  # fmt: skip
    # as torchsde's adjoint: every parameter gets a gradient, zero where unused
    if isinstance(out, Tensor):
        return every_parameter(out, params)
    paths = 2 if logqp else 1
    return (*(every_parameter(o, params) for o in out[:paths]), *out[paths:])
