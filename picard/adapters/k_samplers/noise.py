"""The noise of a k-diffusion sampler: its noise samplers, called once in sequential order.

A k-diffusion sampler draws its noise from ``noise_sampler(σ, σ_next)`` (ancestral and SDE
samplers) or ``torch.randn_like(x)`` (the churn of Euler, Heun and DPM-2). picard calls the
sampler for every draw before the sweeps, in the order the sequential loop calls it, so
every sweep sees the same noise and a default sampler on torch's global generator leaves
it where the sequential loop leaves it. :class:`PreDrawn` holds the draws for
:class:`~picard.adapters.rule.DiffusionProblem` (the interface of
:class:`picard.adapters.noise.Noise`).

:class:`BrownianTreeNoiseSampler` is the default of the SDE samplers: the normalised
increments ``(W(σ_next) - W(σ))/√|σ_next - σ|`` of one Brownian motion W on
[σ_min, σ_max] (torchsde's ``BrownianTree``, seeded from torch's global generator unless
given a seed), so that the noise of an interval does not depend on how it is split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from picard.adapters.k_samplers.table import START, Table

__all__ = ["BrownianTreeNoiseSampler", "PreDrawn", "default_noise_sampler", "draw_noise"]

NoiseSampler = Callable[[Tensor, Tensor], Tensor]


def default_noise_sampler(x: Tensor, seed: int | None = None) -> NoiseSampler:
    """``noise_sampler(σ, σ_next)`` returning standard normal noise shaped like ``x``.

    Args:
        x: the state whose shape, dtype and device the noise takes.
        seed: ``None``: torch's global generator (``torch.randn_like``, k-diffusion's
            default); an int: a generator of its own seeded with it (ComfyUI's default).

    Returns:
        The noise sampler (its arguments are ignored).

    Example:
        >>> import torch
        >>> sampler = default_noise_sampler(torch.zeros(2, 3), seed=0)
        >>> sampler(torch.tensor(1.0), torch.tensor(0.5)).shape
        torch.Size([2, 3])
    """
    if seed is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return lambda sigma, sigma_next: torch.randn(
        x.shape, dtype=x.dtype, layout=x.layout, device=x.device, generator=generator
    )


class BrownianTreeNoiseSampler:
    """Noise from a Brownian motion on ``[sigma_min, sigma_max]`` (torchsde's tree).

    Args:
        x: the state whose shape, dtype and device the noise takes.
        sigma_min: the low end of the interval.
        sigma_max: the high end.
        seed: an int, a list of ints (one tree per sample of the batch), or ``None``: one
            drawn from torch's global generator (``torch.randint(0, 2**63 - 1, [])``).
        transform: maps σ to the tree's time (identity by default).

    Example:
        >>> import torch
        >>> sampler = BrownianTreeNoiseSampler(torch.zeros(2, 3), 0.1, 10.0, seed=0)
        >>> z = sampler(torch.tensor(5.0), torch.tensor(2.0))
        >>> z.shape, torch.equal(z, sampler(torch.tensor(5.0), torch.tensor(2.0)))
        (torch.Size([2, 3]), True)
    """

    def __init__(
        self,
        x: Tensor,
        sigma_min: float | Tensor,
        sigma_max: float | Tensor,
        seed: int | Sequence[int] | None = None,
        transform: Callable[[Tensor], Tensor] = lambda sigma: sigma,
    ):
        import torchsde

        self.transform = transform
        t0 = transform(torch.as_tensor(sigma_min))
        t1 = transform(torch.as_tensor(sigma_max))
        lo, hi, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = isinstance(seed, Sequence)
        if self.batched and len(seed) != x.shape[0]:
            raise ValueError(f"seed holds {len(seed)} seeds; give one per sample ({x.shape[0]})")
        seeds = list(seed) if self.batched else [seed]
        w0 = torch.zeros_like(x[0] if self.batched else x)
        self.trees = [torchsde.BrownianTree(lo, w0, hi, entropy=s) for s in seeds]

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """``(W(t(σ_next)) - W(t(σ)))/√|t(σ_next) - t(σ)|``, standard normal."""
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.sign * sign)
        return (w if self.batched else w[0]) / (t1 - t0).abs().sqrt()


class PreDrawn:
    """Pre-drawn noise of K entries, ``values[k]`` (zero where an entry draws none).

    Args:
        values: ``(K, *shape)``, the noise of each entry.

    Example:
        >>> import torch
        >>> noise = PreDrawn(torch.arange(6.0).reshape(3, 2, 1))
        >>> noise.window(1, 3)[:, 0, 0].tolist()
        [2.0, 4.0]
        >>> noise.rows(torch.tensor([[0, 2]]), torch.tensor([1, 0]))[..., 0].tolist()
        [[1.0, 4.0]]
    """

    def __init__(self, values: Tensor):
        self.values = values

    def window(self, start: int, stop: int) -> Tensor:
        """The noise of entries ``start … stop - 1``."""
        return self.values[start:stop]

    def rows(self, steps: Tensor, samples: Tensor) -> Tensor:
        """The noise of entries ``steps`` for batch indices ``samples`` (broadcast)."""
        return self.values[steps, samples.expand(steps.shape)]


def draw_noise(
    table: Table, sampler: NoiseSampler, x: Tensor, dtype: torch.dtype
) -> tuple[Tensor, PreDrawn | None, np.ndarray]:
    """Call ``sampler`` for every draw of ``table``, in order.

    Args:
        table: the sampler's entries and draws.
        sampler: the noise sampler.
        x: the starting state.
        dtype: the dtype the noise is kept in (the solve's working dtype).

    Returns:
        ``(x0, noise, noisy)``: the starting state (perturbed by a draw targeting
        :data:`~picard.adapters.k_samplers.table.START`), the drawn noise (``None`` if no
        entry uses any) and per entry whether it has a draw.

    Example:
        >>> import torch
        >>> from picard.adapters.k_samplers.karras import euler_ancestral
        >>> table = euler_ancestral(torch.tensor([2.0, 1.0, 0.0]))
        >>> x0, noise, noisy = draw_noise(table, lambda s, t: torch.ones(1), torch.zeros(1),
        ...                               torch.float64)
        >>> noisy.tolist(), noise.values.tolist()
        ([True, False], [[1.0], [0.0]])
    """
    noisy = np.zeros(table.num_entries, dtype=bool)
    values = None
    for d in table.draws:
        z = sampler(d.sigma, d.sigma_next)
        if d.entry is None:
            continue
        if d.entry == START:
            x = x + z * d.scale
            continue
        if values is None:
            values = torch.zeros((table.num_entries, *x.shape), dtype=dtype, device=x.device)
        if not isinstance(z, Tensor) or z.shape != x.shape:
            raise ValueError(
                f"noise_sampler must return a tensor shaped like x {tuple(x.shape)}, got "
                f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}"
            )
        values[d.entry] = z.to(device=x.device, dtype=dtype)
        noisy[d.entry] = True
    return x, (None if values is None else PreDrawn(values)), noisy
