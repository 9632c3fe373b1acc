"""What the video families share: refusing a transformer cache, each row's step, the batch.

Used by :mod:`~picard.adapters.pipelines.wan`, :mod:`~picard.adapters.pipelines.cogvideox`,
:mod:`~picard.adapters.pipelines.ltx` and :mod:`~picard.adapters.pipelines.hunyuan_video`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_no_cache", "step_of", "videos_of"]


def check_no_cache(pipe: Any, *models: Any) -> None:
    """Refuse a transformer cache: it reuses earlier steps' activations.

    Args:
        pipe: the pipeline (named in the message).
        *models: its transformers (``None`` ones are skipped).

    Raises:
        TypeError: a model's cache is enabled (``enable_cache``).

    Example:
        >>> check_no_cache(object(), None, torch.nn.Linear(1, 1))
    """
    for model in models:
        if getattr(model, "is_cache_enabled", False):
            raise TypeError(
                f"{type(pipe).__name__}: the transformer's cache (enable_cache) is not supported "
                "by picard: it reuses earlier steps' activations; disable it "
                "(transformer.disable_cache())"
            )


def step_of(t: Tensor, timesteps: Tensor) -> Tensor:
    """Each row's step index: the loop's timestep nearest the row's timestep.

    Rows then get what the pipeline's loop gives that step (its exact timestep value,
    its expert); a repeated timestep maps to its first step, which the loop treats alike.

    Args:
        t: ``(M,)`` the rows' timesteps (picard's rule's).
        timesteps: ``(N,)`` the pipeline's loop timesteps.

    Returns:
        ``(M,)`` long step indices.

    Example:
        >>> step_of(torch.tensor([999.0, 500.2]), torch.tensor([999, 750, 500, 250])).tolist()
        [0, 2]
    """
    loop = timesteps.to(t.device, torch.float64)
    return (loop[None] - t.double()[:, None]).abs().argmin(1)


def videos_of(a: Mapping[str, Any], embeds: Tensor) -> int:
    """The pipeline's batch (prompts times ``num_videos_per_prompt``), matching ``embeds``.

    Given ``prompt_embeds`` are not repeated by the video pipelines' ``encode_prompt``:
    with ``num_videos_per_prompt > 1`` the pipeline fails on mismatched batches, or pairs
    rows wrongly; this refuses it.

    Args:
        a: the call's arguments (``prompt``, ``num_videos_per_prompt``).
        embeds: the encoded prompt embeddings.

    Returns:
        The number of videos.

    Raises:
        ValueError: the embeddings do not have one row per video.

    Example:
        >>> videos_of({"prompt": ["a", "b"], "num_videos_per_prompt": 2}, torch.zeros(4, 3))
        4
    """
    prompt = a["prompt"]
    prompts = embeds.shape[0] if prompt is None else 1 if isinstance(prompt, str) else len(prompt)
    videos = prompts * a["num_videos_per_prompt"]
    if embeds.shape[0] != videos:
        raise ValueError(
            f"the prompt embeddings have {embeds.shape[0]} rows for {videos} videos "
            f"(num_videos_per_prompt={a['num_videos_per_prompt']} is not applied to given "
            "prompt_embeds by the pipeline: repeat them yourself)"
        )
    return videos
