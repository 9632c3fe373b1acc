"""A scheduler picard does not reproduce, run by its own loop: ``on_unsupported="sequential"``.

``from_scheduler(..., on_unsupported="sequential")`` wraps an unknown scheduler — or a
subclass that changes its parent's ``step`` — in :class:`SchedulerLoop`, a problem that
:func:`picard.solve` runs step by step exactly as diffusers' loop does (its own stateful
``step``, in the latent's dtype), after one :class:`picard.SequentialWarning`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from picard.adapters.rule import Generator
from picard.evaluation import map_rows
from picard.problem import Problem

__all__ = ["SchedulerLoop"]


class SchedulerLoop(Problem):
    """``scheduler``'s own sequential loop as a (``sequential_only``) problem.

    Args:
        scheduler: any diffusers scheduler (copied; the original is not changed).
        denoiser: ``denoiser(x, t)``, the batched model call (``samples=`` as for
            :func:`~picard.adapters.diffusers.from_scheduler`).
        num_inference_steps: N.
        generator: the generator of the scheduler's noise (passed to ``step``).
        rows_per_evaluation: model rows per (step, sample), for the stats.
        scale_model_input: call the scheduler's ``scale_model_input`` before the model.
        begin: the first step run (``set_begin_index``, as img2img sets it).
        end: the step after the last one run (``None``: the grid's end).
        **step_options: keyword arguments of ``step`` (e.g. ``eta``).

    Example:
        >>> import torch, picard
        >>> from diffusers import DDPMScheduler
        >>> class Mine(DDPMScheduler):
        ...     def step(self, *args, **kwargs):
        ...         return super().step(*args, **kwargs)
        >>> loop = SchedulerLoop(Mine(), lambda x, t: 0.1 * x, 10)
        >>> picard.solve(loop, torch.ones(2, 1, 2, 2)).stats.iterations
        10
    """

    batch_ndim = 1
    sequential_only = True

    def __init__(
        self,
        scheduler: Any,
        denoiser: Callable[..., Tensor],
        num_inference_steps: int,
        generator: Generator = None,
        rows_per_evaluation: int = 1,
        scale_model_input: bool = True,
        begin: int = 0,
        end: int | None = None,
        **step_options: Any,
    ):
        self.scheduler = copy.deepcopy(scheduler)
        self.scheduler.set_timesteps(num_inference_steps)
        if begin and hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(begin)
        self.begin, self.end = begin, len(self.scheduler.timesteps) if end is None else end
        self.num_steps = self.end - begin
        self.denoiser, self.generator = denoiser, generator
        self.rows_per_evaluation, self.scale_model_input = rows_per_evaluation, scale_model_input
        self.step_options = step_options
        accepted = inspect.signature(self.scheduler.step).parameters
        if "generator" in accepted:
            self.step_options = {"generator": generator, **step_options}
        self._samples = "samples" in _parameters(denoiser)

    def increments(self, x: Tensor, start: int, state: Any, history: Any) -> Any:
        """Not used: the problem runs by :meth:`loop`."""
        raise NotImplementedError("SchedulerLoop runs step by step (loop)")

    def loop(self, x0: Tensor) -> Tensor:
        """Diffusers' loop: ``x = scheduler.step(denoiser(x, t), t, x)`` for each timestep."""
        s = copy.deepcopy(self.scheduler)
        x = x0
        scale = getattr(s, "scale_model_input", None) if self.scale_model_input else None
        for t in s.timesteps[self.begin : self.end]:
            rows = x if scale is None else scale(x, t)
            ts = t.reshape(1).expand(x.shape[0]).to(x.device)
            if self._samples:
                who = torch.arange(x.shape[0], device=x.device)
                out = map_rows(self.denoiser, rows, ts, samples=who)
            else:
                out = map_rows(self.denoiser, rows, ts)
            x = s.step(out, t, x, **self.step_options).prev_sample
        return x


def _parameters(fn: Any) -> Any:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
