"""sdeint: the parallel path is the sequential Euler–Maruyama path with the same noise."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import RandomMLP, em_loop, random_grid
from hypothesis import given
from hypothesis import strategies as st

import picard
from picard.ode.stochastic import brownian_increments


@given(
    n=st.integers(1, 50),
    dim=st.integers(1, 3),
    seed=st.integers(0, 10**6),
    window=st.integers(1, 60),
    decreasing=st.booleans(),
)
def test_equals_sequential_euler_maruyama_with_the_same_increments(
    n, dim, seed, window, decreasing
):
    f = RandomMLP(dim=dim, width=8, seed=seed)
    sigma = RandomMLP(dim=dim, width=8, seed=seed + 1, gain=0.5)

    def g(t, y):  # multiplicative, state-dependent diagonal noise
        return 0.3 + 0.2 * torch.tanh(sigma(t, y))

    t = random_grid(n, seed=seed + 2, decreasing=decreasing)
    gen = torch.Generator().manual_seed(seed)
    y0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    dW = torch.randn(n, dim, generator=gen, dtype=torch.float64) * t.diff().abs().sqrt()[:, None]
    expected = em_loop(f, g, y0, t, dW)
    ys, stats = picard.sdeint(f, g, y0, t, dW=dW, window=window, tol=0, return_stats=True)
    torch.testing.assert_close(ys, expected, rtol=1e-12, atol=1e-12)
    assert stats.iterations <= n and stats.stages == 2
    close = picard.sdeint(f, g, y0, t, dW=dW, window=window, tol=1e-9)
    torch.testing.assert_close(close, expected, rtol=0, atol=1e-6)


def test_generator_draws_the_documented_increments():
    t = torch.linspace(0, 1, 65, dtype=torch.float64)
    y0 = torch.zeros(3, dtype=torch.float64)

    def f(t, y):
        return -y

    def g(t, y):
        return torch.ones_like(y)

    a = picard.sdeint(f, g, y0, t, generator=torch.Generator().manual_seed(7), tol=0)
    b = picard.sdeint(f, g, y0, t, generator=torch.Generator().manual_seed(7), tol=0)
    assert torch.equal(a, b)
    dW = brownian_increments(t, y0.shape, y0.dtype, torch.Generator().manual_seed(7))
    expected = torch.randn(
        (64, 3), generator=torch.Generator().manual_seed(7), dtype=torch.float64
    ) * math.sqrt(1 / 64)
    torch.testing.assert_close(dW, expected)
    torch.testing.assert_close(a, em_loop(f, g, y0, t, dW), rtol=1e-12, atol=1e-12)
    c = picard.sdeint(f, g, y0, t, generator=torch.Generator().manual_seed(8), tol=0)
    assert not torch.equal(a, c)


def test_ornstein_uhlenbeck_moments():
    """dY = -θ Y dt + σ dW from Y0 = 1 over 4000 samples: mean e^{-θT}, variance
    σ²(1 - e^{-2θT}) / 2θ, up to Euler–Maruyama bias and sampling error."""
    theta, sigma, T = 2.0, 0.5, 1.0
    y0 = torch.ones(4000, 1, dtype=torch.float64)
    t = torch.linspace(0, T, 201, dtype=torch.float64)
    ys = picard.sdeint(
        lambda t, y: -theta * y,
        lambda t, y: sigma * torch.ones_like(y),
        y0,
        t,
        generator=torch.Generator().manual_seed(0),
        batch_dims=1,
        tol=1e-8,
    )
    final = ys[-1, :, 0]
    mean, var = math.exp(-theta * T), sigma**2 * (1 - math.exp(-2 * theta * T)) / (2 * theta)
    assert abs(float(final.mean()) - mean) < 4 * math.sqrt(var / 4000) + 0.01
    assert abs(float(final.var()) - var) < 0.1 * var


def test_unbatched_drift_and_diffusion():
    t = torch.linspace(0, 1, 21, dtype=torch.float64)
    y0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    dW = torch.randn(20, 2, dtype=torch.float64) * 0.2

    def f(s, y):
        return -s * y

    def g(s, y):
        return 0.1 * torch.cos(y)

    batched = picard.sdeint(lambda s, y: -s[:, None] * y, g, y0, t, dW=dW, tol=0)
    unbatched = picard.sdeint(f, g, y0, t, dW=dW, tol=0, batched=False)
    torch.testing.assert_close(batched, unbatched, rtol=1e-12, atol=1e-12)


def test_dW_and_generator_are_exclusive():
    t = torch.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="dW or generator"):
        picard.sdeint(
            lambda t, y: y,
            lambda t, y: y,
            torch.ones(2),
            t,
            dW=torch.zeros(4, 2),
            generator=torch.Generator(),
        )
