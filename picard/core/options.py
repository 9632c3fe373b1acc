"""How a solve runs: every option of :func:`picard.solve`, checked once, in one object.

:func:`picard.solve`, :func:`picard.odeint`, :func:`picard.sdeint` and
:func:`picard.adapters.diffusers.parallelize` take these as keyword arguments and build one
:class:`Options` with :meth:`Options.of`, which names the offending argument of any bad
value, so a front end checks everything before it does any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from picard.checks import check_nonneg, check_optional_int
from picard.core.acceleration import Acceleration, acceleration_of
from picard.core.acceptance import Acceptance, ConvergedPrefix, acceptance_of
from picard.evaluation import check_devices

__all__ = ["FALLBACKS", "Options"]

FALLBACKS = ("raise", "sequential")
"""Values of ``on_budget`` and ``on_nonfinite``."""


@dataclass(frozen=True)
class Options:
    """The options of a solve (the keyword arguments of :func:`picard.solve` of the same names).

    Attributes:
        window: steps per sweep (rows per model call = window × samples). ``"auto"`` (the
            default): the window that finalizes the most steps per second on this device,
            learned while solving (:class:`picard.core.window.AutoWindow`; its choice and the
            times it read are in :class:`picard.Stats`); ``None``: the whole grid. Larger
            windows need fewer sweeps but more evaluations. A fixed window gives bitwise
            the same result on every run; ``"auto"`` gives the same result for the same
            inputs within one process (the times it decides by are stored per model,
            shape, dtype and device), and results equal to rounding and ``tol`` across
            processes and machines, whose windows may differ — except under
            ``torch.use_deterministic_algorithms(True)``, where it decides from a cost
            model of the device type instead of the clock
            (:class:`picard.core.window.ModeledCost`): bitwise the same in every process.
        tol: the tolerance of the convergence test (:class:`picard.Tolerance`): step i has
            converged when the RMS change of state ``i + 1`` between two sweeps is at most
            ``tol / amplification`` times that state's RMS (``relative``, per sample;
            :attr:`picard.Traits.amplification`, 30 for diffusion samplers, so that ``tol``
            bounds each final sample's error relative to its RMS) or ``tol *
            problem.scale()[i]`` (worst sample). ``0`` reproduces the sequential recursion to
            float rounding. ``None``: ``problem.default_tolerance(relative)`` (1e-5 for
            ODEs, SDEs and recursions; 0.01 for diffusion samplers, 0.1 with
            ``relative=False``).
        max_iters: the sweep budget (``None``: N, which always suffices).
        accelerate: how a sweep turns its Picard values into the next iterate.
            ``"auto"`` (the default): the problem's choice,
            :data:`picard.core.acceleration.AUTO_ACCELERATIONS` by the problem's
            :attr:`picard.Traits.kind` — for diffusion samplers the
            secant update on windows of 128 steps or more (``picard.Secant(min_window=128)``),
            plain Picard otherwise. ``None``: plain Picard, as ParaDiGMS; a name of
            :data:`picard.ACCELERATIONS` (``"secant"``; ``"newton"``: Newton steps on the
            whole trajectory for small states, :class:`picard.Newton`) or an object
            following the :class:`picard.Acceleration` protocol.
        acceptance: which states a sweep makes final: ``"converged-prefix"`` (the default,
            :class:`picard.core.acceptance.ConvergedPrefix`: the converged prefix only, at least
            one state), ``"first-unconverged"`` (ParaDiGMS's rule, which also takes the
            first unconverged state) or an object following
            :class:`picard.core.acceptance.Acceptance`.
        predict: start the steps entering a window from the problem's cheap guess
            (:meth:`picard.Problem.guess`: diffusion samplers reuse the last denoised
            estimate, ODEs the last slope) instead of a copy of the window's last state.
        max_rows: a row budget per model call instead of a fixed window: the window adapts
            (doubles after sweeps that finalize all of it, shrinks to twice the steps a sweep
            finalizes but not below half the budget), ``window × samples ×
            rows_per_evaluation <= max_rows``, with ``window`` as a further cap. With
            ``per_sample``, the running samples share the budget equally.
        init: a warm start, a guess of every state ``(N + 1, *x0.shape)`` (e.g.
            ``Solution.ys`` of a neighbouring solve); row 0 is ignored. Overrides ``predict``.
        per_sample: give every sample of the batch its own window (problems with one batch
            dimension that implement :attr:`picard.Problem.per_lane` increments, such as the
            diffusion adapters): each slides by its own converged prefix, finished samples
            leave the batch. Each sample gets what solving it alone would give.
        distributed: inside an initialised ``torch.distributed`` process group (e.g. under
            ``torchrun``), every rank runs this same solve and evaluates its contiguous shard
            of each sweep's model rows; all ranks hold the same result.
        devices: evaluate each sweep's rows on replicas of the model on these devices (e.g.
            ``["cuda:0", "cuda:1"]``), one thread each; the model must be a
            ``torch.nn.Module`` (or ``parallelize(pipe, ...)``'s).
        max_evaluations: a budget of (step × sample) evaluations over all sweeps; the last
            sweep's window shrinks to fit it.
        on_budget: ``"raise"``: when ``max_iters`` or ``max_evaluations`` run out, raise
            :class:`picard.ConvergenceError` carrying the partial solution.
            ``"sequential"``: take the remaining steps one at a time — still the sequential
            result (``stats.sequential_steps`` counts them).
        on_nonfinite: ``"raise"``: NaN/Inf raise :class:`picard.NonFiniteError` naming the
            step and sweep. ``"sequential"``: finish from the last final state one step at a
            time (a model that misbehaves only on the iteration's far-off guesses still gives
            the sequential result).
        relative: measure each state's change relative to its own RMS (``True``) or to
            ``problem.scale()`` (``False``, ParaDiGMS's noise-std test for diffusion
            samplers); ``None``: the problem's choice, :attr:`picard.Problem.relative_tol`.
        rtol: with ``atol``, the mixed test instead (torchdiffeq's names): the RMS of each
            state's change weighted by ``1 / (atol + rtol |x|)`` at most 1 (``rtol`` floored
            at 16 units of the dtype's precision). Not with ``tol``/``relative``.
        atol: see ``rtol`` (either alone takes torchdiffeq's default for the other).
        verify: ``True``: estimate the final state's error a posteriori and refine until
            the estimate is at most ``tol`` (a number: at most that); the estimate is
            ``stats.error_estimate``. Each verification re-solves at a hundredth of the
            tolerance, warm-started from the last trajectory (1.7–2.4x the sweeps in all, up
            to 4.8x with a second), at most 2 times, then :class:`picard.AccuracyWarning`.
        adjoint_params: the tensors gradients flow to (besides ``x0``) when the solve runs
            with autograd on. ``None``: the problem's :meth:`picard.Problem.parameters`
            (an ``nn.Module`` model's, or a bound method's) and every tensor requiring
            grad that one traced call of the first step uses (a closure's module, an
            embedding). The backward pass is parallel too (:mod:`picard.core.adjoint`).

    Example:
        >>> opts = Options.of(per_sample=True, window=8)
        >>> opts.per_sample, opts.window, opts.predict, opts.on_budget
        (True, 8, True, 'raise')
        >>> Options.of(windw=4)
        Traceback (most recent call last):
            ...
        TypeError: unexpected keyword argument 'windw'; the options are accelerate, ...
    """

    window: int | str | None = "auto"
    tol: float | None = None
    max_iters: int | None = None
    accelerate: Acceleration | str | None = "auto"
    acceptance: Acceptance = ConvergedPrefix()  # noqa: RUF009 (frozen, immutable)
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
    rtol: float | None = None
    atol: float | None = None
    verify: bool | float = False
    adjoint_params: tuple[Tensor, ...] | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in the order of the fields."""
        return tuple(_DEFAULTS)

    @classmethod
    def of(cls, **options: Any) -> Options:
        """Check options given as keywords and bundle them (``None`` where not given).

        Args:
            **options: any of the attributes, by name; the others keep their defaults.

        Returns:
            The checked options (``accelerate`` as an object, ``devices`` as a tuple).

        Raises:
            TypeError: an unknown keyword, or a value of the wrong type (naming it).
            ValueError: a value out of range, or options that do not combine.

        Example:
            >>> Options.of(max_rows=64, on_budget="sequential").max_rows
            64
            >>> Options.of().accelerate, Options.of(accelerate="secant").accelerate
            ('auto', Secant(clip=0.5, min_window=1, tighten=0.1, prior=True))
            >>> Options.of(tol=-1)
            Traceback (most recent call last):
                ...
            ValueError: tol must be a finite number >= 0, got -1.0
        """
        if not options.keys() <= _DEFAULTS.keys():
            unknown = sorted(set(options) - set(_DEFAULTS))
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; the options are "
                + ", ".join(sorted(_DEFAULTS))
            )
        v = {**_DEFAULTS, **options}
        if isinstance(v["window"], str) and v["window"] != "auto":
            raise ValueError(f"window must be 'auto', an int >= 1 or None, got {v['window']!r}")
        if v["window"] != "auto":
            v["window"] = check_optional_int("window", v["window"], minimum=1, default=None)
        for name in ("max_iters", "max_rows", "max_evaluations"):
            v[name] = check_optional_int(name, v[name], minimum=1, default=None)
        for name in ("tol", "rtol", "atol"):
            if v[name] is not None:
                v[name] = check_nonneg(name, v[name])
        if (v["rtol"] is not None or v["atol"] is not None) and (
            v["tol"] is not None or v["relative"] is not None
        ):
            raise ValueError("give tol (and relative) or rtol/atol, not both")
        if v["accelerate"] != "auto":
            v["accelerate"] = acceleration_of(v["accelerate"])
        v["acceptance"] = acceptance_of(v["acceptance"])
        for name in ("predict", "per_sample", "distributed"):
            _check_bool(name, v[name])
        if v["relative"] is not None:
            _check_bool("relative", v["relative"])
        v["devices"] = check_devices(v["devices"])
        if v["distributed"] and v["devices"]:
            raise ValueError("distributed=True and devices=[...] do not combine; choose one")
        for name in ("on_budget", "on_nonfinite"):
            if v[name] not in FALLBACKS:
                raise ValueError(f"{name} must be one of {FALLBACKS}, got {v[name]!r}")
        if v["init"] is not None and not isinstance(v["init"], Tensor):
            raise TypeError(f"init must be a Tensor of states, got {type(v['init']).__name__}")
        v["verify"] = _check_verify(v["verify"])
        if v["adjoint_params"] is not None:
            v["adjoint_params"] = _check_tensors(v["adjoint_params"])
        return cls(**v)


_DEFAULTS = {f.name: f.default for f in fields(Options)}


def _check_tensors(value: Any) -> tuple[Tensor, ...]:
    items = [value] if isinstance(value, Tensor) else list(value)
    if not all(isinstance(t, Tensor) for t in items):
        raise TypeError("adjoint_params must be tensors (e.g. model.parameters())")
    return tuple(items)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_verify(verify: Any) -> bool | float:
    if isinstance(verify, bool):
        return verify
    if not isinstance(verify, int | float) or not math.isfinite(verify) or verify <= 0:
        raise (TypeError if not isinstance(verify, int | float) else ValueError)(
            f"verify must be a bool or a positive number, got {verify!r}"
        )
    return float(verify)
