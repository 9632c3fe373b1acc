"""Models for the demo, benchmarks, tests and docs — shipped or built offline, never downloaded.

- ``load("moons")``: a 2-D MLP ε-model trained on two moons (DDPM, 1000 steps).
- ``load("digits")``: a diffusers ``UNet2DModel`` trained on scikit-learn's digits (16x16).
- ``load("gmm")``: the exact ε of a 2-D Gaussian mixture (closed form: the true data
  distribution is known).
- :mod:`picard.models.tiny`: tiny random pipelines (Stable Diffusion, DDPM, DDIM).

The weights are in ``picard/models/weights`` (safetensors + JSON with the training
command, data, steps and final loss), made by :mod:`picard.models.train`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["MODELS", "ShippedModel", "load", "load_classifier"]

WEIGHTS = Path(__file__).with_name("weights")
MODELS = ("moons", "digits", "gmm")
"""The names :func:`load` knows."""


@dataclass(frozen=True)
class ShippedModel:
    """A loaded model: its batched denoiser, its scheduler and what it samples.

    Attributes:
        name: the model's name.
        denoiser: ``denoiser(x, t) -> ε̂`` for ``x: (M, *sample_shape)``, ``t: (M,)``.
        scheduler: a fresh ``DDPMScheduler`` with the training schedule (swap it with
            ``SchedulerClass.from_config(model.scheduler.config)``).
        sample_shape: the shape of one sample.
        info: the training record (command, data, steps, seconds, final loss).
        data: reference data to compare samples with (2-D models), else ``None``.

    Example:
        >>> model = ShippedModel("zero", lambda x, t: torch.zeros_like(x), None, (2,))
        >>> model.denoiser(torch.ones(3, 2), torch.tensor([1, 2, 3])).shape, model.data
        (torch.Size([3, 2]), None)
        >>> gmm = load("gmm")
        >>> gmm.name, gmm.sample_shape, gmm.data.shape
        ('gmm', (2,), torch.Size([4000, 2]))
    """

    name: str
    denoiser: Callable[[Tensor, Tensor], Tensor]
    scheduler: Any
    sample_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)
    data: Tensor | None = None


def _read(name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors.torch import load_file

    meta = json.loads((WEIGHTS / f"{name}.json").read_text())
    return meta, load_file(str(WEIGHTS / f"{name}.safetensors"))


def _scheduler(schedule: dict[str, Any]) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**schedule, clip_sample=False)


def load(name: str) -> ShippedModel:
    """Load a model by name (see :data:`MODELS`), offline.

    Args:
        name: ``"moons"``, ``"digits"`` or ``"gmm"``.

    Returns:
        The :class:`ShippedModel`, in eval mode, its denoiser running without gradients.

    Raises:
        ValueError: if ``name`` is not one of :data:`MODELS`.

    Example:
        >>> model = load("moons")
        >>> model.denoiser(torch.zeros(3, 2), torch.tensor([1, 2, 3])).shape
        torch.Size([3, 2])
        >>> model.sample_shape, model.scheduler.config.num_train_timesteps
        ((2,), 1000)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name == "gmm":
        from picard.models.gmm import GaussianMixture

        gmm = GaussianMixture.ring()
        schedule = {
            "num_train_timesteps": 1000,
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
        }
        sched = _scheduler(schedule)
        return ShippedModel(
            "gmm",
            gmm.denoiser(sched.alphas_cumprod),
            sched,
            (2,),
            {"kind": "exact ε of an 8-component Gaussian mixture"},
            gmm.sample(4000, torch.Generator().manual_seed(0)),
        )
    meta, tensors = _read("moons_mlp" if name == "moons" else "digits_unet")
    if name == "moons":
        from picard.models.nets import MLPDenoiser, moons

        net = MLPDenoiser(**meta["config"])
        net.load_state_dict(tensors)
        net.eval()
        return ShippedModel(
            "moons",
            _no_grad(net),
            _scheduler(meta["schedule"]),
            (2,),
            meta["training"],
            moons(4000, seed=12345),
        )
    from picard.models.nets import digits_unet

    unet = digits_unet(meta["config"])
    unet.load_state_dict(tensors)
    unet.eval()

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return unet(x, t).sample

    return ShippedModel(
        "digits", denoiser, _scheduler(meta["schedule"]), (1, 16, 16), meta["training"]
    )


def _no_grad(net: torch.nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return net(x, t)

    return denoiser


def load_classifier() -> tuple[Any, Tensor, Tensor]:
    """The digits classifier and the mean/covariance of its features on the real digits.

    Returns:
        ``(net, mean, cov)``: the :class:`~picard.models.nets.DigitsClassifier` (eval
        mode), and the mean (64,) and covariance (64, 64) of its features on the real digits.

    Example:
        >>> net, mean, cov = load_classifier()
        >>> mean.shape, cov.shape
        (torch.Size([64]), torch.Size([64, 64]))
    """
    from picard.models.nets import DigitsClassifier

    _, tensors = _read("digits_classifier")
    mean, cov = tensors.pop("reference_mean"), tensors.pop("reference_cov")
    net = DigitsClassifier()
    net.load_state_dict(tensors)
    net.eval()
    return net, mean, cov
