"""The networks of the shipped models, and their data (generated or preprocessed in code)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DigitsClassifier",
    "MLPDenoiser",
    "digits_unet",
    "moons",
    "preprocess_digits",
]


def moons(n: int, noise: float = 0.05, seed: int = 0) -> Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled.

    The points are ``(x - (0.5, 0.25)) / 0.5``, so the data has roughly unit scale.

    Args:
        n: the number of points (``n // 2`` on the outer moon, the rest on the inner one).
        noise: the standard deviation of the Gaussian noise added before scaling.
        seed: the seed of the noise and of the shuffling.

    Returns:
        The points, (n, 2) float32, in random order.

    Example:
        >>> moons(4, seed=0).shape
        torch.Size([4, 2])
        >>> bool(torch.equal(moons(100, seed=1), moons(100, seed=1)))
        True
    """
    rng = np.random.default_rng(seed)
    outer, inner = n // 2, n - n // 2
    a = np.linspace(0, np.pi, outer)
    b = np.linspace(0, np.pi, inner)
    pts = np.concatenate(
        [np.stack([np.cos(a), np.sin(a)], 1), np.stack([1 - np.cos(b), 1 - np.sin(b) - 0.5], 1)]
    )
    pts = pts + noise * rng.standard_normal(pts.shape)
    pts = pts[rng.permutation(n)]
    return torch.from_numpy((pts - np.array([0.5, 0.25])) / 0.5).float()


class MLPDenoiser(nn.Module):
    """An ε-prediction MLP for 2-D data: ``forward(x: (M, 2), t: (M,)) -> (M, 2)``.

    The timestep enters as sinusoidal features of ``t / num_train_timesteps``.

    Args:
        dim: the data dimension (input and output width).
        width: the hidden layers' width.
        depth: the number of hidden layers (each ``Linear`` then ``SiLU``).
        frequencies: the number of sinusoidal frequencies of the timestep features (each
            gives a sine and a cosine).
        num_train_timesteps: the timestep that maps to 1 in the features.

    Example:
        >>> net = MLPDenoiser()
        >>> net(torch.zeros(3, 2), torch.tensor([0, 500, 999])).shape
        torch.Size([3, 2])
        >>> MLPDenoiser(dim=3, width=8, depth=1).config["width"]
        8
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        frequencies: int = 16,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        self.config: dict[str, int] = {
            "dim": dim,
            "width": width,
            "depth": depth,
            "frequencies": frequencies,
            "num_train_timesteps": num_train_timesteps,
        }
        self.register_buffer(
            "freqs",
            math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32),
            persistent=False,
        )
        layers: list[nn.Module] = []
        inp = dim + 2 * frequencies
        for _ in range(depth):
            layers += [nn.Linear(inp, width), nn.SiLU()]
            inp = width
        layers.append(nn.Linear(inp, dim))
        self.net = nn.Sequential(*layers)
        self.num_train_timesteps = num_train_timesteps

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """ε̂(x, t) for a batch of points and their timesteps."""
        freqs: Tensor = self.get_buffer("freqs")
        s = (t.to(x.dtype) / self.num_train_timesteps).reshape(-1, 1) * freqs.to(x.dtype)
        t_feat = torch.cat([torch.sin(s), torch.cos(s)], dim=-1).expand(x.shape[0], -1)
        return self.net(torch.cat([x, t_feat], dim=-1))


def preprocess_digits(images: np.ndarray) -> Tensor:
    """scikit-learn's 8x8 digits (values 0..16) to 1x16x16 images in [-1, 1] (bilinear).

    Args:
        images: the digits, (M, 64) or (M, 8, 8), values 0..16.

    Returns:
        The images, (M, 1, 16, 16) float32: 0 maps to -1 and 16 to 1.

    Example:
        >>> x = preprocess_digits(np.full((2, 64), 16.0))
        >>> x.shape, x.min().item(), x.max().item()
        (torch.Size([2, 1, 16, 16]), 1.0, 1.0)
        >>> preprocess_digits(np.zeros((1, 8, 8))).max().item()
        -1.0
    """
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x * 2 - 1


DIGITS_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}
"""The digits UNet's diffusers config."""


def digits_unet(config: dict[str, Any] | None = None) -> Any:
    """A diffusers ``UNet2DModel`` for 1x16x16 digits (random weights).

    Args:
        config: the UNet's diffusers config (default: :data:`DIGITS_UNET`).

    Returns:
        The ``UNet2DModel``, randomly initialised.

    Example:
        >>> unet = digits_unet()
        >>> unet.config.sample_size, unet.config.block_out_channels
        (16, [16, 32, 32])
        >>> with torch.no_grad():
        ...     unet(torch.zeros(1, 1, 16, 16), torch.tensor([500])).sample.shape
        torch.Size([1, 1, 16, 16])
    """
    from diffusers import UNet2DModel

    return UNet2DModel(**(config or DIGITS_UNET))


class DigitsClassifier(nn.Module):
    """A small CNN on 1x16x16 digits.

    ``features`` gives the 64-d penultimate activations (the space of the Fréchet
    distance), ``forward`` the 10 logits.

    Example:
        >>> DigitsClassifier().features(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 64])
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.SiLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations, (M, 64)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, (M, 10)."""
        return self.head(self.body(x))
