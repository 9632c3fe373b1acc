"""When a state has converged: the one place the convergence test is defined.

Step i has converged when the RMS change of state ``i + 1`` between two sweeps is small:

- ``relative``: at most ``tol / amplification`` times that state's RMS, per sample, where
  ``amplification`` (:attr:`picard.Traits.amplification`; 30 for diffusion samplers) is
  how much later steps may amplify an error accepted at a step: ``tol`` bounds the final
  state's error relative to its RMS. For Gaussian data a sampler maps a relative
  perturbation at any step to the same relative perturbation of the sample ("How it
  works" derives it); near the boundary between two modes of real data it amplifies it
  up to a few hundred times, and an error accepted at ``tol`` itself can end in another
  mode.
- absolute: at most ``tol * scale_i`` (``problem.scale()``; 1 when it gives none), for the
  worst sample — ParaDiGMS's test, relative to each step's noise std, for diffusion samplers.
- mixed (``rtol``/``atol``, torchdiffeq's names): the RMS of the change weighted
  elementwise by ``1 / (atol + rtol |x|)`` at most 1, for the worst sample. ``rtol`` is
  floored at 16 units of the working dtype's precision (rounding alone moves a state by
  a few units: a float32 solve still converges at torchdiffeq's default 1e-7).

The test is computed on squared norms, ``|Δx|² <= tol² · scale_i² · size`` (or
``|Δx|² <= tol² · |x|²``), so a sweep needs one reduction and one synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.core.arrays import Arrays
from picard.problem import Problem

__all__ = ["Tolerance"]


@dataclass(frozen=True, eq=False)
class Tolerance:
    """The convergence test of a solve (see the module docstring).

    Attributes:
        value: ``tol``.
        relative: whether changes are measured relative to each state's RMS.
        scale: (N,) the per-step scale of the squared-norm test: ``1 / amplification``
            when relative, else ``problem.scale() * sqrt(size)``.
        inv_scale: (N,) its reciprocal (0 where the scale is 0): a state's change norm
            times ``inv_scale[i]`` is in units of ``tol``.
        threshold2: (N,) the squared thresholds the squared measure is compared with.
        weights: ``(atol, rtol)`` of the mixed test (floors applied), or ``None``.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, num_steps=3)
        >>> tol = Tolerance.of(rule, 0.01, relative=False, size=4)
        >>> tol.threshold2.tolist()  # (0.01 · 1)² · 4 elements, per step
        [0.0004, 0.0004, 0.0004]
        >>> round(float(tol.at(0.1).threshold2[0]), 6)  # the same test at another value
        0.04
    """

    value: float
    relative: bool
    scale: np.ndarray
    weights: tuple[float, float] | None = None
    inv_scale: np.ndarray = field(init=False, repr=False)
    threshold2: np.ndarray = field(init=False, repr=False)
    _column: np.ndarray = field(init=False, repr=False)  # threshold2[:, None], for slices

    def __post_init__(self) -> None:
        scale = self.scale
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        object.__setattr__(self, "inv_scale", inv)
        object.__setattr__(self, "threshold2", np.square(self.value * scale))
        object.__setattr__(self, "_column", self.threshold2[:, None])

    @classmethod
    def of(
        cls,
        problem: Problem,
        value: float | None,
        relative: bool | None,
        size: int,
        mixed: tuple[float | None, float | None] | None = None,
        dtype: Any = None,
    ) -> Tolerance:
        """The test of ``problem`` at ``value`` for states of ``size`` elements per sample.

        Args:
            problem: the recursion: its :meth:`~picard.Problem.scale` sets the absolute
                test, its :attr:`~picard.Problem.relative_tol` and
                :meth:`~picard.Problem.default_tolerance` the defaults.
            value: ``tol`` (>= 0), or ``None`` for the problem's default for the test.
            relative: measure changes relative to each state's RMS; ``None``: the
                problem's choice.
            size: elements per sample.
            mixed: ``(atol, rtol)`` for the mixed test (``None`` entries: torchdiffeq's
                defaults 1e-9 and 1e-7), or ``None``; then ``value`` and ``relative``
                must be ``None``.
            dtype: the working dtype (the floor of ``rtol``), with ``mixed``.

        Returns:
            The test.
        """
        n = problem.num_steps
        if mixed is not None:
            if value is not None or relative is not None:
                raise ValueError("give tol (and relative) or rtol/atol, not both")
            atol = 1e-9 if mixed[0] is None else mixed[0]
            rtol = 1e-7 if mixed[1] is None else mixed[1]
            eps = float(torch.finfo(dtype).eps) if dtype is not None else 0.0
            tiny = float(torch.finfo(dtype).tiny) if dtype is not None else 1e-300
            weights = (max(atol, tiny), max(rtol, 16 * eps))
            return cls(1.0, False, np.full(n, math.sqrt(size)), weights)
        relative = bool(problem.relative_tol if relative is None else relative)
        value = problem.default_tolerance(relative) if value is None else value
        # On the norm, not the RMS; relative: the change's norm over the state's.
        if relative:
            scale = np.full(n, 1.0 / problem.traits().amplification)
        else:
            scale = _scales(problem.scale(), n) * math.sqrt(size)
        return cls(value, relative, scale)

    def at(self, value: float) -> Tolerance:
        """The same test at another tolerance (verification solves)."""
        if value == self.value:
            return self
        return Tolerance(value, self.relative, self.scale, self.weights)

    def measure(self, ops: Arrays, new: Any, old: Any, delta: Any = None) -> np.ndarray:
        """The squared change of each state of a window, per column, on the host.

        Args:
            ops: the arrays' operations.
            new: the states' new values, ``(w, columns, size)``.
            old: their previous values, shaped alike.
            delta: ``new - old`` where the caller has it already.

        Returns:
            ``(w, columns)``: ``|new - old|²``; relative: ``|new - old|² / |new|²``; mixed:
            ``|(new - old) / (atol + rtol |new|)|²``.
        """
        delta = new - old if delta is None else delta
        if self.weights is not None:
            atol, rtol = self.weights
            return ops.host(ops.sq_norms(delta / (atol + rtol * abs(new))))
        change = ops.sq_norms(delta)
        if self.relative:  # on the device: still one synchronisation per sweep
            change = change / ops.nonzero(ops.sq_norms(new))
        return ops.host(change)

    def converged(self, change: np.ndarray, steps: Any) -> np.ndarray:
        """Which entries of ``change`` (host, ``(w, lanes)``) meet the test at ``steps``.

        ``steps`` indexes :attr:`threshold2` like ``change``: a slice of steps for one
        shared window (``change`` is ``(w, 1)``), or a ``(w, lanes)`` array of step indices.
        """
        if type(steps) is slice:
            return change <= self._column[steps]
        return change <= self.threshold2[steps]

    def in_units(self, change: np.ndarray, steps: Any) -> np.ndarray:
        """``change`` (as :meth:`converged` takes it) in units of ``tol``, squared."""
        inv = self.inv_scale[steps]
        return change * np.square(inv[:, None] if type(steps) is slice else inv)


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
