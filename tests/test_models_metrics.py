"""Shipped models load offline; the metrics measure what they claim on known cases."""

from __future__ import annotations

import math

import pytest
import torch

from picard.cli.metrics import digits_quality, frechet_distance, sliced_wasserstein
from picard.models import MODELS, load
from picard.models.gmm import GaussianMixture


@pytest.mark.parametrize("name", MODELS)
def test_models_load_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("socket.socket.connect", lambda *a: (_ for _ in ()).throw(OSError("no")))
    model = load(name)
    x = torch.randn(3, *model.sample_shape)
    out = model.denoiser(x, torch.tensor([10, 500, 990]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert model.scheduler.config.num_train_timesteps == 1000
    if name != "gmm":
        assert (
            model.info["final_loss"] > 0
            and "python -m picard.models.train" in model.info["command"]
        )


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'cat'; choose one of moons"):
        load("cat")


def test_shipped_weights_are_small():
    from picard.models import WEIGHTS

    total = sum(p.stat().st_size for p in WEIGHTS.iterdir())
    assert total < 10 * 2**20


def test_sliced_wasserstein_on_known_distributions():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 2, generator=gen)
    b = torch.randn(2000, 2, generator=gen)
    assert sliced_wasserstein(a, a) == 0.0
    same = sliced_wasserstein(a, b)
    shifted = sliced_wasserstein(a, b + torch.tensor([1.0, 0.0]))
    assert same < 0.1 < shifted
    # A shift by d along a random direction u: E|<u, d>| = |d| E|cos θ| = 2|d|/π in 2-D.
    assert abs(shifted - 2 / math.pi) < 0.1


def test_frechet_distance_of_gaussians():
    m, c = torch.zeros(4), torch.eye(4)
    assert abs(frechet_distance(m, c, m, c)) < 1e-9
    # Same mean, covariances I and 4I: tr(I + 4I - 2 * 2I) = 4 * 1 = 4.
    assert abs(frechet_distance(m, c, m, 4 * c) - 4.0) < 1e-9


def test_digits_quality_separates_real_from_noise():
    """Real digits (the classifier's reference set) score ~0 and are labelled right;
    noise scores far higher."""
    from sklearn.datasets import load_digits

    from picard.models.nets import preprocess_digits

    digits = load_digits()
    fd_real, hist = digits_quality(preprocess_digits(digits.images))
    assert fd_real < 1e-3
    true = torch.bincount(torch.as_tensor(digits.target), minlength=10).tolist()
    assert sum(abs(a - b) for a, b in zip(hist, true, strict=True)) < 0.05 * len(digits.target)
    fd_half, _ = digits_quality(preprocess_digits(digits.images[::2]))
    fd_noise, _ = digits_quality(torch.rand(200, 1, 16, 16) * 2 - 1)
    assert fd_half < 10 < 10 * fd_half < fd_noise  # 3.9 and ~5500 here


def test_gmm_epsilon_is_the_exact_score():
    """ε̂ = -√(1-ᾱ) ∇ log p_t, checked against autograd of the exact noisy density."""
    gmm = GaussianMixture.ring()
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    eps = gmm.denoiser(ab)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0, 300, 999):
        a = ab[t]
        noisy = GaussianMixture(a.sqrt() * gmm.means, (a * gmm.stds**2 + 1 - a).sqrt(), gmm.weights)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(noisy.log_prob(xr).sum(), xr)
        expected = -(1 - a).sqrt() * grad
        torch.testing.assert_close(eps(x, torch.full((5,), t)), expected)


def test_gmm_log_prob_and_modes():
    gmm = GaussianMixture.ring(components=4, radius=3.0, std=0.1)
    x = gmm.sample(400, torch.Generator().manual_seed(0))
    assert gmm.component(x).bincount(minlength=4).min() > 60
    inside = gmm.log_prob(gmm.means.float())
    far = gmm.log_prob(torch.zeros(1, 2))
    assert (inside > far).all()
    # A single component's density at its mean: w / (2π s²).
    assert abs(float(inside[0]) - math.log(0.25 / (2 * math.pi * 0.01))) < 1e-6
