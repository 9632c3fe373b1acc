"""Adapters: diffusion samplers as picard problems, and the bridge to diffusers.

- :mod:`picard.adapters.schedules` — schedule maths, written once.
- :mod:`picard.adapters.rule` — what an update rule is; the problem that runs one.
- :mod:`picard.adapters.ddpm`, :mod:`~picard.adapters.ddim`,
  :mod:`~picard.adapters.dpmsolver`, :mod:`~picard.adapters.euler`,
  :mod:`~picard.adapters.flow` — one sampler each.
- :mod:`picard.adapters.diffusers` — ``from_scheduler`` and ``parallelize``.
"""
