"""parallelize(pipe) for StableDiffusionXLPipeline and StableDiffusionXLImg2ImgPipeline."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from picard.adapters.diffusers import parallelize
from picard.models.tiny_sdxl import tiny_sdxl, tiny_sdxl_img2img

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
LATENT = {"output_type": "latent"}


def ddpm():
    return DDPMScheduler(**BETAS, clip_sample=False, timestep_spacing="trailing")


def ddim():
    return DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def image(seed=5, dtype=torch.float32, batch=1):
    return torch.rand(batch, 3, 16, 16, generator=gen(seed), dtype=dtype)


@pytest.fixture(scope="module")
def xl32():
    return tiny_sdxl()


@pytest.fixture(scope="module")
def xl64():
    return tiny_sdxl(scheduler=ddpm()).to(torch.float64)


@pytest.fixture(scope="module")
def refiner64():
    return tiny_sdxl_img2img(scheduler=ddim(), requires_aesthetics_score=True).to(torch.float64)


def same(pipe, kw, tol=1e-10, **options):
    """Run the pipeline and picard (tol=0) on the same seed; return picard's wrapper."""
    ref = pipe(generator=gen(), **kw).images
    fast = parallelize(pipe, tol=0, **options)
    out = fast(generator=gen(), **kw).images
    assert max_abs(out, ref) < tol, max_abs(out, ref)
    return fast


@pytest.mark.parametrize(("scheduler", "eta"), [(ddpm, 0.0), (ddim, 0.7)], ids=["ddpm", "ddim"])
def test_sdxl_matches_float64_with_per_image_conditioning(xl64, scheduler, eta):
    """Two prompts x two images, both prompts of each encoder, negative time ids."""
    xl64.scheduler = scheduler()
    kw = {
        "prompt": ["a cat", "a dog"],
        "prompt_2": ["red", "blue"],
        "negative_prompt": ["blurry", "dark"],
        "negative_prompt_2": ["flat", "noisy"],
        "num_images_per_prompt": 2,
        # the pipeline interleaves these across images' unconditional rows: reproduced
        "negative_original_size": (8, 8),
        "negative_target_size": (32, 24),
        "num_inference_steps": 12,
        "eta": eta,
        **LATENT,
    }
    fast = same(xl64, kw, window=5)
    stats = fast.stats
    assert stats.rows_per_evaluation == 2 and stats.model_rows == 2 * stats.evaluations
    xl64.scheduler = ddpm()


def test_sdxl_float32_parity_and_default_tolerance(xl32):
    """The default Euler scheduler: exact at tol=0, fewer sweeps than steps by default."""
    kw = {"prompt": "a cat", "num_inference_steps": 20, "output_type": "pt"}
    ref = xl32(generator=gen(), **kw).images
    exact = parallelize(xl32, tol=0)(generator=gen(), **kw).images
    assert max_abs(exact, ref) < 1e-4
    fast = parallelize(xl32)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 20  # 3 sweeps here
    assert max_abs(loose, ref) < 0.02


def test_sdxl_output_types(xl32):
    kw = {"prompt": "a cat", "num_inference_steps": 6}
    fast = parallelize(xl32, tol=0)
    for output_type in ("pil", "np"):
        ref = xl32(generator=gen(), output_type=output_type, **kw)
        out = fast(generator=gen(), output_type=output_type, **kw)
        assert type(out) is type(ref)
        if output_type == "pil":
            assert out.images[0].size == ref.images[0].size == (16, 16)
        else:
            assert max_abs(out.images, ref.images) < 1e-4
    (images,) = fast(generator=gen(), output_type="pt", return_dict=False, **kw)
    assert tuple(images.shape) == (1, 3, 16, 16)


def test_sdxl_options_float64(xl64):
    """Embeddings, latents, guidance off and rescale, sizes, clip_skip, generator lists."""
    xl64.scheduler = ddpm()
    embeds, negative, pooled, negative_pooled = xl64.encode_prompt(
        ["a red cube", "a cat"], device=torch.device("cpu"), negative_prompt=["dark", "flat"]
    )
    latents = torch.randn(2, 4, 8, 8, generator=gen(3), dtype=torch.float64)
    cases = [
        {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
            "latents": latents,
        },
        {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "guidance_scale": 1.0},
        {"prompt": "a cat", "guidance_scale": 4.0, "guidance_rescale": 0.7, "clip_skip": 1},
        {
            "prompt": "a cat",
            "original_size": (64, 48),
            "crops_coords_top_left": (4, 2),
            "target_size": (32, 32),
            "negative_original_size": (16, 16),
            "negative_crops_coords_top_left": (1, 1),
            "negative_target_size": (8, 8),
            "denoising_end": 0.9999,  # keeps every step: accepted
        },
        {"prompt": ["a", "b"], "generator": "list"},
    ]
    for extra in cases:
        kw = {"num_inference_steps": 6, **LATENT, **extra}
        lists = kw.pop("generator", None) == "list"
        call = {**kw, "generator": [gen(1), gen(2)]} if lists else {**kw, "generator": gen()}
        ref = xl64(**call).images
        call = {**kw, "generator": [gen(1), gen(2)]} if lists else {**kw, "generator": gen()}
        fast = parallelize(xl64, tol=0, window=3)
        assert max_abs(fast(**call).images, ref) < 1e-10, extra
        assert fast.stats.rows_per_evaluation == (1 if kw.get("guidance_scale") == 1.0 else 2)


def test_sdxl_lcm_unet_guidance_embedding():
    pipe = tiny_sdxl(time_cond_proj_dim=8).to(torch.float64)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    fast = same(pipe, {"prompt": ["a cat", "a dog"], "num_inference_steps": 6, **LATENT})
    assert fast.stats.rows_per_evaluation == 1  # LCM UNets embed the guidance instead


def test_sdxl_per_sample_windows(xl64):
    xl64.scheduler = ddpm()
    kw = {"prompt": ["a cat", "a dog", "a red cube"], "num_inference_steps": 10, **LATENT}
    ref = xl64(generator=gen(), **kw).images
    out = parallelize(xl64, tol=0, window=4, per_sample=True)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-10


def test_sdxl_callback_on_step_end(xl64):
    xl64.scheduler = ddpm()
    seen, ref_seen = [], []

    def record(into):
        def callback(pipe, i, t, kwargs):
            assert pipe.num_timesteps == 8  # callbacks (diffusers' own) read it
            into.append((i, int(t), kwargs["latents"].clone()))
            return kwargs

        return callback

    kw = {"prompt": "a cat", "num_inference_steps": 8, **LATENT}
    xl64(generator=gen(), callback_on_step_end=record(ref_seen), **kw)
    parallelize(xl64, tol=0, window=3)(generator=gen(), callback_on_step_end=record(seen), **kw)
    assert [(i, t) for i, t, _ in seen] == [(i, t) for i, t, _ in ref_seen]
    assert max(max_abs(a, b) for (_, _, a), (_, _, b) in zip(seen, ref_seen, strict=True)) < 1e-10


def test_sdxl_half_precision_upcasts_the_vae_as_the_pipeline():
    """force_upcast: the float16 VAE decodes in float32 and is cast back, as the pipeline."""
    pipe = tiny_sdxl().to(torch.float16)
    assert pipe.vae.config.force_upcast
    kw = {"prompt": "a cat", "num_inference_steps": 8, "output_type": "pt"}
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0)(generator=gen(), **kw).images
    assert out.dtype == ref.dtype == torch.float32 and pipe.vae.dtype == torch.float16
    assert max_abs(out, ref) < 0.01  # picard keeps a float32 state; the pipeline float16


class Mark:
    def apply_watermark(self, images):
        return images * 0 + 0.25


def test_sdxl_applies_the_pipelines_watermark(xl32, refiner64):
    """As each pipeline: text-to-image marks decoded images, img2img whatever it returns."""
    refiner64.watermark = Mark()
    try:
        kw = {"prompt": "a", "image": image(dtype=torch.float64), "num_inference_steps": 4}
        ref = refiner64(generator=gen(), **kw, **LATENT).images
        assert torch.equal(parallelize(refiner64)(generator=gen(), **kw, **LATENT).images, ref)
    finally:
        refiner64.watermark = None
    xl32.watermark = Mark()
    try:
        kw = {"prompt": "a cat", "num_inference_steps": 4, "output_type": "pt"}
        out = parallelize(xl32, tol=0)(generator=gen(), **kw).images
        assert torch.allclose(out, torch.full_like(out, 0.625))  # postprocessed from 0.25
        latents = parallelize(xl32, tol=0)(generator=gen(), prompt="a", num_inference_steps=4,
                                           **LATENT).images  # fmt: skip
        assert latents.shape == (1, 4, 8, 8) and not torch.all(latents == 0.25)
    finally:
        xl32.watermark = None


def test_sdxl_refused_arguments(xl32):
    fast = parallelize(xl32)
    kw = {"prompt": "a cat", "num_inference_steps": 4, **LATENT}
    for name, value in [
        ("timesteps", [999, 500]),
        ("sigmas", [1.0, 0.5]),
        ("ip_adapter_image_embeds", [torch.zeros(1, 1, 4)]),
    ]:
        with pytest.raises(TypeError, match=f"'{name}' of StableDiffusionXLPipeline is not"):
            fast(**{name: value}, **kw)
    with pytest.raises(TypeError, match="'callback' of StableDiffusionXLPipeline is not"):
        fast(callback=lambda *a: None, **kw)


def test_img2img_matches_float64_with_aesthetic_scores(refiner64):
    refiner64.scheduler = ddim()
    kw = {
        "prompt": ["a cat", "a dog"],
        "negative_prompt": ["blurry", "dark"],
        "image": image(dtype=torch.float64),
        "strength": 0.6,
        "num_images_per_prompt": 2,
        "aesthetic_score": 3.0,
        "negative_aesthetic_score": 1.0,
        "negative_original_size": (8, 8),
        "num_inference_steps": 15,
        "eta": 0.5,
        "output_type": "pt",
    }
    fast = same(refiner64, kw, window=4)
    assert fast.stats.iterations <= 9  # only the last 9 of the 15 steps run


def test_img2img_float32_parity_and_default_tolerance():
    pipe = tiny_sdxl_img2img()  # the base model's time ids, the Euler scheduler
    kw = {
        "prompt": ["a cat", "a dog"],
        "image": image(batch=2),
        "strength": 0.8,
        "num_inference_steps": 20,
        "output_type": "pt",
    }
    ref = pipe(generator=gen(), **kw).images
    exact = parallelize(pipe, tol=0, window=6)(generator=gen(), **kw).images
    assert max_abs(exact, ref) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 16 and max_abs(loose, ref) < 0.02  # 16 steps run


def test_img2img_denoising_start_continues_the_base_models_latents(xl64, refiner64):
    """Ensemble of experts' second half: latents in, the grid's steps past the cutoff."""
    xl64.scheduler, refiner64.scheduler = ddpm(), ddpm()
    base = xl64("a cat", num_inference_steps=10, generator=gen(1), **LATENT).images
    kw = {"prompt": "a cat", "image": base, "denoising_start": 0.7, "num_inference_steps": 10}
    fast = same(refiner64, {**kw, **LATENT}, window=2)
    assert fast.stats.iterations <= 3  # the loop runs the last 3 steps of 10
    given = {"prompt": "a cat", "image": image(dtype=torch.float64), "latents": base}
    same(refiner64, {**given, "strength": 0.5, "num_inference_steps": 10, **LATENT}, window=3)


def test_img2img_multistep_scheduler_starts_mid_grid():
    """set_begin_index restarts the warm-up: picard's tail of the grid does too."""
    pipe = tiny_sdxl_img2img(scheduler=DPMSolverMultistepScheduler(**BETAS)).to(torch.float64)
    kw = {"prompt": "a cat", "image": image(dtype=torch.float64), "num_inference_steps": 8}
    same(pipe, {**kw, "strength": 0.5, **LATENT}, window=3)
    same(pipe, {**kw, "strength": 1.0, **LATENT}, window=3)


def test_img2img_refused_arguments(refiner64):
    fast = parallelize(refiner64)
    kw = {"prompt": "a cat", "image": image(dtype=torch.float64), "num_inference_steps": 10}
    with pytest.raises(TypeError, match="'ip_adapter_image' of StableDiffusionXLImg2ImgPipeline"):
        fast(ip_adapter_image=image(), **kw)


@settings(max_examples=6)
@given(
    strength=st.floats(0.25, 1.0),
    steps=st.integers(4, 10),
    window=st.integers(1, 6),
    euler=st.booleans(),
)
def test_img2img_any_strength_is_the_sequential_sample(refiner64, strength, steps, window, euler):
    """Wherever strength starts the grid, picard's tail of it is the pipeline's loop."""
    refiner64.scheduler = EulerDiscreteScheduler(**BETAS) if euler else ddim()
    kw = {"prompt": "a cat", "image": image(dtype=torch.float64), "strength": strength,
          "num_inference_steps": steps, **LATENT}  # fmt: skip
    ref = refiner64(generator=gen(), **kw).images
    out = parallelize(refiner64, tol=0, window=window)(generator=gen(), **kw).images
    # diffusers' Euler rounds its sample to float32 inside step
    assert max_abs(out, ref) <= (1e-6 if euler else 1e-10) * float(ref.abs().max())


def test_base_then_refiner_split_with_denoising_end_and_start(xl64, refiner64):
    """The base stops at denoising_end (multistep schedulers too: the head of a grid is
    exact); the refiner starts at denoising_start — each equals its pipeline at tol=0."""
    xl64.scheduler = DPMSolverMultistepScheduler(**BETAS)
    kw = {"prompt": ["a cat", "a dog"], "num_inference_steps": 10, "denoising_end": 0.7}
    fast = same(xl64, {**kw, **LATENT}, window=4)
    assert fast.stats.num_steps < 10  # the loop stops early, at 70% of the noise
    refiner64.scheduler = ddim()
    latents = xl64(generator=gen(), **kw, **LATENT).images
    same(
        refiner64,
        {"prompt": ["a cat", "a dog"], "image": latents, "num_inference_steps": 10,
         "denoising_start": 0.7, **LATENT},
        window=3,
    )  # fmt: skip
