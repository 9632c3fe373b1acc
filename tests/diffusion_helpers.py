"""Shared helpers for the diffusion-adapter tests: denoisers and the sequential reference.

The parity tests compare picard with diffusers' own sequential loop. Two float32 runs
that round differently can only agree to the conditioning of the sampler: with a random
UNet and DDIM's default clipping, a 1e-7 change of x_T moves the sample by 3e-2. So the
1e-5 float32 parity tests use a well-conditioned analytic denoiser (the exact prediction
for Gaussian data, plus a small nonlinear term); random UNets are used in float64.
"""

from __future__ import annotations

import copy
import inspect
import sys

import torch
from torch import Tensor

import picard
from picard.adapters import schedules
from picard.adapters.diffusers import from_scheduler

DATA_STD = 0.5


def tiny_unet(channels: int = 3, out_channels: int | None = None, seed: int = 0):
    """A small random UNet2DModel on 8x8 images (built from a config, offline)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=out_channels or channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def unet_denoiser(unet):
    """``denoiser(x, t)`` around a UNet2DModel."""

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        return unet(x, t).sample

    return denoiser


def gaussian_denoiser(scheduler, wiggle: float = 0.05, learned_variance: bool = False):
    """The exact prediction for N(0, DATA_STD²) data, in the scheduler's prediction type,
    plus ``wiggle * tanh(x)``: smooth, nonlinear and well-conditioned.

    VP schedulers get ᾱ from the training table at the (rounded) timestep; the Euler family
    scales its input to the VP latent first (scale_model_input), so the same formula holds;
    flow matching (prediction "flow") uses σ = t / num_train_timesteps.
    """
    config = scheduler.config
    flow = type(scheduler).__name__.startswith("FlowMatch")
    kind = "flow" if flow else config.get("prediction_type", "epsilon")
    if not flow:
        ab = schedules.alphas_cumprod(config, terminal_floor=True).double()
    s2 = DATA_STD**2

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        xd = x.double()
        if flow:
            sigma = (t.double() / config.num_train_timesteps).reshape(shape)
            denom = (1 - sigma) ** 2 * s2 + sigma**2
            x0 = (1 - sigma) * s2 * xd / denom
            eps = sigma * xd / denom
            out = eps - x0
        else:
            a = ab[t.double().round().long().clamp(0, len(ab) - 1)].reshape(shape)
            eps = (1 - a).sqrt() * xd / (a * s2 + 1 - a)
            x0 = a.sqrt() * s2 * xd / (a * s2 + 1 - a)
            out = {
                "epsilon": eps,
                "sample": x0,
                "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0,
            }[kind]
        out = (out + wiggle * torch.tanh(xd)).to(x.dtype)
        if learned_variance:  # a predicted variance channel block in [-1, 1]
            out = torch.cat([out, torch.tanh(x)], dim=1)
        return out

    return denoiser


def sequential(
    scheduler,
    denoiser,
    n: int,
    x_T: Tensor,
    generator=None,
    *,
    timestep_options=None,
    no_upcast: bool = False,
    **step_kwargs,
) -> Tensor:
    """diffusers' own sequential loop, on a copy of the scheduler.

    ``timestep_options`` go to ``set_timesteps`` (flow matching's ``sigmas``, ``mu``).
    ``no_upcast``: diffusers' Euler and flow steps round the sample to float32 even in a
    float64 run; this swaps, inside the scheduler's module, ``torch`` for a stand-in whose
    ``float32`` is float64, so a float64 reference stays float64.
    """
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n, **(timestep_options or {}))
    module = sys.modules[type(s).__module__]
    real = module.torch
    if no_upcast:
        module.torch = _NoUpcast()
    try:
        with torch.no_grad():
            return _loop(s, denoiser, x_T, generator, step_kwargs)
    finally:
        module.torch = real


class _NoUpcast:
    """``torch``, except that ``float32`` means float64 (see :func:`sequential`)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def _loop(s, denoiser, x, generator, step_kwargs):
    scale = getattr(s, "scale_model_input", lambda x, t: x)  # flow matching has none
    if "generator" in inspect.signature(s.step).parameters:
        step_kwargs = {"generator": generator, **step_kwargs}
    for t in s.timesteps:
        out = denoiser(scale(x, t), t.reshape(1).expand(x.shape[0]))
        x = s.step(out, t, x, **step_kwargs).prev_sample
    return x


def start_latent(scheduler, n: int, shape=(2, 3, 8, 8), seed: int = 1, dtype=torch.float32):
    """x_T as a pipeline draws it: standard normal times the scheduler's init_noise_sigma."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return z * getattr(s, "init_noise_sigma", 1.0)


def parallel(scheduler, denoiser, n: int, x_T: Tensor, seed: int | None = None, **kw):
    """picard's solve of the same sampler; ``kw`` splits into solve and step options."""
    solve_kw = {k: kw.pop(k) for k in ("tol", "window", "max_iters") if k in kw}
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    problem = from_scheduler(scheduler, denoiser, n, generator=generator, **kw)
    return picard.solve(problem, x_T, **solve_kw)


def max_abs(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def assert_parity(scheduler, denoiser, n, x_T, *, seed=2, atol=1e-5, windows=(None, 7), **kw):
    """tol = 0 reproduces diffusers' sequential sample with the same generator seed.

    Within ``atol``, or a few float units of the sample's size when that is larger: some
    schedules (cosine betas, few steps, no clipping) reach |x| ~ 100, where one float32
    unit is 8e-6 and two roundings of the same sum differ by more than 1e-5.
    """
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    ref = sequential(scheduler, denoiser, n, x_T, gen, **kw)
    assert torch.isfinite(ref).all()
    bound = max(atol, 1e-6 * float(ref.abs().max()) if ref.dtype == torch.float32 else 0.0)
    for window in windows:
        sol = parallel(scheduler, denoiser, n, x_T, seed=seed, tol=0, window=window, **kw)
        err = max_abs(sol.final, ref)
        assert err <= bound, f"window {window}: max |picard - diffusers| = {err:.3g}"
        assert sol.stats.iterations <= n
    return ref
