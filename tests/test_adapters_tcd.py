"""TCD: picard at tol = 0 reproduces diffusers' ``TCDScheduler`` loop, any γ (``eta``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import TCDScheduler
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

from picard.adapters.schedulers import tcd


@settings(max_examples=20)
@given(
    prediction=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    beta=st.sampled_from(BETAS),
    zsnr=st.booleans(),
    eta=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    original=st.sampled_from([None, 7, 50, 999]),
    n=st.integers(1, 12),
)
def test_tcd_parity_float32(prediction, beta, zsnr, eta, original, n):
    sched = TCDScheduler(
        prediction_type=prediction, beta_schedule=beta, rescale_betas_zero_snr=zsnr
    )
    n = min(n, original or 50)
    opts = {} if original is None else {"original_inference_steps": original}
    den, x_T = gaussian_denoiser(sched), latent()
    try:
        rule = tcd.from_config(sched.config, n, eta=eta, **opts)
    except ValueError as e:  # refused only where diffusers divides by √ᾱ_t = 0
        assert zsnr and prediction == "epsilon" and "rescale_betas_zero_snr" in str(e)
        ref = sequential(sched, den, n, x_T, torch.Generator(), timestep_options=opts, eta=eta)
        assert not torch.isfinite(ref).all()
        return
    err, scale = rule_parity(sched, rule, den, x_T, timestep_options=opts, eta=eta)
    assert err <= bound32(scale), err  # ~1e-7 here


def test_tcd_grid_matches_set_timesteps():
    """With an explicit original_inference_steps diffusers picks from all T timesteps."""
    sched = TCDScheduler()
    for n in (1, 2, 3, 4, 8, 25, 50):
        for opt in (None, 50, 100):
            s = copy.deepcopy(sched)
            s.set_timesteps(n, original_inference_steps=opt)
            rule = tcd.from_config(sched.config, n, original_inference_steps=opt)
            assert torch.equal(rule.timesteps, s.timesteps), (n, opt)
    assert tcd.tcd_timesteps({}, 4, 50).tolist() != tcd.tcd_timesteps({}, 4).tolist()


def test_intermediate_timesteps_and_noise():
    """s = ⌊(1 - γ) t'⌋ in float32 as diffusers; noise at all but the last step iff γ > 0."""
    rule = tcd.from_config({}, 4, eta=0.3)
    prev = torch.tensor([759, 499, 259, 0])
    assert rule.intermediate.tolist() == torch.floor(0.7 * prev).long().tolist()
    assert rule.noise_draws.tolist() == [True, True, True, False]
    assert not tcd.from_config({}, 4, eta=0.0).noise_draws.any()
    assert np.all(tcd.from_config({}, 4, eta=0.0).coefficients["forward"] == 1)
    assert rule.tol_scale[-1] == 0 and rule.tol_scale[:-1].min() > 0


def test_random_unet_parity_float64():
    den = unet_denoiser(tiny_unet().double())
    sched = TCDScheduler(prediction_type="v_prediction")
    rule = tcd.from_config(sched.config, 6, eta=0.5)
    err, _ = rule_parity(sched, rule, den, latent(dtype=torch.float64), windows=(None,), eta=0.5)
    assert err <= 1e-10, err


def test_per_sample_generators():
    sched = TCDScheduler()
    den, x_T = gaussian_denoiser(sched), latent((3, 3, 8, 8))
    rule = tcd.from_config(sched.config, 6)  # step's default eta = 0.3, as the rule's
    assert per_sample_error(sched, den, 6, x_T, rule) <= 1e-6


@pytest.mark.parametrize(("eta", "sweeps"), [(0.0, 10), (0.3, 40), (1.0, 50)])
def test_default_tolerance(eta, sweeps):
    """γ = 0 is DDIM-like (few sweeps); γ → 1 is LCM-like jumps (~N sweeps, see LCM)."""
    sched = TCDScheduler()
    den, x_T = gaussian_denoiser(sched), latent()
    ref = sequential(sched, den, 50, x_T, torch.Generator().manual_seed(2), eta=eta)
    sol, _ = solve_rule(tcd.from_config(sched.config, 50, eta=eta), den, x_T)
    assert sol.stats.iterations <= sweeps  # 5, 33, 47 here
    assert max_abs(sol.final, ref) < 1e-2  # 8e-5, 6e-4, 4e-4 here


@pytest.mark.parametrize(
    ("config", "n", "kw", "match"),
    [
        ({}, 0, {}, "num_inference_steps"),
        ({}, 51, {}, "original_inference_steps"),
        ({}, 60, {"original_inference_steps": 50}, "num_inference_steps"),
        ({}, 4, {"eta": 1.5}, "eta"),
        ({}, 4, {"eta": -0.1}, "eta"),
        ({}, 4, {"strength": 0.5}, "strength"),
        ({}, 4, {"timesteps": [999, 499]}, "custom timesteps"),
        ({"prediction_type": "flow"}, 4, {}, "prediction_type"),
        ({"rescale_betas_zero_snr": True}, 4, {}, "rescale_betas_zero_snr"),
    ],
)
def test_unsupported_options_raise(config, n, kw, match):
    with pytest.raises(ValueError, match=match):
        tcd.from_config(config, n, **kw)


def test_eta_must_be_a_number():
    with pytest.raises(TypeError, match="eta"):
        tcd.from_config({}, 4, eta="0.3")  # type: ignore[arg-type]
