"""DPM-Solver(++) single-step: picard at tol = 0 reproduces diffusers' sequential sampler."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverSinglestepScheduler
from diffusion_helpers import (
    PREDICTIONS,
    SIGMA_SCHEDULES,
    assert_default_tolerance,
    assert_posterior_tol_scale,
    assert_rule_parity,
    assert_split_window_equals_one_window,
    gaussian_denoiser,
    per_sample_error,
    scheduler_factory,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from picard.adapters.schedulers.dpmsolver_singlestep import (
    DPMSolverSinglestepRule,
    from_config,
    order_list,
    singlestep_grid,
)

scheduler = scheduler_factory(DPMSolverSinglestepScheduler)


def diffusers_orders(sched, n: int) -> list[int]:
    """The order of the update each of diffusers' steps calls (on a fresh copy)."""
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    seen: list[int] = []
    update = s.singlestep_dpm_solver_update

    def record(*a, order=None, **k):
        seen.append(order)
        return update(*a, order=order, **k)

    s.singlestep_dpm_solver_update = record
    x = torch.zeros(1, 1, 2, 2)
    for t in s.timesteps:
        x = s.step(0.1 * x + 0.1, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    return seen


@settings(max_examples=10)
@given(
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    schedule=st.sampled_from(SIGMA_SCHEDULES),
    final=st.sampled_from(["zero", "sigma_min"]),
    n=st.one_of(st.integers(1, 60), st.integers(900, 1000)),
    clip=st.sampled_from([-math.inf, -5.1]),
)
def test_grid_matches_set_timesteps(beta, schedule, final, n, clip):
    sched = scheduler(
        beta_schedule=beta, schedule=schedule, final_sigmas_type=final, lambda_min_clipped=clip
    )
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    timesteps, sigmas = singlestep_grid(sched.config, n)
    np.testing.assert_array_equal(timesteps, s.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, s.sigmas.numpy())
    if np.count_nonzero(timesteps == timesteps[0]) > 1:  # diffusers' step would misstart
        with pytest.raises(ValueError, match="repeats its first timestep"):
            DPMSolverSinglestepRule(sched.config, n)
        return
    rule = DPMSolverSinglestepRule(sched.config, n)
    assert rule.timesteps.dtype == torch.int64 and torch.equal(rule.timesteps, s.timesteps)
    assert rule.init_noise_sigma == s.init_noise_sigma == 1.0


@settings(max_examples=25)
@given(
    order=st.sampled_from([1, 2, 3]),
    lower_order_final=st.booleans(),
    final=st.sampled_from(["zero", "sigma_min"]),
    n=st.integers(1, 25),
)
def test_order_list_matches_the_updates_diffusers_calls(order, lower_order_final, final, n):
    sched = scheduler(
        solver_order=order, lower_order_final=lower_order_final, final_sigmas_type=final
    )
    assert order_list(sched.config, n).tolist() == diffusers_orders(sched, n)


@settings(max_examples=12)
@given(
    order=st.sampled_from([1, 2, 3]),
    algorithm=st.sampled_from(["dpmsolver++", "dpmsolver", "sde-dpmsolver++"]),
    solver_type=st.sampled_from(["midpoint", "heun"]),
    lower_order_final=st.booleans(),
    schedule=st.sampled_from([None, "use_karras_sigmas"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    prediction=st.sampled_from(PREDICTIONS),
    n=st.integers(1, 25),
)
def test_parity_float32(
    order, algorithm, solver_type, lower_order_final, schedule, final, prediction, n
):
    if algorithm == "dpmsolver":
        final = "sigma_min"  # diffusers refuses a zero final sigma for the ε form
    sched = scheduler(
        solver_order=order,
        algorithm_type=algorithm,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        schedule=schedule,
        final_sigmas_type=final,
        prediction_type=prediction,
    )
    den, x_T = gaussian_denoiser(sched), start_latent(sched, n)
    assert_rule_parity(sched, from_config, den, n, x_T, windows=(None, 7, 1, 3))


@pytest.mark.parametrize(
    "kw",
    [
        {"thresholding": True, "prediction_type": "sample", "solver_order": 3},
        {"use_exponential_sigmas": True, "solver_type": "heun", "solver_order": 3},
        {"use_beta_sigmas": True, "solver_order": 3, "final_sigmas_type": "sigma_min"},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "solver_order": 3},
        {"beta_schedule": "scaled_linear", "algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        {
            "algorithm_type": "dpmsolver",
            "solver_order": 3,
            "solver_type": "heun",
            "final_sigmas_type": "sigma_min",
            "prediction_type": "v_prediction",
        },
    ],
    ids=["threshold", "exponential", "beta", "cosine-clipped", "sd-sde", "eps-3-heun"],
)
@pytest.mark.parametrize(
    ("n", "dtype", "atol"), [(9, torch.float32, 1e-5), (12, torch.float64, 1e-10)]
)
def test_parity_options(kw, n, dtype, atol):
    sched = DPMSolverSinglestepScheduler(**kw)
    x_T = start_latent(sched, n, dtype=dtype)
    den = gaussian_denoiser(sched)
    assert_rule_parity(sched, from_config, den, n, x_T, atol=atol, windows=(None, 2))


def test_threshold_above_one():
    """x̂_0's 99.5% quantiles grow from 0.4 to 1.97: clipped, thresholded, then clamped at 1.5."""
    sched = DPMSolverSinglestepScheduler(
        thresholding=True, sample_max_value=1.5, solver_order=3, prediction_type="sample"
    )
    x_T = start_latent(sched, 18) * 1.5
    assert_rule_parity(sched, from_config, gaussian_denoiser(sched, wiggle=0.4), 18, x_T)


def test_learned_variance_channels_are_dropped():
    sched = DPMSolverSinglestepScheduler(variance_type="learned_range", solver_order=3)
    den = gaussian_denoiser(sched, learned_variance=True)
    assert from_config(sched.config, 12).output_channels == 2
    assert_rule_parity(sched, from_config, den, 12, start_latent(sched, 12), windows=(None, 2))


UNET_CONFIGS = [
    {"solver_order": 3, "solver_type": "heun", "final_sigmas_type": "sigma_min"},
    {
        "algorithm_type": "sde-dpmsolver++",
        "use_karras_sigmas": True,
        "prediction_type": "v_prediction",
    },
]


@pytest.mark.parametrize("kw", UNET_CONFIGS, ids=["3-heun", "sde-karras-v"])
def test_random_unet_parity_float64(kw):
    """Exact in float64: diffusers' single-step keeps the latent's dtype throughout."""
    sched = DPMSolverSinglestepScheduler(**kw)
    unet = tiny_unet().double()
    x_T = start_latent(sched, 11, dtype=torch.float64)
    den = unet_denoiser(unet)
    assert_rule_parity(
        sched, from_config, den, 11, x_T, atol=1e-12, windows=(None, 1, 4), per_sample=False
    )


def test_history_from_a_split_window_equals_one_window():
    """``update`` on a window split anywhere, the tail reading the head's stored
    ``[m, x]`` rows as history, gives what one window gives (groups cut at every offset)."""
    rule = DPMSolverSinglestepRule({"solver_order": 3, "solver_type": "heun"}, 11)
    assert_split_window_equals_one_window(rule, 11)


def test_an_entry_depends_on_its_group_start_not_its_own_state():
    """The second entry of a group is computed from the group's start sample."""
    rule = DPMSolverSinglestepRule({"solver_order": 2, "final_sigmas_type": "sigma_min"}, 4)
    c = {k: torch.as_tensor(v).reshape(-1, 1, 1) for k, v in rule.coefficients.items()}
    x = torch.ones(4, 1, 2, dtype=torch.float64)
    out = torch.zeros(4, 1, 2, dtype=torch.float64)
    base, _ = rule.update(x, out, c, None, None)
    x2 = x.clone()
    x2[1] += 1.0  # entry 1 (order 2) sees this only through its model output
    moved, _ = rule.update(x2, out, c, None, None)
    assert rule.orders.tolist() == [1, 2, 1, 2]
    diff = (moved - base).abs().amax(dim=(1, 2))
    assert diff[1] > 0 and diff[0] == diff[2] == diff[3] == 0
    same_out = rule.convert(x2, out, c)[1] - rule.convert(x, out, c)[1]
    assert torch.allclose(moved[1] - base[1], c["cend"][1] * same_out)


def test_tol_scale_is_the_posterior_std_of_the_next_step():
    assert_posterior_tol_scale(DPMSolverSinglestepRule({"final_sigmas_type": "sigma_min"}, 10))


def test_default_tolerance_is_close_and_faster():
    sched = DPMSolverSinglestepScheduler()
    rule = from_config(sched.config, 50)  # 9 sweeps, 6.6e-3 from diffusers' sample here
    assert_default_tolerance(sched, rule, gaussian_denoiser(sched), 50, iterations=15, error=2e-2)


def test_sde_per_sample_generators_end_where_the_sequential_loop_leaves_them():
    sched = DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3)
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 10, shape=(3, 3, 8, 8))
    assert per_sample_error(sched, den, 10, x_T, from_config(sched.config, 10), window=4) < 1e-5


def test_config_keys_of_other_schedulers_are_ignored_as_diffusers_ignores_them():
    """``from_config`` of an SD-style config keeps ``timestep_spacing``; diffusers' single-step
    grid ignores it (always linspace), and so does the rule."""
    sched = DPMSolverSinglestepScheduler.from_config(
        {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": True}
    )
    s = copy.deepcopy(sched)
    s.set_timesteps(8)
    assert torch.equal(from_config(sched.config, 8).timesteps, s.timesteps)


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
        ({"solver_type": "bh3"}, "solver_type"),
        ({"solver_order": 4}, "solver_order"),
        ({"algorithm_type": "dpmsolver", "final_sigmas_type": "zero"}, "final_sigmas_type"),
        ({"final_sigmas_type": "sigma_max"}, "final_sigmas_type"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"variance_type": "learned", "prediction_type": "sample"}, "variance_type"),
        ({"variance_type": "fixed_small"}, "variance_type"),
        (
            {"algorithm_type": "dpmsolver", "thresholding": True, "final_sigmas_type": "sigma_min"},
            "thresholding",
        ),
    ],
)
def test_unsupported_options_are_refused(config, option):
    with pytest.raises(ValueError, match=option):
        from_config(config, 10)


def test_aliases_and_bad_step_counts():
    """diffusers' constructor maps ``deis`` to ``dpmsolver++`` and ``logrho`` to midpoint."""
    rule = from_config({"algorithm_type": "deis", "solver_type": "logrho"}, 6)
    assert rule.algorithm_type == "dpmsolver++"
    for n in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            from_config({}, n)
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config({"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, 8)
