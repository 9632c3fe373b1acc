"""A sampler's noise, drawn once in the sequential order, held in bounded memory.

The sequential sampler draws one noise tensor per stochastic step from its generator.
picard draws them all when a solve starts, so every sweep sees the same noise and the
generator ends where the sequential loop leaves it. Kept whole, the noise would take
``N × state`` memory (655 MB for 10,000 steps of a 4×64×64 latent). Above
:data:`KEEP_WHOLE_BYTES`, :class:`Noise` keeps only the generators' states every
:data:`CHUNK` steps and regenerates a window's noise from the nearest one when a sweep
asks for it (the same numbers: a generator replays exactly), caching a few chunks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CHUNK", "KEEP_WHOLE_BYTES", "Noise"]

KEEP_WHOLE_BYTES = 64 * 2**20
"""Noise up to this size is kept whole (on the state's device)."""

CHUNK = 64
"""Steps between generator checkpoints when the noise is regenerated."""

_CACHED_CHUNKS = 4


class Noise:
    """The noise of steps ``0 … N-1``, drawn now in sequential order.

    Args:
        draws: (N,) whether step i draws a noise tensor (others get zeros).
        shape: the shape of one draw (the batch's latent shape).
        generator: a generator, a list with one per sample, or ``None`` (torch's global
            generator; the noise is then kept whole, off the accelerator when large).
        device: where the noise is used.
        draw_dtype: the dtype the sequential sampler draws in.
        dtype: the dtype the noise is used in.
        keep_whole_bytes: the size up to which the noise is kept whole (default
            :data:`KEEP_WHOLE_BYTES`).

    Example:
        >>> import numpy as np, torch
        >>> draws = np.array([True, False, True])
        >>> noise = Noise(draws, (2,), torch.Generator().manual_seed(0), torch.device("cpu"),
        ...               torch.float32, torch.float32, keep_whole_bytes=0)
        >>> whole = Noise(draws, (2,), torch.Generator().manual_seed(0), torch.device("cpu"),
        ...               torch.float32, torch.float32)
        >>> torch.equal(noise.window(0, 3), whole.window(0, 3))
        True
        >>> noise.window(1, 2).abs().sum().item()  # step 1 draws nothing
        0.0
    """

    def __init__(
        self,
        draws: np.ndarray,
        shape: tuple[int, ...],
        generator: torch.Generator | Sequence[torch.Generator] | None,
        device: torch.device,
        draw_dtype: torch.dtype,
        dtype: torch.dtype,
        keep_whole_bytes: int | None = None,
    ):
        self.draws = np.asarray(draws, dtype=bool)
        self.shape = tuple(shape)
        self.device, self.draw_dtype, self.dtype = device, draw_dtype, dtype
        self.num_steps = len(self.draws)
        self._generators = (
            None
            if generator is None
            else (list(generator) if isinstance(generator, Sequence) else generator)
        )
        if keep_whole_bytes is None:
            keep_whole_bytes = KEEP_WHOLE_BYTES
        size = self.num_steps * int(np.prod(self.shape)) * torch.finfo(dtype).bits // 8
        self._whole: Tensor | None = None
        self._checkpoints: list[Any] = []
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        if self._generators is None or size <= keep_whole_bytes:
            # Kept whole; a large one stays off the accelerator and travels per window.
            home = device if size <= keep_whole_bytes else torch.device("cpu")
            self._whole = torch.zeros((self.num_steps, *self.shape), dtype=dtype, device=home)
            for i in np.flatnonzero(self.draws):
                self._whole[i] = self._draw(self._generators)
        else:
            for i in range(self.num_steps):
                if i % CHUNK == 0:
                    self._checkpoints.append(self._states())
                if self.draws[i]:
                    self._draw(self._generators)  # advance as the sequential loop does

    def window(self, start: int, stop: int) -> Tensor:
        """The noise of steps ``start … stop - 1``, ``(stop - start, *shape)``."""
        if self._whole is not None:
            return self._whole[start:stop].to(self.device, non_blocking=True)
        first, last = start // CHUNK, (stop - 1) // CHUNK
        parts = [self._chunk(c) for c in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else torch.cat(parts)
        return block[start - first * CHUNK : stop - first * CHUNK]

    def rows(self, steps: Tensor, samples: Tensor) -> Tensor:
        """The noise of ``steps`` (any shape, long) for batch ``samples`` (broadcast to it).

        Regenerated noise is gathered chunk by chunk, so samples far apart in steps (per-
        sample windows) never make one call hold more than the chunks they touch.
        """
        who = samples.expand(steps.shape)
        if self._whole is not None:
            return self._whole[steps.to(self._whole.device), who.to(self._whole.device)].to(
                self.device
            )
        out = torch.empty((*steps.shape, *self.shape[1:]), dtype=self.dtype, device=self.device)
        chunk_of = steps // CHUNK
        for c in torch.unique(chunk_of).tolist():
            pick = chunk_of == c
            out[pick] = self._chunk(c)[steps[pick] - c * CHUNK, who[pick]]
        return out

    def _chunk(self, c: int) -> Tensor:
        cached = self._cache.get(c)
        if cached is not None:
            self._cache.move_to_end(c)
            return cached
        replay = self._replay(self._checkpoints[c])
        begin, end = c * CHUNK, min(self.num_steps, (c + 1) * CHUNK)
        out = torch.zeros((end - begin, *self.shape), dtype=self.dtype, device=self.device)
        for i in range(begin, end):
            if self.draws[i]:
                out[i - begin] = self._draw(replay)
        self._cache[c] = out
        if len(self._cache) > _CACHED_CHUNKS:
            self._cache.popitem(last=False)
        return out

    def _draw(self, generators: Any) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        z = randn_tensor(
            self.shape, generator=generators, device=self.device, dtype=self.draw_dtype
        )
        return z.to(self.dtype)

    def _states(self) -> Any:
        gens = self._generators
        if isinstance(gens, list):
            return [g.get_state() for g in gens]
        assert gens is not None
        return gens.get_state()

    def _replay(self, states: Any) -> Any:
        gens = self._generators
        if isinstance(gens, list):
            copies = []
            for g, s in zip(gens, states, strict=True):
                copy = torch.Generator(device=g.device)
                copy.set_state(s)
                copies.append(copy)
            return copies
        assert gens is not None
        copy = torch.Generator(device=gens.device)
        copy.set_state(states)
        return copy
