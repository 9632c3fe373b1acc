"""Flow-matching Heun (FlowMatchHeunDiscreteScheduler): picard at tol = 0 reproduces
diffusers' loop of 2N - 1 entries, churn noise included."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchHeunDiscreteScheduler
from diffusion_helpers import (
    check_parity,
    gaussian_denoiser,
    latent,
    max_abs,
    sequential,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import picard
from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import flow_heun

CHURNS = [
    None,
    {"s_churn": 2.0},
    {"s_churn": 40.0, "s_tmin": 0.3, "s_tmax": 0.8, "s_noise": 1.003},
]


def test_grids_match_set_timesteps():
    for shift in (1.0, 3.0, 0.5):
        for total in (1000, 100):
            sched = FlowMatchHeunDiscreteScheduler(shift=shift, num_train_timesteps=total)
            for n in (1, 2, 9, 28, 61):
                sched.set_timesteps(n)
                rule = flow_heun.from_config(sched.config, n)
                assert torch.equal(rule.timesteps, sched.timesteps), (shift, total, n)
                assert torch.equal(rule.sigmas, sched.sigmas), (shift, total, n)


@settings(max_examples=10)
@given(
    shift=st.sampled_from([1.0, 3.0, 0.5]),
    churn=st.sampled_from(CHURNS),
    n=st.integers(1, 12),
)
def test_parity_float32(shift, churn, n):
    """Windows 1, 2, 3, 7, all and per-sample; churn noise drawn at both stages."""
    sched = FlowMatchHeunDiscreteScheduler(shift=shift)
    kw = churn or {}
    rule = flow_heun.from_config(sched.config, n, **kw)
    check_parity(sched, rule, gaussian_denoiser(sched), n, latent(), **kw)


def test_churn_draws_noise_at_both_stages():
    """diffusers churns the Euler and the correction stage alike (the correction's noise
    only moves the derivative by rounding, but it advances the generator)."""
    rule = flow_heun.from_config({"shift": 3.0}, 4, s_churn=40.0, s_tmin=0.3, s_tmax=0.8)
    sigma = rule.sigmas[: rule.num_steps]
    pair = rule.base_sigmas[torch.arange(rule.num_steps) // 2]
    inside = (pair >= 0.3) & (pair <= 0.8)
    assert rule.noise_draws.tolist() == inside.tolist() and rule.noise_draws.sum() == 2
    assert not torch.equal(sigma, pair)  # the correction's state is at σ_{i+1}
    sched = FlowMatchHeunDiscreteScheduler(shift=3.0)
    kw = {"s_churn": 40.0, "s_tmin": 0.3, "s_tmax": 0.8}
    check_parity(sched, rule, gaussian_denoiser(sched), 4, latent(), seed=[3, 4], **kw)


@pytest.mark.parametrize("churn", [None, {"s_churn": 2.0}], ids=["ode", "churn"])
def test_random_unet_parity_float64(churn):
    """diffusers rounds the sample to float32 each step; ``no_upcast`` keeps its float64."""
    sched = FlowMatchHeunDiscreteScheduler(shift=3.0)
    den = unet_denoiser(tiny_unet().double())
    kw = churn or {}
    rule = flow_heun.from_config(sched.config, 5, **kw)
    x_T = latent(dtype=torch.float64)
    err = check_parity(sched, rule, den, 5, x_T, windows=(None, 1, 3), no_upcast=True, **kw)
    assert err <= 1e-12  # ~1e-15 here


def test_default_tolerance_sweeps():
    sched = FlowMatchHeunDiscreteScheduler(shift=3.0)
    den, x_T = gaussian_denoiser(sched), latent()
    rule = flow_heun.from_config(sched.config, 50)
    sol = picard.solve(DiffusionProblem(rule, den), x_T)
    ref = sequential(sched, den, 50, x_T)
    assert sol.stats.iterations <= 15  # 11 of 99 here
    assert max_abs(sol.final, ref) <= 2e-3 * float(ref.abs().max())


def test_refused_options():
    with pytest.raises(ValueError, match="num_inference_steps"):
        flow_heun.from_config({}, 0)
    with pytest.raises(TypeError, match="s_churn"):
        flow_heun.from_config({}, 5, s_churn="a lot")
    with pytest.raises(TypeError, match="s_noise"):
        flow_heun.from_config({}, 5, s_noise=None)


def test_other_config_keys_are_ignored_as_by_diffusers():
    """The scheduler reads only num_train_timesteps and shift (a FlowMatchEuler config's
    dynamic shifting is ignored by diffusers' Heun too)."""
    config = {"shift": 3.0, "use_dynamic_shifting": True, "shift_terminal": 0.1}
    sched = FlowMatchHeunDiscreteScheduler.from_config(config)
    sched.set_timesteps(7)
    assert torch.equal(flow_heun.from_config(sched.config, 7).sigmas, sched.sigmas)
