"""A run's starting latent and the generator its sampler's noise then comes from."""

from __future__ import annotations

from typing import Any

import torch

from picard.cli.runs import start_latent

__all__ = ["seeded_start"]


def seeded_start(
    scheduler: Any, steps: int, shape: tuple[int, ...], seed: int = 0
) -> tuple[torch.Tensor, torch.Generator]:
    """The latent every run of a case starts from, and the generator, drawn after it.

    A fresh generator seeded ``seed`` draws the latent (:func:`picard.cli.runs.start_latent`)
    and is handed on for the sampler's noise, so the sequential loop, the ParaDiGMS loop
    and picard sample the same sample.

    Args:
        scheduler: the diffusers scheduler of the run (not changed).
        steps: the number of inference steps.
        shape: the latent's shape, ``(batch, *sample_shape)``.
        seed: the generator's seed.

    Returns:
        ``(x_T, generator)``.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> x, gen = seeded_start(DDPMScheduler(), 10, (4, 2))
        >>> torch.equal(x, torch.randn(4, 2, generator=torch.Generator().manual_seed(0)))
        True
        >>> y, _ = seeded_start(DDPMScheduler(), 10, (4, 2))  # the same seed, the same start
        >>> torch.equal(x, y), gen.initial_seed()
        (True, 0)
    """
    gen = torch.Generator().manual_seed(seed)
    return start_latent(scheduler, steps, shape, gen), gen
