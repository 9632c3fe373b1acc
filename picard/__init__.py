"""picard: sequential samplers made parallel in time by sliding-window Picard iteration.

Solving: :func:`solve`, :func:`sequential`, :class:`Options`, :class:`Solution`,
:class:`Stats`. Problems: :class:`Problem`, :class:`Recursion`, :func:`map_rows` (how a
problem calls its model so that solves can chunk and shard the rows). ODEs and SDEs:
:func:`odeint`, :func:`odeint_adjoint`, :func:`sdeint`. Strategies: :class:`Tolerance`,
:class:`Acceleration`, :class:`Picard`, :class:`Secant` (``accelerate=``). Errors and
warnings: :class:`NonFiniteError`, :class:`ConvergenceError`, :class:`RankError`,
:class:`MemoryWarning`, :class:`AccuracyWarning`, :class:`SequentialWarning`,
:class:`PerformanceWarning`.
"""

from picard.acceleration import ACCELERATIONS, Acceleration, Picard, Secant
from picard.errors import (
    AccuracyWarning,
    ConvergenceError,
    MemoryWarning,
    NonFiniteError,
    PerformanceWarning,
    RankError,
    SequentialWarning,
)
from picard.ode import odeint, odeint_adjoint
from picard.options import Options
from picard.problem import Problem, Recursion
from picard.rows import map_rows
from picard.sde import sdeint
from picard.solution import Solution, Stats
from picard.solver import DEFAULT_TOL, sequential, solve
from picard.tolerance import Tolerance

__all__ = [
    "ACCELERATIONS",
    "DEFAULT_TOL",
    "Acceleration",
    "AccuracyWarning",
    "ConvergenceError",
    "MemoryWarning",
    "NonFiniteError",
    "Options",
    "PerformanceWarning",
    "Picard",
    "Problem",
    "RankError",
    "Recursion",
    "Secant",
    "SequentialWarning",
    "Solution",
    "Stats",
    "Tolerance",
    "map_rows",
    "odeint",
    "odeint_adjoint",
    "sdeint",
    "sequential",
    "solve",
]

__version__ = "0.1.0"
