"""DPM-Solver(++) multistep: picard at tol = 0 reproduces diffusers' sequential sampler."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusion_helpers import (
    DPM_UPDATES,
    PREDICTIONS,
    SIGMA_SCHEDULES,
    SPACINGS,
    assert_parity,
    assert_posterior_tol_scale,
    assert_split_window_equals_one_window,
    gaussian_denoiser,
    max_abs,
    parallel,
    per_sample_error,
    recorded_orders,
    scheduler_factory,
    sequential,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given
from hypothesis import strategies as st

import picard
from picard.adapters.diffusers import from_scheduler, rule_for
from picard.adapters.schedulers.dpmsolver import (
    DPMSolverRule,
    from_config,
    solver_grid,
    step_orders,
)

LU_SCHEDULES = [*SIGMA_SCHEDULES[:2], "use_lu_lambdas", *SIGMA_SCHEDULES[2:]]
scheduler = scheduler_factory(DPMSolverMultistepScheduler)


def used_orders(sched, n: int) -> list[int]:
    """The order of the update diffusers' step calls at each step."""
    gen = torch.Generator().manual_seed(0)
    return recorded_orders(sched, n, DPM_UPDATES, x=torch.zeros(1, 1, 2, 2), generator=gen)


@given(
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    spacing=st.sampled_from(SPACINGS),
    schedule=st.sampled_from(LU_SCHEDULES),
    final=st.sampled_from(["zero", "sigma_min"]),
    n=st.one_of(st.integers(1, 60), st.integers(900, 1000)),
    clip=st.sampled_from([-math.inf, -5.1]),
    zero_snr=st.booleans(),
)
def test_grid_matches_set_timesteps(beta, spacing, schedule, final, n, clip, zero_snr):
    sched = scheduler(
        beta_schedule=beta,
        spacing=spacing,
        schedule=schedule,
        final_sigmas_type=final,
        lambda_min_clipped=clip,
        rescale_betas_zero_snr=zero_snr,
    )
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    timesteps, sigmas = solver_grid(sched.config, n)
    assert timesteps.dtype == np.int64 and sigmas.dtype == np.float32
    np.testing.assert_array_equal(timesteps, s.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, s.sigmas.numpy())
    if np.count_nonzero(timesteps == timesteps[0]) > 1:  # diffusers' step would fail
        with pytest.raises(ValueError, match="repeats its first timestep"):
            DPMSolverRule(sched.config, n)
        return
    rule = DPMSolverRule(sched.config, n)
    assert rule.timesteps.dtype == torch.int64
    assert torch.equal(rule.timesteps, s.timesteps)
    assert rule.num_steps == len(s.timesteps)
    assert rule.init_noise_sigma == s.init_noise_sigma == 1.0


@given(
    order=st.sampled_from([1, 2, 3]),
    lower_order_final=st.booleans(),
    euler_at_final=st.booleans(),
    final=st.sampled_from(["zero", "sigma_min"]),
    n=st.integers(1, 25),
)
def test_step_orders_match_the_updates_diffusers_calls(
    order, lower_order_final, euler_at_final, final, n
):
    sched = scheduler(
        solver_order=order,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
        final_sigmas_type=final,
    )
    assert step_orders(sched.config, n).tolist() == used_orders(sched, n)


@given(
    order=st.sampled_from([1, 2, 3]),
    algorithm=st.sampled_from(["dpmsolver++", "dpmsolver"]),
    solver_type=st.sampled_from(["midpoint", "heun"]),
    lower_order_final=st.booleans(),
    euler_at_final=st.booleans(),
    karras=st.booleans(),
    final=st.sampled_from(["zero", "sigma_min"]),
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(PREDICTIONS),
    n=st.one_of(st.integers(1, 25), st.integers(15, 25)),
)
def test_parity_float32(
    order,
    algorithm,
    solver_type,
    lower_order_final,
    euler_at_final,
    karras,
    final,
    spacing,
    prediction,
    n,
):
    if algorithm == "dpmsolver":
        final = "sigma_min"  # diffusers refuses a zero final sigma for the ε form
    sched = scheduler(
        solver_order=order,
        algorithm_type=algorithm,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
        use_karras_sigmas=karras,
        final_sigmas_type=final,
        spacing=spacing,
        prediction_type=prediction,
    )
    den, x_T = gaussian_denoiser(sched), start_latent(sched, n)
    if not torch.isfinite(sequential(sched, den, n, x_T)).all():
        # Karras with sigma_min ends on a zero step (h = 0): diffusers' Heun and third-order
        # weights are 0/0 there. picard reproduces the NaN and says so.
        assert karras and final == "sigma_min" and (solver_type == "heun" or order == 3)
        with pytest.raises(picard.NonFiniteError):
            parallel(sched, den, n, x_T, tol=0)
        return
    assert_parity(sched, den, n, x_T, windows=(None, 7, 1, 3))


@pytest.mark.parametrize(
    "kw",
    [
        {"thresholding": True, "prediction_type": "sample"},
        {"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        {"use_lu_lambdas": True, "solver_order": 3},
        {"use_exponential_sigmas": True, "solver_type": "heun"},
        {"use_beta_sigmas": True, "solver_order": 3},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "solver_order": 3},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "solver_order": 3},
        {"beta_schedule": "scaled_linear", "timestep_spacing": "trailing", "solver_order": 3},
    ],
    ids=[
        "threshold++",
        "threshold-eps",
        "lu",
        "exponential",
        "beta",
        "cosine-clipped",
        "zero-snr",
        "sd-trailing",
    ],
)
@pytest.mark.parametrize(
    ("n", "dtype", "atol"), [(8, torch.float32, 1e-5), (20, torch.float64, 1e-10)]
)
def test_parity_options(kw, n, dtype, atol):
    """(In float32 at 20 steps, beta sigmas start at σ̃ = 157: diffusers' own sample moves
    by 2e-5 when x_T moves by 1e-7, hence float64 there.)"""
    sched = DPMSolverMultistepScheduler(**kw)
    x_T = start_latent(sched, n, dtype=dtype)
    assert_parity(sched, gaussian_denoiser(sched), n, x_T, atol=atol, windows=(None, 3))


@pytest.mark.parametrize(
    ("algorithm", "order", "final"),
    [
        ("sde-dpmsolver++", 1, "zero"),
        ("sde-dpmsolver++", 2, "zero"),
        ("sde-dpmsolver++", 3, "sigma_min"),
        ("sde-dpmsolver", 1, "sigma_min"),
        ("sde-dpmsolver", 2, "sigma_min"),
    ],
)
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("n", [3, 12, 20])
def test_sde_parity_float32(algorithm, order, final, solver_type, n):
    """Noise drawn every step, in order; the ε-form SDE blows up at few steps (|x| ~ 600),
    so its tolerance is relative to the sample."""
    sched = DPMSolverMultistepScheduler(
        algorithm_type=algorithm,
        solver_order=order,
        final_sigmas_type=final,
        solver_type=solver_type,
    )
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, n)
    ref = sequential(sched, den, n, x_T, torch.Generator().manual_seed(2))
    atol = 1e-5 * max(1.0, float(ref.abs().max()))
    assert_parity(sched, den, n, x_T, atol=atol, windows=(None, 7, 1, 3))


def test_learned_variance_channels_are_dropped():
    sched = DPMSolverMultistepScheduler(variance_type="learned_range", solver_order=3)
    den = gaussian_denoiser(sched, learned_variance=True)
    assert from_scheduler(sched, den, 12).rule.output_channels == 2
    assert_parity(sched, den, 12, start_latent(sched, 12), windows=(None, 2))


# The last steps' x̂_0 quantiles are 1.07, 1.24, 1.23: thresholded, between 1 and the max.
THRESHOLD_ABOVE_ONE = {
    "thresholding": True,
    "sample_max_value": 1.5,
    "solver_order": 3,
    "prediction_type": "sample",
}


def test_threshold_above_one_float32():
    sched = DPMSolverMultistepScheduler(**THRESHOLD_ABOVE_ONE)
    den = gaussian_denoiser(sched)
    assert_parity(sched, den, 20, start_latent(sched, 20), windows=(None, 3))


def test_threshold_above_one_float64():
    sched = DPMSolverMultistepScheduler(**THRESHOLD_ABOVE_ONE)
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 20, dtype=torch.float64)
    assert_parity(sched, den, 20, x_T, atol=1e-10, windows=(None,))


UNET_CONFIGS = [
    {},
    {"solver_order": 3, "solver_type": "heun", "use_karras_sigmas": True},
    {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {
        "algorithm_type": "dpmsolver",
        "final_sigmas_type": "sigma_min",
        "thresholding": True,
        "prediction_type": "sample",
        "solver_type": "heun",
    },
    {"solver_order": 3, "thresholding": True, "prediction_type": "v_prediction"},
]


@pytest.mark.parametrize(
    "kw", UNET_CONFIGS, ids=["default", "3-heun-karras", "eps-3", "eps-th", "v-th"]
)
def test_random_unet_parity_float64(kw):
    """Exact in float64: the state's term is a float32 product, as in diffusers' step."""
    sched = DPMSolverMultistepScheduler(**kw)
    unet = tiny_unet().double()
    x_T = start_latent(sched, 20, dtype=torch.float64)
    assert_parity(sched, unet_denoiser(unet), 20, x_T, atol=1e-10, windows=(None, 6))


@pytest.mark.parametrize("order", [2, 3])
def test_windows_cut_the_multistep_history_everywhere(order):
    """Windows of 1, 2 and 3 steps start at every step, so the history that the second
    and third-order updates read crosses the window start at every offset."""
    sched = DPMSolverMultistepScheduler(solver_order=order, final_sigmas_type="sigma_min")
    unet = tiny_unet().double()
    x_T = start_latent(sched, 20, dtype=torch.float64)
    ref = assert_parity(sched, unet_denoiser(unet), 20, x_T, atol=1e-10, windows=(1, 2, 3, 5, None))
    assert torch.isfinite(ref).all()


def test_history_from_a_split_window_equals_one_window():
    """``update`` on a window split in two, the second half reading the first's outputs as
    history, gives what one window gives."""
    rule = DPMSolverRule({"solver_order": 3, "final_sigmas_type": "sigma_min"}, 10)
    assert_split_window_equals_one_window(rule, 10)


def test_tol_scale_is_the_posterior_std_of_the_next_step():
    sched = DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    rule = DPMSolverRule(sched.config, 10)
    _, sigmas = solver_grid(sched.config, 10)
    assert_posterior_tol_scale(rule, torch.from_numpy(sigmas))
    zero = DPMSolverRule(DPMSolverMultistepScheduler().config, 10)
    assert zero.tol_scale[-2] == 0  # the step into σ = 0 has no posterior noise
    assert not zero.noise_draws.any() and zero.memory == 1


def test_default_tolerance_is_close_and_faster():
    sched = DPMSolverMultistepScheduler()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 50)
    ref = sequential(sched, den, 50, x_T)
    sol = parallel(sched, den, 50, x_T)
    assert sol.stats.tol == 0.01  # relative to each state's RMS
    assert sol.stats.iterations < 15  # 5 here
    assert max_abs(sol.final, ref) < 2e-2  # 4.4e-4 here (3.2e-3 with ParaDiGMS's 0.1)


@pytest.mark.parametrize(("algorithm", "order"), [("sde-dpmsolver++", 3), ("sde-dpmsolver", 2)])
def test_sde_float64_draws_float32_noise(algorithm, order):
    """diffusers draws the SDE noise in float32 whatever the latent's dtype (noise_dtype)."""
    sched = DPMSolverMultistepScheduler(
        algorithm_type=algorithm, solver_order=order, final_sigmas_type="sigma_min"
    )
    assert from_config(sched.config, 10).noise_dtype == torch.float32
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 10, dtype=torch.float64)
    ref = sequential(sched, den, 10, x_T, torch.Generator().manual_seed(2))
    atol = 1e-10 * max(1.0, float(ref.abs().max()))
    assert_parity(sched, den, 10, x_T, atol=atol, windows=(None, 3))


def test_sde_per_sample_generators_end_where_the_sequential_loop_leaves_them():
    sched = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 10, shape=(3, 3, 8, 8))
    assert per_sample_error(sched, den, 10, x_T, window=4) < 1e-5


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"algorithm_type": "deis"}, "algorithm_type"),
        ({"solver_type": "bh2"}, "solver_type"),
        ({"solver_order": 4}, "solver_order"),
        ({"algorithm_type": "sde-dpmsolver", "solver_order": 3}, "solver_order"),
        ({"algorithm_type": "dpmsolver", "final_sigmas_type": "zero"}, "final_sigmas_type"),
        ({"final_sigmas_type": "sigma_max"}, "final_sigmas_type"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"variance_type": "learned", "prediction_type": "sample"}, "variance_type"),
        ({"variance_type": "fixed_small"}, "variance_type"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ],
)
def test_unsupported_options_are_refused(config, option):
    with pytest.raises(ValueError, match=option):
        from_config(config, 10)


def test_step_options_and_bad_step_counts_are_refused():
    sched = DPMSolverMultistepScheduler()
    with pytest.raises(TypeError):
        rule_for(sched, 10, eta=0.5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        from_config(sched.config, 0)
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config({"timestep_spacing": "leading"}, 1000)  # every timestep is 0
    cosine_karras = {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config(cosine_karras, 8)  # 998, 998, 998, 998, 994, …: diffusers' IndexError


def test_inert_flow_shift_and_duplicate_later_timesteps_are_fine():
    """``flow_shift`` only acts with flow sigmas; Karras grids repeat their last timesteps."""
    sched = DPMSolverMultistepScheduler(flow_shift=3.0, use_karras_sigmas=True)
    n = 100
    assert len(set(DPMSolverRule(sched.config, n).timesteps.tolist())) < n
    assert_parity(sched, gaussian_denoiser(sched), n, start_latent(sched, n), windows=(25,))
