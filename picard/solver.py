"""The sliding-window Picard sweep loop and its convergence test — the one loop.

Notation (ParaDiGMS, Shih et al. 2023, Algorithm 1): states ``x_0 … x_N``, increments
``Δ_i``; a sweep over the window ``[b, b + w)`` computes, from the current guesses,

    x_{i+1}  <-  x_b + Σ_{j=b..i} Δ_j(x_j)        for i = b … b + w - 1   (one cumsum)

with every ``Δ_j`` of the window from one batched call. Step i has converged when the
RMS change of ``x_{i+1}`` since the previous sweep is at most ``tol * scale_i`` (worst
sample of a batch). The window then slides by ``min(first unconverged + 1, w) >= 1``:
the first unconverged state was computed from converged inputs, so it is final too.
Hence at most N sweeps, and ``tol = 0`` gives the sequential recursion.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard._checks import check_int, check_nonneg, check_optional_int, check_state
from picard.errors import ConvergenceError, NonFiniteError
from picard.fallback import FALLBACKS, bad_increments, finish_sequentially
from picard.per_sample import per_sample_sweeps
from picard.problem import Problem, per_sample_size, working_dtype
from picard.rows import check_devices, evaluating, evaluator_for
from picard.solution import Solution, Stats
from picard.verify import verified

__all__ = ["ACCELERATIONS", "DEFAULT_TOL", "SolveOptions", "sequential", "solve", "solve_options"]

DEFAULT_TOL = Problem.default_tol
"""Default tolerance of :func:`picard.odeint` and :func:`picard.sdeint` (and of problems)."""


ACCELERATIONS = ("secant",)
"""Values of ``accelerate`` besides ``None``."""


@dataclass(frozen=True)
class SolveOptions:
    """How :func:`solve` runs its sweeps (its keyword arguments of the same names).

    Front ends (:func:`picard.odeint`, :func:`picard.sdeint`, pipelines) take them as
    keywords and build this with :func:`solve_options`, which checks them.

    Attributes:
        accelerate: ``None`` (plain Picard updates) or ``"secant"`` (see
            :data:`ACCELERATIONS`).
        predict: start the steps entering a window from the problem's cheap guess.
        max_rows: a row budget per call instead of a fixed window (``None``: none).
        init: warm start, a guess of all the states ``(N + 1, *x0.shape)``, or ``None``.
        per_sample: give every sample of the batch its own window.
        distributed: shard each sweep's rows over a ``torch.distributed`` process group.
        devices: evaluate each sweep's rows on model replicas on these devices, or
            ``None``.
        max_evaluations: a budget of (step × sample) evaluations, or ``None``.
        on_budget: ``"raise"`` or ``"sequential"`` when a budget runs out.
        on_nonfinite: ``"raise"`` or ``"sequential"`` when a sweep meets NaN/Inf.
        relative: measure each state's change relative to its own RMS (``None``: the
            problem's choice, :attr:`picard.Problem.relative_tol`).
        verify: estimate the final state's error by a warm-started solve at a hundredth
            of the tolerance and refine until the estimate meets ``tol`` (``True``) or the
            given number; ``False``: no estimate.

    Example:
        >>> opts = SolveOptions(per_sample=True)
        >>> opts.per_sample, opts.predict, opts.on_budget
        (True, True, 'raise')
        >>> opts == solve_options(per_sample=True)  # the checked builder gives the same
        True
    """

    accelerate: str | None = None
    predict: bool = True
    max_rows: int | None = None
    init: Tensor | None = None
    per_sample: bool = False
    distributed: bool = False
    devices: tuple[torch.device, ...] | None = None
    max_evaluations: int | None = None
    on_budget: str = "raise"
    on_nonfinite: str = "raise"
    relative: bool | None = None
    verify: bool | float = False


DEFAULT_OPTIONS = SolveOptions()

_TINY = np.finfo(np.float64).tiny


def solve_options(**options: Any) -> SolveOptions:
    """Check sweep options given as keywords and bundle them.

    The keywords are ``accelerate``, ``predict``, ``max_rows``, ``init``,
    ``per_sample``, ``distributed``, ``devices``, ``max_evaluations``, ``on_budget``,
    ``on_nonfinite``, ``relative`` and ``verify`` (see
    :func:`solve`); unknown keywords raise ``TypeError``.

    Args:
        **options: any of the fields of :class:`SolveOptions`, by name; those not given
            keep their defaults.

    Returns:
        The checked :class:`SolveOptions` (``devices`` normalised to a tuple of devices).

    Raises:
        TypeError: an unknown keyword, or a value of the wrong type.
        ValueError: a value out of range, or options that do not combine.

    Example:
        >>> solve_options(accelerate=None).predict
        True
        >>> solve_options(max_rows=64, on_budget="sequential").max_rows
        64
        >>> solve_options(windw=4)
        Traceback (most recent call last):
            ...
        TypeError: unexpected keyword argument 'windw'; sweep options are ...
    """
    names = {f.name for f in fields(SolveOptions)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}; sweep options are "
            + ", ".join(sorted(names))
        )
    merged = {**DEFAULT_OPTIONS.__dict__, **options}
    accelerate = merged["accelerate"]
    if accelerate is not None and accelerate not in ACCELERATIONS:
        raise ValueError(f"accelerate must be None or one of {ACCELERATIONS}, got {accelerate!r}")
    merged["devices"] = check_devices(merged["devices"])
    if merged["distributed"] and merged["devices"]:
        raise ValueError("distributed=True and devices=[...] do not combine; choose one")
    for name in ("predict", "per_sample", "distributed", "relative"):
        if not isinstance(merged[name], bool) and (name != "relative" or merged[name] is not None):
            raise TypeError(f"{name} must be a bool, got {type(merged[name]).__name__}")
    merged["verify"] = _check_verify(merged["verify"])
    if merged["per_sample"] and accelerate is not None:
        raise ValueError(
            f"accelerate={accelerate!r} does not combine with per_sample=True; choose one"
        )
    for name in ("max_rows", "max_evaluations"):
        if merged[name] is not None:
            merged[name] = check_int(name, merged[name], minimum=1)
    for name in ("on_budget", "on_nonfinite"):
        if merged[name] not in FALLBACKS:
            raise ValueError(f"{name} must be one of {FALLBACKS}, got {merged[name]!r}")
    if merged["init"] is not None and not isinstance(merged["init"], Tensor):
        raise TypeError(f"init must be a Tensor of states, got {type(merged['init']).__name__}")
    return SolveOptions(**merged)


def _check_verify(verify: Any) -> bool | float:
    if isinstance(verify, bool):
        return verify
    if not isinstance(verify, int | float):
        raise TypeError(f"verify must be a bool or a positive number, got {verify!r}")
    if not math.isfinite(verify) or verify <= 0:
        raise ValueError(f"verify must be a bool or a positive number, got {verify!r}")
    return float(verify)


def solve(
    problem: Problem,
    x0: Tensor,
    *,
    window: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    save: bool | Sequence[int] = False,
    progress: Callable[[int, int], None] | None = None,
    accelerate: str | None = None,
    predict: bool = True,
    max_rows: int | None = None,
    init: Tensor | None = None,
    per_sample: bool = False,
    distributed: bool = False,
    devices: Sequence[str | torch.device] | None = None,
    max_evaluations: int | None = None,
    on_budget: str = "raise",
    on_nonfinite: str = "raise",
    relative: bool | None = None,
    verify: bool | float = False,
) -> Solution:
    """Solve ``problem`` from ``x0`` by sliding-window Picard iteration.

    Args:
        problem: the recursion (:class:`picard.Problem`).
        x0: the initial state; any shape, real floating dtype, any device.

    Other Arguments:
        window: steps per sweep (rows per call = window × samples); ``None`` means the
            whole grid. Larger windows need fewer sweeps but more evaluations.
        tol: step i converges when the RMS change of state ``i + 1`` between two sweeps is
            at most ``tol`` times that state's RMS (``relative``, per sample; the default
            of diffusion samplers) or ``tol * problem.scale()[i]`` (worst sample). ``tol
            = 0`` reproduces the sequential recursion to float rounding. ``None``:
            ``problem.default_tolerance(relative)`` (1e-5 for ODEs/SDEs and recursions;
            0.01 for diffusion samplers, 0.1 with ``relative=False``).
        max_iters: sweep budget (default N, which always suffices); running out raises
            :class:`picard.ConvergenceError`.
        save: ``True`` keeps every state ``x_0 … x_N`` in ``Solution.ys``; a sequence of
            increasing state indices keeps those; ``False`` keeps only the final state.
        progress: called after every sweep as ``progress(steps_done, num_steps)``.
        accelerate: ``None`` (default): plain Picard updates, as ParaDiGMS.
            ``"secant"`` corrects each sweep with per-step slopes estimated from the
            last two sweeps (a triangular quasi-Newton step, safeguarded by falling back
            to plain Picard): 10–30% fewer sweeps on deterministic samplers with long
            windows, but at the same ``tol`` the final error can be a few times larger
            (benchmarks/results/acceleration.md) — pair it with a smaller ``tol``.
        predict: start the steps entering a window from the problem's cheap guess
            (:meth:`picard.Problem.guess`: diffusion samplers reuse the last denoised
            estimate, ODEs the last slope) instead of a copy of the window's last state.
        max_rows: a row budget per call instead of a fixed window: the window adapts
            (doubles after sweeps that finalize all of it, shrinks to twice the steps a
            sweep finalizes but not below half the budget) with ``window ×
            samples × rows_per_evaluation <= max_rows`` and ``window`` as a further cap.
        init: warm start: a guess of all the states, ``(N + 1, *x0.shape)`` (e.g.
            ``Solution.ys`` of a neighbouring solve); row 0 is ignored. Overrides
            ``predict``.
        per_sample: give every sample of the batch its own window (problems with one
            batch dimension that implement :meth:`picard.Problem.increments_at`, such as
            the diffusion adapters): each slides by its own converged prefix, finished
            samples leave the batch, and with ``max_rows`` their rows go to the others.
            Each sample gets what solving it alone would give. ``Stats.window_starts``
            then holds the slowest sample's start.
        distributed: inside an initialised ``torch.distributed`` process group (e.g.
            under ``torchrun``), every rank runs this same solve and evaluates its
            contiguous shard of each sweep's model rows; the shards are gathered, so all
            ranks hold the same result, the single-process one. A rank whose model
            raises makes every rank raise :class:`picard.RankError` naming it.
        devices: evaluate each sweep's rows on replicas of the model on these devices
            (e.g. ``["cuda:0", "cuda:1"]``), one thread each, gathered in order; the
            model must be a ``torch.nn.Module`` (or ``parallelize(pipe, ...)``'s).
        max_evaluations: a budget of (step × sample) evaluations over all sweeps; the
            last sweep's window shrinks to fit it.
        on_budget: ``"raise"`` (default): when ``max_iters`` or ``max_evaluations`` run
            out, raise :class:`picard.ConvergenceError` carrying the partial solution.
            ``"sequential"``: take the remaining steps one at a time instead — the
            result is still the sequential one (``stats.sequential_steps`` counts them).
        on_nonfinite: ``"raise"`` (default): NaN/Inf raise
            :class:`picard.NonFiniteError` naming the step and sweep. ``"sequential"``:
            re-solve from the last converged state one step at a time (a model that
            misbehaves only on the iteration's far-off guesses then still gives the
            sequential result; one that returns NaN on the true trajectory still raises).
        relative: ``True``: measure each state's change relative to the state's own RMS
            (per sample): ``tol`` is then a relative error with the same meaning for
            every sampler, step and ODE — for the last states, the sample's own relative
            error, and since for Gaussian data a sampler maps a relative perturbation at
            any step to the same relative perturbation of the sample, the final error is
            about ``tol`` ("How it works"). ``False``: relative to ``problem.scale()``
            (ParaDiGMS's noise-std test for diffusion samplers). ``None`` (default): the
            problem's choice, :attr:`picard.Problem.relative_tol` (``True`` for
            diffusion samplers, ``False`` for ODEs, SDEs and recursions).
        verify: ``True``: estimate the final state's error a posteriori and refine until
            the estimate is at most ``tol`` (a number: at most that). Each verification
            re-solves at a hundredth of the tolerance, warm-started from the last
            trajectory (1.7–2.4x the sweeps in all, up to 4.8x with a second); the
            distance between the two final states is ``stats.error_estimate`` (relative
            to the sample's RMS, worst sample), and the tighter solution is returned. At
            most 2 refinements, then :class:`picard.AccuracyWarning`. Keeps every state
            while it runs;
            ``progress`` starts again from 0 for each verification solve.

    Returns:
        A :class:`picard.Solution`. States, cumulative sums and residuals are kept in
        float32 or float64 whatever the drift computes in; results come back in
        ``x0.dtype``. Runs without autograd.

    Raises:
        picard.NonFiniteError: an increment was NaN or Inf (names the step and sweep).
        picard.ConvergenceError: ``max_iters`` sweeps did not reach the last step.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: 0.01 * torch.sin(x), num_steps=100)
        >>> sol = picard.solve(rule, torch.tensor([1.0]), window=20, tol=1e-6)
        >>> sol.stats.iterations < 100
        True
    """
    options = solve_options(
        accelerate=accelerate,
        predict=predict,
        max_rows=max_rows,
        init=init,
        per_sample=per_sample,
        distributed=distributed,
        devices=devices,
        max_evaluations=max_evaluations,
        on_budget=on_budget,
        on_nonfinite=on_nonfinite,
        relative=relative,
        verify=verify,
    )
    return solve_validated(
        problem, check_state("x0", x0), window, tol, max_iters, save, progress, options
    )


def solve_validated(
    problem: Problem,
    x0: Tensor,
    window: int | None,
    tol: float | None,
    max_iters: int | None,
    save: bool | Sequence[int],
    progress: Callable[[int, int], None] | None = None,
    options: SolveOptions | None = None,
) -> Solution:
    """:func:`solve` for an ``x0`` already checked by the caller (a front end)."""
    options = options or DEFAULT_OPTIONS
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a picard.Problem, got {type(problem).__name__}")
    n = check_int("problem.num_steps", problem.num_steps, minimum=1)
    window = min(n, check_optional_int("window", window, minimum=1, default=n))
    relative = problem.relative_tol if options.relative is None else options.relative
    options = replace(options, relative=bool(relative))
    tol = check_nonneg("tol", problem.default_tolerance(options.relative) if tol is None else tol)
    given_iters = max_iters
    max_iters = check_optional_int("max_iters", max_iters, minimum=1, default=n)
    saved = _saved_steps(save, n)
    batch_ndim = check_int("problem.batch_ndim", problem.batch_ndim, minimum=0)
    if batch_ndim > x0.ndim:
        raise ValueError(f"problem.batch_ndim={batch_ndim} exceeds x0.ndim={x0.ndim}")
    samples, size = per_sample_size(x0.shape, batch_ndim)
    if options.init is not None:
        _check_init(options.init, n, x0)
    if options.per_sample:
        _check_per_sample(problem, batch_ndim)
    # On the norm, not the RMS; relative: the change's norm over the state's (an RMS ratio).
    scale = np.ones(n) if options.relative else _scales(problem.scale(), n) * math.sqrt(size)
    inv_scale = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    evaluator = evaluator_for(options.distributed, options.devices, x0, (n, window, tol))

    def run(
        tol: float,
        init: Tensor | None,
        max_iters: int,
        max_evaluations: int | None,
        saved: Sequence[int] | None = saved,
    ) -> Solution:
        opts = replace(options, init=init, max_evaluations=max_evaluations)
        limits = _Limits(np.square(tol * scale), inv_scale, tol, max_iters)
        if opts.per_sample:
            return per_sample_sweeps(
                problem, x0, window, limits.threshold2, inv_scale, tol, max_iters, saved,
                progress, opts, draw,
            )  # fmt: skip
        return _sweeps(
            problem, x0, window, limits, saved, samples, progress=progress, options=opts, draw=draw
        )

    drawn: list[Any] = []

    def draw(x0: Tensor) -> Any:  # verification solves reuse the first solve's noise
        if not drawn:
            drawn.append(problem.init(x0))
        return drawn[0]

    # NaN/Inf are detected and reported by the loop itself, not by numpy warnings.
    with torch.no_grad(), np.errstate(over="ignore", invalid="ignore"), evaluating(evaluator):
        if options.verify is False:
            return run(tol, options.init, max_iters, options.max_evaluations)
        target = tol if options.verify is True else options.verify
        every = list(range(n + 1))
        return verified(
            lambda t, i, m, e: run(t, i, n if m is None else m, e, every),
            tol,
            target,
            options.init,
            None if given_iters is None else max_iters,
            options.max_evaluations,
            batch_ndim,
            saved,
        )


def _check_per_sample(problem: Problem, batch_ndim: int) -> None:
    if batch_ndim != 1 or type(problem).increments_at is Problem.increments_at:
        raise ValueError(
            "per_sample=True needs a problem with one batch dimension (batch_ndim=1) that "
            f"implements increments_at, such as the diffusion adapters; {type(problem).__name__} "
            f"has batch_ndim={batch_ndim}"
            + (
                ""
                if type(problem).increments_at is not Problem.increments_at
                else " and no increments_at"
            )
        )


def _check_init(init: Tensor, n: int, x0: Tensor) -> None:
    if init.shape != (n + 1, *x0.shape):
        raise ValueError(
            f"init must hold a guess of every state, shape {(n + 1, *x0.shape)}; "
            f"got {tuple(init.shape)}"
        )
    if not init.is_floating_point():
        raise TypeError(f"init must be a real floating tensor, got {init.dtype}")
    if init.device != x0.device:
        raise ValueError(f"init is on {init.device}; expected {x0.device}, like x0")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("init holds NaN or Inf")


@dataclass(frozen=True)
class _Limits:
    """The convergence test: squared-norm thresholds per step, and the sweep budget."""

    threshold2: np.ndarray
    inv_scale: np.ndarray
    tol: float
    max_iters: int


@dataclass(frozen=True)
class _Arrays:
    """The array operations of a sweep's bookkeeping, for one kind of device.

    On the CPU the workspace is viewed as a numpy array (sharing memory): the same
    arithmetic at a fraction of torch's per-call overhead, which matters when the drift
    is a small model. On accelerators everything stays in torch, on the device.
    """

    view: Callable[[Tensor], Any]  # a tensor as this kind of array, sharing memory
    copy: Callable[[Any], Any]
    cumsum: Callable[[Any], Any]  # along dim 0
    dots: Callable[[Any, Any], Any]  # (w, samples, size) twice -> (w, samples) dot products
    cumprod: Callable[[Any], Any]  # along dim 0
    host: Callable[[Any], np.ndarray]  # to a host numpy array: the one synchronisation
    index: Callable[[Sequence[int], torch.device], Any]
    asarray: Callable[[np.ndarray, Any], Any]  # a host array as this kind, like another

    def sq_norms(self, d: Any) -> Any:
        """``(w, samples, size) -> (w, samples)`` squared norms."""
        return self.dots(d, d)


_NUMPY = _Arrays(
    view=lambda t: t.detach().numpy(),
    copy=np.array,
    cumsum=lambda a: np.add.accumulate(a, axis=0),
    dots=np.vecdot if hasattr(np, "vecdot") else (lambda a, b: np.einsum("wsk,wsk->ws", a, b)),
    cumprod=lambda a: np.multiply.accumulate(a, axis=0),
    host=lambda a: a,
    index=lambda steps, device: np.asarray(steps),
    asarray=lambda a, like: a.astype(like.dtype),
)
_TORCH = _Arrays(
    view=lambda t: t,
    copy=torch.clone,
    cumsum=lambda a: torch.cumsum(a, 0),
    dots=lambda a, b: torch.sum(a * b, dim=-1),
    cumprod=lambda a: torch.cumprod(a, 0),
    host=lambda a: a.cpu().numpy(),
    index=lambda steps, device: torch.tensor(list(steps), device=device),
    asarray=lambda a, like: torch.as_tensor(a, dtype=like.dtype, device=like.device),
)


def _sweeps(
    problem: Problem,
    x0: Tensor,
    window: int,
    limits: _Limits,
    saved: Sequence[int] | None,
    samples: int,
    arrays: _Arrays | None = None,
    progress: Callable[[int, int], None] | None = None,
    options: SolveOptions = DEFAULT_OPTIONS,
    draw: Callable[[Tensor], Any] | None = None,
) -> Solution:
    n = problem.num_steps
    memory = problem.memory
    wmax = window
    if options.max_rows is not None:
        wmax = max(1, min(window, options.max_rows // (samples * problem.rows_per_evaluation)))
    # Workspace: xs[k] is the current guess of state off + k. When every state is saved
    # it is the whole trajectory (and the result); otherwise it holds two windows and is
    # compacted as the window slides, so memory stays O(window).
    keep_all = saved is not None and len(saved) == n + 1
    length = n + 1 if keep_all else min(n + 1, 2 * wmax + 1)
    xs_t = x0.detach().to(working_dtype(x0.dtype)).expand(length, *x0.shape).clone()
    ops = arrays or (_NUMPY if xs_t.device.type == "cpu" else _TORCH)
    view, cumsum, sq_norms, host = ops.view, ops.cumsum, ops.sq_norms, ops.host
    xs = view(xs_t)
    init = None if options.init is None else view(options.init.to(xs_t.dtype))
    if init is not None:
        xs[1:] = init[1:length]
    state = (draw or problem.init)(x0)
    saver = None if keep_all or saved is None else _Saver(saved, xs_t[0], ops)
    secant = _Secant(ops, samples) if options.accelerate == "secant" else None
    history: Tensor | None = None
    starts: list[int] = []
    changes: list[np.ndarray] = []  # per sweep: the worst sample's squared change per step
    start = off = evaluations = 0
    w = wmax
    stopped = False  # the sweeps stopped early; the rest goes step by step
    while start < n:
        left = _budget(options.max_evaluations, evaluations, samples)
        if len(starts) == limits.max_iters or left == 0:
            if options.on_budget == "sequential":
                stopped = True
                break
            stats = _stats(problem, wmax, limits, evaluations, starts, changes, secant)
            what = (
                f"max_iters={limits.max_iters} sweeps"
                if len(starts) == limits.max_iters
                else f"max_evaluations={options.max_evaluations} evaluations"
            )
            raise ConvergenceError(
                f"{what} converged {start} of {n} steps; raise the budget or tol, or pass "
                'on_budget="sequential" to finish step by step',
                stats=stats,
                steps_done=start,
                state=xs_t[start - off].to(x0.dtype),
                solution=_partial(xs_t, off, start, keep_all, saver, stats, x0.dtype),
            )
        if left is not None:
            w = min(w, left)
        lo = start - off
        states = xs_t[lo : lo + w]
        inc, out = problem.increments(states, start, state, history)
        if (
            not isinstance(inc, Tensor)
            or inc.shape != states.shape
            or inc.dtype != states.dtype
            or inc.device != states.device
        ):
            bad_increments(inc, states)
        new = cumsum(view(inc))  # states start + 1 … start + w, by plain Picard
        new += xs[lo]
        # The fixed-point residual: the test (for plain Picard, the change of the state).
        change = sq_norms((new - xs[lo + 1 : lo + w + 1]).reshape(w, samples, -1))
        if options.relative:  # on the device: still one synchronisation per sweep
            change = change / (sq_norms(new.reshape(w, samples, -1)) + _TINY)
        change = host(change)
        if secant is None:
            xs[lo + 1 : lo + w + 1] = new
        worst = change[:, 0] if samples == 1 else change.max(axis=1)
        starts.append(start)
        changes.append(worst)
        evaluations += w * samples
        if not math.isfinite(worst[-1]):  # cumsum carries any NaN/Inf to the last state
            if options.on_nonfinite == "sequential":
                stopped = True
                break
            raise _non_finite(problem, worst, new, start, len(starts))
        ok = worst <= limits.threshold2[start : start + w]
        first = int(ok.argmin())
        stride = w if ok[first] else first + 1
        if secant is not None:
            # Finalized states take their Picard values (a converged prefix stays exact);
            # the others the accelerated ones.
            secant.update(xs[lo : lo + w + 1], view(inc), start, new, stride)
            secant.check(worst * np.square(limits.inv_scale[start : start + w]), start, stride)
        if saver is not None:
            saver.add(new, start, stride)
        if memory:
            history = _remember(history, out, stride, memory)
        end, start = start + w, start + stride
        if progress is not None:
            progress(start, n)
        if start >= n:
            break
        if options.max_rows is not None:
            w = _adapt(w, stride, wmax)
        w = min(w, n - start)
        need = start + w  # the next window reads states up to this one
        if need - off >= length:  # compact: move the live part to the front
            keep = end - start + 1
            xs[:keep] = ops.copy(xs[start - off : end - off + 1])
            off = start
        if need > end:
            xs[end + 1 - off : need + 1 - off] = _entering(
                problem, options, init, xs_t[end - off], end, need - end, state, ops
            )
    final = xs_t[n - off] if start >= n else xs_t[start - off]
    if stopped:

        def keep(i: int, x: Tensor) -> None:
            if keep_all:
                xs_t[i] = x
            elif saver is not None:
                saver.add(view(x[None]), i - 1, 1)

        final = finish_sequentially(
            problem,
            state,
            final.clone(),
            start,
            history,
            keep,
            lambda h, out: _remember(h, out, 1, memory),
        )
        evaluations += (n - start) * samples
    stats = _stats(
        problem, wmax, limits, evaluations, starts, changes, secant, n - start if stopped else 0
    )
    ys = xs_t if keep_all else None if saver is None else saver.ys_t
    return _solution(final, ys, saved, stats, x0.dtype)


def _budget(max_evaluations: int | None, evaluations: int, samples: int) -> int | None:
    """Steps the evaluation budget still affords per sample (``None``: no budget)."""
    if max_evaluations is None:
        return None
    return max(0, (max_evaluations - evaluations) // samples)


def _partial(
    xs_t: Tensor,
    off: int,
    start: int,
    keep_all: bool,
    saver: _Saver | None,
    stats: Stats,
    dtype: torch.dtype,
) -> Solution:
    """What a stopped solve has final: state ``start`` and the saved states up to it."""
    ys: Tensor | None = None
    steps: Sequence[int] | None = None
    if keep_all:
        ys, steps = xs_t[: start + 1], range(start + 1)
    elif saver is not None:
        ys, steps = saver.ys_t[: saver.k], saver.steps[: saver.k]
    return _solution(xs_t[start - off], ys, steps, stats, dtype)


def _adapt(w: int, stride: int, wmax: int) -> int:
    """The next window for a row budget.

    Twice as long after a sweep that finalized all of it; else twice the steps it
    finalized — rows far beyond the converged front are mostly wasted — but at least half
    of ``wmax``: small windows cost sweeps (a quarter cost 12–24 of 31–33 DDPM-1000
    sweeps on the 2-D models; half costs 2–4 and still saves evaluations). At most
    ``wmax``.
    """
    if stride == w:
        return min(wmax, 2 * w)
    return min(wmax, max(wmax // 2, 2 * stride, 1))


def _entering(
    problem: Problem,
    options: SolveOptions,
    init: Any,
    last: Tensor,
    end: int,
    count: int,
    state: Any,
    ops: _Arrays,
) -> Any:
    """Starting guesses of states ``end + 1 … end + count``: warm start, prediction or copy."""
    if init is not None:
        return init[end + 1 : end + 1 + count]
    if options.predict:
        guess = problem.guess(last, end, count, state)
        if guess is not None:
            if guess.shape != (count, *last.shape):
                raise ValueError(
                    f"problem.guess returned shape {tuple(guess.shape)}; expected "
                    f"{(count, *last.shape)}"
                )
            return ops.view(guess.to(last.dtype))
    return ops.view(last)


class _Secant:
    """Per-step secant (quasi-Newton) acceleration of the sweep, safeguarded.

    Picard's update ``x_{i+1} <- x_b + Σ Δ_j(x_j)`` ignores how ``Δ_i`` depends on
    ``x_i``. With a slope ``a_i`` (one scalar per step and sample, estimated from the
    last two sweeps: ``<δΔ_i, δx_i> / |δx_i|²``) the sweep solves instead the linearized
    recursion ``x'_{i+1} = x'_i + Δ_i(x_i) + a_i (x'_i - x_i)`` — a parallel scan,
    ``x' = x_Picard + E`` with ``E_{i+1} = (1 + a_i) E_i + a_i (x_Picard_i - x_i)``. The
    structure is triangular (causal), as in ParaTAA: state i is corrected only from
    states before it, so a converged prefix stays exact and the window rule is unchanged
    (at most N sweeps; ``tol = 0`` exact). Safeguard: slopes are clipped to
    ``[-1/2, 1/2]``, and a sweep whose largest scaled change on the steps it shares with
    the previous sweep grew is followed by a plain Picard sweep (counted as a fallback).
    """

    BLOCK = 32  # cumprod block: products of slopes in [1/2, 3/2] stay well inside float range

    def __init__(self, ops: _Arrays, samples: int):
        self.ops = ops
        self.samples = samples
        self.prev: tuple[int, Any, Any] | None = None  # start, inputs, increments
        self.last: tuple[int, np.ndarray] | None = None  # start, scaled changes
        self.plain = False
        self.fallbacks = 0
        self.accelerated = 0

    def update(self, xs: Any, inc: Any, start: int, new: Any, stride: int) -> None:
        """Write the next iterate of states ``start + 1 … start + w`` into ``xs[1:]``.

        ``xs`` holds the window's states before the sweep (row 0 is final), ``new`` their
        Picard values; states up to ``start + stride`` are final and take those.
        """
        w, s = inc.shape[0], self.samples
        prev, self.prev = self.prev, (start, self.ops.copy(xs[:-1]), self.ops.copy(inc))
        slope = None
        if prev is not None and not self.plain:
            slope = self._slopes(prev, xs[:-1], inc, start)
        self.plain = False
        if slope is None or stride >= w - 1:
            xs[1:] = new
            return
        self.accelerated += 1
        # E_{i+1} = (1 + a_i) E_i + a_i (x_Picard_i - x_i), E_b = 0; x' = x_Picard + E.
        a = self.ops.asarray(slope[:, :, None], new)
        residual = (new - xs[1:]).reshape(w, s, -1)
        corr = _scan(self.ops, 1 + a[1:], a[1:] * residual[:-1], self.BLOCK)
        flat = new.reshape(w, s, -1)
        flat[stride:] += corr[stride - 1 :]
        xs[1:] = new

    def _slopes(self, prev: tuple[int, Any, Any], x: Any, inc: Any, start: int) -> Any:
        """Per (step, sample) secant slopes ``<δΔ, δx> / |δx|²`` against the last sweep."""
        p_start, p_x, p_inc = prev
        w, s = inc.shape[0], self.samples
        lo, hi = start - p_start, min(p_x.shape[0], start - p_start + w)
        if hi <= lo:
            return None
        rows = hi - lo
        dx = (x[:rows] - p_x[lo:hi]).reshape(rows, s, -1)
        dd = (inc[:rows] - p_inc[lo:hi]).reshape(rows, s, -1)
        den = self.ops.host(self.ops.dots(dx, dx))
        num = self.ops.host(self.ops.dots(dx, dd))
        slope = np.zeros((w, s))
        np.divide(num, den, out=slope[:rows], where=den > 0)
        np.clip(slope, -0.5, 0.5, out=slope)
        return slope if slope.any() else None

    def check(self, scaled: np.ndarray, start: int, stride: int) -> None:
        """Safeguard: plain Picard next if the shared steps' worst change grew."""
        last, self.last = self.last, (start, scaled)
        if last is None:
            return
        l_start, l_scaled = last
        lo = start - l_start
        hi = min(len(l_scaled), lo + len(scaled))
        if hi > lo and scaled[: hi - lo].max() > l_scaled[lo:hi].max():
            self.plain = True
            self.fallbacks += 1


def _scan(ops: _Arrays, m: Any, source: Any, block: int) -> Any:
    """``E_{j+1} = m_j E_j + source_j`` (``E_0 = 0``): ``E_1 … E_w``, by blocked cumprods."""
    out = ops.copy(source)
    carry = None
    for b in range(0, source.shape[0], block):
        p = ops.cumprod(m[b : b + block])
        part = p * ops.cumsum(source[b : b + block] / p)
        if carry is not None:
            part += p * carry
        out[b : b + block] = part
        carry = part[-1:]
    return out


def sequential(problem: Problem, x0: Tensor, *, save: bool | Sequence[int] = False) -> Solution:
    """Solve ``problem`` step by step, one call per step: the reference for :func:`solve`.

    Args:
        problem: the recursion (:class:`picard.Problem`).
        x0: the initial state.
        save: as for :func:`solve`.

    Returns:
        A :class:`picard.Solution`; ``stats.iterations`` is N (one round per step).

    Example:
        >>> import torch, picard
        >>> picard.sequential(picard.Recursion(lambda i, x: -0.1 * x, 10), torch.ones(1)).final
        tensor([0.3487])
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a picard.Problem, got {type(problem).__name__}")
    n = check_int("problem.num_steps", problem.num_steps, minimum=1)
    x0 = check_state("x0", x0)
    saved = _saved_steps(save, n)
    samples, _ = per_sample_size(x0.shape, problem.batch_ndim)
    with torch.no_grad():
        x = x0.detach().to(working_dtype(x0.dtype), copy=True)
        state = problem.init(x0)
        saver = None if saved is None else _Saver(saved, x, _TORCH)

        def keep(i: int, xi: Tensor) -> None:
            if saver is not None:
                saver.add(xi[None], i - 1, 1)

        x = finish_sequentially(
            problem,
            state,
            x,
            0,
            None,
            keep,
            lambda h, out: _remember(h, out, 1, problem.memory),
            where="in the sequential solve",
        )
    stats = Stats(
        n, 1, 0.0, n, n * samples, problem.stages, tuple(range(n)), problem.rows_per_evaluation
    )
    return _solution(x, None if saver is None else saver.ys_t, saved, stats, x0.dtype)


def _scales(scale: Any, n: int) -> np.ndarray:
    if scale is None:
        return np.ones(n)
    if isinstance(scale, Tensor):
        scale = scale.detach().cpu().double().numpy()
    arr = np.asarray(scale, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"problem.scale() must have shape ({n},), got {arr.shape}")
    if not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError("problem.scale() must be finite and >= 0")
    return arr


def _saved_steps(save: Any, n: int) -> Sequence[int] | None:
    if save is True:
        return range(n + 1)
    if save is False or save is None:
        return None
    if isinstance(save, Tensor | np.ndarray):
        save = save.tolist()
    items = list(save) if isinstance(save, Sequence | range) and not isinstance(save, str) else None
    if items is None or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) for s in items
    ):
        raise TypeError(
            f"save must be a bool or a sequence of integer state indices, got {save!r:.60}"
        )
    steps = [int(s) for s in items]
    if not steps or any(s < 0 or s > n for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"save must hold increasing state indices in [0, {n}], got {steps}")
    return steps


def _remember(history: Tensor | None, out: Any, done: int, memory: int) -> Tensor:
    """The outputs of the last ``memory`` finalized steps, for multistep problems."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"a problem with memory={memory} must return its outputs as a Tensor from "
            f"increments, got {type(out).__name__}"
        )
    new = out[:done] if history is None else torch.cat([history, out[:done]])
    return new[-memory:].clone()


class _Saver:
    """Copies the states that ``save`` asked for into ``ys`` as sweeps finalize them."""

    def __init__(self, steps: Sequence[int], x: Tensor, ops: _Arrays):
        self.steps = steps
        self.ys_t = x.new_empty((len(steps), *x.shape))
        self.ys = ops.view(self.ys_t)
        self.at = ops.index(steps, x.device)
        self.k = 0  # steps[:k] are saved
        if steps[0] == 0:
            self.ys_t[0] = x
            self.k = 1

    def add(self, new: Any, start: int, stride: int) -> None:
        """``new[j]`` is state ``start + 1 + j``; states up to ``start + stride`` are final."""
        k, steps = self.k, self.steps
        stop = bisect.bisect_right(steps, start + stride, lo=k)
        if stop > k:
            if steps[stop - 1] - steps[k] == stop - 1 - k:  # contiguous: a slice, no gather
                self.ys[k:stop] = new[steps[k] - start - 1 : steps[stop - 1] - start]
            else:
                self.ys[k:stop] = new[self.at[k:stop] - (start + 1)]
            self.k = stop


def _non_finite(
    problem: Problem, worst: np.ndarray, new: Any, start: int, sweep: int
) -> NonFiniteError:
    first = int(np.argmax(~np.isfinite(worst)))
    step = start + first
    overflow = bool(torch.isfinite(torch.as_tensor(new[first])).all())
    what = "the change of the state overflowed" if overflow else "the increment was NaN or Inf"
    return NonFiniteError(
        f"{problem.step_label(step)}: {what} in sweep {sweep}", step=step, sweep=sweep
    )


def _stats(
    problem: Problem,
    window: int,
    limits: _Limits,
    evaluations: int,
    starts: list[int],
    changes: list[np.ndarray],
    secant: _Secant | None = None,
    sequential_steps: int = 0,
) -> Stats:
    return Stats(
        num_steps=problem.num_steps,
        window=window,
        tol=limits.tol,
        iterations=len(starts) + sequential_steps,
        evaluations=evaluations,
        stages=problem.stages,
        rows_per_evaluation=problem.rows_per_evaluation,
        window_starts=tuple(starts),
        changes=changes,
        inv_scale=limits.inv_scale,
        accelerated=0 if secant is None else secant.accelerated,
        fallbacks=0 if secant is None else secant.fallbacks,
        sequential_steps=sequential_steps,
    )


def _solution(
    final: Tensor,
    ys: Tensor | None,
    saved: Sequence[int] | None,
    stats: Stats,
    dtype: torch.dtype,
) -> Solution:
    return Solution(
        final=final.to(dtype, copy=True),
        ys=None if ys is None else ys.to(dtype),
        steps=saved,
        stats=stats,
    )
