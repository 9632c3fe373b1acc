"""EDM DPM-Solver++ multistep: picard at tol = 0 reproduces diffusers' sequential sampler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler
from diffusion_helpers import (
    DPM_UPDATES,
    assert_default_tolerance,
    assert_rule_parity,
    edm_denoiser,
    recorded_orders,
    sequential,
    solve_rule,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import picard
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.edm_dpmsolver import EDMDPMSolverRule, edm_grid, from_config


def diffusers_orders(sched, n: int) -> list[int]:
    """The order of the update each of diffusers' steps calls."""
    return recorded_orders(
        sched, n, DPM_UPDATES, output=lambda s, x, t: 0.1 * s.scale_model_input(x, t)
    )


@settings(max_examples=10)
@given(
    schedule=st.sampled_from(["karras", "exponential"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    sigma_min=st.sampled_from([0.002, 0.03]),
    sigma_max=st.sampled_from([80.0, 14.6]),
    rho=st.sampled_from([7.0, 3.0]),
    sigma_data=st.sampled_from([0.5, 1.0]),
    n=st.integers(1, 60),
)
def test_grid_and_preconditioning_match_diffusers(
    schedule, final, sigma_min, sigma_max, rho, sigma_data, n
):
    sched = EDMDPMSolverMultistepScheduler(
        sigma_schedule=schedule,
        final_sigmas_type=final,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
        sigma_data=sigma_data,
    )
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    timesteps, sigmas = edm_grid(sched.config, n)
    assert torch.equal(timesteps, s.timesteps) and torch.equal(sigmas, s.sigmas)
    rule = EDMDPMSolverRule(sched.config, n)
    assert rule.init_noise_sigma == s.init_noise_sigma
    x = torch.randn(1, 2, 2, 2)
    c = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in rule.coefficients.items()}
    for i, t in enumerate(s.timesteps):  # scale_model_input, as the pipeline calls it
        scaled = s.scale_model_input(x, t)
        assert torch.equal(rule.model_input(x, {"c_in": c["c_in"][i]}), scaled)
        s._step_index += 1


@settings(max_examples=15)
@given(
    order=st.sampled_from([1, 2, 3]),
    lower_order_final=st.booleans(),
    euler_at_final=st.booleans(),
    final=st.sampled_from(["zero", "sigma_min"]),
    n=st.integers(1, 20),
)
def test_orders_match_the_updates_diffusers_calls(
    order, lower_order_final, euler_at_final, final, n
):
    sched = EDMDPMSolverMultistepScheduler(
        solver_order=order,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
        final_sigmas_type=final,
    )
    assert EDMDPMSolverRule(sched.config, n).orders.tolist() == diffusers_orders(sched, n)


@settings(max_examples=12)
@given(
    order=st.sampled_from([1, 2, 3]),
    algorithm=st.sampled_from(["dpmsolver++", "sde-dpmsolver++"]),
    solver_type=st.sampled_from(["midpoint", "heun"]),
    lower_order_final=st.booleans(),
    euler_at_final=st.booleans(),
    schedule=st.sampled_from(["karras", "exponential"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    prediction=st.sampled_from(["epsilon", "v_prediction"]),
    n=st.integers(1, 20),
)
def test_parity_float32(
    order, algorithm, solver_type, lower_order_final, euler_at_final, schedule, final, prediction, n
):
    if algorithm == "sde-dpmsolver++":
        order = min(order, 2)  # diffusers' EDM third-order update has no SDE branch
    sched = EDMDPMSolverMultistepScheduler(
        solver_order=order,
        algorithm_type=algorithm,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
        sigma_schedule=schedule,
        final_sigmas_type=final,
        prediction_type=prediction,
    )
    den, x_T = edm_denoiser(sched), start_latent(sched, n)
    if not torch.isfinite(sequential(sched, den, n, x_T, torch.Generator().manual_seed(2))).all():
        # A sigma_min final sigma repeats the grid's last σ: h = 0 on the last step, where
        # diffusers' Heun and third-order weights are 0/0. picard reproduces it and says so.
        assert final == "sigma_min" and (solver_type == "heun" or order == 3)
        with pytest.raises(picard.NonFiniteError):
            solve_rule(from_config(sched.config, n), den, x_T, tol=0)
        return
    assert_rule_parity(sched, from_config, den, n, x_T, windows=(None, 7, 1, 3))


@pytest.mark.parametrize(
    "kw",
    [
        {"thresholding": True, "solver_order": 3, "prediction_type": "v_prediction"},
        {"sigma_data": 1.0, "rho": 3.0, "sigma_max": 14.6, "solver_order": 3},
        {
            "algorithm_type": "sde-dpmsolver++",
            "solver_type": "heun",
            "sigma_schedule": "exponential",
        },
    ],
    ids=["threshold-v", "sigma-data-rho", "sde-exponential"],
)
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_parity_options(kw, dtype, atol):
    sched = EDMDPMSolverMultistepScheduler(**kw)
    x_T = start_latent(sched, 12, dtype=dtype)
    assert_rule_parity(sched, from_config, edm_denoiser(sched), 12, x_T, atol=atol)


@pytest.mark.parametrize(
    "kw",
    [{"solver_order": 3}, {"algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction"}],
    ids=["3", "sde-v"],
)
def test_random_unet_parity_float64(kw):
    """Exact in float64: diffusers' EDM step keeps the latent's dtype throughout."""
    sched = EDMDPMSolverMultistepScheduler(**kw)
    x_T = start_latent(sched, 12, dtype=torch.float64)
    den = unet_denoiser(tiny_unet().double())
    assert_rule_parity(
        sched, from_config, den, 12, x_T, atol=1e-12, windows=(None, 1, 2), per_sample=False
    )


def test_tol_scale_is_the_ancestral_std_of_the_next_step():
    rule = EDMDPMSolverRule({"final_sigmas_type": "sigma_min"}, 10)
    s = rule.sigmas.double()
    for i in range(9):
        expected = float(schedules.ancestral_std(s[i + 1], s[i + 2]))
        assert rule.tol_scale[i] == pytest.approx(expected, rel=1e-12)
    assert rule.tol_scale[-1] == 0 and (rule.tol_scale[:-2] > 0).all()


def test_signal_coefficients_give_the_preconditioned_denoiser():
    """(x − σ' F)/α' with the signal coefficients is c_skip x + c_out F (epsilon only)."""
    rule = EDMDPMSolverRule({}, 6)
    c = {k: torch.as_tensor(v).reshape(-1, 1, 1) for k, v in rule.coefficients.items()}
    x, out = torch.randn(6, 1, 4, dtype=torch.float64), torch.randn(6, 1, 4, dtype=torch.float64)
    ka, ks = rule.signal_keys
    got = schedules.predict_x0("epsilon", x, out, c[ka], c[ks])
    assert torch.allclose(got, rule.convert(x, out, c), rtol=1e-12, atol=1e-12)
    assert EDMDPMSolverRule({"prediction_type": "v_prediction"}, 6).signal_keys is None


def test_default_tolerance_is_close_and_faster():
    """15 sweeps here (the state's RMS falls from 80 to 0.5), 8e-3 from diffusers' sample."""
    sched = EDMDPMSolverMultistepScheduler()
    rule = from_config(sched.config, 50)
    assert_default_tolerance(sched, rule, edm_denoiser(sched), 50, iterations=20, error=2e-2)


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"algorithm_type": "dpmsolver"}, "algorithm_type"),
        ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "solver_order"),
        ({"solver_type": "bh3"}, "solver_type"),
        ({"solver_order": 4}, "solver_order"),
        ({"sigma_schedule": "linear"}, "sigma_schedule"),
        ({"final_sigmas_type": "sigma_max"}, "final_sigmas_type"),
        ({"prediction_type": "sample"}, "prediction_type"),
        ({"sigma_data": 0.0}, "sigma_data"),
    ],
)
def test_unsupported_options_are_refused(config, option):
    with pytest.raises(ValueError, match=option):
        from_config(config, 10)


def test_aliases_and_bad_step_counts():
    """diffusers' constructor maps ``deis`` to ``dpmsolver++`` and ``logrho`` to midpoint."""
    plain = from_config({}, 8)
    alias = from_config({"algorithm_type": "deis", "solver_type": "logrho"}, 8)
    for key, value in plain.coefficients.items():
        np.testing.assert_array_equal(value, alias.coefficients[key])
    for n in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            from_config({}, n)
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config({"sigma_min": 1.0, "sigma_max": 1.0}, 4)
