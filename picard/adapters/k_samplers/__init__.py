"""k-diffusion's samplers as picard recursions, one module per family.

- :mod:`~picard.adapters.k_samplers.table`: a sampler as a table of per-evaluation
  coefficients, and the :class:`~picard.adapters.rule.UpdateRule` that runs it;
- :mod:`~picard.adapters.k_samplers.karras`: Euler, Heun, DPM-2 and their ancestral forms;
- :mod:`~picard.adapters.k_samplers.lms`: linear multistep;
- :mod:`~picard.adapters.k_samplers.dpmpp`: the DPM-Solver++ samplers;
- :mod:`~picard.adapters.k_samplers.noise`: noise samplers and the draws in sequential order;
- :mod:`~picard.adapters.k_samplers.run`: the problem and the solve behind every call.

The public calls are in :mod:`picard.adapters.k_diffusion`.
"""
