"""The ODE and SDE front ends: torchdiffeq's and torchsde's calls, on the sweep loop.

:func:`odeint`, :func:`odeint_adjoint` (:mod:`~picard.ode.integrate`) and :func:`sdeint`
(:mod:`~picard.ode.stochastic`) turn a drift (and diffusion) into a
:class:`picard.Problem` with the Runge–Kutta tableaus of :mod:`~picard.ode.tableaus` on the
grids of :mod:`~picard.ode.grids`, evaluating the window's rows together or through
``torch.func.vmap`` (:mod:`~picard.ode.batching`).
"""

from picard.ode.events import odeint_event
from picard.ode.integrate import GUESS_STEPS, METHODS, odeint, odeint_adjoint
from picard.ode.stochastic import sdeint
from picard.ode.torchsde_call import sdeint_adjoint

__all__ = [
    "GUESS_STEPS",
    "METHODS",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "sdeint",
    "sdeint_adjoint",
]
