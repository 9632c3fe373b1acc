"""PNDM (PRK warm-up + PLMS, and S-PNDM): picard at tol = 0 reproduces diffusers' loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler
from diffusion_helpers import (
    BETAS,
    SD15,
    SPACINGS,
    assert_sample_parity,
    gaussian_denoiser,
    max_abs,
    sequential,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import picard
from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import pndm


def scheduler(skip=True, spacing=("leading", 1), **kw) -> PNDMScheduler:
    return PNDMScheduler(
        skip_prk_steps=skip, timestep_spacing=spacing[0], steps_offset=spacing[1], **kw
    )


def solve(sched, den, n, x, **kw):
    return picard.solve(DiffusionProblem(pndm.from_config(sched.config, n), den), x, **kw)


def check_parity(sched, den, n, x, windows=(None, 1, 3, 7), per_sample=False):
    """tol = 0 matches diffusers within 1e-5 relative to the sample (float32)."""
    rule = pndm.from_config(sched.config, n)
    return assert_sample_parity(sched, rule, den, n, x, windows=windows, per_sample=per_sample)


@settings(max_examples=12)
@given(
    skip=st.booleans(),
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(["epsilon", "v_prediction"]),
    alpha_one=st.booleans(),
    beta=st.sampled_from(BETAS),
    n=st.integers(1, 20),
)
def test_parity_float32(skip, spacing, prediction, alpha_one, beta, n):
    sched = scheduler(
        skip, spacing, prediction_type=prediction, set_alpha_to_one=alpha_one, beta_schedule=beta
    )
    if not skip and n < 4:
        with pytest.raises(ValueError, match="num_inference_steps must be >= 4"):
            pndm.from_config(sched.config, n)
        return
    check_parity(sched, gaussian_denoiser(sched), n, start_latent(sched, n))


@settings(max_examples=20)
@given(
    skip=st.booleans(),
    spacing=st.sampled_from(SPACINGS),
    n=st.one_of(st.integers(1, 70), st.integers(990, 1000)),
)
def test_timesteps_match_set_timesteps(skip, spacing, n):
    sched = scheduler(skip, spacing)
    s = copy.deepcopy(sched)
    try:
        s.set_timesteps(n)
    except ValueError:  # diffusers' PRK grid needs 4 timesteps
        assert not skip and n < 4
        with pytest.raises(ValueError, match=">= 4"):
            pndm.from_config(sched.config, n)
        return
    if s._timesteps.min() < 0 or s._timesteps.max() >= 1000:
        with pytest.raises(ValueError, match="leaves the training schedule"):
            pndm.from_config(sched.config, n)
        return
    rule = pndm.from_config(sched.config, n)
    assert torch.equal(rule.timesteps, s.timesteps)
    assert rule.num_steps == len(s.timesteps) == (n + 9 if not skip else n + (n > 1))


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_entry_is_bitwise_diffusers_step(skip, dtype):
    """Entry by entry, the rule's update is diffusers' ``step`` to the last bit."""
    sched = scheduler(skip, ("linspace", 0), prediction_type="v_prediction", **SD15)
    n = 9
    rule = pndm.from_config(sched.config, n)
    den = gaussian_denoiser(sched)
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    x = start_latent(sched, n, dtype=dtype)
    view = (-1,) + (1,) * x.ndim
    co = {k: torch.as_tensor(v, dtype=dtype).reshape(view) for k, v in rule.coefficients.items()}
    history, y = None, x
    for i, t in enumerate(s.timesteps):
        out = den(x, t.reshape(1).expand(x.shape[0]))
        x = s.step(out, t, x).prev_sample
        c = {k: v[i : i + 1] for k, v in co.items()}
        nxt, mem = rule.update(y[None], out[None], c, None, history)
        history = mem if history is None else torch.cat([history, mem])[-rule.memory :]
        y = nxt[0]
        assert torch.equal(x, y), f"entry {i}"


def test_plan_replays_the_state_machine():
    """S-PNDM: entry 1 restarts from entry 0's state with (e0 + e1)/2 at t + δ; entry 2 (the
    repeated timestep) drops e1; PRK: four entries per step, all from the step's start."""
    plan = pndm.pndm_plan({"skip_prk_steps": True, "steps_offset": 1}, 10)
    assert [e.timestep for e in plan[:4]] == [901, 801, 801, 701]
    assert (plan[1].t, plan[1].prev, plan[1].sample) == (901, 801, 0)
    assert plan[2].terms == [(2, 3.0), (0, -1.0)]
    assert plan[4].terms == [(4, 55.0), (3, -59.0), (2, 37.0), (0, -9.0)]
    prk = pndm.pndm_plan({"steps_offset": 1}, 10)
    assert [e.sample for e in prk[:12]] == [0] * 4 + [4] * 4 + [8] * 4
    assert [(e.t, e.prev) for e in prk[:4]] == [(901, 851), (901, 851), (901, 801), (901, 801)]
    assert prk[12].terms == [(12, 55.0), (8, -59.0), (4, 37.0), (0, -9.0)]
    assert pndm.from_config({"steps_offset": 1}, 10).memory == 12


@pytest.mark.parametrize("skip", [True, False])
def test_random_unet_parity_float64(skip):
    sched = scheduler(skip, **SD15)
    den = unet_denoiser(tiny_unet().double())
    x = start_latent(sched, 6, shape=(1, 3, 8, 8), dtype=torch.float64)
    err = check_parity(sched, den, 6, x, (None, 4))
    assert err <= 1e-10  # ~1e-14 here


def test_per_sample_windows():
    sched = scheduler(False, ("trailing", 0), prediction_type="v_prediction")
    den = gaussian_denoiser(sched)
    check_parity(sched, den, 6, start_latent(sched, 6), windows=(None, 4), per_sample=True)


def test_stable_diffusion_default_tolerance():
    """SD 1.5's PNDM, 50 steps: a few sweeps at the default tolerance, close to the loop."""
    sched = scheduler(True, ("leading", 1), **SD15)
    den = gaussian_denoiser(sched)
    x = start_latent(sched, 50)
    ref = sequential(sched, den, 50, x)
    sol = solve(sched, den, 50, x)
    assert sol.stats.iterations <= 10  # 5 here, for 51 loop entries
    assert max_abs(sol.final, ref) < 1e-2  # 4.4e-3 here (data std 0.5)


def test_tol_scale():
    rule = pndm.from_config({"skip_prk_steps": True, "steps_offset": 1}, 10)
    assert rule.tol_scale[-1] == 0.0 and (rule.tol_scale[:-1] > 0).all()
    assert len(rule.tol_scale) == rule.num_steps == 11
    assert np.isfinite(rule.tol_scale).all()


@pytest.mark.parametrize(
    ("config", "n", "match"),
    [
        ({"prediction_type": "sample"}, 10, "prediction_type"),
        ({"rescale_betas_zero_snr": True}, 10, "rescale_betas_zero_snr"),
        ({"beta_schedule": "sigmoid"}, 10, "beta_schedule"),
        ({"timestep_spacing": "uniform"}, 10, "timestep_spacing"),
        ({"skip_prk_steps": False}, 3, ">= 4"),
        ({}, 0, "num_inference_steps"),
        ({}, 1001, "num_inference_steps"),
        ({"steps_offset": 1}, 1000, "leaves the training schedule"),
        # diffusers' grid ends at timestep -1 and indexes alphas_cumprod[-1] (= ᾱ_999)
        ({"timestep_spacing": "trailing", "skip_prk_steps": True}, 61, "training schedule"),
    ],
)
def test_unsupported_options_raise(config, n, match):
    with pytest.raises(ValueError, match=match):
        pndm.from_config(config, n)
