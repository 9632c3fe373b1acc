"""DEIS multistep: picard at tol = 0 reproduces diffusers' sequential sampler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import DEISMultistepScheduler
from diffusion_helpers import (
    PREDICTIONS,
    SIGMA_SCHEDULES,
    SPACINGS,
    assert_default_tolerance,
    assert_posterior_tol_scale,
    assert_rule_parity,
    assert_split_window_equals_one_window,
    gaussian_denoiser,
    recorded_orders,
    scheduler_factory,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from picard.adapters.schedulers.deis import DEISRule, deis_grid, from_config

scheduler = scheduler_factory(DEISMultistepScheduler)
UPDATES = [
    "deis_first_order_update",
    "multistep_deis_second_order_update",
    "multistep_deis_third_order_update",
]


@settings(max_examples=10)
@given(
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    spacing=st.sampled_from(SPACINGS),
    schedule=st.sampled_from(SIGMA_SCHEDULES),
    n=st.one_of(st.integers(1, 70), st.integers(990, 1000)),
)
def test_grid_matches_set_timesteps(beta, spacing, schedule, n):
    sched = scheduler(beta_schedule=beta, spacing=spacing, schedule=schedule)
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    timesteps, sigmas = deis_grid(sched.config, n)
    np.testing.assert_array_equal(timesteps, s.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, s.sigmas.numpy())
    if np.count_nonzero(timesteps == timesteps[0]) > 1:
        with pytest.raises(ValueError, match="repeats its first timestep"):
            DEISRule(sched.config, n)
        return
    rule = DEISRule(sched.config, n)
    assert torch.equal(rule.timesteps, s.timesteps) and rule.num_steps == len(s.timesteps)
    assert rule.init_noise_sigma == s.init_noise_sigma == 1.0


@settings(max_examples=15)
@given(order=st.sampled_from([1, 2, 3]), lower_order_final=st.booleans(), n=st.integers(1, 20))
def test_orders_match_the_updates_diffusers_calls(order, lower_order_final, n):
    sched = scheduler(solver_order=order, lower_order_final=lower_order_final)
    assert DEISRule(sched.config, n).orders.tolist() == recorded_orders(sched, n, UPDATES)


@settings(max_examples=12)
@given(
    order=st.sampled_from([1, 2, 3]),
    lower_order_final=st.booleans(),
    schedule=st.sampled_from(SIGMA_SCHEDULES[:3]),
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(PREDICTIONS),
    n=st.integers(1, 25),
)
def test_parity_float32(order, lower_order_final, schedule, spacing, prediction, n):
    sched = scheduler(
        solver_order=order,
        lower_order_final=lower_order_final,
        schedule=schedule,
        spacing=spacing,
        prediction_type=prediction,
    )
    den, x_T = gaussian_denoiser(sched), start_latent(sched, n)
    assert_rule_parity(sched, from_config, den, n, x_T, windows=(None, 7, 1, 3))


OPTIONS = {
    "threshold": {"thresholding": True, "prediction_type": "sample", "solver_order": 3},
    "cosine-trailing": {
        "beta_schedule": "squaredcos_cap_v2",
        "solver_order": 3,
        "timestep_spacing": "trailing",
    },
    "sd-v": {
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
        "solver_order": 3,
    },
    "exponential": {"use_exponential_sigmas": True, "solver_order": 3},
}


@pytest.mark.parametrize("kw", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize(
    ("n", "dtype", "atol"), [(9, torch.float32, 1e-5), (20, torch.float64, 1e-10)]
)
def test_parity_options(kw, n, dtype, atol):
    sched = DEISMultistepScheduler(**kw)
    x_T = start_latent(sched, n, dtype=dtype)
    den = gaussian_denoiser(sched)
    assert_rule_parity(sched, from_config, den, n, x_T, atol=atol, windows=(None, 3))


@pytest.mark.parametrize("order", [2, 3])
def test_beta_sigmas_float64(order):
    """Beta sigmas start at σ̃ = 157, where the third-order weights (|b_j| ~ 100, 1/α ~ 150)
    cancel: diffusers' own float32 sample moves by 1e-4 when x_T moves by 1e-7. So float64."""
    sched = DEISMultistepScheduler(use_beta_sigmas=True, solver_order=order)
    x_T = start_latent(sched, 9, dtype=torch.float64)
    den = gaussian_denoiser(sched)
    assert_rule_parity(sched, from_config, den, 9, x_T, atol=1e-10, windows=(None, 3))


@pytest.mark.parametrize(
    "kw",
    [{"solver_order": 3}, {"solver_order": 2, "thresholding": True, "prediction_type": "sample"}],
    ids=["3", "2-threshold"],
)
def test_random_unet_parity_float64(kw):
    """Exact in float64: diffusers' DEIS keeps the latent's dtype; its np.log coefficients
    are reproduced bit for bit."""
    sched = DEISMultistepScheduler(**kw)
    x_T = start_latent(sched, 12, dtype=torch.float64)
    den = unet_denoiser(tiny_unet().double())
    assert_rule_parity(
        sched, from_config, den, 12, x_T, atol=1e-12, windows=(None, 1, 2), per_sample=False
    )


def test_history_from_a_split_window_equals_one_window():
    assert_split_window_equals_one_window(DEISRule({"solver_order": 3}, 10), 10)


def test_tol_scale_is_the_posterior_std_of_the_next_step():
    rule = DEISRule({}, 10)
    assert_posterior_tol_scale(rule)
    assert not rule.noise_draws.any() and rule.memory == 1


def test_default_tolerance_is_close_and_faster():
    sched = DEISMultistepScheduler()
    rule = from_config(sched.config, 50)  # 6 sweeps, 2.4e-4 from diffusers' sample here
    assert_default_tolerance(sched, rule, gaussian_denoiser(sched), 50, iterations=15, error=2e-2)


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ({"solver_type": "bh3"}, "solver_type"),
        ({"solver_order": 4}, "solver_order"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ],
)
def test_unsupported_options_are_refused(config, option):
    with pytest.raises(ValueError, match=option):
        from_config(config, 10)


def test_aliases_and_bad_step_counts():
    """diffusers' constructor maps dpmsolver(++) to deis and midpoint/heun/bh* to logrho."""
    plain = from_config({}, 8)
    alias = from_config({"algorithm_type": "dpmsolver++", "solver_type": "heun"}, 8)
    for key, value in plain.coefficients.items():
        np.testing.assert_array_equal(value, alias.coefficients[key])
    for n in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            from_config({}, n)
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config({"timestep_spacing": "leading"}, 1000)
