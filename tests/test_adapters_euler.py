"""Euler and Euler ancestral: picard at tol = 0 reproduces diffusers' sequential samplers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusion_helpers import (
    BETAS,
    SIGMA_SCHEDULES,
    SPACINGS,
    assert_scheduler_parity,
    gaussian_denoiser,
    max_abs,
    parallel,
    per_sample_error,
    sequential,
    start_latent,
    tiny_unet,
    unet_denoiser,
)
from hypothesis import given
from hypothesis import strategies as st

from picard.adapters.diffusers import from_scheduler, rule_for
from picard.adapters.schedulers import euler, schedules


def noisy_atol(x_T):
    """The float32 parity bound of steps that add noise, in the VE latent (|x_T| ~ σ_max).

    picard writes state i + 1 as ``x_b + Σ Δ_j`` with ``Δ_j = x_{j+1} - x_j``. A plain
    Euler step ``x + p`` round-trips exactly (Fast2Sum), but after a noise term is added
    ``x + Δ`` can differ from diffusers' state by an ulp of x — at σ_max ~ 157 (20000 for
    zero-SNR cosine) that is 1e-5 … 2e-3. Bound: 4 ulps of the largest state, or 1e-5.
    """
    return max(1e-5, 5e-7 * float(x_T.abs().max()))


def euler_scheduler(spacing, prediction, kind, interpolation, final, zsnr, beta, **extra):
    kw = {
        "timestep_spacing": spacing[0],
        "steps_offset": spacing[1],
        "prediction_type": prediction,
        "interpolation_type": interpolation,
        "final_sigmas_type": final,
        "rescale_betas_zero_snr": zsnr,
        "beta_schedule": beta,
    }
    if kind is not None:
        kw[kind] = True
    return EulerDiscreteScheduler(**kw, **extra)


@given(
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    kind=st.sampled_from(SIGMA_SCHEDULES),
    interpolation=st.sampled_from(["linear", "log_linear"]),
    final=st.sampled_from(["zero", "sigma_min"]),
    zsnr=st.booleans(),
    beta=st.sampled_from(BETAS),
    churn=st.sampled_from([None, (2.0, 0.0, float("inf"), 1.0), (40.0, 0.3, 8.0, 1.003)]),
    n=st.integers(1, 25),
)
def test_euler_parity_float32(
    spacing, prediction, kind, interpolation, final, zsnr, beta, churn, n
):
    sched = euler_scheduler(spacing, prediction, kind, interpolation, final, zsnr, beta)
    x_T = start_latent(sched, n)
    if churn is None:
        assert_scheduler_parity(sched, gaussian_denoiser(sched), n, x_T)
        return
    kw = dict(zip(("s_churn", "s_tmin", "s_tmax", "s_noise"), churn, strict=True))
    assert_scheduler_parity(sched, gaussian_denoiser(sched), n, x_T, atol=noisy_atol(x_T), **kw)


@given(
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(["epsilon", "v_prediction"]),
    zsnr=st.booleans(),
    beta=st.sampled_from(BETAS),
    n=st.integers(1, 25),
)
def test_euler_ancestral_parity_float32(spacing, prediction, zsnr, beta, n):
    sched = EulerAncestralDiscreteScheduler(
        timestep_spacing=spacing[0],
        steps_offset=spacing[1],
        prediction_type=prediction,
        rescale_betas_zero_snr=zsnr,
        beta_schedule=beta,
    )
    den, x_T = gaussian_denoiser(sched), start_latent(sched, n)
    try:
        euler.ancestral_from_config(sched.config, n)
    except ValueError as e:  # refused only where diffusers' own sample is NaN
        assert "NaN" in str(e)
        assert not torch.isfinite(sequential(sched, den, n, x_T, torch.Generator())).all()
        return
    assert_scheduler_parity(sched, den, n, x_T, atol=noisy_atol(x_T))


def test_ancestral_grid_where_diffusers_gives_nan_is_refused():
    sched = EulerAncestralDiscreteScheduler(
        timestep_spacing="trailing", beta_schedule="squaredcos_cap_v2"
    )
    with pytest.raises(ValueError, match="sigma_down"):
        euler.ancestral_from_config(sched.config, 3)
    ref = sequential(sched, gaussian_denoiser(sched), 3, start_latent(sched, 3))
    assert torch.isnan(ref).all()


def test_continuous_v_prediction_timesteps():
    """timestep_type="continuous" with v_prediction: the model receives 0.25 log σ."""
    for interpolation in ("linear", "log_linear"):
        sched = EulerDiscreteScheduler(
            timestep_type="continuous",
            prediction_type="v_prediction",
            interpolation_type=interpolation,
        )
        ab = schedules.alphas_cumprod(sched.config).double()
        sigmas = ((1 - ab) / ab).sqrt()

        def den(x, t, sigmas=sigmas):  # index the training table by the σ the model sees
            sigma = torch.exp(4 * t.double())
            idx = torch.searchsorted(sigmas, sigma).clamp(0, len(sigmas) - 1)
            a = (1 / (1 + sigmas[idx] ** 2)).reshape(-1, 1, 1, 1)
            return ((1 - a).sqrt() * 0.3 * x.double() - 0.1 * a.sqrt() * x.double()).to(x.dtype)

        assert_scheduler_parity(sched, den, 12, start_latent(sched, 12))


def test_trailing_grid_with_one_step_more_than_asked():
    """diffusers' trailing ``np.arange`` grid has 62 timesteps for N = 61 (the last is -1);
    its loop runs all 62 steps, and so does picard."""
    for cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler):
        sched = cls(timestep_spacing="trailing")
        rule = rule_for(sched, 61)
        assert rule.num_steps == 62 and rule.timesteps[-1].item() == -1.0
        assert_scheduler_parity(
            sched, gaussian_denoiser(sched), 61, start_latent(sched, 61), windows=(16,)
        )


GRID_CONFIGS = [
    dict(
        zip(
            ("spacing", "kind", "interpolation", "final", "zsnr", "continuous"),
            combo,
            strict=True,
        ),
        beta=BETAS[k % len(BETAS)],
    )
    for k, combo in enumerate(
        itertools.product(
            SPACINGS,
            SIGMA_SCHEDULES,
            ["linear", "log_linear"],
            ["zero", "sigma_min"],
            [False, True],
            [False, True],
        )
    )
]
GRID_STEPS = [1, 2, 9, 25, 61]


def test_euler_grids_match_set_timesteps():
    """timesteps, sigmas and init_noise_sigma equal diffusers' (bitwise), every option."""
    for c in GRID_CONFIGS:
        sched = euler_scheduler(
            c["spacing"],
            "v_prediction" if c["continuous"] else "epsilon",
            c["kind"],
            c["interpolation"],
            c["final"],
            c["zsnr"],
            c["beta"],
            timestep_type="continuous" if c["continuous"] else "discrete",
            **({"sigma_min": 0.05, "sigma_max": 12.0} if c["kind"] and c["zsnr"] else {}),
        )
        for n in GRID_STEPS:
            sched.set_timesteps(n)
            rule = euler.from_config(sched.config, n)
            assert torch.equal(rule.timesteps, sched.timesteps), (c, n)
            assert torch.equal(rule.sigmas, sched.sigmas), (c, n)
            assert rule.init_noise_sigma == float(sched.init_noise_sigma), (c, n)


def test_euler_ancestral_grids_match_set_timesteps():
    for spacing, zsnr, beta in itertools.product(SPACINGS, [False, True], BETAS):
        sched = EulerAncestralDiscreteScheduler(
            timestep_spacing=spacing[0], steps_offset=spacing[1], rescale_betas_zero_snr=zsnr,
            beta_schedule=beta,
        )  # fmt: skip
        for n in [*GRID_STEPS, 999]:
            sched.set_timesteps(n)
            try:
                rule = euler.ancestral_from_config(sched.config, n)
            except ValueError as e:  # where diffusers' sigma_down is NaN
                assert "NaN" in str(e)
                continue
            assert torch.equal(rule.timesteps, sched.timesteps)
            assert torch.equal(rule.sigmas, sched.sigmas)
            assert rule.init_noise_sigma == float(sched.init_noise_sigma)


@pytest.mark.parametrize(
    ("scheduler", "kw"),
    [
        (EulerDiscreteScheduler(), {}),
        (EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True), {}),
        (EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1), {"s_churn": 3.0}),
        (EulerAncestralDiscreteScheduler(timestep_spacing="trailing"), {}),
    ],
    ids=["euler", "euler-v-karras", "euler-churn", "ancestral"],
)
def test_random_unet_parity_float64(scheduler, kw):
    unet = tiny_unet().double()
    den = unet_denoiser(unet)
    x_T = start_latent(scheduler, 20, dtype=torch.float64)
    ref = sequential(
        scheduler, den, 20, x_T, torch.Generator().manual_seed(2), no_upcast=True, **kw
    )
    for window in (None, 6):
        sol = parallel(scheduler, den, 20, x_T, seed=2, tol=0, window=window, **kw)
        assert max_abs(sol.final, ref) <= 1e-10  # ~2e-13 here
    # diffusers' own float64 loop rounds the state to float32 every step: ~1e-4 away
    upcast = sequential(scheduler, den, 20, x_T, torch.Generator().manual_seed(2), **kw)
    assert max_abs(sol.final, upcast) < 1e-2


def test_churn_draws_noise_only_where_gamma_is_positive():
    """diffusers 0.3x draws a noise tensor at a step only when γ > 0 (s_churn > 0 and
    s_tmin ≤ σ ≤ s_tmax): none at all for the default s_churn = 0."""
    sched = EulerDiscreteScheduler()
    assert not euler.from_config(sched.config, 10).noise_draws.any()
    rule = euler.from_config(sched.config, 10, s_churn=5.0, s_tmin=0.5, s_tmax=20.0)
    sigmas = rule.sigmas[:10]
    assert np.array_equal(rule.noise_draws, ((sigmas >= 0.5) & (sigmas <= 20.0)).numpy())
    assert 0 < rule.noise_draws.sum() < 10


def test_per_sample_generators():
    sched = EulerAncestralDiscreteScheduler()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 10, shape=(3, 3, 8, 8))
    assert per_sample_error(sched, den, 10, x_T) < 1e-5


@pytest.mark.parametrize(
    ("cls", "sweeps"), [(EulerDiscreteScheduler, 30), (EulerAncestralDiscreteScheduler, 45)]
)
def test_default_tolerance_is_close_and_faster(cls, sweeps):
    sched = cls()
    den = gaussian_denoiser(sched)
    x_T = start_latent(sched, 100)
    ref = sequential(sched, den, 100, x_T, torch.Generator().manual_seed(2))
    sol = parallel(sched, den, 100, x_T, seed=2)
    assert sol.stats.tol == 0.01  # relative to each state's RMS
    assert sol.stats.iterations < sweeps  # 20 (Euler), 40 (ancestral; 32 at tol / 10) here
    assert max_abs(sol.final, ref) < 1e-2  # 3.6e-4, 7.9e-4 here (data std 0.5)


def test_tol_scale_is_the_ancestral_std_of_the_next_step():
    config = EulerDiscreteScheduler(
        final_sigmas_type="sigma_min", timestep_spacing="trailing"
    ).config
    rule = euler.from_config(config, 6)
    s = rule.sigmas.double()
    expected = [float(schedules.ancestral_std(s[i + 1], s[i + 2])) for i in range(5)] + [0.0]
    assert np.allclose(rule.tol_scale, expected, rtol=1e-12, atol=0)
    assert rule.tol_scale[:5].min() > 0
    zero = euler.ancestral_from_config(EulerAncestralDiscreteScheduler().config, 6)
    assert zero.tol_scale[-2:].tolist() == [0.0, 0.0]  # the last step goes to σ = 0


@pytest.mark.parametrize(
    ("config", "n", "match"),
    [
        ({"interpolation_type": "quadratic"}, 10, "interpolation_type"),
        ({"final_sigmas_type": "sigma_max"}, 10, "final_sigmas_type"),
        ({"timestep_type": "fractional"}, 10, "timestep_type"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, 10, "use_karras_sigmas"),
        ({"prediction_type": "flow"}, 10, "prediction_type"),
        ({"timestep_spacing": "uniform"}, 10, "timestep_spacing"),
        ({"beta_schedule": "sigmoid"}, 10, "beta_schedule"),
        ({"use_karras_sigmas": True, "sigma_max": 500.0}, 10, "first timestep"),
        ({"timestep_spacing": "leading"}, 1001, "first timestep"),
        ({}, 0, "num_inference_steps"),
    ],
)
def test_unsupported_euler_options_raise(config, n, match):
    with pytest.raises(ValueError, match=match):
        euler.from_config(config, n)


def test_unsupported_ancestral_options_raise():
    with pytest.raises(ValueError, match="prediction_type"):
        euler.ancestral_from_config({"prediction_type": "sample"}, 10)  # diffusers: not implemented
    with pytest.raises(TypeError, match="s_churn"):
        euler.ancestral_from_config({}, 10, s_churn=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="eta"):
        from_scheduler(EulerDiscreteScheduler(), lambda x, t: x, 10, eta=0.5)
    with pytest.raises(TypeError, match="s_noise"):
        euler.from_config({}, 10, s_noise="1")  # type: ignore[arg-type]
