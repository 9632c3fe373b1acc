"""Adapters: diffusion samplers as picard problems, and the bridge to diffusers.

- :mod:`picard.adapters.schedulers` — the scheduler rules (one sampler each), their shared
  schedule maths and the registry.
- :mod:`picard.adapters.rule` — what an update rule is; the problem that runs one.
- :mod:`picard.adapters.pipelines` — diffusers pipelines run in parallel.
- :mod:`picard.adapters.diffusers` — ``from_scheduler`` and ``parallelize``.
- :mod:`picard.adapters.lerobot` — lerobot's DiffusionPolicy sampled in parallel.
"""

from __future__ import annotations

import importlib
import sys

# The scheduler rules lived directly in this package (``picard.adapters.ddim``, ...,
# ``picard.adapters.schedules``) before they moved to ``picard.adapters.schedulers``.
# Users and docs import them by those paths, so each old path names the moved module
# itself: ``import picard.adapters.ddim`` and ``from picard.adapters import schedules``
# keep working, and the objects are the same (no copy, no second import).
_MOVED = (
    "ddim",
    "ddpm",
    "deis",
    "dpmsolver",
    "dpmsolver_singlestep",
    "edm_dpmsolver",
    "edm_euler",
    "euler",
    "flow",
    "flow_heun",
    "heun",
    "kdpm2",
    "lcm",
    "lms",
    "multistep",
    "pndm",
    "sasolver",
    "schedules",
    "tcd",
    "unipc",
)
for _name in _MOVED:
    _module = importlib.import_module(f"picard.adapters.schedulers.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    setattr(sys.modules[__name__], _name, _module)
del _name, _module
