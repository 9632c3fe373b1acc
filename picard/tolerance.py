"""When a state has converged: the one place the convergence test is defined.

Step i has converged when the RMS change of state ``i + 1`` between two sweeps is small:

- ``relative``: at most ``tol`` times that state's RMS, per sample. For every diffusion
  sampler this keeps the final sample within about ``tol`` of the sequential one (relative
  RMS): for Gaussian data a sampler maps a relative perturbation at any step to the same
  relative perturbation of the sample ("How it works" derives it).
- absolute: at most ``tol * scale_i`` (``problem.scale()``; 1 when it gives none), for the
  worst sample — ParaDiGMS's test, relative to each step's noise std, for diffusion samplers.

The test is computed on squared norms, ``|Δx|² <= tol² · scale_i² · size`` (or
``|Δx|² <= tol² · |x|²``), so a sweep needs one reduction and one synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from picard.arrays import Arrays
from picard.problem import Problem

__all__ = ["Tolerance"]


@dataclass(frozen=True, eq=False)
class Tolerance:
    """The convergence test of a solve (see the module docstring).

    Attributes:
        value: ``tol``.
        relative: whether changes are measured relative to each state's RMS.
        scale: (N,) the per-step scale of the squared-norm test: 1 when relative, else
            ``problem.scale() * sqrt(size)``.
        inv_scale: (N,) its reciprocal (0 where the scale is 0): a state's change norm
            times ``inv_scale[i]`` is in units of ``tol``.
        threshold2: (N,) the squared thresholds the squared measure is compared with.

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
        cls, problem: Problem, value: float | None, relative: bool | None, size: int
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

        Returns:
            The test.
        """
        relative = bool(problem.relative_tol if relative is None else relative)
        value = problem.default_tolerance(relative) if value is None else value
        n = problem.num_steps
        # On the norm, not the RMS; relative: the change's norm over the state's.
        scale = np.ones(n) if relative else _scales(problem.scale(), n) * math.sqrt(size)
        return cls(value, relative, scale)

    def at(self, value: float) -> Tolerance:
        """The same test at another tolerance (verification solves)."""
        return self if value == self.value else Tolerance(value, self.relative, self.scale)

    def measure(self, ops: Arrays, new: Any, old: Any) -> np.ndarray:
        """The squared change of each state of a window, per column, on the host.

        Args:
            ops: the arrays' operations.
            new: the states' new values, ``(w, columns, size)``.
            old: their previous values, shaped alike.

        Returns:
            ``(w, columns)``: ``|new - old|²``, or relative: ``|new - old|² / |new|²``.
        """
        change = ops.sq_norms(new - old)
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
