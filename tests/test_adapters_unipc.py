"""UniPC multistep: picard at tol = 0 reproduces diffusers' sequential sampler."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler
from diffusion_helpers import (
    PREDICTIONS,
    SIGMA_SCHEDULES,
    SPACINGS,
    assert_rule_parity,
    flow_denoiser,
    gaussian_denoiser,
    max_abs,
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
from picard.adapters.schedulers.unipc import UniPCRule, from_config, step_orders, unipc_grid

scheduler = scheduler_factory(UniPCMultistepScheduler)


def check_parity(sched, denoiser, n, x_T, *, atol=None, windows=(None, 7), **options):
    """tol = 0 gives diffusers' sample for each window, and with per-sample windows.

    float32: within 1e-5 of the sample's magnitude (at least 1); float64: 1e-10.
    """
    return assert_rule_parity(
        sched, from_config, denoiser, n, x_T, seed=None, atol=atol, windows=windows,
        ulp_floor=False, timestep_options=options,
    )[0]  # fmt: skip


def recorded(sched, n):
    """The orders of diffusers' UniP calls and, per entry, the order of its UniC or 0."""
    return recorded_predictor_corrector(
        sched, n, "multistep_uni_p_bh_update", "multistep_uni_c_bh_update"
    )


@settings(max_examples=25)
@given(
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    spacing=st.sampled_from(SPACINGS),
    schedule=st.sampled_from([*SIGMA_SCHEDULES, "flow", "karras-flow"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    n=st.one_of(st.integers(1, 60), st.integers(900, 1000)),
    zero_snr=st.booleans(),
    shift=st.sampled_from([1.0, 3.0]),
    mu=st.sampled_from([None, 0.5]),
)
def test_grid_matches_set_timesteps(beta, spacing, schedule, final, n, zero_snr, shift, mu):
    flow = schedule in ("flow", "karras-flow")
    kw = {"schedule": "use_karras_sigmas"} if schedule == "karras-flow" else {}
    if not flow:
        kw["schedule"] = schedule
    sched = scheduler(
        beta_schedule=beta,
        spacing=spacing,
        final_sigmas_type=final,
        rescale_betas_zero_snr=zero_snr,
        use_flow_sigmas=flow,
        flow_shift=shift,
        use_dynamic_shifting=mu is not None,
        **kw,
    )
    options = {} if mu is None else {"mu": mu}
    s = copy.deepcopy(sched)
    s.set_timesteps(n, **options)
    timesteps, sigmas = unipc_grid(sched.config, n, **options)
    assert timesteps.dtype == np.int64 and sigmas.dtype == np.float32
    np.testing.assert_array_equal(timesteps, s.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, s.sigmas.numpy())


def test_custom_flow_sigmas_and_shift_terminal_grids():
    sigmas = np.linspace(1.0, 1 / 28, 28)
    for kw in ({"flow_shift": 3.0}, {"shift_terminal": 0.1}, {"use_karras_sigmas": True}):
        sched = UniPCMultistepScheduler(use_flow_sigmas=True, **kw)
        s = copy.deepcopy(sched)
        s.set_timesteps(sigmas=sigmas)
        timesteps, grid = unipc_grid(sched.config, 28, sigmas=sigmas)
        np.testing.assert_array_equal(timesteps, s.timesteps.numpy())
        np.testing.assert_array_equal(grid, s.sigmas.numpy())


@settings(max_examples=25)
@given(
    order=st.integers(1, 4),
    lower_order_final=st.booleans(),
    n=st.integers(1, 20),
    disabled=st.lists(st.integers(0, 20), max_size=4),
)
def test_orders_and_correctors_match_the_updates_diffusers_calls(
    order, lower_order_final, n, disabled
):
    sched = scheduler(
        solver_order=order,
        lower_order_final=lower_order_final,
        final_sigmas_type="sigma_min",
        disable_corrector=disabled,
    )
    pred, corr = recorded(sched, n)
    rule = UniPCRule(sched.config, n)
    assert step_orders(sched.config, n).tolist() == rule.orders.tolist() == pred
    expected = [int(rule.orders[i - 1]) if rule.corrects[i] else 0 for i in range(n)]
    assert expected == corr


def _refused(order, solver_type, predict_x0, lower_order_final, final, n) -> bool:
    if final != "zero":
        return False
    return not predict_x0 or solver_type == "bh1" or (not lower_order_final and order > 1 < n)


@settings(max_examples=12)
@given(
    order=st.sampled_from([1, 2, 3]),
    solver_type=st.sampled_from(["bh1", "bh2"]),
    predict_x0=st.booleans(),
    lower_order_final=st.booleans(),
    schedule=st.sampled_from([None, "use_karras_sigmas", "use_exponential_sigmas"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(PREDICTIONS),
    disabled=st.sampled_from([[], [0], [1, 4]]),
    n=st.integers(1, 25),
)
def test_parity_float32(
    order,
    solver_type,
    predict_x0,
    lower_order_final,
    schedule,
    final,
    spacing,
    prediction,
    disabled,
    n,
):
    sched = scheduler(
        solver_order=order,
        solver_type=solver_type,
        predict_x0=predict_x0,
        lower_order_final=lower_order_final,
        schedule=schedule,
        final_sigmas_type=final,
        spacing=spacing,
        prediction_type=prediction,
        disable_corrector=disabled,
    )
    den, x_T = gaussian_denoiser(sched), start_latent(sched, n)
    refused = _refused(order, solver_type, predict_x0, lower_order_final, final, n)
    zero_step = final == "sigma_min" and schedule is not None
    if refused or (zero_step and not lower_order_final and order == 3 and n > 2):
        # diffusers' sample is NaN/Inf (or its solve fails): picard refuses the config
        with pytest.raises(ValueError, match=r"final_sigmas_type|non-finite"):
            from_config(sched.config, n)
        try:
            ref = sequential(sched, den, n, x_T)
        except torch.linalg.LinAlgError:
            return
        assert not torch.isfinite(ref).all()
        return
    check_parity(sched, den, n, x_T, windows=(None, 7, 1, 3))


FLOW_CASES = [
    ({"flow_shift": 3.0}, {}),
    ({"flow_shift": 3.0, "solver_order": 3, "final_sigmas_type": "sigma_min"}, {}),
    ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.5}),
    ({"shift_terminal": 0.1, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}, {}),
    ({"use_karras_sigmas": True, "solver_order": 3}, {}),
    ({"flow_shift": 5.0, "disable_corrector": [0, 1]}, {"sigmas": np.linspace(1.0, 0.05, 12)}),
]


@pytest.mark.parametrize(("kw", "options"), FLOW_CASES)
def test_flow_sigmas_flow_prediction_parity_float32(kw, options):
    sched = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", **kw)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    rule = from_config(sched.config, 12, **options)
    assert rule.signal_keys is None and rule.prediction_type == "flow_prediction"
    check_parity(sched, flow_denoiser(sched), 12, x_T, windows=(None, 3), **options)


@pytest.mark.parametrize(
    "kw",
    [
        {"thresholding": True, "prediction_type": "sample", "solver_order": 3},
        {"thresholding": True, "predict_x0": False, "final_sigmas_type": "sigma_min"},
        {"use_beta_sigmas": True, "solver_order": 3},
        {
            "beta_schedule": "squaredcos_cap_v2",
            "solver_order": 3,
            "solver_type": "bh1",
            "final_sigmas_type": "sigma_min",
        },
        {
            "rescale_betas_zero_snr": True,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
            "solver_order": 3,
        },
        {"solver_order": 4, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {
            "use_karras_sigmas": True,
            "final_sigmas_type": "sigma_min",
            "solver_order": 2,
            "lower_order_final": False,
        },
    ],
    ids=["threshold", "threshold-eps", "beta", "cosine-bh1", "zero-snr", "order4", "karras-h0"],
)
def test_parity_options_float64(kw):
    """float64: beta sigmas and order 4 are ill-conditioned enough that diffusers' own
    float32 sample moves by ~3e-5 when x_T moves by 1e-7."""
    sched = UniPCMultistepScheduler(**kw)
    x_T = start_latent(sched, 14, dtype=torch.float64)
    check_parity(sched, gaussian_denoiser(sched), 14, x_T, windows=(None, 3))


# The last steps' x̂_0 quantiles exceed 1 but stay below sample_max_value: thresholded.
THRESHOLD_ABOVE_ONE = {
    "thresholding": True,
    "sample_max_value": 1.5,
    "solver_order": 3,
    "prediction_type": "sample",
}


def test_threshold_above_one_float32():
    sched = UniPCMultistepScheduler(**THRESHOLD_ABOVE_ONE)
    den = gaussian_denoiser(sched, wiggle=0.4)
    check_parity(sched, den, 20, start_latent(sched, 20), windows=(None, 3))


UNET_CONFIGS = [
    {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "final_sigmas_type": "sigma_min", "disable_corrector": [2]},
    {"solver_order": 3, "thresholding": True, "prediction_type": "v_prediction"},
]


@pytest.mark.parametrize("kw", UNET_CONFIGS, ids=["3-bh1", "eps-disabled", "v-th"])
def test_random_unet_parity_float64(kw):
    sched = UniPCMultistepScheduler(**kw)
    unet = tiny_unet().double()
    x_T = start_latent(sched, 10, dtype=torch.float64)
    check_parity(sched, unet_denoiser(unet), 10, x_T, windows=(4,))


@pytest.mark.parametrize("order", [2, 3])
def test_windows_cut_the_multistep_history_everywhere(order):
    """Windows of 1, 2 and 3 entries start everywhere: the history that UniP and UniC read
    crosses the window start at every offset."""
    sched = UniPCMultistepScheduler(
        solver_order=order, final_sigmas_type="sigma_min", use_karras_sigmas=True
    )
    x_T = start_latent(sched, 12, dtype=torch.float64)
    check_parity(sched, gaussian_denoiser(sched, wiggle=0.3), 12, x_T, windows=(1, 2, 3, 5))


def test_history_from_a_split_window_equals_one_window():
    """``update`` on a window split in two, the second half reading the first's outputs as
    history, gives what one window gives."""
    rule = UniPCRule({"solver_order": 3, "final_sigmas_type": "sigma_min"}, 10)
    assert rule.memory == 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, 3, 4, generator=g, dtype=torch.float64)
    out = torch.randn(10, 2, 3, 4, generator=g, dtype=torch.float64)
    c = {k: torch.as_tensor(v).reshape(-1, 1, 1, 1) for k, v in rule.coefficients.items()}
    whole, _ = rule.update(x, out, c, None, None)
    for cut in range(1, 10):
        head = {k: v[:cut] for k, v in c.items()}
        tail = {k: v[cut:] for k, v in c.items()}
        first, m_head = rule.update(x[:cut], out[:cut], head, None, None)
        second, _ = rule.update(x[cut:], out[cut:], tail, None, m_head[-rule.memory :])
        assert torch.allclose(torch.cat([first, second]), whole, rtol=0, atol=1e-14)


def test_memory_follows_the_corrector():
    assert UniPCRule({"solver_order": 1}, 10).memory == 1  # UniC reads m_{i-1}
    assert UniPCRule({"solver_order": 1, "disable_corrector": list(range(10))}, 10).memory == 0
    assert UniPCRule({"solver_order": 2}, 1).memory == 0
    rule = UniPCRule({"solver_order": 2, "disable_corrector": [0, 1, 2, 3]}, 5)
    assert not rule.corrects.any() and rule.memory == 1


def test_tol_scale_is_the_posterior_std_of_the_next_step():
    sched = UniPCMultistepScheduler(final_sigmas_type="sigma_min")
    rule = UniPCRule(sched.config, 10)
    ab = 1 / (rule.sigmas.double() ** 2 + 1)
    for i in range(9):
        assert rule.tol_scale[i] == pytest.approx(
            float(schedules.posterior_std(ab[i + 1], ab[i + 2])), rel=1e-12
        )
    assert rule.tol_scale[-1] == 0 and (rule.tol_scale[:-1] > 0).all()
    flow = UniPCRule({"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, 10)
    assert flow.tol_scale[-2] == 0 and (flow.tol_scale[:-2] > 0).all()
    assert not flow.noise_draws.any()


def test_default_tolerance_is_close_and_faster():
    sched = UniPCMultistepScheduler()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 50)
    ref = sequential(sched, den, 50, x_T)
    sol = picard.solve(DiffusionProblem(from_config(sched.config, 50), den), x_T)
    assert sol.stats.tol == 0.01
    assert sol.stats.iterations < 15
    assert max_abs(sol.final, ref) < 2e-2


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"solver_p": object()}, "solver_p"),
        ({"solver_order": 0}, "solver_order"),
        ({"solver_type": "bh3"}, "solver_type"),
        ({"prediction_type": "flow_prediction", "predict_x0": False}, "flow_prediction"),
        ({"prediction_type": "x0"}, "prediction_type"),
        ({"final_sigmas_type": "sigma_max"}, "final_sigmas_type"),
        ({"predict_x0": False}, "final_sigmas_type"),
        ({"solver_type": "bh1"}, "final_sigmas_type"),
        ({"lower_order_final": False}, "final_sigmas_type"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"use_exponential_sigmas": True, "use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"shift_terminal": 0.1}, "shift_terminal"),
        ({"time_shift_type": "cubic"}, "time_shift_type"),
        ({"use_dynamic_shifting": True, "use_flow_sigmas": True}, "mu"),
        ({"disable_corrector": "all"}, "disable_corrector"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
        ({"beta_schedule": "cubic"}, "beta_schedule"),
    ],
)
def test_unsupported_options_are_refused(config, option):
    with pytest.raises(ValueError, match=option):
        from_config(config, 10)


def test_refused_configurations_are_nan_in_diffusers():
    """The final-sigma refusals are exactly where diffusers' own sample is not finite."""
    for kw in ({"predict_x0": False}, {"solver_type": "bh1"}, {"lower_order_final": False}):
        sched = UniPCMultistepScheduler(**kw)
        x_T = start_latent(sched, 8)
        assert not torch.isfinite(sequential(sched, gaussian_denoiser(sched), 8, x_T)).all()


def test_bad_step_counts_and_step_options_are_refused():
    with pytest.raises(ValueError, match="num_inference_steps"):
        from_config({}, 0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        from_config({}, 1001)
    with pytest.raises(ValueError, match="repeats its first timestep"):
        from_config({"timestep_spacing": "leading"}, 1000)  # every timestep is 0
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        from_config({}, 3, sigmas=[1.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="sigmas"):
        from_config({"use_flow_sigmas": True}, 4, sigmas=[1.0, 0.5, 0.2])
    with pytest.raises(TypeError):
        from_config({}, 10, eta=0.5)  # type: ignore[call-arg]


def test_coefficients_are_float32_values_like_diffusers():
    """The conversion scalars are diffusers' float32 numbers; the step ratio is exact."""
    sched = UniPCMultistepScheduler(solver_order=3)
    rule = UniPCRule(sched.config, 10)
    s = copy.deepcopy(sched)
    s.set_timesteps(10)
    for i in range(10):
        alpha, sigma = s._sigma_to_alpha_sigma_t(s.sigmas[i])
        assert rule.coefficients["alpha"][i] == float(alpha)
        assert rule.coefficients["sigma"][i] == float(sigma)
    ratio = s._sigma_to_alpha_sigma_t(s.sigmas[4])[1] / s._sigma_to_alpha_sigma_t(s.sigmas[3])[1]
    assert rule.coefficients["cx"][3] == float(ratio)
    assert math.isfinite(rule.coefficients["p2"][5]) and rule.coefficients["p2"][5] != 0
