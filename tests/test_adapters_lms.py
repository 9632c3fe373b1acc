"""LMS (k-diffusion's sample_lms): picard at tol = 0 reproduces diffusers' LMSDiscreteScheduler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import LMSDiscreteScheduler
from diffusion_helpers import (
    BETAS,
    SD15,
    SIGMA_SCHEDULES,
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
from picard.adapters.schedulers import lms


def scheduler(spacing=("linspace", 0), kind=None, **kw) -> LMSDiscreteScheduler:
    if kind is not None:
        kw[kind] = True
    return LMSDiscreteScheduler(timestep_spacing=spacing[0], steps_offset=spacing[1], **kw)


def solve(sched, den, n, x, order=4, **kw):
    rule = lms.from_config(sched.config, n, order=order)
    return picard.solve(DiffusionProblem(rule, den), x, **kw)


def check_parity(sched, den, n, x, order=4, windows=(None, 1, 3), per_sample=False):
    rule = lms.from_config(sched.config, n, order=order)
    return assert_sample_parity(
        sched, rule, den, n, x, windows=windows, per_sample=per_sample, order=order
    )


@settings(max_examples=10)
@given(
    spacing=st.sampled_from(SPACINGS),
    kind=st.sampled_from(SIGMA_SCHEDULES),
    prediction=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    beta=st.sampled_from(BETAS),
    order=st.sampled_from([1, 2, 3, 4, 5]),
    n=st.integers(1, 10),
)
def test_parity_float32(spacing, kind, prediction, beta, order, n):
    sched = scheduler(spacing, kind, prediction_type=prediction, beta_schedule=beta)
    err = check_parity(sched, gaussian_denoiser(sched), n, start_latent(sched, n), order)
    assert err == 0.0  # the same float32 operations in the same order


@settings(max_examples=12)
@given(
    spacing=st.sampled_from(SPACINGS),
    kind=st.sampled_from(SIGMA_SCHEDULES),
    beta=st.sampled_from(BETAS),
    n=st.one_of(st.integers(1, 70), st.sampled_from([999, 1000, 1001])),
)
def test_grid_matches_set_timesteps(spacing, kind, beta, n):
    sched = scheduler(spacing, kind, beta_schedule=beta)
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    if (s.timesteps == s.timesteps[0]).sum() > 1:  # diffusers would step past its sigmas
        with pytest.raises(ValueError, match="first timestep"):
            lms.lms_grid(sched.config, n)
        return
    timesteps, sigmas = lms.lms_grid(sched.config, n)
    assert torch.equal(timesteps, s.timesteps) and torch.equal(sigmas, s.sigmas)


@pytest.mark.parametrize(
    ("kind", "n", "order"), [(None, 12, 4), ("use_karras_sigmas", 7, 3), ("use_beta_sigmas", 5, 6)]
)
def test_coefficients_equal_get_lms_coefficient(kind, n, order):
    """Bit for bit the numbers diffusers' quadrature gives (float32 0-d tensor integrand)."""
    s = scheduler(("trailing", 0), kind, **SD15)
    s.set_timesteps(n)
    weights = lms.lms_coefficients(s.sigmas, n, order)
    for i in range(n):
        k = min(i + 1, order)
        expected = [s.get_lms_coefficient(k, i, j) for j in range(k)] + [0.0] * (order - k)
        assert weights[i].tolist() == expected


def test_trailing_grid_with_one_step_more_than_asked():
    """N = 61 of 1000 trailing: 62 timesteps, the last -1; diffusers runs all 62."""
    sched = scheduler(("trailing", 0))
    rule = lms.from_config(sched.config, 61)
    assert rule.num_steps == 62 and rule.timesteps[-1].item() == -1.0
    x = start_latent(sched, 61, shape=(1, 3, 8, 8))
    check_parity(sched, gaussian_denoiser(sched), 61, x, windows=(16,))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_random_unet_parity_float64(prediction):
    sched = scheduler(("leading", 1), "use_karras_sigmas", prediction_type=prediction, **SD15)
    den = unet_denoiser(tiny_unet().double())
    x = start_latent(sched, 6, shape=(1, 3, 8, 8), dtype=torch.float64)
    assert check_parity(sched, den, 6, x, windows=(None, 4)) <= 1e-10  # ~1e-13 here


def test_per_sample_windows():
    sched = scheduler(("trailing", 0), "use_exponential_sigmas", prediction_type="v_prediction")
    den = gaussian_denoiser(sched)
    check_parity(sched, den, 8, start_latent(sched, 8), 3, windows=(None, 3), per_sample=True)


def test_default_tolerance_is_close_and_faster():
    sched = scheduler(**SD15)
    den = gaussian_denoiser(sched)
    x = start_latent(sched, 40)
    ref = sequential(sched, den, 40, x, order=4)
    sol = solve(sched, den, 40, x)
    assert sol.stats.iterations < 25  # 21 here (14 when changes were accepted at tol / 10)
    assert max_abs(sol.final, ref) < 1e-2  # ~6e-3 here (data std 0.5)


def test_rule_attributes():
    sched = scheduler(("leading", 1), **SD15)
    rule = lms.from_config(sched.config, 10, order=3)
    s = copy.deepcopy(sched)
    s.set_timesteps(10)
    assert rule.init_noise_sigma == float(s.init_noise_sigma)
    assert rule.memory == 2 and rule.weights.shape == (10, 3)
    assert rule.tol_scale[-2:].tolist() == [0.0, 0.0]  # the last step goes to σ = 0
    assert (rule.tol_scale[:-2] > 0).all()
    assert rule.signal_keys == ("unit", "sigma")
    assert lms.from_config({"prediction_type": "sample"}, 4).signal_keys is None
    x = torch.ones(1, 1, 2)
    c = {
        k: torch.tensor(v[:1], dtype=torch.float32).reshape(1, 1, 1)
        for k, v in rule.coefficients.items()
    }
    assert torch.equal(rule.model_input(x[None], c)[0], s.scale_model_input(x, s.timesteps[0]))
    assert np.array_equal(lms.from_config(sched.config, 1, order=4).weights[:, 1:], [[0, 0, 0]])


@pytest.mark.parametrize(
    ("config", "n", "kw", "error", "match"),
    [
        ({"prediction_type": "flow"}, 10, {}, ValueError, "prediction_type"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, 10, {}, ValueError, "only one"),
        ({"timestep_spacing": "uniform"}, 10, {}, ValueError, "timestep_spacing"),
        ({"beta_schedule": "sigmoid"}, 10, {}, ValueError, "beta_schedule"),
        ({"rescale_betas_zero_snr": True}, 10, {}, ValueError, "rescale_betas_zero_snr"),
        ({"timestep_spacing": "leading"}, 1001, {}, ValueError, "first timestep"),
        ({}, 0, {}, ValueError, "num_inference_steps"),
        ({}, 10, {"order": 0}, ValueError, "order"),
        ({}, 10, {"order": 2.0}, TypeError, "order"),
    ],
)
def test_unsupported_options_raise(config, n, kw, error, match):
    with pytest.raises(error, match=match):
        lms.from_config(config, n, **kw)
