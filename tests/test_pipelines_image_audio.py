"""parallelize(pipe) on Flux Kontext/Fill, Sana, Lumina 2, CogView4, QwenImage, Stable Audio.

Each family at ``tol=0`` gives the pipeline's own sequential sample: in float64 to 1e-10
(diffusers' flow-matching ``step`` rounds the state to float32; the references take that
rounding out, see ``test_pipelines_sd3_flux.float64_steps``). Sana's pipeline keeps its
latents in float32 whatever the model's dtype, so it is compared in float32: the parallel
sums run in another order, an error of a few float32 ulps of the latents (1e-5 absolute
for latents of size ~4). At the default tolerance (0.01) each sample stays within 1% of its own
sequential sample (relative to its largest entry) in fewer sweeps than steps.
"""

from __future__ import annotations

import pytest
import test_pipelines_sd3_flux as sd3_tests
import torch

from picard.adapters.diffusers import parallelize
from picard.adapters.pipelines.registry import runner_for
from picard.models import tiny_image_audio as tiny

torch.set_num_threads(1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def per_sample_error(out, ref):
    """Each sample's largest error relative to its own largest entry."""
    out, ref = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    err = (out - ref).flatten(1).abs().amax(1)
    return (err / ref.flatten(1).abs().amax(1)).tolist()


def reference(pipe, **kw):
    """The sequential pipeline's output (float64 flow-matching steps in float64)."""
    flow = type(pipe.scheduler).__name__.startswith("FlowMatch")
    if pipe.transformer.dtype != torch.float64 or not flow:
        return pipe(generator=gen(), **kw)
    with sd3_tests.float64_steps(pipe.scheduler):
        return pipe(generator=gen(), **kw)


def double(embeds):
    return {k: v.double() if v.is_floating_point() else v for k, v in embeds.items()}


def check(pipe, kw, *, steps, atol=1e-10, field="images", **options):
    """tol=0 equals the sequential sample; the default tolerance stays near it in fewer sweeps."""
    ref = getattr(reference(pipe, **kw), field)
    fast = parallelize(pipe, tol=0, **options)
    out = getattr(fast(generator=gen(), **kw), field)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert max_abs(out, ref) < atol
    assert fast.stats.iterations <= steps
    loose = parallelize(pipe)
    near = getattr(loose(generator=gen(), **kw), field)
    assert loose.stats.iterations < steps
    assert max(per_sample_error(near, ref)) < 0.01  # the default tol: 1% per sample
    return ref


# --- Flux Kontext and Fill ----------------------------------------------------------------


@pytest.fixture(scope="module")
def kontext():
    return tiny.tiny_flux_kontext().to(torch.float64)


@pytest.mark.parametrize("true_cfg", [False, True], ids=["image", "image-true-cfg"])
def test_flux_kontext_matches_float64(kontext, true_cfg):
    image = torch.rand(2, 3, 16, 16, generator=gen(3), dtype=torch.float64)
    kw = {"image": image, "height": 16, "width": 16, "max_area": 256, "_auto_resize": False}
    kw |= {"num_inference_steps": 10, "output_type": "latent"}
    kw |= tiny.flux_prompt_embeds(kontext, ["a cat", "a dog"])
    if true_cfg:
        kw |= {"true_cfg_scale": 2.0, **tiny.flux_prompt_embeds(kontext, ["a", "b"], "negative_")}
    ref = check(kontext, kw, steps=10, window=4)
    plain = reference(kontext, **{**kw, "image": None}).images
    assert max_abs(plain, ref) > 1e-3  # the image's tokens matter: a slip would show


def test_flux_kontext_text_only_and_refusals(kontext):
    kw = {"height": 16, "width": 16, "max_area": 256, "num_inference_steps": 6}
    kw |= {"output_type": "latent", **tiny.flux_prompt_embeds(kontext, ["a cat"])}
    ref = reference(kontext, **kw).images
    fast = parallelize(kontext, tol=0, window=3, per_sample=True)
    assert max_abs(fast(generator=gen(), **kw).images, ref) < 1e-10
    assert runner_for(kontext)[0] == "FluxKontextPipeline"
    with pytest.raises(TypeError, match="'ip_adapter_image_embeds' of FluxKontextPipeline"):
        fast(ip_adapter_image_embeds=[torch.zeros(1, 1, 8)], **kw)


def test_flux_fill_matches_float64_with_strength():
    pipe = tiny.tiny_flux_fill().to(torch.float64)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    image = torch.rand(2, 3, 16, 16, generator=gen(3), dtype=torch.float64)
    kw = {"image": image, "mask_image": mask, "height": 16, "width": 16}
    kw |= {"num_inference_steps": 10, "output_type": "latent"}
    kw |= tiny.flux_prompt_embeds(pipe, ["a cat", "a dog"])
    check(pipe, kw, steps=10, window=4)
    ref = reference(pipe, strength=0.6, **kw).images  # the solve starts at step 4 of 10
    fast = parallelize(pipe, tol=0, window=3, per_sample=True)
    assert max_abs(fast(generator=gen(), strength=0.6, **kw).images, ref) < 1e-10
    assert fast.stats.iterations <= 6
    with pytest.raises(ValueError, match="strength"):
        fast(strength=0.0, **kw)


# --- Sana -----------------------------------------------------------------------------------


def sana_call(**extra):
    kw = {"height": 32, "width": 32, "use_resolution_binning": False, "negative_prompt": None}
    kw |= {"num_inference_steps": 10, "output_type": "latent"}
    kw |= tiny.masked_prompt_embeds(["a cat", "a big dog"])
    return kw | tiny.masked_prompt_embeds(["", "blurry"], prefix="negative_") | extra


def test_sana_flow_euler_and_unipc_match_float32():
    """Sana's latents are float32 (the pipeline casts them): float32 rounding, 1e-5."""
    from diffusers import UniPCMultistepScheduler

    check(tiny.tiny_sana(), sana_call(), steps=10, atol=1e-5, window=4)
    unipc = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = tiny.tiny_sana(scheduler=unipc)
    ref = reference(pipe, **sana_call(guidance_scale=1.0)).images
    out = parallelize(pipe, tol=0, window=3)(generator=gen(), **sana_call(guidance_scale=1.0))
    assert max_abs(out.images, ref) < 1e-5


def test_sana_refusals_and_binning():
    from diffusers import DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    with pytest.raises(ValueError, match="use_flow_sigmas=True is not supported"):
        parallelize(tiny.tiny_sana(scheduler=dpm))(generator=gen(), **sana_call())
    pipe = tiny.tiny_sana()
    with pytest.raises(ValueError, match="divisible by 32"):
        parallelize(pipe)(**sana_call(height=16))
    from picard.adapters.pipelines.preamble import call_arguments
    from picard.adapters.pipelines.sana import prepare_sana

    kw = sana_call(height=40, width=24)
    kw["use_resolution_binning"] = True  # the 512 bin of 40 x 24: as the pipeline bins it
    binned = pipe.image_processor.classify_height_width_bin(40, 24, ratios=_bin_512())
    prepared = prepare_sana(pipe, call_arguments(pipe, generator=gen(), **kw))
    assert prepared.latents.shape[-2:] == (binned[0] // 2, binned[1] // 2)
    kw = sana_call(num_inference_steps=3, output_type="pt", guidance_scale=1.0)
    out = parallelize(pipe, tol=0)(generator=gen(), **kw)
    assert type(out).__name__ == "SanaPipelineOutput" and out.images.shape == (2, 3, 32, 32)
    assert max_abs(out.images, reference(pipe, **kw).images) < 1e-5


def _bin_512():
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN

    return ASPECT_RATIO_512_BIN


# --- Lumina 2 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lumina():
    return tiny.tiny_lumina2().to(torch.float64)


def lumina_call(pipe, **extra):
    kw = {"height": 64, "width": 64, "num_inference_steps": 10, "output_type": "latent"}
    kw |= double(tiny.masked_prompt_embeds(["a cat", "a big red dog"]))
    return kw | double(tiny.masked_prompt_embeds(["", "blurry"], prefix="negative_")) | extra


def test_lumina2_matches_float64_with_truncated_normalized_guidance(lumina):
    ref = check(lumina, lumina_call(lumina, cfg_trunc_ratio=0.55), steps=10, window=4)
    full = reference(lumina, **lumina_call(lumina)).images
    assert max_abs(full, ref) > 1e-4  # the truncation matters: a slip would show
    kw = lumina_call(lumina, cfg_normalization=False, guidance_scale=1.0)
    fast = parallelize(lumina, tol=0, window=3, per_sample=True)
    assert max_abs(fast(generator=gen(), **kw).images, reference(lumina, **kw).images) < 1e-10
    assert runner_for(lumina)[0] == "Lumina2Pipeline"


def test_lumina2_images(lumina):
    kw = lumina_call(lumina, num_inference_steps=4, output_type="pt")
    out = parallelize(lumina, tol=0)(generator=gen(), **kw)
    assert type(out).__name__ == "ImagePipelineOutput"
    assert max_abs(out.images, reference(lumina, **kw).images) < 1e-10


# --- CogView4 -------------------------------------------------------------------------------


def cogview_call(dtype, **extra):
    text = {p: tiny.masked_prompt_embeds(p, width=16)["prompt_embeds"].to(dtype)
            for p in (("a cat", "a big red dog"), ("", "blurry"))}  # fmt: skip
    kw = {"prompt_embeds": text[("a cat", "a big red dog")], "height": 16, "width": 16}
    kw |= {"negative_prompt_embeds": text[("", "blurry")], "num_inference_steps": 10}
    return kw | {"output_type": "latent"} | extra


def test_cogview4_matches_float64_given_latents():
    pipe = tiny.tiny_cogview4().to(torch.float64)
    latents = torch.randn(2, 4, 8, 8, generator=gen(1), dtype=torch.float64)
    check(pipe, cogview_call(torch.float64, latents=latents), steps=10, window=4)
    extra = {"latents": latents, "original_size": (32, 24), "crops_coords_top_left": (2, 1)}
    extra["timesteps"] = [999, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    kw = cogview_call(torch.float64, **extra)
    fast = parallelize(pipe, tol=0, window=3, per_sample=True)
    assert max_abs(fast(generator=gen(), **kw).images, reference(pipe, **kw).images) < 1e-10


def test_cogview4_float32_and_refusals():
    pipe = tiny.tiny_cogview4()
    kw = cogview_call(torch.float32)
    ref = reference(pipe, **kw).images
    assert max_abs(parallelize(pipe, tol=0, window=5)(generator=gen(), **kw).images, ref) < 1e-5
    with pytest.raises(TypeError, match="'callback_on_step_end' of CogView4Pipeline"):
        parallelize(pipe)(callback_on_step_end=lambda *a: {}, **kw)


# --- QwenImage ------------------------------------------------------------------------------


def test_qwenimage_matches_float64_with_normalized_true_cfg():
    pipe = tiny.tiny_qwenimage().to(torch.float64)
    kw = {"height": 32, "width": 32, "num_inference_steps": 10, "output_type": "latent"}
    kw |= double(tiny.qwen_prompt_embeds(["a cat", "a big red dog"]))
    check(pipe, kw, steps=10, window=4)
    kw |= double(tiny.qwen_prompt_embeds(["", "blurry"], "negative_"))
    ref = check(pipe, kw, steps=10, window=3, per_sample=True)
    assert max_abs(ref, reference(pipe, **{**kw, "true_cfg_scale": 1.0}).images) > 1e-3
    kw = {**kw, "num_inference_steps": 4, "output_type": "np"}
    out = parallelize(pipe, tol=0)(generator=gen(), **kw)
    assert out.images.shape == (2, 32, 32, 3)
    assert max_abs(out.images, reference(pipe, **kw).images) < 1e-10


# --- Stable Audio ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio():
    return tiny.tiny_stable_audio().to(torch.float64)


def test_stable_audio_matches_float64(audio):
    g = gen(4)
    embeds = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    negative = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    kw = {"prompt_embeds": embeds, "num_inference_steps": 20, "output_type": "latent"}
    check(audio, kw, steps=20, field="audios", window=4)  # zeros as the negative half
    kw |= {"num_inference_steps": 10, "negative_prompt_embeds": negative, "attention_mask": mask}
    kw |= {"num_waveforms_per_prompt": 2, "audio_start_in_s": 1.0, "audio_end_in_s": 5.0}
    ref = reference(audio, **kw).audios
    fast = parallelize(audio, tol=0, window=3, per_sample=True)
    assert max_abs(fast(generator=gen(), **kw).audios, ref) < 1e-10
    kw |= {"output_type": "pt", "num_inference_steps": 4}
    out = fast(generator=gen(), **kw).audios
    assert out.shape == (4, 2, 16)  # 1 s to 5 s at 4 Hz
    assert max_abs(out, reference(audio, **kw).audios) < 1e-10


def test_stable_audio_refusals(audio):
    from diffusers import CosineDPMSolverMultistepScheduler

    kw = {"prompt_embeds": torch.zeros(1, 5, 32, dtype=torch.float64)}
    with pytest.raises(TypeError, match="'callback' of StableAudioPipeline"):
        parallelize(audio)(callback=lambda *a: None, **kw)
    cosine = tiny.tiny_stable_audio(scheduler=CosineDPMSolverMultistepScheduler())
    with pytest.raises(TypeError, match="CosineDPMSolverMultistepScheduler"):
        parallelize(cosine)
