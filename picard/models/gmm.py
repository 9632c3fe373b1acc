"""A Gaussian mixture whose diffusion ε is known in closed form.

The true data distribution, its exact log-likelihood and the mode of every sample are
known.

Data ``x_0 ~ Σ_k w_k N(μ_k, s_k² I)``; under the VP forward process
``x_t = √ᾱ x_0 + √(1-ᾱ) ε`` the marginal is ``Σ_k w_k N(√ᾱ μ_k, (ᾱ s_k² + 1 - ᾱ) I)``, so
``ε̂(x_t) = -√(1-ᾱ) ∇ log p_t(x_t) = √(1-ᾱ) Σ_k r_k(x_t) (x_t - √ᾱ μ_k) / (ᾱ s_k² + 1 - ᾱ)``
with ``r_k`` the posterior responsibilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GaussianMixture"]


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic components: ``means (K, D)``, ``stds (K,)``, ``weights (K,)`` (float64).

    Attributes:
        means: the components' means, (K, D).
        stds: the components' standard deviations (the same in every coordinate), (K,).
        weights: the mixture weights, (K,), summing to 1.

    Example:
        >>> gmm = GaussianMixture.ring(components=4, radius=2.0, std=0.1)
        >>> gmm.sample(5, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
        >>> gmm.means.shape, gmm.weights.sum().item(), gmm.dim
        (torch.Size([4, 2]), 1.0, 2)
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    @classmethod
    def ring(
        cls, components: int = 8, radius: float = 2.0, std: float = 0.15, dim: int = 2
    ) -> GaussianMixture:
        """Equal-weight components on a circle in the first two coordinates."""
        angle = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
        means = torch.zeros(components, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
        return cls(
            means,
            torch.full((components,), std, dtype=torch.float64),
            torch.full((components,), 1.0 / components, dtype=torch.float64),
        )

    @property
    def dim(self) -> int:
        """The data dimension D."""
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the mixture (float32)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * z).float()

    def _log_components(self, x: Tensor, scale: Tensor, var: Tensor) -> Tensor:
        """Per component, ``log w_k + log N(x; scale μ_k, var I)``, shape (M, K).

        ``x`` is (M, D), ``scale`` () or (M, 1), ``var`` (K,) or (M, K).
        """
        d2 = (x[:, None, :] - scale[..., None] * self.means[None]).square().sum(-1)
        return (
            self.weights.log()[None]
            - 0.5 * d2 / var
            - 0.5 * self.dim * torch.log(2 * math.pi * var)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """The exact log-density of the data distribution at ``x`` (M, D) -> (M,)."""
        x = x.double()
        return torch.logsumexp(self._log_components(x, torch.tensor(1.0), self.stds**2), -1)

    def component(self, x: Tensor) -> Tensor:
        """The most likely component (mode) of each point, (M,) long."""
        return self._log_components(x.double(), torch.tensor(1.0), self.stds**2).argmax(-1)

    def denoiser(self, alphas_cumprod: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact ε̂(x, t) for the VP schedule ``alphas_cumprod`` (t may be fractional)."""
        table = alphas_cumprod.double()

        def eps(x: Tensor, t: Tensor) -> Tensor:
            tt = t.double().clamp(0, len(table) - 1)
            lo = tt.floor().long()
            hi = (lo + 1).clamp(max=len(table) - 1)
            a = (table[lo] + (tt - lo) * (table[hi] - table[lo]))[:, None]
            xd = x.double().reshape(x.shape[0], -1)
            var = a * self.stds[None] ** 2 + 1 - a  # (M, K)
            logits = self._log_components(xd, a.sqrt(), var)
            r = torch.softmax(logits, -1)
            diff = xd[:, None, :] - a.sqrt()[:, :, None] * self.means[None]
            score_term = (r[:, :, None] * diff / var[:, :, None]).sum(1)
            return ((1 - a).sqrt() * score_term).reshape(x.shape).to(x.dtype)

        return eps

    def velocity(self, num_train_timesteps: int = 1000) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact flow-matching velocity ``E[ε - x_0 | x_t]`` for ``x_t = (1-σ) x_0 + σ ε``.

        ``t`` is diffusers' flow timestep, ``σ = t / num_train_timesteps``.

        Example:
            >>> gmm = GaussianMixture.ring(components=4, radius=2.0, std=0.1)
            >>> v = gmm.velocity()(torch.zeros(3, 2), torch.full((3,), 500.0))
            >>> v.shape
            torch.Size([3, 2])
        """

        def v(x: Tensor, t: Tensor) -> Tensor:
            sigma = (t.double() / num_train_timesteps).clamp(1e-6, 1.0)[:, None]  # (M, 1)
            xd = x.double().reshape(x.shape[0], -1)
            keep = 1 - sigma
            var = keep**2 * self.stds[None] ** 2 + sigma**2  # (M, K)
            r = torch.softmax(self._log_components(xd, keep, var), -1)
            diff = xd[:, None, :] - keep[:, :, None] * self.means[None]  # (M, K, D)
            eps = sigma[:, :, None] * diff / var[:, :, None]
            x0 = self.means[None] + (keep * self.stds[None] ** 2 / var)[:, :, None] * diff
            out = (r[:, :, None] * (eps - x0)).sum(1)
            return out.reshape(x.shape).to(x.dtype)

        return v
