"""SA-Solver: picard at tol = 0 reproduces diffusers' sequential stochastic sampler."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import SASolverScheduler
from diffusion_helpers import (
    PREDICTIONS,
    SIGMA_SCHEDULES,
    SPACINGS,
    assert_rule_parity,
    flow_denoiser,
    gaussian_denoiser,
    max_abs,
    per_sample_error,
    recorded_predictor_corrector,
    scheduler_factory,
    sequential,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import picard
from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.sasolver import (
    SASolverRule,
    from_config,
    sasolver_grid,
    step_orders,
)

TAUS = {"default": None, "ode": lambda t: 0, "sde": lambda t: 1, "half": lambda t: 0.5}
scheduler = scheduler_factory(SASolverScheduler)


def check_parity(sched, denoiser, n, x_T, *, seed=2, atol=None, windows=(None, 7)):
    """tol = 0 gives diffusers' sample (same generator seed) for each window and with
    per-sample windows. float32: within 1e-5 of the sample's magnitude (at least 1);
    float64: 1e-10."""
    return assert_rule_parity(
        sched, from_config, denoiser, n, x_T, seed=seed, atol=atol, windows=windows,
        ulp_floor=False,
    )[0]  # fmt: skip


def recorded(sched, n):
    """The orders of diffusers' predictor calls and, per entry, its corrector's order or 0."""
    gen = torch.Generator().manual_seed(0)
    return recorded_predictor_corrector(
        sched,
        n,
        "stochastic_adams_bashforth_update",
        "stochastic_adams_moulton_update",
        generator=gen,
    )


@settings(max_examples=25)
@given(
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    spacing=st.sampled_from(SPACINGS),
    schedule=st.sampled_from([*SIGMA_SCHEDULES, "flow"]),
    n=st.one_of(st.integers(1, 60), st.integers(900, 1000)),
    clip=st.sampled_from([-math.inf, -5.1]),
    shift=st.sampled_from([1.0, 3.0]),
)
def test_grid_matches_set_timesteps(beta, spacing, schedule, n, clip, shift):
    flow = schedule == "flow"
    sched = scheduler(
        beta_schedule=beta,
        spacing=spacing,
        schedule=None if flow else schedule,
        use_flow_sigmas=flow,
        flow_shift=shift,
        lambda_min_clipped=clip,
    )
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    timesteps, sigmas = sasolver_grid(sched.config, n)
    assert timesteps.dtype == np.int64 and sigmas.dtype == np.float32
    np.testing.assert_array_equal(timesteps, s.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, s.sigmas.numpy())


@settings(max_examples=20)
@given(
    predictor=st.integers(1, 4),
    corrector=st.integers(1, 4),
    lower_order_final=st.booleans(),
    n=st.integers(1, 20),
)
def test_orders_match_the_updates_diffusers_calls(predictor, corrector, lower_order_final, n):
    sched = scheduler(
        predictor_order=predictor,
        corrector_order=corrector,
        lower_order_final=lower_order_final,
    )
    pred, corr = recorded(sched, n)
    rule = SASolverRule(sched.config, n)
    assert rule.orders.tolist() == step_orders(sched.config, n)[0].tolist() == pred
    assert rule.corrector_orders.tolist() == corr


@settings(max_examples=10)
@given(
    predictor=st.integers(1, 4),
    corrector=st.integers(1, 4),
    algorithm=st.sampled_from(["data_prediction", "noise_prediction"]),
    lower_order_final=st.booleans(),
    schedule=st.sampled_from([None, "use_karras_sigmas", "use_exponential_sigmas"]),
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(PREDICTIONS),
    tau=st.sampled_from(sorted(TAUS)),
    n=st.integers(1, 25),
)
def test_parity_float32(
    predictor, corrector, algorithm, lower_order_final, schedule, spacing, prediction, tau, n
):
    sched = scheduler(
        predictor_order=predictor,
        corrector_order=corrector,
        algorithm_type=algorithm,
        lower_order_final=lower_order_final,
        schedule=schedule,
        spacing=spacing,
        prediction_type=prediction,
        tau_func=TAUS[tau],
    )
    # The ε form is ill-conditioned in float32 (e.g. exponential sigmas, τ = 0.5, N = 17:
    # diffusers' own sample, |x| ≈ 25, moves by 2e-4 when x_T moves by 1e-7), so it is
    # checked in float64.
    dtype = torch.float32 if algorithm == "data_prediction" else torch.float64
    x_T = start_latent(sched, n, dtype=dtype)
    check_parity(sched, gaussian_denoiser(sched), n, x_T, windows=(None, 7, 1))


def test_noise_prediction_parity_float32():
    sched = SASolverScheduler(algorithm_type="noise_prediction", predictor_order=3)
    check_parity(sched, gaussian_denoiser(sched), 15, start_latent(sched, 15), windows=(None, 4))


@pytest.mark.parametrize(
    "kw",
    [
        {"flow_shift": 3.0, "predictor_order": 3, "corrector_order": 3},
        {"tau_func": TAUS["sde"], "thresholding": True},
    ],
    ids=["shift", "sde-threshold"],
)
def test_flow_sigmas_flow_prediction_parity_float32(kw):
    sched = SASolverScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", **kw)
    assert from_config(sched.config, 12).signal_keys is None
    check_parity(sched, flow_denoiser(sched), 12, start_latent(sched, 12), windows=(None, 3))


@pytest.mark.parametrize(
    "kw",
    [
        {"predictor_order": 3, "corrector_order": 4, "tau_func": TAUS["sde"]},
        {"algorithm_type": "noise_prediction", "predictor_order": 4, "corrector_order": 3},
    ],
    ids=["data-sde", "noise-4"],
)
def test_random_unet_parity_float64(kw):
    """float64 throughout: diffusers draws the noise in the model output's dtype."""
    sched = SASolverScheduler(**kw)
    unet = tiny_unet().double()
    x_T = start_latent(sched, 10, dtype=torch.float64)
    check_parity(sched, unet_denoiser(unet), 10, x_T, windows=(4,))


def test_windows_cut_the_multistep_history_everywhere():
    sched = SASolverScheduler(predictor_order=4, corrector_order=4, use_karras_sigmas=True)
    x_T = start_latent(sched, 12, dtype=torch.float64)
    check_parity(sched, gaussian_denoiser(sched, wiggle=0.3), 12, x_T, windows=(1, 2, 3, 5))


def test_per_sample_generators_end_where_the_sequential_loop_leaves_them():
    sched = SASolverScheduler(tau_func=TAUS["sde"])
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 10, shape=(3, 3, 8, 8))
    assert per_sample_error(sched, den, 10, x_T, from_config(sched.config, 10), window=4) < 1e-5


def test_history_from_a_split_window_equals_one_window():
    rule = SASolverRule({"predictor_order": 4, "corrector_order": 4}, 10)
    assert rule.memory == 4
    g = torch.Generator().manual_seed(0)
    x, out, z = (torch.randn(10, 2, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    c = {k: torch.as_tensor(v).reshape(-1, 1, 1, 1) for k, v in rule.coefficients.items()}
    whole, _ = rule.update(x, out, c, z, None)
    for cut in range(1, 10):
        head = {k: v[:cut] for k, v in c.items()}
        tail = {k: v[cut:] for k, v in c.items()}
        first, m_head = rule.update(x[:cut], out[:cut], head, z[:cut], None)
        second, _ = rule.update(x[cut:], out[cut:], tail, z[cut:], m_head[-rule.memory :])
        assert torch.allclose(torch.cat([first, second]), whole, rtol=0, atol=1e-13)


def test_noise_is_drawn_every_step_and_tol_scale_is_the_posterior_std():
    rule = SASolverRule({"tau_func": TAUS["ode"]}, 10)
    assert rule.noise_draws.all() and rule.noise_dtype is None
    assert (rule.coefficients["cz"] == 0).all()
    ab = 1 / (rule.sigmas.double() ** 2 + 1)
    for i in range(9):
        assert rule.tol_scale[i] == pytest.approx(
            float(schedules.posterior_std(ab[i + 1], ab[i + 2])), rel=1e-12
        )
    assert rule.tol_scale[-1] == 0 and (rule.tol_scale[:-1] > 0).all()


def test_default_tolerance_is_close_and_faster():
    sched = SASolverScheduler()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 50)
    ref = sequential(sched, den, 50, x_T, torch.Generator().manual_seed(3))
    problem = DiffusionProblem(
        from_config(sched.config, 50), den, generator=torch.Generator().manual_seed(3)
    )
    sol = picard.solve(problem, x_T)
    assert sol.stats.tol == 0.01
    assert sol.stats.iterations < 20
    assert max_abs(sol.final, ref) < 2e-2


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"predictor_order": 5}, "predictor_order"),
        ({"corrector_order": 0}, "corrector_order"),
        ({"algorithm_type": "dpmsolver++"}, "algorithm_type"),
        ({"prediction_type": "x0"}, "prediction_type"),
        (
            {"prediction_type": "flow_prediction", "algorithm_type": "noise_prediction"},
            "flow_prediction",
        ),
        ({"algorithm_type": "noise_prediction", "thresholding": True}, "thresholding"),
        ({"variance_type": "learned_range"}, "variance_type"),
        ({"tau_func": 1.0}, "tau_func"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"use_karras_sigmas": True, "use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ],
)
def test_unsupported_options_are_refused(config, option):
    with pytest.raises(ValueError, match=option):
        from_config(config, 10)


def test_refused_options_fail_in_diffusers_too():
    for kw in (
        {"variance_type": "learned_range"},
        {"algorithm_type": "noise_prediction", "thresholding": True},
    ):
        sched = SASolverScheduler(**kw)
        den = gaussian_denoiser(sched, learned_variance="variance_type" in kw)
        with pytest.raises(RuntimeError):
            sequential(sched, den, 4, start_latent(sched, 4), torch.Generator().manual_seed(0))


def test_bad_step_counts_are_refused():
    with pytest.raises(ValueError, match="num_inference_steps"):
        from_config({}, 0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        from_config({}, 1001)
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config({"timestep_spacing": "leading"}, 1000)
    with pytest.raises(TypeError):
        from_config({}, 10, eta=0.5)  # type: ignore[call-arg]
