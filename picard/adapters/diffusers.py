"""The bridge to diffusers: schedulers become problems, pipelines run in parallel.

- :func:`from_scheduler` reads a scheduler's *configuration* (never its stateful ``step``)
  and returns a :class:`~picard.adapters.rule.DiffusionProblem` for :func:`picard.solve`;
  :data:`SCHEDULERS` lists what it reproduces (:mod:`picard.adapters.schedulers`).
- :func:`parallelize` wraps a pipeline so that its denoising loop is solved in parallel
  sweeps; :data:`PIPELINES` lists the pipelines it runs (:mod:`picard.adapters.pipelines`).
"""

from __future__ import annotations

from picard.adapters.pipelines import PIPELINES, ParallelPipeline, parallelize
from picard.adapters.schedulers import SCHEDULERS, Sampler, from_scheduler, rule_for

__all__ = [
    "PIPELINES",
    "SCHEDULERS",
    "ParallelPipeline",
    "Sampler",
    "from_scheduler",
    "parallelize",
    "rule_for",
]
