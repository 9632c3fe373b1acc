"""What the families read off a call and its pipeline before their own steps.

The call's arguments bound as the pipeline's ``__call__`` binds them (what a family's
``prepare`` takes), how many prompts they give (a string, a list, or ``prompt_embeds``),
and a diffusion transformer's latent channels (its output has as many, or twice: learned
sigma).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["call_arguments", "latent_channels", "prompt_count"]


def call_arguments(pipe: Any, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of ``pipe(*args, **kwargs)`` as its class's ``__call__`` binds them.

    Defaults filled in, ``self`` left out: what a family's ``prepare`` takes.

    Args:
        pipe: the pipeline.
        *args: the call's positional arguments.
        **kwargs: the call's keyword arguments.

    Returns:
        Argument name to value, every parameter of ``__call__`` but ``self``.

    Raises:
        TypeError: arguments the signature does not take.

    Example:
        >>> from picard.models.tiny import tiny_unet_pipeline
        >>> a = call_arguments(tiny_unet_pipeline("ddim"), num_inference_steps=5)
        >>> a["num_inference_steps"], a["batch_size"], "self" in a
        (5, 1, False)
    """
    bound = inspect.signature(type(pipe).__call__).bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    return arguments


def prompt_count(a: Mapping[str, Any]) -> int:
    """The call's prompts: 1 for a string, a list's length, else ``prompt_embeds``' rows.

    Args:
        a: the call's arguments (``prompt``, ``prompt_embeds``).

    Returns:
        The number of prompts (before ``num_images_per_prompt``).

    Example:
        >>> import torch
        >>> prompt_count({"prompt": "a cat"}), prompt_count({"prompt": ["a", "b"]})
        (1, 2)
        >>> prompt_count({"prompt": None, "prompt_embeds": torch.zeros(3, 4, 8)})
        3
    """
    prompt = a["prompt"]
    if prompt is None:
        return a["prompt_embeds"].shape[0]
    return 1 if isinstance(prompt, str) else len(prompt)


def latent_channels(pipe: Any, name: str | None = None) -> tuple[int, bool]:
    """A diffusion transformer's latent channels, and whether its output has learned sigma.

    Args:
        pipe: the pipeline (its ``transformer`` config is read).
        name: the pipeline's name in the message (``None``: its class name).

    Returns:
        ``(in_channels, out_channels == 2 * in_channels)``.

    Raises:
        ValueError: ``out_channels`` is neither the latent channels nor twice them (the
            pipeline would step a tensor of the wrong shape).

    Example:
        >>> from picard.models.tiny_pixart_dit import tiny_dit
        >>> latent_channels(tiny_dit())
        (4, True)
    """
    channels, out = pipe.transformer.config.in_channels, pipe.transformer.config.out_channels
    if out not in (channels, 2 * channels):
        raise ValueError(
            f"{type(pipe).__name__ if name is None else name}: transformer out_channels={out} "
            f"is neither in_channels={channels} nor twice it; not supported by picard"
        )
    return channels, out == 2 * channels
