"""``parallelize``: a diffusers pipeline whose denoising loop is solved by picard.

The pipeline's own call arguments are bound to its own ``__call__`` signature (so its
defaults apply and unknown arguments are refused), its family prepares the call
(:mod:`picard.adapters.pipelines.spec`), :func:`picard.solve` runs the loop — with the
pipeline's own progress bar — and the family finishes it into the pipeline's own output.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import call_arguments
from picard.adapters.pipelines.registry import PIPELINES, Runner, runner_for
from picard.adapters.schedulers import from_scheduler, sampler_for
from picard.checks import check_state
from picard.core.options import Options
from picard.errors import SequentialWarning
from picard.evaluation import Replicable
from picard.progress import follow
from picard.solution import Stats
from picard.solver import solve_with

__all__ = ["ParallelPipeline", "parallelize"]


def parallelize(pipe: Any, *, on_unsupported: str = "raise", **options: Any) -> ParallelPipeline:
    """Wrap ``pipe`` so that calling it solves its denoising loop in parallel sweeps.

    Args:
        pipe: a diffusers pipeline (see :data:`~picard.adapters.pipelines.PIPELINES`;
            subclasses run as their parent unless they override ``__call__``) with a
            supported scheduler (:data:`picard.adapters.schedulers.SCHEDULERS`).
        on_unsupported: ``"raise"`` (default): an unsupported pipeline or scheduler raises
            ``TypeError`` naming what is supported, now. ``"sequential"``: calls run the
            pipeline itself — exactly its result, no speed-up — after one
            :class:`picard.SequentialWarning`.
        **options: the solve's options (:class:`picard.Options`), checked now: e.g.
            ``window`` (each model call gets ``window × images`` rows, twice that with
            classifier-free guidance), ``tol`` (``0`` gives the sequential sample to float
            rounding), ``per_sample`` (each image slides its own window; prompts follow
            their rows), ``verify``, ``devices``, ``distributed``.

    Returns:
        A callable taking the pipeline's own arguments and returning its own output;
        ``.stats`` holds the :class:`picard.Stats` of its last call.

    Raises:
        TypeError, ValueError: an unsupported pipeline or scheduler (with the default
            ``on_unsupported``), or a bad option (naming it).

    Example:
        >>> import torch
        >>> from picard.models.tiny import tiny_unet_pipeline
        >>> fast = parallelize(tiny_unet_pipeline("ddpm"))
        >>> out = fast(num_inference_steps=50, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].size, fast.stats.iterations < 50
        ((8, 8), True)
    """
    return ParallelPipeline(pipe, on_unsupported=on_unsupported, **options)


class ParallelPipeline:
    """A pipeline whose calls run picard; see :func:`parallelize`.

    Args:
        pipe: the pipeline to wrap.
        on_unsupported: as for :func:`parallelize`.
        **options: the solve's options (:class:`picard.Options`).

    Attributes:
        pipe: the wrapped pipeline (its components are used as they are).
        stats: the :class:`picard.Stats` of the last call (``None`` before the first, and
            for calls that ran sequentially).

    Example:
        >>> from picard.models.tiny import tiny_unet_pipeline
        >>> fast = ParallelPipeline(tiny_unet_pipeline("ddim"), window=4, tol=0.01)
        >>> fast(num_inference_steps=8, output_type="pt").images.shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, pipe: Any, *, on_unsupported: str = "raise", **options: Any):
        if on_unsupported not in ("raise", "sequential"):
            raise ValueError(
                f"on_unsupported must be 'raise' or 'sequential', got {on_unsupported!r}"
            )
        self.pipe, self.on_unsupported = pipe, on_unsupported
        self.options = Options.of(**options)
        if self.options.init is not None:
            raise ValueError("init (a warm start) is not supported by pipelines; use solve")
        self.stats: Stats | None = None
        self._warned = False
        self._unsupported()  # now, not after the prompts are encoded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the pipeline with its own arguments; returns its own output type."""
        why = self._unsupported()
        if why is not None:  # on_unsupported="sequential"
            self.stats = None
            return self.pipe(*args, **kwargs)
        name, runner = runner_for(self.pipe)  # type: ignore[misc]
        arguments = _bind(self.pipe, name, runner, args, kwargs)
        with torch.no_grad():  # as the pipelines' own __call__
            prepared = runner.prepare_call(self.pipe, arguments)
            problem = from_scheduler(
                self.pipe.scheduler,
                Replicable(prepared.denoiser, prepared.device),
                prepared.num_inference_steps,
                generator=prepared.generator,
                rows_per_evaluation=prepared.rows_per_evaluation,
                scale_model_input=prepared.scale_model_input,
                begin=prepared.begin,
                end=prepared.end,
                **_step_options(self.pipe.scheduler, prepared.step_options),
                **prepared.grid_options,
            )
            if prepared.wrap_rule is not None:
                problem = problem.with_rule(prepared.wrap_rule(problem.rule))
            _same_grid(problem.rule.timesteps, prepared.timesteps, type(self.pipe).__name__)
            on_step = _callback(self.pipe, arguments, prepared.timesteps)
            latents = self._solve(problem, prepared.latents, on_step)
            out = prepared.finish(latents)
        self.pipe.maybe_free_model_hooks()
        return out

    def _unsupported(self) -> str | None:
        """Why the pipeline or its scheduler cannot run in parallel (``None``: it can)."""
        why = None
        if runner_for(self.pipe) is None:
            why = (
                f"pipeline {type(self.pipe).__name__} is not supported; supported: "
                f"{', '.join(PIPELINES)}"
            )
        else:
            try:
                sampler_for(self.pipe.scheduler)
            except TypeError as err:
                why = str(err)
        if why is not None and self.on_unsupported == "raise":
            raise TypeError(why)
        if why is not None and not self._warned:
            warnings.warn(f"{why}: the pipeline runs sequentially", SequentialWarning, stacklevel=3)
            self._warned = True
        return why

    def _solve(
        self, problem: Any, latents: Tensor, on_step: Callable[[int, Tensor], None] | None
    ) -> Tensor:
        bar = self.pipe.progress_bar(total=problem.num_steps)  # the pipeline's own config
        try:
            sol = solve_with(
                problem,
                check_state("latents", latents),
                self.options,
                progress=follow(bar),
                on_step=on_step,
            )
        finally:
            bar.close()
        self.stats = sol.stats
        return sol.final


def _bind(pipe: Any, name: str, runner: Runner, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments as the pipeline's ``__call__`` sees them, defaults filled in."""
    try:
        arguments = call_arguments(pipe, *args, **kwargs)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    extra = arguments.pop("kwargs", {})  # diffusers' deprecated callback arguments land here
    for key in extra:
        why = "not supported by picard" if key in ("callback", "callback_steps") else "unknown"
        raise TypeError(f"argument {key!r} of {name} is {why}")
    for key in runner.refused:
        if arguments.get(key) is not None:
            raise TypeError(f"argument {key!r} of {name} is not supported by picard")
    callback = arguments.get("callback_on_step_end")
    inputs = (
        getattr(callback, "tensor_inputs", None)  # diffusers' PipelineCallback objects
        or arguments.get("callback_on_step_end_tensor_inputs")
        or ["latents"]
    )
    if arguments.get("callback_on_step_end") is not None and list(inputs) != ["latents"]:
        raise TypeError(
            f"callback_on_step_end_tensor_inputs of {name} must be ['latents'] with picard, "
            f"got {inputs}: the other tensors are not stepped"
        )
    return arguments


def _step_options(scheduler: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's step options that the scheduler's ``step`` and its rule take."""
    accepted = inspect.signature(scheduler.step).parameters
    takes = set(sampler_for(scheduler).step_options())
    return {k: v for k, v in options.items() if k in accepted and k in takes}


def _same_grid(rule: Tensor, loop: Tensor, name: str) -> None:
    """Refuse to run if the rule's grid is not the one the pipeline's loop runs over."""
    a, b = rule.double().cpu(), torch.as_tensor(loop).double().cpu()
    if a.shape != b.shape or not torch.allclose(a, b, rtol=0, atol=1e-4):
        raise RuntimeError(
            f"{name}: picard's rule gives timesteps {a[:4].tolist()}... ({len(a)}) but the "
            f"pipeline loops over {b[:4].tolist()}... ({len(b)}); not solved (please report)"
        )


def _callback(
    pipe: Any, arguments: Mapping[str, Any], timesteps: Tensor
) -> Callable[[int, Tensor], None] | None:
    """``callback_on_step_end`` as a per-step callback of the solve, or ``None``."""
    callback = arguments.get("callback_on_step_end")
    if callback is None:
        return None

    def on_step(i: int, latents: Tensor) -> None:
        out = callback(pipe, i, timesteps[i], {"latents": latents})
        new = (out or {}).get("latents", latents)
        if new is not latents and not torch.equal(new, latents):
            raise ValueError(
                f"callback_on_step_end changed the latents at step {i}: picard computes later "
                "steps in parallel before the callback sees earlier ones, so a callback may "
                "read the latents but not change them (run the pipeline itself to change them)"
            )

    return on_step
