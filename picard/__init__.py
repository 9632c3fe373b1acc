"""picard: sequential samplers made parallel in time by sliding-window Picard iteration.

Public names: :func:`solve`, :func:`sequential`, :func:`odeint`, :func:`sdeint`,
:class:`Problem`, :class:`Recursion`, :class:`Solution`, :class:`Stats`,
:class:`NonFiniteError`, :class:`ConvergenceError`, :class:`RankError`,
:class:`MemoryWarning`, :class:`AccuracyWarning`.
"""

from picard.errors import (
    AccuracyWarning,
    ConvergenceError,
    MemoryWarning,
    NonFiniteError,
    RankError,
)
from picard.ode import odeint
from picard.problem import Problem, Recursion
from picard.sde import sdeint
from picard.solution import Solution, Stats
from picard.solver import DEFAULT_TOL, sequential, solve

__all__ = [
    "DEFAULT_TOL",
    "AccuracyWarning",
    "ConvergenceError",
    "MemoryWarning",
    "NonFiniteError",
    "Problem",
    "RankError",
    "Recursion",
    "Solution",
    "Stats",
    "odeint",
    "sdeint",
    "sequential",
    "solve",
]

__version__ = "0.1.0"
