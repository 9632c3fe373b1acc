"""LCM: picard at tol = 0 reproduces diffusers' ``LCMScheduler`` loop (and its pipeline)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import LCMScheduler
from diffusion_helpers import (
    BETAS,
    bound32,
    gaussian_denoiser,
    latent,
    max_abs,
    per_sample_error,
    rule_parity,
    sequential,
    solve_rule,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from picard.adapters.schedulers import lcm

X0_OPTIONS = [{}, {"clip_sample": True, "clip_sample_range": 0.6}, {"thresholding": True}]


@settings(max_examples=20)
@given(
    prediction=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    beta=st.sampled_from(BETAS),
    zsnr=st.booleans(),
    x0_option=st.sampled_from(X0_OPTIONS),
    scaling=st.sampled_from([10.0, 1.0, 10]),
    original=st.sampled_from([None, 7, 50, 999]),
    n=st.integers(1, 12),
)
def test_lcm_parity_float32(prediction, beta, zsnr, x0_option, scaling, original, n):
    sched = LCMScheduler(
        prediction_type=prediction,
        beta_schedule=beta,
        rescale_betas_zero_snr=zsnr,
        timestep_scaling=scaling,
        **x0_option,
    )
    n = min(n, original or 50)
    opts = {} if original is None else {"original_inference_steps": original}
    den, x_T = gaussian_denoiser(sched), latent()
    try:
        rule = lcm.from_config(sched.config, n, **opts)
    except ValueError as e:  # refused only where diffusers divides by √ᾱ_t = 0
        assert zsnr and prediction == "epsilon" and "rescale_betas_zero_snr" in str(e)
        ref = sequential(sched, den, n, x_T, torch.Generator(), timestep_options=opts)
        assert not torch.isfinite(ref).all()
        return
    err, scale = rule_parity(sched, rule, den, x_T, timestep_options=opts)
    assert err <= bound32(scale), err  # ~1e-7 here


def test_lcm_grid_matches_set_timesteps():
    for total, original in [(1000, 50), (1000, 7), (1000, 1000), (999, 50), (100, 30)]:
        sched = LCMScheduler(num_train_timesteps=total, original_inference_steps=original)
        for n in sorted({min(m, original) for m in (1, 2, 3, 4, 8, original // 2 or 1, original)}):
            for opt in (None, max(n, original // 3)):
                s = copy.deepcopy(sched)
                s.set_timesteps(n, original_inference_steps=opt)
                rule = lcm.from_config(sched.config, n, original_inference_steps=opt)
                assert torch.equal(rule.timesteps, s.timesteps), (total, original, n, opt)
                assert rule.timesteps.dtype == torch.long


def test_last_step_gives_what_the_pipeline_decodes():
    """LatentConsistencyModelPipeline decodes the last step's ``denoised``: the final state."""
    sched = LCMScheduler()
    den, x_T, n = gaussian_denoiser(sched), latent(), 4
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    gen = torch.Generator().manual_seed(2)
    latents = x_T
    for t in s.timesteps:  # the pipeline's loop
        out = den(s.scale_model_input(latents, t), t.expand(2))
        latents, denoised = s.step(out, t, latents, generator=gen, return_dict=False)
    assert torch.equal(latents, denoised)
    sol, _ = solve_rule(lcm.from_config(sched.config, n), den, x_T, tol=0, window=2)
    assert max_abs(sol.final, denoised) <= 1e-6


def test_noise_at_every_step_but_the_last_in_the_latent_dtype():
    rule = lcm.from_config(LCMScheduler().config, 6)
    assert rule.noise_draws.tolist() == [True] * 5 + [False]
    assert rule.noise_dtype is None  # randn_tensor(dtype=denoised.dtype): the latent's
    assert rule.coefficients["next_sigma"][-1] == 0 and rule.coefficients["next_alpha"][-1] == 1
    assert rule.tol_scale[-2:].tolist() == [0.0, 0.0] and rule.tol_scale[:4].min() > 0


def test_random_unet_parity_float64():
    den = unet_denoiser(tiny_unet().double())
    sched = LCMScheduler(prediction_type="v_prediction", thresholding=True)
    rule = lcm.from_config(sched.config, 6)
    err, _ = rule_parity(sched, rule, den, latent(dtype=torch.float64), windows=(None,))
    assert err <= 1e-10, err  # ~4e-14 here


def test_per_sample_generators():
    sched = LCMScheduler()
    den, x_T = gaussian_denoiser(sched), latent((3, 3, 8, 8))
    assert per_sample_error(sched, den, 6, x_T, lcm.from_config(sched.config, 6)) <= 1e-6


def test_default_tolerance():
    """Correct, but hardly faster: each LCM step is a jump (x_{n+1} depends weakly on x_n,
    J ≈ 0), and picard's cumulative increments x_b + Σ (F_j(x_j) - x_j) propagate an error
    as Σ (J_j - I) e_j, which does not shrink when J ≈ 0: ~N sweeps."""
    sched = LCMScheduler()
    den, x_T = gaussian_denoiser(sched), latent()
    ref = sequential(sched, den, 50, x_T, torch.Generator().manual_seed(2))
    sol, _ = solve_rule(lcm.from_config(sched.config, 50), den, x_T)
    assert sol.stats.iterations <= 50  # 47 here
    assert max_abs(sol.final, ref) < 1e-2  # 1.7e-3 here


@pytest.mark.parametrize(
    ("config", "n", "kw", "match"),
    [
        ({}, 0, {}, "num_inference_steps"),
        ({}, 51, {}, "original_inference_steps"),
        ({}, 4, {"original_inference_steps": 1001}, "original_inference_steps"),
        ({}, 4, {"original_inference_steps": 0}, "original_inference_steps"),
        ({}, 4, {"strength": 0.5}, "strength"),
        ({}, 4, {"timesteps": [999, 499]}, "custom timesteps"),
        ({"prediction_type": "flow"}, 4, {}, "prediction_type"),
        ({"beta_schedule": "sigmoid"}, 4, {}, "beta_schedule"),
        ({"rescale_betas_zero_snr": True}, 4, {}, "rescale_betas_zero_snr"),
    ],
)
def test_unsupported_options_raise(config, n, kw, match):
    with pytest.raises(ValueError, match=match):
        lcm.from_config(config, n, **kw)


def test_unknown_step_option_raises():
    with pytest.raises(TypeError, match="eta"):
        lcm.from_config({}, 4, eta=0.3)  # type: ignore[call-arg]
