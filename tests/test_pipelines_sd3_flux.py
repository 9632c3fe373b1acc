"""parallelize(pipe) on StableDiffusion3Pipeline and FluxPipeline: the sequential sample.

diffusers' ``FlowMatchEulerDiscreteScheduler.step`` rounds the state to float32 even in a
float64 pipeline; the float64 references here run the pipeline with that rounding taken
out of ``step`` (``float64_steps``), so that they are float64 throughout, as picard is.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pytest
import torch
from diffusion_helpers import step_recorder
from hypothesis import given, settings
from hypothesis import strategies as st

from picard.adapters.diffusers import parallelize
from picard.adapters.pipelines.registry import runner_for
from picard.models.tiny_sd3_flux import sd3_embeddings, t5_embeddings, tiny_flux, tiny_sd3

SIZE = {"height": 16, "width": 16, "output_type": "latent"}
SHORT = {**SIZE, "max_sequence_length": 8}  # SD3 without T5: 8 zero T5 tokens, not 256
SLG = {"skip_guidance_layers": [1], "skip_layer_guidance_start": 0.1}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


class _Float64Torch:
    """``torch``, except that ``float32`` means float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextmanager
def float64_steps(scheduler):
    """The scheduler's ``step`` without its float32 rounding of the state."""
    module, real_step = sys.modules[type(scheduler).__module__], type(scheduler).step

    def step(*args, **kwargs):
        real, module.torch = module.torch, _Float64Torch()
        try:
            return real_step(scheduler, *args, **kwargs)
        finally:
            module.torch = real

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step


def reference(pipe, **kw):
    """The sequential pipeline's images (float64 steps for a float64 pipeline)."""
    if pipe.transformer.dtype != torch.float64:
        return pipe(generator=gen(), **kw).images
    with float64_steps(pipe.scheduler):
        return pipe(generator=gen(), **kw).images


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3().to(torch.float64)


@pytest.fixture(scope="module")
def sd3_t5():
    return tiny_sd3(t5=True, dynamic=True).to(torch.float64)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux().to(torch.float64)


def flux_prompts(pipe, prompts):
    pooled = pipe._get_clip_prompt_embeds(prompts, 1, pipe.device)
    return {"prompt_embeds": t5_embeddings(pipe, prompts), "pooled_prompt_embeds": pooled}


def flux_negatives(pipe, prompts):
    embeds = flux_prompts(pipe, prompts)
    return {f"negative_{k}": v for k, v in embeds.items()}


# --- Stable Diffusion 3 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": ["a cat", "a dog"], "negative_prompt": ["blurry", "dark"]},
        {"prompt": "a cat", "num_images_per_prompt": 3, "guidance_scale": 1.0, **SHORT},
        {"prompt": ["a cat", "a dog"], "clip_skip": 1, **SHORT, **SLG},
        {
            "prompt": "a cat",
            "sigmas": [1.0, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02],
            **SHORT,
        },
        {"prompt": "a cat", "mu": 0.7, "guidance_scale": 4.0, **SHORT},
    ],
    ids=["prompts-negatives", "images-no-cfg", "skip-layers", "sigmas", "mu"],
)
def test_sd3_matches_float64(sd3, extra):
    kw = {"num_inference_steps": 10, **SIZE, **extra}
    ref = reference(sd3, **kw)
    fast = parallelize(sd3, tol=0, window=4)
    out = fast(generator=gen(), **kw).images
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert max_abs(out, ref) < 1e-10
    assert max_abs(out, sd3(generator=gen(), **kw).images) < 1e-5  # diffusers' float32 steps
    assert fast.stats.iterations <= 10


def test_sd3_t5_embeddings_dynamic_shift_and_skip_layers(sd3_t5):
    """Given T5 embeddings (and negative ones), mu from the image size, skip-layer guidance
    on the steps the pipeline's index test picks — per-sample windows included."""
    embeds, pooled = sd3_embeddings(sd3_t5, ["a cat", "a dog"])
    negative, negative_pooled = sd3_embeddings(sd3_t5, ["blurry", "dark"])
    kw = {
        "prompt_embeds": embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
        "num_inference_steps": 12,
        "skip_layer_guidance_stop": 0.7,
        **SIZE,
        **SLG,
    }
    ref = reference(sd3_t5, **kw)
    for options in ({"window": 5}, {"window": 3, "per_sample": True}):
        fast = parallelize(sd3_t5, tol=0, **options)
        assert max_abs(fast(generator=gen(), **kw).images, ref) < 1e-10
        assert fast.stats.rows_per_evaluation == 3  # an upper bound with skip layers
    plain = reference(sd3_t5, **{**kw, "skip_guidance_layers": None})
    assert max_abs(plain, ref) > 1e-3  # the skip layers matter: the test would see a slip


@settings(max_examples=8)
@given(
    steps=st.integers(2, 9),
    window=st.integers(1, 9),
    start=st.floats(0.0, 0.5),
    length=st.floats(0.0, 0.6),
)
def test_sd3_skip_layers_follow_the_step_index(sd3, steps, window, start, length):
    kw = {
        "prompt": "a cat",
        "num_inference_steps": steps,
        "skip_guidance_layers": [0],
        "skip_layer_guidance_start": start,
        "skip_layer_guidance_stop": start + length,
        **SHORT,
    }
    ref = reference(sd3, **kw)
    out = parallelize(sd3, tol=0, window=window)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-10


def test_sd3_float32_parity_and_default_tolerance():
    pipe = tiny_sd3()
    kw = {"prompt": ["a cat", "a dog"], "num_inference_steps": 20, **SHORT}
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0, window=8)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 20
    assert max_abs(loose, ref) < 0.05 * float(ref.abs().max())


def test_sd3_images_and_output_types(sd3):
    kw = {"prompt": "a cat", "num_inference_steps": 6, "height": 16, "width": 16}
    kw["max_sequence_length"] = 8
    fast = parallelize(sd3, tol=0)
    for output_type in ("pt", "np"):
        ref = reference(sd3, output_type=output_type, **kw)
        out = fast(generator=gen(), output_type=output_type, **kw)
        assert type(out).__name__ == "StableDiffusion3PipelineOutput"
        assert max_abs(out.images, ref) < 1e-10
    (pil,) = fast(generator=gen(), return_dict=False, **kw)
    assert pil[0].size == (16, 16)


def test_sd3_refusals_and_registry(sd3):
    assert runner_for(sd3)[0] == "StableDiffusion3Pipeline"
    fast = parallelize(sd3)
    kw = {"prompt": "a cat", "num_inference_steps": 4, **SHORT}
    with pytest.raises(TypeError, match="'ip_adapter_image_embeds' of StableDiffusion3Pipeline"):
        fast(ip_adapter_image_embeds=[torch.zeros(1, 2, 8)], **kw)
    embeds, pooled = sd3.encode_prompt("a cat", None, None, do_classifier_free_guidance=False)[::2]
    with pytest.raises(ValueError, match="num_images_per_prompt=2 is not applied"):
        fast(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_images_per_prompt=2,
             **{**kw, "prompt": None})  # fmt: skip

    def cutoff(pipe, i, t, kwargs):
        pipe._guidance_scale = 0.0  # as SD3CFGCutoffCallback does
        return kwargs

    with pytest.raises(RuntimeError, match="guidance scale or the interrupt flag changed"):
        fast(callback_on_step_end=cutoff, **kw)
    from diffusers.callbacks import SD3CFGCutoffCallback

    with pytest.raises(TypeError, match=r"must be \['latents'\] with picard"):
        fast(callback_on_step_end=SD3CFGCutoffCallback(cutoff_step_ratio=0.5), **kw)


def test_sd3_callback_sees_the_sequential_states(sd3):
    seen, ref_seen = [], []

    kw = {"prompt": "a cat", "num_inference_steps": 6, **SHORT}
    reference(sd3, callback_on_step_end=step_recorder(ref_seen, float), **kw)
    parallelize(sd3, tol=0, window=3)(
        generator=gen(), callback_on_step_end=step_recorder(seen, float), **kw
    )
    assert [s[:2] for s in seen] == [s[:2] for s in ref_seen]
    assert max(max_abs(a[2], b[2]) for a, b in zip(seen, ref_seen, strict=True)) < 1e-10


# --- Flux ---------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
@pytest.mark.parametrize("true_cfg", [False, True], ids=["plain", "true-cfg"])
def test_flux_matches_float64(flux, guidance_embeds, true_cfg):
    pipe = flux if guidance_embeds else tiny_flux(guidance_embeds=False).to(torch.float64)
    kw = {"num_inference_steps": 10, "guidance_scale": 4.0, **SIZE}
    kw.update(flux_prompts(pipe, ["a cat", "a dog", "a red cube"]))
    if true_cfg:
        kw.update(true_cfg_scale=3.0, **flux_negatives(pipe, ["blurry", "dark", "flat"]))
    ref = reference(pipe, **kw)
    fast = parallelize(pipe, tol=0, window=4)
    out = fast(generator=gen(), **kw).images
    assert out.shape == (3, 16, 16)  # packed: 16 tokens of 2x2 patches of 4 channels
    assert max_abs(out, ref) < 1e-10
    assert max_abs(out, pipe(generator=gen(), **kw).images) < 1e-5
    assert fast.stats.rows_per_evaluation == (2 if true_cfg else 1)


def test_flux_guidance_sigmas_latents_and_per_sample(flux):
    """The guidance embedding follows guidance_scale; custom sigmas; given latents."""
    kw = {"num_inference_steps": 8, **SIZE, **flux_prompts(flux, ["a cat", "a dog"])}
    low = reference(flux, **{**kw, "guidance_scale": 1.0})
    high = reference(flux, **kw)
    assert max_abs(low, high) > 1e-3  # the guidance embedding is in the rows
    cases = [
        {"sigmas": [1.0, 0.9, 0.75, 0.6, 0.4, 0.25, 0.1]},
        {"latents": torch.randn(2, 16, 16, generator=gen(5), dtype=torch.float64)},
    ]
    for extra in cases:  # 7 sigmas: the grid has 7 steps whatever num_inference_steps says
        args = {**kw, **extra}
        ref = reference(flux, **args)
        out = parallelize(flux, tol=0, window=3, per_sample=True)(generator=gen(), **args)
        assert max_abs(out.images, ref) < 1e-10, extra


def test_flux_negatives_of_another_length_run_apart(flux, monkeypatch):
    """A negative prompt whose T5 length differs from the prompt's: two model calls."""
    short = flux_prompts(flux, ["blurry"])
    short["prompt_embeds"] = short["prompt_embeds"][:, :5]
    encode = flux.encode_prompt

    def encode_prompt(prompt=None, prompt_embeds=None, pooled_prompt_embeds=None, **kw):
        if prompt == "blurry":  # stands in for a T5 tokenizer
            prompt, prompt_embeds = None, short["prompt_embeds"]
            pooled_prompt_embeds = short["pooled_prompt_embeds"]
        return encode(prompt=prompt, prompt_embeds=prompt_embeds,
                      pooled_prompt_embeds=pooled_prompt_embeds, **kw)  # fmt: skip

    monkeypatch.setattr(flux, "encode_prompt", encode_prompt)
    kw = {"num_inference_steps": 6, "true_cfg_scale": 2.0, "negative_prompt": "blurry", **SIZE}
    kw.update(flux_prompts(flux, ["a cat"]))
    ref = reference(flux, **kw)
    assert max_abs(parallelize(flux, tol=0, window=4)(generator=gen(), **kw).images, ref) < 1e-10


def test_flux_float32_parity_and_default_tolerance():
    pipe = tiny_flux()
    kw = {"num_inference_steps": 20, **SIZE, **flux_prompts(pipe, ["a cat", "a dog"])}
    ref = pipe(generator=gen(), **kw).images
    out = parallelize(pipe, tol=0, window=8)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 20
    assert max_abs(loose, ref) < 0.05 * float(ref.abs().max())


def test_flux_images_and_output_types(flux):
    kw = {"num_inference_steps": 6, "height": 16, "width": 16, **flux_prompts(flux, ["a cat"])}
    fast = parallelize(flux, tol=0)
    for output_type in ("pt", "np"):
        ref = reference(flux, output_type=output_type, **kw)
        out = fast(generator=gen(), output_type=output_type, **kw)
        assert type(out).__name__ == "FluxPipelineOutput"
        assert max_abs(out.images, ref) < 1e-10
    (pil,) = fast(generator=gen(), return_dict=False, **kw)
    assert pil[0].size == (16, 16)


def test_flux_refusals_and_registry(flux):
    assert runner_for(flux)[0] == "FluxPipeline"
    fast = parallelize(flux)
    kw = {"num_inference_steps": 4, **SIZE, **flux_prompts(flux, ["a cat"])}
    for name in ("ip_adapter_image_embeds", "negative_ip_adapter_image_embeds"):
        with pytest.raises(TypeError, match=f"'{name}' of FluxPipeline is not supported"):
            fast(**{name: [torch.zeros(1, 1, 8)]}, **kw)
    with pytest.raises(ValueError, match="num_images_per_prompt=2 is not applied"):
        fast(num_images_per_prompt=2, **kw)
    negative = flux_negatives(flux, ["blurry"])
    negative["negative_prompt_embeds"] = negative["negative_prompt_embeds"][:, :4]
    with pytest.raises(ValueError, match="must have the same shape"):
        fast(true_cfg_scale=2.0, **negative, **kw)
    flux.transformer._cache_config = object()  # as enable_cache leaves it
    try:
        with pytest.raises(TypeError, match="cache"):
            fast(**kw)
    finally:
        flux.transformer._cache_config = None
