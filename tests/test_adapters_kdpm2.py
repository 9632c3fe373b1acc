"""KDPM2 and KDPM2-ancestral: picard at tol = 0 reproduces diffusers' loop (2N - 1 entries,
a half step to the log-σ midpoint then the full step), with the ancestral noise drawn
once, at the second-stage entries, in diffusers' order."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
from diffusers import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from diffusion_helpers import (
    BETAS,
    SIGMA_SCHEDULES,
    SPACINGS,
    check_parity,
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
from picard.adapters.schedulers import kdpm2

# diffusers' own _sigma_to_t feeds torch tensors to numpy ufuncs (numpy 2 deprecation)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

KINDS = {
    False: (KDPM2DiscreteScheduler, kdpm2.from_config),
    True: (KDPM2AncestralDiscreteScheduler, kdpm2.ancestral_from_config),
}


@functools.cache
def _base(ancestral, beta):
    return KINDS[ancestral][0](beta_schedule=beta)


def scheduler(ancestral, spacing=("linspace", 0), kind=None, beta="linear", **kw):
    """A KDPM2 scheduler with these options: a copy of a cached one per beta schedule with
    the options registered (diffusers' constructor runs a 1000-step ``set_timesteps``,
    ~1 s; the options are only read by ``set_timesteps`` and ``step``)."""
    sched = copy.deepcopy(_base(ancestral, beta))
    options = {k: False for k in SIGMA_SCHEDULES[1:]} | ({kind: True} if kind else {})
    sched.register_to_config(timestep_spacing=spacing[0], steps_offset=spacing[1], **options, **kw)
    return sched


def test_cached_schedulers_are_fresh_ones():
    cached = scheduler(True, ("leading", 1), "use_karras_sigmas", "scaled_linear")
    fresh = KDPM2AncestralDiscreteScheduler(
        timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True,
        beta_schedule="scaled_linear",
    )  # fmt: skip
    public = [{k: v for k, v in s.config.items() if not k.startswith("_")} for s in (cached, fresh)]
    assert public[0] == public[1]
    cached.set_timesteps(7)
    fresh.set_timesteps(7)
    assert torch.equal(cached.timesteps, fresh.timesteps)


def rule_of(ancestral, sched, n):
    return KINDS[ancestral][1](sched.config, n)


def test_grids_match_set_timesteps():
    """Interleaved timesteps (values and dtype: float64 after a sigma-schedule conversion),
    sigmas, midpoints and init_noise_sigma equal diffusers', or the rule refuses a grid on
    which diffusers' own sample is not finite."""
    refused = 0
    for ancestral in (False, True):
        for k, (spacing, kind) in enumerate(itertools.product(SPACINGS, SIGMA_SCHEDULES)):
            sched = scheduler(ancestral, spacing, kind, BETAS[k % len(BETAS)])
            for n in (1, 2, 9, 40):
                sched.set_timesteps(n)
                try:
                    rule = rule_of(ancestral, sched, n)
                except ValueError:
                    refused += 1
                    continue
                assert torch.equal(rule.timesteps, sched.timesteps), (ancestral, spacing, kind)
                assert rule.timesteps.dtype == sched.timesteps.dtype
                assert torch.equal(rule.sigmas, sched.sigmas)
                assert torch.equal(rule.sigmas_interpol[1:], sched.sigmas_interpol[1:])
                assert rule.init_noise_sigma == float(sched.init_noise_sigma)
    assert refused <= 6


@settings(max_examples=8)
@given(
    ancestral=st.booleans(),
    spacing=st.sampled_from(SPACINGS),
    prediction=st.sampled_from(["epsilon", "v_prediction"]),
    kind=st.sampled_from(SIGMA_SCHEDULES),
    beta=st.sampled_from(BETAS),
    n=st.integers(1, 12),
)
def test_parity_float32(ancestral, spacing, prediction, kind, beta, n):
    """Windows 1, 2, 3, 7, all and per-sample; the generator ends where diffusers' does."""
    sched = scheduler(ancestral, spacing, kind, beta, prediction_type=prediction)
    den, x_T = gaussian_denoiser(sched), start_latent(sched, n)
    try:
        rule = rule_of(ancestral, sched, n)
    except ValueError:  # refused only where diffusers' own sample is not finite
        ref = sequential(sched, den, n, x_T, torch.Generator().manual_seed(0))
        assert not torch.isfinite(ref).all()
        return
    check_parity(sched, rule, den, n, x_T)


def test_ancestral_noise_is_drawn_at_second_stages_in_order():
    """N - 1 draws, at entries 1, 3, …, 2N - 3, from one generator per sample too."""
    sched = scheduler(True, ("trailing", 0))
    rule = rule_of(True, sched, 6)
    assert rule.noise_draws.tolist() == [k % 2 == 1 for k in range(10)] + [False]
    assert rule.noise_dtype is None  # the model output's dtype: the latent's
    den, x_T = gaussian_denoiser(sched), start_latent(sched, 6)
    check_parity(sched, rule, den, 6, x_T, seed=[5, 7])


@pytest.mark.parametrize("ancestral", [False, True], ids=["kdpm2", "ancestral"])
def test_random_unet_parity_float64(ancestral):
    sched = scheduler(ancestral, ("leading", 1), "use_karras_sigmas", "scaled_linear")
    den = unet_denoiser(tiny_unet().double())
    x_T = start_latent(sched, 4, dtype=torch.float64)
    rule = rule_of(ancestral, sched, 4)
    err = check_parity(sched, rule, den, 4, x_T, windows=(None, 1, 3))
    assert err <= 1e-12  # ~1e-15 here


@pytest.mark.parametrize("ancestral", [False, True], ids=["kdpm2", "ancestral"])
def test_default_tolerance_sweeps(ancestral):
    sched = scheduler(ancestral)
    den, x_T = gaussian_denoiser(sched), start_latent(sched, 50)
    rule = rule_of(ancestral, sched, 50)
    gen = torch.Generator().manual_seed(2)
    sol = picard.solve(DiffusionProblem(rule, den, generator=gen), x_T)
    ref = sequential(sched, den, 50, x_T, torch.Generator().manual_seed(2))
    assert sol.stats.iterations <= (30 if ancestral else 20)  # 26 and 16 of 99 here
    assert max_abs(sol.final, ref) <= 2e-3 * float(ref.abs().max())


def test_refused_options():
    with pytest.raises(ValueError, match="prediction_type"):
        kdpm2.from_config({"prediction_type": "sample"}, 5)  # NotImplementedError there
    with pytest.raises(ValueError, match="num_inference_steps"):
        kdpm2.ancestral_from_config({}, 0)
    with pytest.raises(ValueError, match="only one of"):
        kdpm2.from_config({"use_karras_sigmas": True, "use_exponential_sigmas": True}, 5)


def test_repeated_first_timestep_is_refused():
    """Cosine betas with Karras sigmas: the midpoints round to timestep 999 too, and
    diffusers would start at the second occurrence (its sample is not finite)."""
    sched = scheduler(False, kind="use_karras_sigmas", beta="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="first timestep"):
        kdpm2.from_config(sched.config, 9)
    ref = sequential(sched, gaussian_denoiser(sched), 9, start_latent(sched, 9))
    assert not torch.isfinite(ref).all()


def test_ancestral_nan_grid_is_refused():
    sched = scheduler(True, beta="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="σ_down"):
        kdpm2.ancestral_from_config(sched.config, 3)
    ref = sequential(sched, gaussian_denoiser(sched), 3, start_latent(sched, 3), torch.Generator())
    assert not torch.isfinite(ref).all()
