"""The registry of diffusers pipelines :func:`~picard.adapters.diffusers.parallelize` runs.

One entry per pipeline class: the family's ``prepare`` (:mod:`picard.adapters.pipelines.spec`),
how the command line calls it, what it supports, and the call arguments it refuses. A
subclass of a registered diffusers pipeline runs as its parent unless it overrides
``__call__``. The API, the command line (``picard sample --pipeline``) and the docs'
"Supported" page all read this one table: adding a pipeline is one family file plus one
line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from picard.adapters.lookup import registered
from picard.adapters.pipelines.spec import Prepared
from picard.adapters.pipelines.stable_diffusion import prepare_stable_diffusion
from picard.adapters.pipelines.unconditional import prepare_unconditional

__all__ = ["PIPELINES", "Runner", "runner_for"]

_COMMON_REFUSED = ("timesteps", "sigmas", "ip_adapter_image", "ip_adapter_image_embeds")


@dataclass(frozen=True)
class Runner:
    """How :func:`~picard.adapters.diffusers.parallelize` runs one pipeline class.

    Attributes:
        prepare: ``prepare(pipe, arguments) -> Prepared`` (arguments: the call's own,
            defaults filled in), or ``"module:function"`` naming it.
        inputs: what a call takes, for the command line: ``"text"`` (a prompt) or
            ``"none"`` (unconditional: ``batch_size``).
        supports: what of the pipeline's call is supported (one line, for the docs).
        refused: call arguments refused when given (not at their default).

    Example:
        >>> PIPELINES["StableDiffusionPipeline"].inputs
        'text'
    """

    prepare: Callable[[Any, Mapping[str, Any]], Prepared] | str
    inputs: str
    supports: str
    refused: tuple[str, ...] = ()

    def prepare_call(self, pipe: Any, arguments: Mapping[str, Any]) -> Prepared:
        """Run the family's ``prepare`` (imported on first use when given as a name)."""
        prepare = self.prepare
        if isinstance(prepare, str):
            module, name = prepare.split(":")
            prepare = getattr(importlib.import_module(module), name)
        return prepare(pipe, arguments)


PIPELINES: dict[str, Runner] = {
    "DDPMPipeline": Runner(prepare_unconditional, "none", "every argument"),
    "DDIMPipeline": Runner(prepare_unconditional, "none", "every argument"),
    "StableDiffusionPipeline": Runner(
        prepare_stable_diffusion,
        "text",
        "prompts and embeddings, negative prompts, guidance (and rescale), clip_skip, LoRA "
        "scale, LCM guidance embedding, callback_on_step_end (latents)",
        _COMMON_REFUSED,
    ),
    # img2img-inpaint-controlnet family entries
    # sdxl family entries
    # sd3-flux family entries
    # pixart-dit family entries
}
"""Pipeline class names :func:`~picard.adapters.diffusers.parallelize` runs, and how."""


def runner_for(pipe: Any) -> tuple[str, Runner] | None:
    """The registered class ``pipe`` runs as, and its runner; ``None`` if unsupported.

    ``pipe``'s own class if registered; else the nearest registered diffusers class it
    derives from, unless a class in between overrides ``__call__`` (then it is not run as
    its parent).

    Args:
        pipe: a diffusers pipeline.

    Returns:
        ``(class name, runner)``, or ``None``.

    Example:
        >>> from diffusers import DDPMPipeline
        >>> class Mine(DDPMPipeline):
        ...     pass
        >>> runner_for(Mine.__new__(Mine))[0]
        'DDPMPipeline'
        >>> class Custom(DDPMPipeline):
        ...     def __call__(self, *args, **kwargs):
        ...         return None
        >>> runner_for(Custom.__new__(Custom)) is None
        True
    """
    return registered(type(pipe), PIPELINES, ("__call__",))
