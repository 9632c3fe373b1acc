"""picard: sequential samplers made parallel in time by sliding-window Picard iteration.

Solving: :func:`solve`, :func:`sequential`, :class:`Options`, :class:`Solution`,
:class:`Stats`. Problems: :class:`Problem`, :class:`Recursion`, :class:`Lanes`,
:class:`Traits`, :func:`map_rows` (how a problem calls its model so that solves can chunk
and shard the rows). ODEs and SDEs: :func:`odeint`, :func:`odeint_adjoint`,
:func:`odeint_event`, :func:`sdeint`, :func:`sdeint_adjoint`. Strategies: :class:`Tolerance`,
:class:`Acceleration`, :class:`Picard`, :class:`Secant`, :class:`Newton` (``accelerate=``).
Errors and warnings: :class:`NonFiniteError`, :class:`ConvergenceError`, :class:`RankError`,
:class:`UnsupportedSchedulerError`, :class:`MemoryWarning`, :class:`AccuracyWarning`,
:class:`SequentialWarning`, :class:`PerformanceWarning`.
"""

import importlib as _importlib
import sys as _sys

from picard.core.acceleration import ACCELERATIONS, Acceleration, Newton, Picard, Secant
from picard.core.options import Options
from picard.core.tolerance import Tolerance
from picard.errors import (
    AccuracyWarning,
    ConvergenceError,
    MemoryWarning,
    NonFiniteError,
    PerformanceWarning,
    RankError,
    SequentialWarning,
    UnsupportedSchedulerError,
)
from picard.evaluation import map_rows
from picard.ode import odeint, odeint_adjoint, odeint_event, sdeint, sdeint_adjoint
from picard.problem import Lanes, Problem, Recursion, Traits
from picard.solution import Solution, Stats
from picard.solver import DEFAULT_TOL, sequential, solve

__all__ = [
    "ACCELERATIONS",
    "DEFAULT_TOL",
    "Acceleration",
    "AccuracyWarning",
    "ConvergenceError",
    "Lanes",
    "MemoryWarning",
    "Newton",
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
    "Traits",
    "UnsupportedSchedulerError",
    "map_rows",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "sdeint",
    "sdeint_adjoint",
    "sequential",
    "solve",
]

__version__ = "0.1.0"

# Module paths before the layout of picard/core and picard/ode (issue 21) keep working:
# ``import picard.tolerance`` or ``from picard.sde import sdeint`` find the moved module.
_MOVED = {
    "acceleration": "picard.core.acceleration",
    "acceptance": "picard.core.acceptance",
    "arrays": "picard.core.arrays",
    "budget": "picard.core.budget",
    "options": "picard.core.options",
    "gradients": "picard.core.adjoint",
    "guess": "picard.core.guess",
    "plans": "picard.core.plans",
    "sweep": "picard.core.sweep",
    "sweeps": "picard.core.loop",
    "tolerance": "picard.core.tolerance",
    "verify": "picard.core.verify",
    "window": "picard.core.window",
    "rows": "picard.evaluation",
    "_checks": "picard.checks",
    "batching": "picard.ode.batching",
    "grids": "picard.ode.grids",
    "sde": "picard.ode.stochastic",
    "tableaus": "picard.ode.tableaus",
}
for _old, _new in _MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = globals()[_old] = _importlib.import_module(_new)
del _old, _new
