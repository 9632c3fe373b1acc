"""Reference implementations and random problems for the tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def euler_loop(f, y0: Tensor, t: Tensor) -> Tensor:
    """The plain sequential Euler loop on the grid t (batched f, one row per call)."""
    ys = [y0]
    y = y0
    for i in range(len(t) - 1):
        y = y + (t[i + 1] - t[i]).to(y.dtype) * f(t[i : i + 1], y[None])[0]
        ys.append(y)
    return torch.stack(ys)


def em_loop(f, g, y0: Tensor, t: Tensor, dW: Tensor) -> Tensor:
    """The plain sequential Euler–Maruyama loop with given Brownian increments."""
    ys = [y0]
    y = y0
    for i in range(len(t) - 1):
        ti = t[i : i + 1]
        y = y + (t[i + 1] - t[i]).to(y.dtype) * f(ti, y[None])[0] + g(ti, y[None])[0] * dW[i]
        ys.append(y)
    return torch.stack(ys)


class RandomMLP(torch.nn.Module):
    """A small tanh MLP drift f(t, y) with a known Lipschitz bound in y."""

    def __init__(
        self, dim: int, width: int, seed: int, gain: float = 1.0, dtype: torch.dtype = torch.float64
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(width, dim + 1, generator=gen, dtype=dtype) * gain / math.sqrt(dim)
        self.w2 = torch.randn(dim, width, generator=gen, dtype=dtype) * gain / math.sqrt(width)
        self.b1 = torch.randn(width, generator=gen, dtype=dtype) * 0.1

    def lipschitz(self) -> float:
        w1y = self.w1[:, :-1]
        return float(torch.linalg.matrix_norm(w1y, 2) * torch.linalg.matrix_norm(self.w2, 2))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        tt = t.to(y.dtype).reshape(-1, *([1] * (y.ndim - 1))).expand(*y.shape[:-1], 1)
        h = torch.tanh(torch.cat([y, tt], dim=-1) @ self.w1.T + self.b1)
        return h @ self.w2.T


def random_grid(
    n: int, seed: int, decreasing: bool = False, dtype: torch.dtype = torch.float64
) -> Tensor:
    """A strictly monotone non-uniform grid of n + 1 points on [0, 1] (or [1, 0])."""
    gen = torch.Generator().manual_seed(seed)
    steps = 0.2 + torch.rand(n, generator=gen, dtype=dtype)
    t = torch.cat([torch.zeros(1, dtype=dtype), torch.cumsum(steps, 0)])
    t = t / t[-1]
    return t.flip(0) if decreasing else t
