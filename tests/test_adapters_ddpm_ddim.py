"""DDPM and DDIM: picard at tol = 0 reproduces diffusers' sequential samplers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusion_helpers import (
    PREDICTIONS,
    SPACINGS,
    assert_parity,
    gaussian_denoiser,
    max_abs,
    parallel,
    per_sample_error,
    sequential,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given
from hypothesis import strategies as st


@given(
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(PREDICTIONS),
    variance=st.sampled_from(["fixed_small", "fixed_small_log", "fixed_large", "learned_range"]),
    clip=st.sampled_from(["none", "clip", "threshold"]),
    n=st.integers(1, 25),
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
)
def test_ddpm_parity_float32(spacing, prediction, variance, clip, n, beta):
    sched = DDPMScheduler(
        timestep_spacing=spacing[0],
        steps_offset=spacing[1],
        prediction_type=prediction,
        variance_type=variance,
        clip_sample=clip == "clip",
        thresholding=clip == "threshold",
        beta_schedule=beta,
    )
    den = gaussian_denoiser(sched, learned_variance=variance.startswith("learned"))
    assert_parity(sched, den, n, start_latent(sched, n))


@given(
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(PREDICTIONS),
    eta=st.sampled_from([0.0, 0.3, 1.0]),
    one=st.booleans(),
    clip=st.sampled_from(["none", "clip", "threshold"]),
    clipped_output=st.booleans(),
    n=st.integers(1, 25),
)
def test_ddim_parity_float32(spacing, prediction, eta, one, clip, clipped_output, n):
    sched = DDIMScheduler(
        timestep_spacing=spacing[0],
        steps_offset=spacing[1],
        prediction_type=prediction,
        set_alpha_to_one=one,
        clip_sample=clip == "clip",
        thresholding=clip == "threshold",
    )
    den = gaussian_denoiser(sched)
    assert_parity(
        sched, den, n, start_latent(sched, n), eta=eta, use_clipped_model_output=clipped_output
    )


@pytest.mark.parametrize(
    ("scheduler", "kw"),
    [
        (DDPMScheduler(), {}),
        (DDPMScheduler(variance_type="fixed_small_log", timestep_spacing="trailing"), {}),
        (DDIMScheduler(), {}),
        (DDIMScheduler(set_alpha_to_one=False, timestep_spacing="trailing"), {"eta": 0.5}),
    ],
    ids=["ddpm", "ddpm-log-trailing", "ddim", "ddim-eta-final-alpha"],
)
def test_random_unet_parity_float64(scheduler, kw):
    """A random UNet: ill-conditioned in float32 (clipping), exact in float64."""
    unet = tiny_unet().double()
    x_T = start_latent(scheduler, 20, dtype=torch.float64)
    assert_parity(scheduler, unet_denoiser(unet), 20, x_T, atol=1e-10, windows=(None, 6), **kw)


def test_learned_variance_from_the_model_channels():
    sched = DDPMScheduler(variance_type="learned")

    def den(x, t):  # a positive predicted variance (learned = the variance itself)
        return torch.cat([0.3 * x, 0.01 + 0.0 * x], dim=1)

    assert_parity(sched, den, 15, start_latent(sched, 15))


def test_default_tolerance_is_close_and_faster():
    sched = DDPMScheduler()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 100)
    ref = sequential(sched, den, 100, x_T, torch.Generator().manual_seed(2))
    sol = parallel(sched, den, 100, x_T, seed=2)
    assert sol.stats.tol == 0.01  # relative to each state's RMS
    assert sol.stats.iterations < 40  # 21 here
    assert max_abs(sol.final, ref) < 5e-2  # 1.3e-2 here (1.7e-2 with ParaDiGMS's 0.1)


def test_per_sample_generators_and_the_generator_state():
    """A list of generators draws per sample; each ends where the sequential loop leaves it."""
    sched = DDPMScheduler()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 10, shape=(3, 3, 8, 8))
    assert per_sample_error(sched, den, 10, x_T) < 1e-5


def test_half_precision_keeps_float32_state():
    sched = DDIMScheduler(clip_sample=False)
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 30)
    ref = sequential(sched, den, 30, x_T)
    seen = []

    def half(x, t):
        seen.append(x.dtype)
        return den(x.float(), t).to(x.dtype)

    sol = parallel(sched, half, 30, x_T.half(), tol=0)
    assert sol.final.dtype == torch.float16 and set(seen) == {torch.float16}
    assert max_abs(sol.final, ref) < 5e-3  # float16 model, float32 accumulation
