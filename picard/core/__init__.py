"""The sweep loop and its strategies: knows nothing of ODEs or diffusion.

:mod:`~picard.core.loop` runs the sweeps over a plan (:mod:`~picard.core.plans`: one window
for the batch, or one per sample), recording each in a :class:`~picard.core.sweep.Sweep`;
the small objects it runs with are the tolerance, the acceptance rule, the acceleration,
the window controller, the guess and the budget, one module each. :mod:`~picard.core.run`
builds them from a solve's options; verification (:mod:`~picard.core.verify`) and gradients
(:mod:`~picard.core.adjoint`) wrap that one run.
"""
