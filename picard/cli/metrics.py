"""Sample-quality metrics, so that "the same sample quality" is measured, not claimed.

- :func:`sliced_wasserstein`: distance between two point clouds (any dimension).
- :func:`frechet_distance`: between Gaussians fitted to features (FID's formula).
- :func:`digits_quality`: Fréchet distance of generated digits to the real ones in the
  feature space of the shipped digits classifier, and its label histogram.
- Exact log-likelihood under a known mixture: :meth:`picard.models.gmm.GaussianMixture.log_prob`.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = ["digit_labels", "digits_quality", "frechet_distance", "sliced_wasserstein"]


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """The sliced 1-Wasserstein distance between point clouds ``a`` (n, D) and ``b`` (m, D).

    The mean over random directions of the 1-D Wasserstein distance of the projections
    (quantiles compared at the same levels, so n and m may differ).

    Args:
        a: the first point cloud, (n, D).
        b: the second point cloud, (m, D), with the same D.
        projections: the number of random unit directions averaged over.
        seed: the seed of the directions (the same seed gives the same directions).

    Returns:
        The distance, a non-negative float (0 for identical clouds).

    Raises:
        ValueError: if ``a`` and ``b`` are not 2-D with the same number of columns.

    Example:
        >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        >>> sliced_wasserstein(x, x), sliced_wasserstein(x, x + 1.0) > 0.5
        (0.0, True)
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must be (n, D) and (m, D), got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    levels = torch.linspace(0, 1, max(len(a), len(b)), dtype=torch.float64)
    qa = torch.quantile(a.double() @ dirs, levels, dim=0)
    qb = torch.quantile(b.double() @ dirs, levels, dim=0)
    return float((qa - qb).abs().mean())


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """``|μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)`` (Heusel et al. 2017).

    Args:
        mean1: the mean of the first Gaussian, (D,).
        cov1: the covariance of the first Gaussian, (D, D).
        mean2: the mean of the second Gaussian, (D,).
        cov2: the covariance of the second Gaussian, (D, D).

    Returns:
        The Fréchet distance (squared 2-Wasserstein distance between the Gaussians).

    Example:
        >>> m, c = torch.zeros(3), torch.eye(3)
        >>> round(frechet_distance(m, c, m + 1, c), 6)
        3.0
    """
    m1, m2 = mean1.double().numpy(), mean2.double().numpy()
    c1, c2 = cov1.double().numpy(), cov2.double().numpy()
    product = c1 @ c2
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # singular covariances (few or constant samples)
        root = scipy.linalg.sqrtm(product)
    if not np.isfinite(root).all():  # as pytorch-fid: offset the diagonals and retry
        offset = np.eye(len(c1)) * 1e-6
        root = scipy.linalg.sqrtm((c1 + offset) @ (c2 + offset))
    root = np.real(root)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * root))


def digits_quality(images: Tensor) -> tuple[float, list[int]]:
    """Fréchet distance of 1x16x16 digits in [-1, 1] to the real digits, and labels.

    The label histogram (10 counts) is what the shipped classifier assigns.

    Args:
        images: the generated digits, (M, 1, 16, 16) in [-1, 1] (as
            :func:`picard.models.nets.preprocess_digits` makes the real ones).

    Returns:
        ``(fd, histogram)``: the Fréchet distance of the images' classifier features to
        those of the real digits, and the number of images given each label 0..9.

    Example:
        >>> from picard.models.nets import preprocess_digits
        >>> fd, hist = digits_quality(torch.zeros(20, 1, 16, 16) - 1)  # blank images
        >>> fd > 10, sum(hist)
        (True, 20)
    """
    from picard.models import load_classifier

    net, mean, cov = load_classifier()
    with torch.no_grad():
        feats = net.features(images.float()).double()
    fd = frechet_distance(feats.mean(0), torch.cov(feats.T), mean, cov)
    return fd, torch.bincount(torch.tensor(digit_labels(images)), minlength=10).tolist()


def digit_labels(images: Tensor) -> list[int]:
    """The label 0..9 the shipped classifier gives each 1x16x16 digit in [-1, 1].

    Args:
        images: the digits, (M, 1, 16, 16).

    Returns:
        One label per image.

    Example:
        >>> len(digit_labels(torch.zeros(3, 1, 16, 16) - 1))
        3
    """
    from picard.models import load_classifier

    net = load_classifier()[0]
    with torch.no_grad():
        return net(images.float()).argmax(1).tolist()
