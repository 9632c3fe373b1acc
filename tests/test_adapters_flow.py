"""Flow-matching Euler: picard at tol = 0 reproduces diffusers' sequential sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusion_helpers import (
    SIGMA_SCHEDULES,
    assert_scheduler_parity,
    gaussian_denoiser,
    latent,
    max_abs,
    per_sample_error,
    sequential,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given
from hypothesis import strategies as st

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import flow, schedules

DYNAMIC = [None, ("exponential", 0.8), ("exponential", 1.15), ("linear", 2.5)]


def flow_scheduler(shift=1.0, dynamic=None, terminal=None, kind=None, stochastic=False):
    kw = {"shift": shift, "shift_terminal": terminal, "stochastic_sampling": stochastic}
    if dynamic is not None:
        kw.update(use_dynamic_shifting=True, time_shift_type=dynamic[0])
    if kind is not None:
        kw[kind] = True
    return FlowMatchEulerDiscreteScheduler(**kw)


def grid_options(sched, n, custom=None, dynamic=None):
    """What a pipeline passes to set_timesteps: custom sigmas (Flux) and mu."""
    options = {}
    if custom == "flux":
        options["sigmas"] = np.linspace(1.0, 1 / n, n)
    elif custom == "list":
        options["sigmas"] = [float(s) for s in np.linspace(0.97, 0.03, n)]
    if dynamic is not None:
        options["mu"] = dynamic[1]
    return options


def flow_sequential(scheduler, den, n, x_T, generator=None, no_upcast=False, **options):
    """diffusers' loop (no scale_model_input, no init_noise_sigma for flow matching)."""
    return sequential(
        scheduler, den, n, x_T, generator, timestep_options=options, no_upcast=no_upcast
    )


def check_parity(scheduler, den, n, x_T, *, atol=1e-5, windows=(None, 7), seed=2, **options):
    """tol = 0 matches diffusers' loop, and leaves the generator where the loop leaves it."""
    return assert_scheduler_parity(
        scheduler, den, n, x_T, atol=atol, windows=windows, seed=seed, steps=n,
        timestep_options=options,
    )  # fmt: skip


@given(
    shift=st.sampled_from([1.0, 3.0, 0.5]),
    dynamic=st.sampled_from(DYNAMIC),
    terminal=st.sampled_from([None, 0.1, 0.02]),
    kind=st.sampled_from(SIGMA_SCHEDULES),
    custom=st.sampled_from([None, "flux", "list"]),
    stochastic=st.booleans(),
    n=st.integers(1, 25),
)
def test_flow_parity_float32(shift, dynamic, terminal, kind, custom, stochastic, n):
    sched = flow_scheduler(shift, dynamic, terminal, kind, stochastic)
    options = grid_options(sched, n, custom, dynamic)
    den = gaussian_denoiser(sched)
    try:
        flow.from_config(sched.config, n, **options)
    except ValueError as e:  # only a non-finite grid (shift_terminal stretch of 1 step)
        assert terminal and n == 1 and "not finite" in str(e)
        return
    check_parity(sched, den, n, latent(), **options)


def test_custom_timesteps():
    """``timesteps`` alone are the model's timesteps; the sigmas are derived and shifted."""
    sched = flow_scheduler(shift=3.0)
    den = gaussian_denoiser(sched)
    ts = [float(t) for t in np.linspace(990.0, 20.0, 9)]
    check_parity(sched, den, 9, latent(), timesteps=ts)
    check_parity(sched, den, 9, latent(), timesteps=ts, sigmas=np.linspace(1.0, 0.1, 9))


GRID_STEPS = [1, 2, 9, 28, 50]


def test_flow_grids_match_set_timesteps():
    """timesteps and sigmas equal diffusers' (bitwise), every supported option."""
    for shift, dynamic, terminal, kind, custom in itertools.product(
        [1.0, 3.0, 0.5], DYNAMIC, [None, 0.1], SIGMA_SCHEDULES, [None, "flux", "list"]
    ):
        sched = flow_scheduler(shift, dynamic, terminal, kind)
        for n in GRID_STEPS:
            if terminal and n == 1:
                continue  # 0/0: not finite (refused, see test_unsupported_options_raise)
            options = grid_options(sched, n, custom, dynamic)
            sched.set_timesteps(n, **options)
            rule = flow.from_config(sched.config, n, **options)
            assert torch.equal(rule.timesteps, sched.timesteps), (shift, dynamic, n)
            assert torch.equal(rule.sigmas, sched.sigmas), (shift, dynamic, n)
            assert rule.init_noise_sigma == 1.0


def test_flow_sigmas_of_schedules_match_diffusers():
    """``schedules.flow_sigmas`` (static and dynamic shift) is diffusers' grid, bitwise."""
    for shift, dynamic, n in itertools.product([1.0, 3.0], DYNAMIC, [1, 4, 28]):
        sched = flow_scheduler(shift, dynamic)
        mu = None if dynamic is None else dynamic[1]
        sched.set_timesteps(n, mu=mu)
        got = torch.from_numpy(schedules.flow_sigmas(sched.config, n, mu=mu)).float()
        assert torch.equal(got, sched.sigmas[:-1])


@pytest.mark.parametrize(
    ("scheduler", "options"),
    [
        (flow_scheduler(shift=3.0), {}),
        (flow_scheduler(dynamic=("exponential", 1.0)), {"mu": 1.0}),
        (flow_scheduler(shift=3.0, terminal=0.1, kind="use_karras_sigmas"), {}),
    ],
    ids=["sd3", "flux-mu", "terminal-karras"],
)
def test_random_unet_parity_float64(scheduler, options):
    unet = tiny_unet().double()
    den = unet_denoiser(unet)
    x_T = latent(dtype=torch.float64)
    ref = flow_sequential(scheduler, den, 20, x_T, no_upcast=True, **options)
    for window in (None, 6):
        problem = from_scheduler(scheduler, den, 20, **options)
        sol = picard.solve(problem, x_T, tol=0, window=window)
        assert max_abs(sol.final, ref) <= 1e-10
    # diffusers' own float64 loop rounds the state to float32 every step
    assert max_abs(sol.final, flow_sequential(scheduler, den, 20, x_T, **options)) < 1e-3


def test_stochastic_sampling_records_float32_noise():
    """stochastic_sampling: diffusers draws the noise in float32 (the upcast sample's dtype)."""
    sched = flow_scheduler(shift=3.0, stochastic=True)
    rule = flow.from_config(sched.config, 10)
    assert rule.noise_draws.all() and rule.noise_dtype == torch.float32
    assert flow.from_config(flow_scheduler().config, 10).noise_dtype is None


def test_stochastic_sampling_float64_matches_diffusers():
    sched = flow_scheduler(shift=3.0, stochastic=True)
    den = gaussian_denoiser(sched)
    x_T = latent(dtype=torch.float64)
    ref = flow_sequential(sched, den, 12, x_T, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    sol = picard.solve(from_scheduler(sched, den, 12, generator=gen), x_T, tol=0)
    assert max_abs(sol.final, ref) < 1e-5  # diffusers rounds its state to float32


def test_per_sample_generators_stochastic():
    sched = flow_scheduler(shift=3.0, stochastic=True)
    den = gaussian_denoiser(sched)
    x_T = latent((3, 3, 8, 8))
    assert per_sample_error(sched, den, 10, x_T) < 1e-5


@pytest.mark.parametrize(
    ("scheduler", "options", "sweeps"),
    [
        (flow_scheduler(shift=3.0), {}, 10),  # 5 sweeps here, max diff 6.1e-4
        (flow_scheduler(dynamic=("exponential", 1.15)), {"mu": 1.15, "sigmas": "flux"}, 10),
        # Re-noising replaces x_i by (1 - σ') x̂_0(x_i) + σ' z, far from the identity: the
        # sweeps' corrections grow until the window reaches them, so no speed-up (but exact).
        (flow_scheduler(shift=3.0, stochastic=True), {}, 29),
    ],
    ids=["sd3", "flux", "stochastic"],
)
def test_default_tolerance_is_close_and_faster(scheduler, options, sweeps):
    n = 28
    if options.get("sigmas") == "flux":
        options = {**options, "sigmas": np.linspace(1.0, 1 / n, n)}
    den = gaussian_denoiser(scheduler)
    x_T = latent()
    ref = flow_sequential(scheduler, den, n, x_T, torch.Generator().manual_seed(2), **options)
    gen = torch.Generator().manual_seed(2)
    sol = picard.solve(from_scheduler(scheduler, den, n, generator=gen, **options), x_T)
    assert sol.stats.tol == 0.01  # relative to each state's RMS
    assert sol.stats.iterations < sweeps
    assert max_abs(sol.final, ref) < 1e-2  # 6.1e-4 (SD3), 7.3e-4 (Flux) here


def test_tol_scale_converts_through_the_ve_sigma():
    s_from = np.array([0.9, 0.5, 0.3, 0.1])
    s_to = np.array([0.7, 0.3, 0.1, 0.0])
    ve = torch.from_numpy(s_from / (1 - s_from)), torch.from_numpy(s_to / (1 - s_to))
    expected = (1 - s_to) * schedules.ancestral_std(*ve).numpy()
    assert np.allclose(flow.flow_tol_scale(s_from, s_to), expected, rtol=1e-12, atol=1e-15)
    # σ_from = 1 (pure noise): the limit, σ_to
    assert np.allclose(flow.flow_tol_scale(np.array([1.0, 1.0]), np.array([0.6, 0.0])), [0.6, 0])
    rule = flow.from_config(flow_scheduler(shift=3.0).config, 5)
    s = rule.sigmas.double().numpy()
    assert np.allclose(rule.tol_scale[:3], flow.flow_tol_scale(s[1:4], s[2:5]))
    assert rule.tol_scale[3:].tolist() == [0.0, 0.0]  # the last step goes to σ = 0
    assert np.isfinite(rule.tol_scale).all() and (rule.tol_scale[:3] > 0).all()


@pytest.mark.parametrize(
    ("config", "n", "options", "match"),
    [
        ({"invert_sigmas": True}, 10, {}, "invert_sigmas"),
        ({"time_shift_type": "cubic", "use_dynamic_shifting": True}, 10, {"mu": 1}, "time_shift"),
        ({"use_dynamic_shifting": True}, 10, {}, "mu"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, 10, {}, "use_karras_sigmas"),
        ({}, 10, {"sigmas": [1.0, 0.5]}, "sigmas"),
        ({}, 3, {"timesteps": [900.0, 500.0]}, "timesteps"),
        ({"shift_terminal": 0.1}, 1, {}, "not finite"),
        ({}, 3, {"sigmas": [0.5, 0.5, 0.2]}, "first timestep"),
        ({}, 0, {}, "num_inference_steps"),
    ],
)
def test_unsupported_options_raise(config, n, options, match):
    with pytest.raises(ValueError, match=match):
        flow.from_config(config, n, **options)


def test_unknown_step_options_raise_type_error():
    sched = flow_scheduler()
    with pytest.raises(TypeError, match="per_token_timesteps"):
        from_scheduler(sched, lambda x, t: x, 10, per_token_timesteps=torch.ones(1))
    with pytest.raises(TypeError, match="s_churn"):
        flow.from_config(sched.config, 10, s_churn=1.0)  # type: ignore[call-arg]
