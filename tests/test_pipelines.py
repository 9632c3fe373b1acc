"""parallelize(pipe): the pipeline's own arguments and output, the sequential sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    CMStochasticIterativeScheduler,
    DDIMScheduler,
    DDPMParallelScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusion_helpers import step_recorder

import picard
from picard.adapters.diffusers import parallelize
from picard.models.tiny import tiny_stable_diffusion, tiny_unet_pipeline

SD_ARGS = {"height": 16, "width": 16, "output_type": "latent"}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sd64():
    return tiny_stable_diffusion().to(torch.float64)


@pytest.fixture(scope="module")
def sd32():
    return tiny_stable_diffusion()


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_unconditional_pipelines_match_float64(kind):
    pipe = tiny_unet_pipeline(kind).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 25, "batch_size": 2, "output_type": "pt"}
    ref = pipe(generator=gen(), **kw).images
    fast = parallelize(pipe, tol=0, window=6)
    out = fast(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-10
    assert fast.stats.iterations <= 25 and fast.stats.evaluations <= 2 * 25 * 6


def test_ddpm_pipeline_float32_and_output_types():
    pipe = tiny_unet_pipeline("ddpm")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(num_inference_steps=40, generator=gen(), output_type="np").images
    fast = parallelize(pipe, tol=0)
    out = fast(num_inference_steps=40, generator=gen(), output_type="np").images
    assert isinstance(out, np.ndarray) and out.shape == ref.shape == (1, 8, 8, 3)
    assert max_abs(out, ref) < 1e-5
    pil = fast(num_inference_steps=40, generator=gen()).images[0]
    assert pil.size == (8, 8)
    (tup,) = fast(num_inference_steps=40, generator=gen(), return_dict=False, output_type="pt")
    assert tuple(tup.shape) == (1, 3, 8, 8)
    loose = parallelize(pipe)(num_inference_steps=40, generator=gen(), output_type="np").images
    assert max_abs(loose, ref) < 0.05  # default tol 0.1 of the noise std, on [0, 1] pixels


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            timestep_spacing="trailing",
        ),
        DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
    ],
    ids=["ddpm", "ddim"],
)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_stable_diffusion_matches_float64(sd64, scheduler, eta):
    sd64.scheduler = scheduler
    kw = {
        "prompt": ["a cat", "a dog"],
        "negative_prompt": ["blurry", "dark"],
        "num_images_per_prompt": 2,
        "num_inference_steps": 15,
        "eta": eta,
        **SD_ARGS,
    }
    ref = sd64(generator=gen(), **kw).images
    fast = parallelize(sd64, tol=0, window=5)
    out = fast(generator=gen(), **kw).images
    assert out.shape == (4, 4, 8, 8)
    assert max_abs(out, ref) < 1e-9
    stats = fast.stats
    assert stats.rows_per_evaluation == 2 and stats.model_rows == 2 * stats.evaluations


def test_stable_diffusion_float32_parity_and_default_tolerance(sd32):
    kw = {"prompt": "a cat", "num_inference_steps": 30, **SD_ARGS}
    ref = sd32(generator=gen(), **kw).images
    exact = parallelize(sd32, tol=0)
    out = exact(generator=gen(), **kw).images
    scale = float(ref.abs().max())
    assert max_abs(out, ref) <= 1e-6 * scale  # 2e-5 here on latents of magnitude ~30
    fast = parallelize(sd32)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 30
    assert max_abs(loose, ref) < 0.05 * scale


def test_stable_diffusion_images(sd32):
    """Decoded, post-processed images (pil, np, pt), as the pipeline returns them."""
    kw = {"prompt": "a cat", "num_inference_steps": 10, "height": 16, "width": 16}
    fast = parallelize(sd32, tol=0)
    for output_type in ("pil", "np", "pt"):
        ref = sd32(generator=gen(), output_type=output_type, **kw)
        out = fast(generator=gen(), output_type=output_type, **kw)
        assert type(out) is type(ref) and out.nsfw_content_detected is None
        if output_type == "pil":
            assert out.images[0].size == ref.images[0].size == (16, 16)
        else:
            assert max_abs(out.images, ref.images) < 1e-4


def test_stable_diffusion_options(sd64):
    """prompt_embeds, given latents, guidance off, guidance_rescale, generator lists."""
    embeds = sd64.encode_prompt("a red cube", "cpu", 1, False)[0]
    latents = torch.randn(2, 4, 8, 8, generator=gen(3), dtype=torch.float64)
    cases = [
        {"prompt_embeds": embeds.repeat(2, 1, 1), "latents": latents, "guidance_scale": 1.0},
        {"prompt": "a cat", "guidance_scale": 5.0, "guidance_rescale": 0.7},
        {"prompt": ["a", "b"], "generator": [gen(1), gen(2)]},
    ]
    for extra in cases:

        def args(extra=extra):
            kw = dict(extra)
            if isinstance(kw.get("generator"), list):
                kw["generator"] = [gen(1), gen(2)]
            else:
                kw["generator"] = gen()
            return {"num_inference_steps": 10, **SD_ARGS, **kw}

        ref = sd64(**args()).images
        fast = parallelize(sd64, tol=0)
        out = fast(**args()).images
        assert max_abs(out, ref) < 1e-9, extra
        cfg = extra.get("guidance_scale", 7.5) > 1
        assert fast.stats.rows_per_evaluation == (2 if cfg else 1)


def test_half_precision_pipeline_keeps_float32_state():
    pipe = tiny_stable_diffusion()
    ref = pipe("a cat", num_inference_steps=20, generator=gen(), **SD_ARGS).images
    half = tiny_stable_diffusion().to(torch.bfloat16)
    out = parallelize(half, tol=0)(
        "a cat", num_inference_steps=20, generator=gen(), **SD_ARGS
    ).images
    assert out.dtype == torch.bfloat16
    assert max_abs(out, ref) < 0.1 * float(ref.abs().max())  # a bfloat16 model


def test_no_more_sweeps_than_paradigms_and_no_farther(sd32):
    """diffusers' StableDiffusionParadigmsPipeline on the same components and tolerance."""
    from diffusers import StableDiffusionParadigmsPipeline

    config = {k: v for k, v in sd32.scheduler.config.items() if not k.startswith("_")}
    names = ("vae", "text_encoder", "tokenizer", "unet", "safety_checker", "feature_extractor")
    components = {k: sd32.components[k] for k in names}
    paradigms = StableDiffusionParadigmsPipeline(
        **components, scheduler=DDPMParallelScheduler(**config), requires_safety_checker=False
    )
    paradigms.set_progress_bar_config(disable=True)
    calls = []
    hook = sd32.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        kw = {"prompt": "a cat", "num_inference_steps": 50, **SD_ARGS}
        sd32.scheduler = DDPMScheduler(**config)
        ref = sd32(generator=gen(), **kw).images
        calls.clear()
        theirs = paradigms(generator=gen(), parallel=50, tolerance=0.1, **kw).images
        their_sweeps = len(calls)
        ours = parallelize(sd32, tol=0.1, window=50, relative=False)  # ParaDiGMS's test
        out = ours(generator=gen(), **kw).images
    finally:
        hook.remove()
    # picard slides past the converged prefix only, ParaDiGMS also past the first
    # unconverged state: at most one sweep more here (12 vs 11), and never farther
    assert ours.stats.iterations <= their_sweeps + 1
    assert max_abs(out, ref) <= max_abs(theirs, ref) * 1.01


def test_unsupported_pipeline_scheduler_and_arguments(sd32):
    with pytest.raises(
        TypeError,
        match="pipeline CMStochasticIterativeScheduler is not supported; supported: DDPMPipeline",
    ):
        parallelize(CMStochasticIterativeScheduler())
    pipe = tiny_stable_diffusion(scheduler=CMStochasticIterativeScheduler())
    with pytest.raises(
        TypeError,
        match="scheduler CMStochasticIterativeScheduler is not supported; supported: DDPMScheduler",
    ):
        parallelize(pipe)("a cat", num_inference_steps=5, **SD_ARGS)
    fast = parallelize(sd32)
    with pytest.raises(TypeError, match="'timesteps' of StableDiffusionPipeline is not supported"):
        fast("a cat", timesteps=[999, 500], **SD_ARGS)
    with pytest.raises(TypeError, match="'bogus' of StableDiffusionPipeline is unknown"):
        fast("a cat", bogus=1, **SD_ARGS)
    with pytest.raises(ValueError, match="generator is a list of 3 generators"):
        parallelize(tiny_unet_pipeline("ddpm"))(batch_size=2, generator=[gen(), gen(), gen()])


SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize(
    ("scheduler", "rel"),
    [
        # diffusers' Euler schedulers round the sample to float32 inside step: ~1e-7 relative.
        (EulerDiscreteScheduler(**SD_BETAS), 1e-6),
        (
            EulerDiscreteScheduler(
                **SD_BETAS, use_karras_sigmas=True, steps_offset=1, timestep_spacing="leading"
            ),
            1e-6,
        ),
        (EulerAncestralDiscreteScheduler(**SD_BETAS), 1e-6),
        (DPMSolverMultistepScheduler(**SD_BETAS), 1e-12),
        (DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="sde-dpmsolver++"), 1e-12),
    ],
    ids=["euler", "euler-karras", "euler-ancestral", "dpm++2m", "dpm++2m-sde"],
)
def test_stable_diffusion_with_sigma_schedulers_float64(sd64, scheduler, rel):
    """init_noise_sigma, scale_model_input and the generator's noise, as the pipeline."""
    sd64.scheduler = scheduler
    kw = {"prompt": "a cat", "num_inference_steps": 12, **SD_ARGS}
    ref = sd64(generator=gen(), **kw).images
    out = parallelize(sd64, tol=0, window=5)(generator=gen(), **kw).images
    assert max_abs(out, ref) <= rel * float(ref.abs().max())


def test_stable_diffusion_per_sample_windows(sd64):
    """Each image's prompt follows its rows when the images slide their own windows."""
    kw = {
        "prompt": ["a cat", "a dog", "a red cube"],
        "negative_prompt": ["blurry", "dark", "flat"],
        "num_inference_steps": 15,
        **SD_ARGS,
    }
    ref = sd64(generator=gen(), **kw).images
    exact = parallelize(sd64, tol=0, window=5, per_sample=True)(generator=gen(), **kw).images
    assert max_abs(exact, ref) < 1e-9
    fast = parallelize(sd64, window=8, per_sample=True)
    out = fast(generator=gen(), **kw).images
    shared = parallelize(sd64, window=8)
    loose = shared(generator=gen(), **kw).images
    assert fast.stats.evaluations <= shared.stats.evaluations
    scale = float(ref.abs().max())
    assert max_abs(out, ref) < 0.05 * scale and max_abs(loose, ref) < 0.05 * scale
    uncond = tiny_unet_pipeline("ddpm").to(torch.float64)
    uncond.set_progress_bar_config(disable=True)
    args = {"num_inference_steps": 12, "batch_size": 2, "output_type": "pt"}
    base = uncond(generator=gen(), **args).images
    per = parallelize(uncond, tol=0, window=4, per_sample=True)(generator=gen(), **args).images
    assert max_abs(per, base) < 1e-10


def test_progress_bar_follows_the_pipelines_config():
    """The sweeps move the pipeline's own tqdm bar, configured by set_progress_bar_config."""
    import io

    pipe = tiny_unet_pipeline("ddim")
    out = io.StringIO()
    pipe.set_progress_bar_config(file=out, disable=False)
    fast = parallelize(pipe, window=4)
    fast(num_inference_steps=8, generator=gen(), output_type="pt")
    assert "8/8" in out.getvalue() and f"sweeps={fast.stats.iterations}" in out.getvalue()
    pipe.set_progress_bar_config(disable=True)
    quiet = io.StringIO()
    pipe.set_progress_bar_config(file=quiet, disable=True)
    fast(num_inference_steps=8, generator=gen(), output_type="pt")
    assert quiet.getvalue() == ""


def test_callback_on_step_end_sees_every_step_in_order(sd64):
    """Each step's callback gets the state the sequential loop would have given it."""
    seen, ref_seen = [], []

    args = {"num_inference_steps": 12, **SD_ARGS}
    sd64("a cat", generator=gen(), callback_on_step_end=step_recorder(ref_seen), **args)
    parallelize(sd64, tol=0, window=5)(
        "a cat", generator=gen(), callback_on_step_end=step_recorder(seen), **args
    )
    assert [(i, t) for i, t, _ in seen] == [(i, t) for i, t, _ in ref_seen]
    pairs = zip(seen, ref_seen, strict=True)
    assert max(max_abs(a, b) for (_, _, a), (_, _, b) in pairs) < 1e-10

    def meddle(pipe, i, t, kwargs):
        return {"latents": kwargs["latents"] * 0}

    with pytest.raises(ValueError, match="changed the latents at step 0"):
        parallelize(sd64)("a cat", generator=gen(), callback_on_step_end=meddle, **args)
    with pytest.raises(TypeError, match="callback_on_step_end_tensor_inputs"):
        parallelize(sd64)(
            "a cat",
            callback_on_step_end=step_recorder([]),
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
            **args,
        )


def test_subclasses_run_as_their_parent_unless_they_change_it():
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = tiny_unet_pipeline("ddim").to(torch.float64)
    pipe.set_progress_bar_config(disable=True)

    class Mine(DDIMPipeline):  # keeps __call__: runs as a DDIMPipeline
        pass

    mine = Mine(unet=pipe.unet, scheduler=pipe.scheduler)
    mine.set_progress_bar_config(disable=True)
    args = {"num_inference_steps": 10, "output_type": "pt"}
    exact = pipe(generator=gen(), **args).images
    out = parallelize(mine, tol=0)(generator=gen(), **args).images
    assert max_abs(out, exact) < 1e-10

    class Changed(DDIMPipeline):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    with pytest.raises(TypeError, match="pipeline Changed is not supported"):
        parallelize(Changed(unet=pipe.unet, scheduler=pipe.scheduler))

    class Stepper(DDIMScheduler):  # changes the update: never treated as a DDIMScheduler
        def step(self, *args, **kwargs):
            return super().step(*args, **kwargs)

    pipe.scheduler = Stepper.from_config(pipe.scheduler.config)
    with pytest.raises(TypeError, match=r"Stepper is not supported \(it changes the DDIM"):
        parallelize(pipe)  # at wrap time
    with pytest.warns(picard.SequentialWarning, match="runs sequentially"):
        fallback = parallelize(pipe, on_unsupported="sequential")
    out = fallback(generator=gen(), **args).images
    assert torch.equal(out, pipe(generator=gen(), **args).images) and fallback.stats is None


def test_options_are_checked_when_wrapping(sd32):
    for bad, error in [({"window": 0}, ValueError), ({"tol": -1}, ValueError),
                       ({"max_iters": 1.5}, TypeError), ({"windw": 3}, TypeError),
                       ({"on_unsupported": "skip"}, ValueError)]:  # fmt: skip
        with pytest.raises(error, match=next(iter(bad)).replace("windw", "unexpected")):
            parallelize(sd32, **bad)


def test_scheduler_loop_for_unsupported_schedulers_is_exact():
    """from_scheduler(on_unsupported="sequential") runs the scheduler's own loop."""
    from diffusers import CMStochasticIterativeScheduler

    from picard.adapters.diffusers import from_scheduler

    sched = CMStochasticIterativeScheduler()

    def den(x, t):
        return 0.5 * x

    with pytest.warns(picard.SequentialWarning):
        problem = from_scheduler(sched, den, 4, generator=gen(), on_unsupported="sequential")
    x_T = torch.randn(2, 1, 4, 4, generator=gen(1)) * sched.init_noise_sigma
    sol = picard.solve(problem, x_T)
    loop = CMStochasticIterativeScheduler()
    loop.set_timesteps(4)
    x, g = x_T, gen()
    for t in loop.timesteps:
        x = loop.step(den(loop.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    assert torch.equal(sol.final, x) and sol.stats.iterations == 4
