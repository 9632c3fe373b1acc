"""The diffusers schedulers picard reproduces: one update rule per file, and the registry.

- :mod:`~picard.adapters.schedulers.registry` — :data:`SCHEDULERS` and
  :func:`from_scheduler` (importable from here).
- :mod:`~picard.adapters.schedulers.schedules` — the schedule maths, written once.
- :mod:`~picard.adapters.schedulers.multistep` — what the multistep solvers share.
- ``ddpm``, ``ddim``, ``pndm``, ``lms``, ``dpmsolver``, ``dpmsolver_singlestep``, ``deis``,
  ``edm_dpmsolver``, ``euler``, ``edm_euler``, ``heun``, ``kdpm2``, ``flow``, ``flow_heun``,
  ``lcm``, ``tcd``, ``unipc``, ``sasolver``, ``cogvideox_ddim`` — one sampler each.
"""

from __future__ import annotations

from picard.adapters.schedulers.registry import (
    SCHEDULERS,
    Sampler,
    from_scheduler,
    rule_for,
    sampler_for,
)

__all__ = ["SCHEDULERS", "Sampler", "from_scheduler", "rule_for", "sampler_for"]
