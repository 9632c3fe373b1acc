"""parallelize on Stable Diffusion img2img, inpainting (9- and 4-channel UNets) and ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetPipeline,
)
from diffusion_helpers import step_recorder
from hypothesis import given
from hypothesis import strategies as st

import picard
from picard.adapters.diffusers import parallelize
from picard.adapters.pipelines.inpaint import Blended
from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import from_scheduler
from picard.models.tiny_sd_variants import (
    tiny_controlnet,
    tiny_sd_controlnet,
    tiny_sd_img2img,
    tiny_sd_inpaint,
)

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
PROMPTS = ["a cat", "a dog"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def images(dtype=torch.float32, n=2):
    return torch.rand(n, 3, 16, 16, generator=gen(5)).to(dtype)


def masks(n=2):
    mask = torch.zeros(n, 1, 16, 16)
    mask[0, :, 4:12, 4:12] = 1
    mask[-1, :, :8] = 1
    return mask


def euler():
    return EulerDiscreteScheduler(**SD_BETAS, steps_offset=1)


@pytest.fixture(scope="module")
def i2i64():
    return tiny_sd_img2img().to(torch.float64)


@pytest.fixture(scope="module")
def paint64():
    return tiny_sd_inpaint().to(torch.float64)


@pytest.fixture(scope="module")
def blend64():
    return tiny_sd_inpaint(in_channels=4).to(torch.float64)


@pytest.fixture(scope="module")
def cn64():
    return tiny_sd_controlnet().to(torch.float64)


def run_inpaint(pipe, options, **kw):
    """parallelize(pipe, **options)(**kw): the output and the stats."""
    fast = parallelize(pipe, **options)
    return fast(**kw), fast.stats


# img2img


@pytest.mark.parametrize(
    ("scheduler", "rel"),
    [(None, 1e-12), (DDIMScheduler(**SD_BETAS), 1e-12), (euler(), 1e-6)],
    ids=["ddpm", "ddim-eta", "euler"],  # Euler's step rounds to float32 in diffusers
)
def test_img2img_matches_float64(i2i64, scheduler, rel):
    """Strength, two prompts and their images, a window smaller than N; DDIM with eta."""
    pipe = i2i64
    old, pipe.scheduler = pipe.scheduler, scheduler or pipe.scheduler
    try:
        kw = {"prompt": PROMPTS, "image": images(torch.float64), "strength": 0.6,
              "num_inference_steps": 15, "output_type": "latent", "eta": 0.5}  # fmt: skip
        ref = pipe(generator=gen(), **kw).images
        fast = parallelize(pipe, tol=0, window=4)
        out = fast(generator=gen(), **kw).images
    finally:
        pipe.scheduler = old
    assert max_abs(out, ref) <= max(1e-10, rel * float(ref.abs().max()))
    assert fast.stats.iterations == 9  # int(15 * 0.6) steps, each its own sweep at tol=0


def test_img2img_float32_and_default_tolerance():
    pipe = tiny_sd_img2img()
    kw = {"prompt": PROMPTS, "image": images(), "num_inference_steps": 16, "output_type": "pt",
          "num_images_per_prompt": 2, "strength": 0.75}  # fmt: skip
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0, window=3)(generator=gen(), **kw).images
    assert out.shape == (4, 3, 16, 16) and max_abs(out, ref) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 12 and max_abs(loose, ref) < 0.02


def test_img2img_callback_sees_the_loops_steps(i2i64):
    """callback_on_step_end gets the loop's step indices and timesteps from strength on."""
    seen, ref_seen = [], []

    kw = {"prompt": "a cat", "image": images(torch.float64, 1), "strength": 0.5,
          "num_inference_steps": 10, "output_type": "latent"}  # fmt: skip
    i2i64(generator=gen(), callback_on_step_end=step_recorder(ref_seen), **kw)
    parallelize(i2i64, tol=0, window=3)(
        generator=gen(), callback_on_step_end=step_recorder(seen), **kw
    )
    assert [(i, t) for i, t, _ in seen] == [(i, t) for i, t, _ in ref_seen]
    pairs = zip(seen, ref_seen, strict=True)
    assert len(seen) == 5 and max(max_abs(a[2], b[2]) for a, b in pairs) < 1e-10


def test_img2img_refusals(i2i64):
    pipe = i2i64
    old, pipe.scheduler = pipe.scheduler, DPMSolverMultistepScheduler(**SD_BETAS)
    kw = {"prompt": "a cat", "image": images(torch.float64, 1), "num_inference_steps": 10,
          "output_type": "latent"}  # fmt: skip
    try:
        for strength in (0.5, 1.0):  # a multistep scheduler warms up again mid-grid
            ref = pipe(generator=gen(), strength=strength, **kw).images
            fast = parallelize(pipe, tol=0, window=3)
            out = fast(generator=gen(), strength=strength, **kw).images
            assert max_abs(out, ref) < 1e-10
    finally:
        pipe.scheduler = old
    with pytest.raises(ValueError, match=r"strength=0\.05 leaves no step"):
        parallelize(pipe)(strength=0.05, **kw)
    for key, value in [("timesteps", [999, 500]), ("ip_adapter_image", images(n=1))]:
        with pytest.raises(TypeError, match=f"'{key}' of StableDiffusionImg2ImgPipeline"):
            parallelize(pipe)(**{key: value}, **kw)


# inpainting, 9-channel UNet


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpaint_matches_float64(paint64, strength):
    """Masks and images per prompt, two images per prompt, a window smaller than N."""
    kw = {"prompt": PROMPTS, "image": images(torch.float64), "mask_image": masks(),
          "strength": strength, "num_inference_steps": 12, "output_type": "latent",
          "num_images_per_prompt": 2}  # fmt: skip
    ref = paint64(generator=gen(), **kw).images
    out = parallelize(paint64, tol=0, window=5)(generator=gen(), **kw).images
    assert out.shape == (4, 4, 8, 8) and max_abs(out, ref) < 1e-10


def test_inpaint_masked_image_latents_and_per_sample_windows(paint64):
    masked = torch.randn(2, 4, 8, 8, generator=gen(7), dtype=torch.float64)
    kw = {"prompt": PROMPTS, "image": images(torch.float64), "mask_image": masks(),
          "masked_image_latents": masked, "num_inference_steps": 10,
          "output_type": "latent"}  # fmt: skip
    ref = paint64(generator=gen(), **kw).images
    out = parallelize(paint64, tol=0, window=4, per_sample=True)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-10


def test_inpaint_float32_and_default_tolerance():
    pipe = tiny_sd_inpaint(scheduler=euler())
    kw = {"prompt": PROMPTS, "image": images(), "mask_image": masks(), "output_type": "pt",
          "num_inference_steps": 12}  # fmt: skip
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0, window=3)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 12 and max_abs(loose, ref) < 0.02


def test_inpaint_padding_mask_crop_pil(paint64):
    """The crop, the 'fill' resize and the overlay onto the original PIL image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[6:10, 5:9] = 255
    kw = {"prompt": "a cat", "image": image, "mask_image": Image.fromarray(mask),
          "padding_mask_crop": 2, "num_inference_steps": 8}  # fmt: skip
    ref = paint64(generator=gen(), **kw).images
    out = parallelize(paint64, tol=0, window=3)(generator=gen(), **kw).images
    assert out[0].size == ref[0].size == (16, 16)
    assert np.abs(np.asarray(out[0], float) - np.asarray(ref[0], float)).max() <= 1


# inpainting, 4-channel UNet: the blend


@pytest.mark.parametrize(
    ("scheduler", "strength", "rel"),
    [(None, 1.0, 1e-12), (None, 0.7, 1e-12), (euler(), 0.7, 1e-6)],
    ids=["ddpm", "ddpm-strength", "euler-strength"],
)
def test_blended_inpaint_matches_float64(blend64, scheduler, strength, rel):
    pipe = blend64
    old, pipe.scheduler = pipe.scheduler, scheduler or pipe.scheduler
    try:
        kw = {"prompt": PROMPTS, "image": images(torch.float64), "mask_image": masks(),
              "strength": strength, "num_inference_steps": 12, "output_type": "latent",
              "return_dict": False}  # fmt: skip
        ref = pipe(generator=gen(), **kw)[0]
        (out, nsfw), _ = run_inpaint(pipe, {"tol": 0, "window": 5}, generator=gen(), **kw)
    finally:
        pipe.scheduler = old
    assert nsfw is None and max_abs(out, ref) <= max(1e-10, rel * float(ref.abs().max()))


def test_blended_inpaint_float32_and_default_tolerance():
    pipe = tiny_sd_inpaint(in_channels=4)
    kw = {"prompt": PROMPTS, "image": images(), "mask_image": masks(), "output_type": "pt",
          "num_inference_steps": 12}  # fmt: skip
    ref = pipe(generator=gen(), **kw).images
    out, _ = run_inpaint(pipe, {"tol": 0, "window": 3}, generator=gen(), **kw)
    assert max_abs(out.images, ref) < 1e-4
    loose, stats = run_inpaint(pipe, {}, generator=gen(), **kw)
    assert stats.iterations < 12 and max_abs(loose.images, ref) < 0.02


def test_blended_inpaint_refusals(blend64):
    kw = {"prompt": "a cat", "image": images(torch.float64, 1), "mask_image": masks(1),
          "num_inference_steps": 5, "output_type": "latent"}  # fmt: skip
    with pytest.raises(TypeError, match="callback_on_step_end"):
        run_inpaint(blend64, {}, callback_on_step_end=lambda *args: {}, **kw)


@given(
    steps=st.integers(2, 12),
    strength=st.floats(0.2, 1.0),
    window=st.integers(1, 12),
    eta=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_blended_rule_is_the_pipelines_loop(steps, strength, window, eta, seed):
    """Blended around DDIM (with noise when eta > 0), any mask, start and window, equals
    the loop ``step, then (1 - m) add_noise(image, noise, t_next) + m latents``."""
    from picard.adapters.pipelines.inpaint import blend_targets

    g = gen(seed)
    sched = DDIMScheduler(**SD_BETAS)
    sched.set_timesteps(steps)
    first = steps - min(int(steps * strength), steps)
    if first == steps:
        return
    timesteps = sched.timesteps[first:]
    image = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 1, 3, 3, generator=g) > 0.5).double()
    x0 = sched.add_noise(image, noise, timesteps[:1])

    def den(x, t):
        return 0.3 * x + 0.01 * t.double()[:, None, None, None].sin()

    x, draws = x0, gen(seed + 1)
    for i, t in enumerate(timesteps):
        x = sched.step(den(x, t[None].expand(2)), t, x, eta=eta, generator=draws).prev_sample
        last = i == len(timesteps) - 1
        known = image if last else sched.add_noise(image, noise, timesteps[i + 1 : i + 2])
        x = (1 - mask) * known + mask * x
    holder = type("P", (), {"scheduler": sched})
    targets = blend_targets(holder, x0, image, noise, timesteps, first)
    problem = from_scheduler(sched, den, steps, generator=gen(seed + 1), begin=first, eta=eta)
    rule = Blended(problem.rule, mask, targets)
    blended = DiffusionProblem(rule, den, gen(seed + 1))
    y = picard.solve(blended, x0 - (1 - mask) * targets[0], tol=0, window=window).final
    assert max_abs(rule.latents(y, len(timesteps)), x) < 1e-10


# ControlNet


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"guess_mode": True},
        {
            "control_guidance_start": 0.3,
            "control_guidance_end": 0.8,
            "controlnet_conditioning_scale": 0.7,
        },
        {"guidance_scale": 1.0, "guess_mode": True},
    ],
    ids=["plain", "guess", "window-scale", "no-cfg-guess"],
)
def test_controlnet_matches_float64(cn64, extra):
    kw = {"prompt": PROMPTS, "image": images(torch.float64), "num_inference_steps": 8,
          "output_type": "latent", **extra}  # fmt: skip
    ref = cn64(generator=gen(), **kw).images
    fast = parallelize(cn64, tol=0, window=3)
    out = fast(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-10
    assert fast.stats.rows_per_evaluation == (1 if extra.get("guidance_scale") == 1.0 else 2)
    if not extra:  # the ControlNet matters: without it the sample differs
        off = cn64(generator=gen(), controlnet_conditioning_scale=0.0, **kw).images
        assert max_abs(off, ref) > 0.1


def test_multi_controlnet_per_sample_windows(cn64):
    net2 = tiny_controlnet(cn64.unet, seed=3).to(torch.float64)
    parts = dict(cn64.components)
    parts["controlnet"] = MultiControlNetModel([cn64.controlnet, net2])
    pipe = StableDiffusionControlNetPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    kw = {"prompt": PROMPTS, "image": [images(torch.float64), images(torch.float64).flip(0)],
          "num_inference_steps": 10, "output_type": "latent",
          "control_guidance_start": [0.0, 0.4], "control_guidance_end": [0.5, 1.0],
          "controlnet_conditioning_scale": [0.5, 1.5], "num_images_per_prompt": 2}  # fmt: skip
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0, window=4, per_sample=True)(generator=gen(), **kw).images
    assert out.shape == (4, 4, 8, 8) and max_abs(out, ref) < 1e-10


def test_controlnet_float32_and_default_tolerance():
    pipe = tiny_sd_controlnet(scheduler=euler())
    kw = {"prompt": PROMPTS, "image": images(), "output_type": "pt", "num_inference_steps": 12,
          "control_guidance_end": 0.7}  # fmt: skip
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0, window=3)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 12 and max_abs(loose, ref) < 0.02


def test_controlnet_second_order_scheduler(cn64):
    """Heun repeats timesteps: a guidance window is run where it keeps both of a pair."""
    old, cn64.scheduler = cn64.scheduler, HeunDiscreteScheduler(**SD_BETAS)
    kw = {"prompt": "a cat", "image": images(torch.float64, 1), "num_inference_steps": 5,
          "output_type": "latent"}  # fmt: skip
    try:
        with pytest.raises(ValueError, match="control_guidance_start/control_guidance_end"):
            parallelize(cn64)(control_guidance_end=0.5, **kw)  # keeps 4 of 9: splits a pair
        ref = cn64(generator=gen(), control_guidance_end=0.6, **kw).images
        fast = parallelize(cn64, tol=0, window=4)
        out = fast(generator=gen(), control_guidance_end=0.6, **kw).images
    finally:
        cn64.scheduler = old
    assert max_abs(out, ref) <= 1e-6 * float(ref.abs().max())
