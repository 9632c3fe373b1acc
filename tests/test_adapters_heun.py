"""Heun (HeunDiscreteScheduler): picard at tol = 0 reproduces diffusers' loop, whose
2N - 1 entries (one model call each) alternate Euler and trapezoidal stages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler
from diffusion_helpers import (
    BETAS,
    SIGMA_SCHEDULES,
    SPACINGS,
    check_parity,
    gaussian_denoiser,
    max_abs,
    sequential,
    solve_rule,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import picard
from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import heun


def heun_scheduler(spacing=("linspace", 0), kind=None, beta="linear", **kw):
    if kind is not None:
        kw[kind] = True
    return HeunDiscreteScheduler(
        timestep_spacing=spacing[0], steps_offset=spacing[1], beta_schedule=beta, **kw
    )


def test_grids_match_set_timesteps():
    """timesteps, sigmas and init_noise_sigma equal diffusers' (bitwise), every option."""
    combos = itertools.product(SPACINGS, SIGMA_SCHEDULES)
    for k, (spacing, kind) in enumerate(combos):
        beta = BETAS[k % len(BETAS)]
        sched = heun_scheduler(spacing, kind, beta)
        for n in (1, 2, 9, 61):
            sched.set_timesteps(n)
            rule = heun.from_config(sched.config, n)
            assert torch.equal(rule.timesteps, sched.timesteps), (spacing, kind, beta, n)
            assert torch.equal(rule.sigmas, sched.sigmas), (spacing, kind, beta, n)
            assert rule.init_noise_sigma == float(sched.init_noise_sigma)
            assert rule.num_steps == len(sched.timesteps)


def test_sigma_bounds_of_a_converted_euler_config():
    """from_config keeps an Euler config's sigma_min/max, and Heun's Karras grid reads them;
    keys Heun does not have (rescale_betas_zero_snr) are ignored, as diffusers does."""
    euler = EulerDiscreteScheduler(
        sigma_min=0.1, sigma_max=10.0, use_karras_sigmas=True, rescale_betas_zero_snr=True
    )
    sched = HeunDiscreteScheduler.from_config(euler.config)
    sched.set_timesteps(6)
    rule = heun.from_config(sched.config, 6)
    assert torch.equal(rule.sigmas, sched.sigmas) and rule.sigmas[0].item() == 10.0
    check_parity(sched, rule, gaussian_denoiser(sched), 6, start_latent(sched, 6))


@settings(max_examples=10)
@given(
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    kind=st.sampled_from(SIGMA_SCHEDULES),
    beta=st.sampled_from(BETAS),
    clip=st.sampled_from([None, 1.0, 3.0]),
    n=st.integers(1, 12),
)
def test_parity_float32(spacing, prediction, kind, beta, clip, n):
    """Every window (1, 2, 3, 7, all) and per-sample windows: the second stage reads its
    first stage's derivative across window boundaries."""
    clipping = {} if clip is None else {"clip_sample": True, "clip_sample_range": clip}
    sched = heun_scheduler(spacing, kind, beta, prediction_type=prediction, **clipping)
    rule = heun.from_config(sched.config, n)
    check_parity(sched, rule, gaussian_denoiser(sched), n, start_latent(sched, n))


def test_trailing_grid_with_one_step_more():
    """Trailing spacing rounds to N + 1 timesteps for N = 61: 2N + 1 entries, as diffusers."""
    sched = heun_scheduler(("trailing", 0))
    rule = heun.from_config(sched.config, 61)
    assert rule.num_steps == 123
    check_parity(sched, rule, gaussian_denoiser(sched), 61, start_latent(sched, 61), windows=(16,))


@pytest.mark.parametrize(
    "kw",
    [{}, {"prediction_type": "v_prediction", "use_karras_sigmas": True}],
    ids=["epsilon", "v-karras"],
)
def test_random_unet_parity_float64(kw):
    sched = heun_scheduler(**kw)
    den = unet_denoiser(tiny_unet().double())
    x_T = start_latent(sched, 6, dtype=torch.float64)
    err = check_parity(sched, heun.from_config(sched.config, 6), den, 6, x_T, windows=(None, 1, 3))
    assert err <= 1e-12  # ~2e-15 here


def test_default_tolerance_sweeps():
    """The correction is an increment of the entry's own state, so Picard converges as
    fast as for Euler (the literal ``x_i + …`` form took 40 sweeps and erred by 2e-2)."""
    sched = heun_scheduler()
    den, x_T = gaussian_denoiser(sched), start_latent(sched, 50)
    rule = heun.from_config(sched.config, 50)
    sol = picard.solve(DiffusionProblem(rule, den), x_T)
    ref = sequential(sched, den, 50, x_T)
    assert sol.stats.iterations <= 20  # 16 of 99 entries here
    assert max_abs(sol.final, ref) <= 2e-3 * float(ref.abs().max())


def test_guesses_for_entering_steps():
    """With smaller windows the frozen-x̂_0 guesses (ε-prediction) keep tol = 0 exact."""
    sched = heun_scheduler()
    den, x_T = gaussian_denoiser(sched), start_latent(sched, 20)
    rule = heun.from_config(sched.config, 20)
    assert rule.signal_keys == ("unit", "sigma_in")
    sol, _ = solve_rule(rule, den, x_T, seed=None, tol=0, window=8, predict=True)
    assert max_abs(sol.final, sequential(sched, den, 20, x_T)) <= 1e-5 * float(x_T.abs().max())


@pytest.mark.parametrize(
    ("kw", "n", "match"),
    [
        ({"prediction_type": "flow"}, 5, "prediction_type"),
        ({"beta_schedule": "exp"}, 5, "beta_schedule"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, 5, "only one of"),
        ({}, 0, "num_inference_steps"),
        ({}, 2.5, "num_inference_steps"),
        ({"timestep_spacing": "uniform"}, 5, "timestep_spacing"),
    ],
)
def test_refused_options(kw, n, match):
    with pytest.raises(ValueError, match=match):
        heun.from_config(kw, n)


def test_rule_arrays():
    rule = heun.from_config({}, 3)
    assert rule.memory == 1 and not rule.noise_draws.any()
    assert rule.coefficients["first"].tolist() == [1, 0, 1, 0, 1]
    dt = rule.coefficients["dt"]
    assert dt[0] == dt[1] and dt[2] == dt[3] and dt[4] == -rule.sigmas[-2]
    assert rule.tol_scale[-1] == 0 and np.all(rule.tol_scale >= 0)
