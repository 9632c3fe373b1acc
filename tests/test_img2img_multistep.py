"""Multistep samplers started mid-grid (img2img's ``strength``, SDXL's ``denoising_start``).

diffusers' img2img pipelines call ``scheduler.set_begin_index(begin)`` and step through
``timesteps[begin:]``: a multistep scheduler starts that loop with an empty history and
warms up again, with its own quirks (LMS's weights of the whole grid's order, DPM-Solver
single-step's lowered orders, PNDM's fresh counter, UniPC's and SA-Solver's first
corrector). ``rule.tail(begin)`` must be that loop: checked here against diffusers' own
scheduler loop at tol = 0 in float64 for each multistep scheduler and several begins,
then against the img2img, inpainting and SDXL img2img pipelines themselves.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EDMDPMSolverMultistepScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)
from diffusion_helpers import edm_denoiser, flow_denoiser, gaussian_denoiser, same_state

import picard
from picard.adapters.diffusers import from_scheduler, parallelize
from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import SCHEDULERS, rule_for
from picard.models.tiny_sd_variants import tiny_sd_img2img, tiny_sd_inpaint
from picard.models.tiny_sdxl import tiny_sdxl_img2img

torch.set_num_threads(1)

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

# (scheduler, N, denoiser); the begins are 1, 2, M // 2 and M - 1 of the M loop entries
CASES = {
    "dpm++2m": (lambda: DPMSolverMultistepScheduler(), 10, gaussian_denoiser),
    "dpm++3m": (lambda: DPMSolverMultistepScheduler(solver_order=3), 20, gaussian_denoiser),
    "dpm3-no-lower-final": (
        lambda: DPMSolverMultistepScheduler(solver_order=3, lower_order_final=False),
        10,
        gaussian_denoiser,
    ),
    "sde-dpm++2m": (
        lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"),
        10,
        gaussian_denoiser,
    ),
    "dpm-single-2": (lambda: DPMSolverSinglestepScheduler(), 9, gaussian_denoiser),
    "dpm-single-3-heun": (
        lambda: DPMSolverSinglestepScheduler(solver_order=3, solver_type="heun"),
        10,
        gaussian_denoiser,
    ),
    "deis3": (lambda: DEISMultistepScheduler(solver_order=3), 10, gaussian_denoiser),
    "edm-dpm3": (lambda: EDMDPMSolverMultistepScheduler(solver_order=3), 10, edm_denoiser),
    "unipc2": (lambda: UniPCMultistepScheduler(), 10, gaussian_denoiser),
    "unipc3-disable": (
        lambda: UniPCMultistepScheduler(solver_order=3, disable_corrector=[0, 4, 7]),
        10,
        gaussian_denoiser,
    ),
    "unipc2-noise": (
        lambda: UniPCMultistepScheduler(predict_x0=False, final_sigmas_type="sigma_min"),
        10,
        gaussian_denoiser,
    ),
    "sa-solver": (lambda: SASolverScheduler(), 10, gaussian_denoiser),
    "sa-solver-3-4": (
        lambda: SASolverScheduler(predictor_order=3, corrector_order=4),
        10,
        gaussian_denoiser,
    ),
    "lms": (lambda: LMSDiscreteScheduler(), 8, gaussian_denoiser),
    "pndm-plms": (
        lambda: PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        10,
        gaussian_denoiser,
    ),
    "pndm-prk": (lambda: PNDMScheduler(), 6, gaussian_denoiser),
}


def loop_tail(sched, den, n, begin, x, gen, end=None):
    """diffusers' own loop from ``begin``: set_timesteps, set_begin_index, step on."""
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    if hasattr(s, "set_begin_index"):  # PNDM has none: its loop just starts fresh
        s.set_begin_index(begin)
    kw = {"generator": gen} if "generator" in inspect.signature(s.step).parameters else {}
    scale = getattr(s, "scale_model_input", lambda x, t: x)
    with torch.no_grad():
        for t in s.timesteps[begin:end]:
            x = s.step(den(scale(x, t), t.reshape(1).expand(x.shape[0])), t, x, **kw).prev_sample
    return x


def tail_errors(sched, den, n, begins, *, end=None, dtype=torch.float64, windows=(None, 3)):
    """The largest |picard - diffusers| relative to max(1, |sample|), over begins × windows."""
    worst = 0.0
    for begin in begins:
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(begin), dtype=dtype)
        gen_ref = torch.Generator().manual_seed(7)
        ref = loop_tail(sched, den, n, begin, x, gen_ref, end)
        assert torch.isfinite(ref).all()
        for window in windows:
            gen = torch.Generator().manual_seed(7)
            problem = from_scheduler(sched, den, n, generator=gen, begin=begin, end=end)
            sol = picard.solve(problem, x, tol=0, window=window)
            assert same_state(gen, gen_ref), (begin, window)  # the noise drawn as the loop's
            err = float((sol.final - ref).abs().max()) / max(1.0, float(ref.abs().max()))
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("case", CASES)
def test_tail_is_diffusers_loop_from_begin_index(case):
    make, n, denoiser = CASES[case]
    sched = make()
    steps = rule_for(sched, n).num_steps
    begins = sorted({1, 2, steps // 2, steps - 1})
    assert tail_errors(sched, denoiser(sched), n, begins) <= 1e-12


@pytest.mark.parametrize(
    "make",
    [
        lambda: HeunDiscreteScheduler(),
        lambda: KDPM2DiscreteScheduler(),
        lambda: KDPM2AncestralDiscreteScheduler(),
    ],
    ids=["heun", "kdpm2", "kdpm2-ancestral"],
)
def test_two_call_samplers_begin_at_a_steps_first_call(make):
    """A pipeline begins at ``t_start · order``, a step's first call: sliced, exact."""
    sched, n = make(), 6
    assert tail_errors(sched, gaussian_denoiser(sched), n, [2, 4, 2 * n - 2]) <= 1e-12
    with pytest.raises(NotImplementedError, match="cannot begin at entry 3, the second"):
        rule_for(sched, n).tail(3)


def test_flow_heun_begins_at_a_steps_first_call():
    """Float32: diffusers rounds the flow Heun sample to float32 (so does the rule)."""
    sched = FlowMatchHeunDiscreteScheduler(shift=3.0)
    err = tail_errors(sched, flow_denoiser(sched), 6, [2, 6], dtype=torch.float32)
    assert err <= 1e-5


def test_head_then_tail_is_the_loop_between():
    """SDXL's denoising_start and denoising_end together: the warm-up from the start, the
    whole grid's final lowering never reached."""
    sched = DPMSolverMultistepScheduler(solver_order=3)
    assert tail_errors(sched, gaussian_denoiser(sched), 12, [2, 5], end=9) <= 1e-12


def test_tail_of_a_tail_restarts_from_the_grid():
    rule = rule_for(UniPCMultistepScheduler(solver_order=3), 12)
    twice, once = rule.tail(2).tail(3), rule.tail(5)
    assert twice.first_step == once.first_step == 5
    assert twice.orders.tolist() == once.orders.tolist() == [1, 2, 3, 3, 3, 2, 1]
    assert twice.coefficients.keys() == once.coefficients.keys()
    for k, v in once.coefficients.items():
        np.testing.assert_array_equal(twice.coefficients[k], v)


def test_warm_up_restarts_and_the_grids_end_stays():
    """The orders warm up again from the begin index; the final lowering reads the grid."""
    sched = DPMSolverMultistepScheduler(solver_order=3)
    assert rule_for(sched, 10).tail(5).orders.tolist() == [1, 2, 3, 2, 1]
    single = rule_for(DPMSolverSinglestepScheduler(solver_order=3), 9)
    assert single.orders.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert single.tail(2).orders.tolist() == [1, 1, 2, 3, 1, 2, 1]  # 3 lowered to 1
    sa = rule_for(SASolverScheduler(), 8).tail(3)
    assert sa.corrector_orders[0] == 0  # no correction at the loop's first entry
    lms = rule_for(LMSDiscreteScheduler(), 8).tail(2)
    used = [np.count_nonzero(lms.coefficients[f"lms{j}"]) for j in range(4)]
    assert used == [6, 5, 4, 3]  # step j of the loop has j + 1 derivatives


def test_every_registered_rule_starts_where_a_pipeline_begins():
    """No registered scheduler refuses a pipeline's begin index (``t_start · order``)."""
    import diffusers

    for name in SCHEDULERS:
        cls = getattr(diffusers, name, None)
        if cls is None:
            continue
        sched = cls()
        rule = rule_for(sched, 6)
        for begin in range(0, rule.num_steps, getattr(sched, "order", 1)):
            assert rule.tail(begin).num_steps == rule.num_steps - begin, (name, begin)


def test_a_rule_with_memory_must_say_how_it_restarts():
    class Lagged(UpdateRule):
        memory = 1

        def __init__(self):
            self.num_steps, self.timesteps = 3, torch.arange(3)
            self.coefficients, self.noise_draws = {}, np.zeros(3, dtype=bool)
            self.tol_scale = np.zeros(3)

        def update(self, x, out, c, noise, history):
            return x, out

    assert Lagged().tail(0).num_steps == 3
    with pytest.raises(NotImplementedError, match=r"override UpdateRule\.tail"):
        Lagged().tail(1)
    with pytest.raises(ValueError, match=r"begin must be in \[0, 3\)"):
        Lagged().tail(3)


# the pipelines themselves


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=2):
    return torch.rand(n, 3, 16, 16, generator=gen(5), dtype=torch.float64)


def masks(n=2):
    mask = torch.zeros(n, 1, 16, 16)
    mask[0, :, 4:12, 4:12] = 1
    mask[-1, :, :8] = 1
    return mask


SCHEDS = {
    "dpm++2m": lambda: DPMSolverMultistepScheduler(**SD_BETAS),
    "unipc": lambda: UniPCMultistepScheduler(**SD_BETAS),
}


@pytest.fixture(scope="module")
def pipes():
    return {
        "img2img": tiny_sd_img2img().to(torch.float64),
        "inpaint": tiny_sd_inpaint().to(torch.float64),
        "inpaint-4ch": tiny_sd_inpaint(in_channels=4).to(torch.float64),
        "sdxl-img2img": tiny_sdxl_img2img().to(torch.float64),
    }


def relative_rms(out, ref):
    """Each sample's RMS distance to its sequential sample, relative to that sample's RMS."""
    diff = (out - ref).flatten(1).pow(2).mean(1).sqrt()
    return (diff / ref.flatten(1).pow(2).mean(1).sqrt()).tolist()


PIPELINE_CASES = [
    (family, sched, strength)
    for family in ("img2img", "inpaint", "sdxl-img2img")
    for sched in SCHEDS
    for strength in (0.6, 0.3)
] + [("inpaint-4ch", "dpm++2m", 0.6)]  # the 4-channel blend wraps the restarted rule


@pytest.mark.parametrize(("family", "sched", "strength"), PIPELINE_CASES)
def test_pipelines_at_any_strength(pipes, family, sched, strength):
    """tol = 0 is the pipeline's own call; the default tolerance keeps each sample within
    it (0.01 of its RMS)."""
    pipe = pipes[family]
    pipe.scheduler = SCHEDS[sched]()
    kw = {"prompt": ["a cat", "a dog"], "image": images(), "strength": strength,
          "num_inference_steps": 12, "output_type": "latent"}  # fmt: skip
    if family.startswith("inpaint"):
        kw["mask_image"] = masks()
    ref = pipe(generator=gen(), **kw).images
    exact = parallelize(pipe, tol=0, window=4)
    out = exact(generator=gen(), **kw).images
    assert float((out - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))
    assert exact.stats.iterations == int(12 * strength)  # one sweep per step at tol = 0
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert max(relative_rms(loose, ref)) <= 0.01


def test_sdxl_refiner_denoising_start_with_a_multistep_scheduler(pipes):
    pipe = pipes["sdxl-img2img"]
    pipe.scheduler = DPMSolverMultistepScheduler(**SD_BETAS, solver_order=3)
    kw = {"prompt": "a cat", "image": images(1), "denoising_start": 0.7,
          "num_inference_steps": 10, "output_type": "latent"}  # fmt: skip
    ref = pipe(generator=gen(), **kw).images
    fast = parallelize(pipe, tol=0, window=2)
    out = fast(generator=gen(), **kw).images
    assert float((out - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))
    assert fast.stats.iterations == fast.stats.num_steps < 10  # the steps past the cutoff
