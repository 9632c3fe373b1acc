"""EDM Euler: picard at tol = 0 reproduces diffusers' ``EDMEulerScheduler`` loop."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusion_helpers import (
    bound32,
    edm_denoiser,
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

from picard.adapters.schedulers import edm_euler

CHURNS = [None, (2.0, 0.0, float("inf"), 1.0), (40.0, 0.3, 8.0, 1.003)]
CHURN_KEYS = ("s_churn", "s_tmin", "s_tmax", "s_noise")


scheduler = EDMEulerScheduler


@settings(max_examples=16)
@given(
    prediction=st.sampled_from(["epsilon", "v_prediction"]),
    schedule=st.sampled_from(["karras", "exponential"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    sigmas=st.sampled_from([(0.002, 80.0, 0.5, 7.0), (0.03, 14.6, 1.0, 5.0)]),
    churn=st.sampled_from(CHURNS),
    n=st.integers(1, 25),
)
def test_edm_euler_parity_float32(prediction, schedule, final, sigmas, churn, n):
    lo, hi, sd, rho = sigmas
    sched = scheduler(
        prediction_type=prediction,
        sigma_schedule=schedule,
        final_sigmas_type=final,
        sigma_min=lo,
        sigma_max=hi,
        sigma_data=sd,
        rho=rho,
    )
    kw = {} if churn is None else dict(zip(CHURN_KEYS, churn, strict=True))
    rule = edm_euler.from_config(sched.config, n, **kw)
    x_T = latent(sigma=rule.init_noise_sigma)
    err, scale = rule_parity(sched, rule, edm_denoiser(sched), x_T, **kw)
    # with churn, noise is added to states of size ~σ_max: an ulp of x_T
    assert err <= bound32(scale, float(x_T.abs().max()) if churn else 0.0), err


def test_edm_grids_match_set_timesteps():
    """timesteps (c_noise), sigmas and init_noise_sigma equal diffusers' (bitwise)."""
    params = [(0.002, 80.0, 7.0), (0.03, 14.6, 7.0), (0.1, 3.0, 3.0)]
    for schedule, final, (lo, hi, rho) in itertools.product(
        ["karras", "exponential"], ["zero", "sigma_min"], params
    ):
        sched = scheduler(
            sigma_schedule=schedule, final_sigmas_type=final, sigma_min=lo, sigma_max=hi, rho=rho
        )
        for n in [1, 2, 3, 9, 25, 61, 999]:
            s = copy.deepcopy(sched)
            s.set_timesteps(n)
            rule = edm_euler.from_config(sched.config, n)
            assert torch.equal(rule.timesteps, s.timesteps), (schedule, final, lo, n)
            assert torch.equal(rule.sigmas, s.sigmas), (schedule, final, lo, n)
            assert rule.init_noise_sigma == s.init_noise_sigma


def test_model_input_is_scale_model_input():
    sched = scheduler(sigma_data=0.7)
    s = copy.deepcopy(sched)
    s.set_timesteps(5)
    rule = edm_euler.from_config(sched.config, 5)
    x = latent((1, 3, 4, 4))
    for i, t in enumerate(s.timesteps):
        c = {
            k: torch.as_tensor(v[i : i + 1]).reshape(1, 1, 1, 1, 1)
            for k, v in rule.coefficients.items()
        }
        assert torch.equal(rule.model_input(x[None], c)[0], s.scale_model_input(x, t))
        s._step_index += 1


def test_churn_draws_noise_only_where_gamma_is_positive():
    sched = scheduler()
    assert not edm_euler.from_config(sched.config, 10).noise_draws.any()
    rule = edm_euler.from_config(sched.config, 10, s_churn=5.0, s_tmin=0.5, s_tmax=20.0)
    sigmas = rule.sigmas[:10]
    assert np.array_equal(rule.noise_draws, ((sigmas >= 0.5) & (sigmas <= 20.0)).numpy())
    assert 0 < rule.noise_draws.sum() < 10


def test_random_unet_parity_float64():
    """diffusers rounds the sample to float32 in step; no_upcast keeps its loop float64."""
    den = unet_denoiser(tiny_unet().double())
    churn = {"s_churn": 3.0, "s_tmin": 0.05}
    sched = scheduler(prediction_type="v_prediction")
    rule = edm_euler.from_config(sched.config, 8, **churn)
    x_T = latent(sigma=rule.init_noise_sigma, dtype=torch.float64)
    err, _ = rule_parity(sched, rule, den, x_T, windows=(None,), no_upcast=True, **churn)
    assert err <= 1e-10, err  # ~1e-14 here


def test_per_sample_generators():
    sched = scheduler()
    den, kw = edm_denoiser(sched), {"s_churn": 4.0}
    rule = edm_euler.from_config(sched.config, 8, **kw)
    x_T = latent((3, 3, 8, 8), sigma=rule.init_noise_sigma)
    assert per_sample_error(sched, den, 8, x_T, rule, step_kw=kw) <= 5e-7 * float(x_T.abs().max())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("churn", [{}, {"s_churn": 10.0}], ids=["ode", "churn"])
def test_default_tolerance(prediction, churn):
    sched = scheduler(prediction_type=prediction)
    den = edm_denoiser(sched)
    rule = edm_euler.from_config(sched.config, 50, **churn)
    x_T = latent(sigma=rule.init_noise_sigma)
    ref = sequential(sched, den, 50, x_T, torch.Generator().manual_seed(2), **churn)
    sol, _ = solve_rule(rule, den, x_T, window=50)  # the sweeps do not follow the clock
    assert sol.stats.iterations < 30  # 18 (ODE), 25–26 (churn) here
    assert max_abs(sol.final, ref) < 2e-3  # 8e-5 … 2.2e-4 here (data std 0.5)


@pytest.mark.parametrize(
    ("config", "n", "kw", "match"),
    [
        ({}, 0, {}, "num_inference_steps"),
        ({"sigma_schedule": "beta"}, 4, {}, "sigma_schedule"),
        ({"prediction_type": "sample"}, 4, {}, "prediction_type"),
        ({"final_sigmas_type": "sigma_max"}, 4, {}, "final_sigmas_type"),
        ({"sigma_min": 0.0}, 4, {}, "sigma_min"),
        ({"sigma_data": -1.0}, 4, {}, "sigma_data"),
        ({"sigma_min": 1.0, "sigma_max": 1.0}, 3, {}, "first timestep"),
        ({}, 4, {"sigmas": [1.0, 0.5]}, "custom sigmas"),
    ],
)
def test_unsupported_options_raise(config, n, kw, match):
    with pytest.raises(ValueError, match=match):
        edm_euler.from_config(config, n, **kw)


def test_step_options_must_be_numbers():
    with pytest.raises(TypeError, match="s_noise"):
        edm_euler.from_config({}, 4, s_noise="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="eta"):
        edm_euler.from_config({}, 4, eta=0.5)  # type: ignore[call-arg]
