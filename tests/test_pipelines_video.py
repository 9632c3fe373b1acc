"""parallelize(pipe) on the video pipelines: the sequential sample, exactly at tol=0.

The tiny pipelines are float64 (their models upcast a few norms to float32 inside, which
is part of the model). Where a pipeline rounds its *state* to float32 — Wan asks for float32
latents, flow-matching Euler's ``step`` casts to float32 — the float64 references here run
the pipeline without that rounding (``float64_latents``, ``float64_steps``), so that the
loop is float64 throughout, as picard's is; the pipeline's own float32 result is then
checked to its float32 rounding.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from contextlib import contextmanager

import pytest
import torch
from diffusion_helpers import step_recorder

from picard import SequentialWarning
from picard.adapters.diffusers import parallelize
from picard.adapters.pipelines.registry import runner_for
from picard.models.tiny_video import (
    HUNYUAN_TEMPLATE,
    tiny_animatediff,
    tiny_cogvideox,
    tiny_hunyuan_video,
    tiny_ltx,
    tiny_wan,
)

torch.set_num_threads(1)

WAN = {"height": 16, "width": 16, "num_frames": 9, "max_sequence_length": 8}
LATENT = {**WAN, "output_type": "latent"}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def sample_error(a, b):
    """The largest RMS difference of a sample relative to its RMS: what ``tol`` bounds."""
    a, b = torch.as_tensor(a).double().flatten(1), torch.as_tensor(b).double().flatten(1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


def relative(a, b):
    """The largest difference relative to ``b``'s largest magnitude."""
    return max_abs(a, b) / float(torch.as_tensor(b).double().abs().max())


class _Float64Torch:
    """``torch``, except that ``float32`` means float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextmanager
def float64_steps(scheduler):
    """The scheduler's ``step`` without its float32 rounding of the state."""
    module, real_step = sys.modules[type(scheduler).__module__], type(scheduler).step

    @functools.wraps(real_step)  # its signature: pipelines pass eta and generator by it
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


@contextmanager
def float64_latents(pipe):
    """The pipeline's ``prepare_latents`` in float64 whatever dtype its call asks for."""
    real = pipe.prepare_latents

    def prepare_latents(*args, **kwargs):
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        return real(*args, **kwargs)

    pipe.prepare_latents = prepare_latents
    try:
        yield
    finally:
        del pipe.prepare_latents


@contextmanager
def float64_loop(pipe):
    """The pipeline's loop in float64: its latents and its scheduler's steps."""
    with float64_latents(pipe), float64_steps(pipe.scheduler):
        yield


@contextmanager
def float64_outputs(model):
    """The model's outputs kept float64 where the pipeline rounds them (``.float()``)."""
    real = model.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        first = out[0]
        first.float = lambda: first
        return out

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


# --- Wan ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan():
    return tiny_wan().to(torch.float64)


@pytest.fixture(scope="module")
def wan22():
    """Wan 2.2: two experts, the boundary inside the 10-step grid."""
    return tiny_wan(seed=1, boundary_ratio=0.6).to(torch.float64)


def wan_run(pipe, options, **kw):
    """The float64 reference and picard's tol=0 result, both with float64 latents."""
    with float64_loop(pipe):
        ref = pipe(generator=gen(), **kw).frames
        fast = parallelize(pipe, tol=0, **options)
        out = fast(generator=gen(), **kw).frames
    return ref, out, fast.stats


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": ["a cat", "a dog"], "negative_prompt": ["blurry", "dark"]},
        {"prompt": "a cat", "num_videos_per_prompt": 2, "guidance_scale": 1.0},
        {"prompt": "a cat", "num_frames": 7, "guidance_scale": 3.0},  # rounded to 5 frames
    ],
    ids=["prompts-negatives", "videos-no-cfg", "frames-rounded"],
)
def test_wan_matches_float64(wan, extra):
    kw = {"num_inference_steps": 10, **LATENT, **extra}
    ref, out, stats = wan_run(wan, {"window": 4}, **kw)
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert max_abs(out, ref) < 1e-12
    assert stats.iterations <= 10


def test_wan22_two_experts_switch_inside_a_window(wan22):
    """The boundary falls inside windows: rows of both experts in one evaluation, each with
    its own guidance scale; per-sample windows too."""
    wan22.scheduler.set_timesteps(10)
    assert 0 < int((wan22.scheduler.timesteps >= 600).sum()) < 10
    kw = {"prompt": ["a cat", "a dog"], "guidance_scale_2": 2.0, "num_inference_steps": 10}
    for options in ({"window": 4}, {"window": 3, "per_sample": True}):
        ref, out, _ = wan_run(wan22, options, **kw, **LATENT)
        assert max_abs(out, ref) < 1e-12
    single, _, _ = wan_run(wan22, {}, **{**kw, "guidance_scale_2": 5.0}, **LATENT)
    assert max_abs(single, ref) > 1e-4  # the second expert's scale is in the rows


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_wan22_expand_timesteps_and_schedulers(scheduler):
    pipe = tiny_wan(scheduler=scheduler, boundary_ratio=0.5, expand_timesteps=True)
    pipe = pipe.to(torch.float64)
    kw = {"prompt": "a cat", "num_inference_steps": 8, **LATENT}
    ref, out, _ = wan_run(pipe, {"window": 3}, **kw)
    assert max_abs(out, ref) < 1e-12


def test_wan_float32_parity_and_default_tolerance():
    pipe = tiny_wan(boundary_ratio=0.6)
    kw = {"prompt": ["a cat", "a dog"], "num_inference_steps": 20, **LATENT}
    ref = pipe(generator=gen(), **kw).frames
    out = parallelize(pipe, tol=0, window=8)(generator=gen(), **kw).frames
    assert max_abs(out, ref) < 1e-5  # float32 rounding, in another order
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).frames
    assert fast.stats.iterations < 20
    assert sample_error(loose, ref) < 0.01  # the default tol


def test_wan_videos_output_types_and_callback(wan):
    kw = {"prompt": "a cat", "num_inference_steps": 5, **WAN}
    fast = parallelize(wan, tol=0, window=2)
    for output_type in ("pt", "np"):
        with float64_latents(wan):
            ref = wan(generator=gen(), output_type=output_type, **kw).frames
            out = fast(generator=gen(), output_type=output_type, **kw)
        assert type(out).__name__ == "WanPipelineOutput"
        assert max_abs(out.frames, ref) < 1e-10
    (frames,) = fast(generator=gen(), return_dict=False, **{**kw, "output_type": "np"})
    assert frames.shape == (1, 9, 16, 16, 3)
    seen, ref_seen = [], []
    with float64_latents(wan):
        wan(generator=gen(), callback_on_step_end=step_recorder(ref_seen), **kw)
        fast(generator=gen(), callback_on_step_end=step_recorder(seen), **kw)
    assert [s[:2] for s in seen] == [s[:2] for s in ref_seen]
    assert max(max_abs(a[2], b[2]) for a, b in zip(seen, ref_seen, strict=True)) < 1e-12


def test_wan_refusals_and_registry(wan):
    assert runner_for(wan)[0] == "WanPipeline"
    fast = parallelize(wan)
    kw = {"num_inference_steps": 4, **LATENT}
    embeds = wan.encode_prompt("a cat", do_classifier_free_guidance=False, max_sequence_length=8)
    with pytest.raises(ValueError, match="num_videos_per_prompt=2 is not applied"):
        fast(prompt_embeds=embeds[0], num_videos_per_prompt=2, guidance_scale=1.0, **kw)
    with pytest.raises(ValueError, match="guidance_scale_2"):
        fast(prompt="a cat", guidance_scale_2=2.0, **kw)  # Wan 2.1 has one expert
    with pytest.raises(TypeError, match=r"must be \['latents'\] with picard"):
        fast(prompt="a cat", callback_on_step_end=lambda *a: {},
             callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **kw)  # fmt: skip
    wan.transformer._cache_config = object()  # as enable_cache leaves it
    try:
        with pytest.raises(TypeError, match="cache"):
            fast(prompt="a cat", **kw)
    finally:
        wan.transformer._cache_config = None


# --- CogVideoX -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
         "prediction_type": "v_prediction", "snr_shift_scale": 1.0},
        {"beta_schedule": "linear", "prediction_type": "sample", "steps_offset": 1},
        {"timestep_spacing": "linspace", "set_alpha_to_one": False},
    ],
    ids=["default", "cogvideox-2b-zero-snr", "linear-sample", "linspace"],
)  # fmt: skip
def test_cogvideox_ddim_rule_is_the_scheduler_loop(config):
    """picard's CogVideoXDDIMScheduler rule against the scheduler's own loop (float64)."""
    from diffusers import CogVideoXDDIMScheduler

    import picard
    from picard.adapters.diffusers import from_scheduler

    def denoiser(x, t):
        return 0.3 * x + torch.sin(x) * (t.double() / 1000).view(-1, 1, 1)

    scheduler = CogVideoXDDIMScheduler(**config)
    scheduler.set_timesteps(12)
    x = x0 = torch.randn(2, 3, 4, generator=gen(), dtype=torch.float64)
    for t in scheduler.timesteps:
        x = scheduler.step(denoiser(x, t.expand(2)), t, x, eta=1.0, return_dict=False)[0]
    problem = from_scheduler(scheduler, denoiser, 12)
    assert max_abs(picard.solve(problem, x0, tol=0, window=5).final, x) < 1e-13


COG = {"height": 16, "width": 16, "num_frames": 9, "max_sequence_length": 16}


@pytest.fixture(scope="module")
def cog():
    return tiny_cogvideox().to(torch.float64)


def cog_run(pipe, options, **kw):
    """The float64 reference and picard's tol=0 result, the model's outputs unrounded."""
    with float64_outputs(pipe.transformer):
        ref = pipe(generator=gen(), **kw).frames
        fast = parallelize(pipe, tol=0, **options)
        out = fast(generator=gen(), **kw).frames
    return ref, out, fast.stats


@pytest.mark.parametrize(
    ("build", "extra"),
    [
        ({}, {"prompt": ["a cat", "a dog"], "negative_prompt": ["blurry", "dark"]}),
        ({"rotary": True}, {"prompt": ["a cat", "a dog"], "use_dynamic_cfg": True}),
        ({"patch_size_t": 2}, {"prompt": "a cat", "eta": 1.0}),  # eta: ignored by both
        ({}, {"prompt": ["a cat", "a dog"], "guidance_scale": 1.0}),
    ],
    ids=["prompts-negatives", "rotary-dynamic-cfg", "temporal-patches-eta", "no-cfg"],
)
def test_cogvideox_matches_float64(build, extra):
    pipe = tiny_cogvideox(**build).to(torch.float64)
    kw = {"num_inference_steps": 10, **COG, "output_type": "latent", **extra}
    for options in ({"window": 4}, {"window": 3, "per_sample": True}):
        ref, out, stats = cog_run(pipe, options, **kw)
        assert out.shape == ref.shape and max_abs(out, ref) < 1e-12
        assert stats.iterations <= 10
    # the pipeline rounds the model's outputs to float32: picard rounds them alike, but
    # diffusers' DDIM multiplies them in float32, picard's rule in float64
    real = pipe(generator=gen(), **kw).frames
    assert max_abs(parallelize(pipe, tol=0)(generator=gen(), **kw).frames, real) < 2e-6


def test_cogvideox_dynamic_cfg_follows_the_timestep(cog):
    kw = {"prompt": "a cat", "num_inference_steps": 8, **COG, "output_type": "latent"}
    plain, _, _ = cog_run(cog, {}, **kw)
    ref, out, _ = cog_run(cog, {"window": 3}, **kw, use_dynamic_cfg=True)
    assert max_abs(out, ref) < 1e-12 and max_abs(plain, ref) > 1e-3
    cog(generator=gen(), use_dynamic_cfg=True, **kw)
    left = cog.guidance_scale  # the last step's scale, where the pipeline leaves it
    parallelize(cog)(generator=gen(), use_dynamic_cfg=True, **kw)
    assert cog.guidance_scale == left != 6.0


def test_cogvideox_float32_and_default_tolerance():
    pipe = tiny_cogvideox(rotary=True)
    kw = {"prompt": ["a cat", "a dog"], "num_inference_steps": 20, **COG, "output_type": "latent"}
    ref = pipe(generator=gen(), **kw).frames
    out = parallelize(pipe, tol=0, window=8)(generator=gen(), **kw).frames
    assert max_abs(out, ref) < 1e-5
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).frames
    assert fast.stats.iterations < 20
    assert sample_error(loose, ref) < 0.01  # the default tol


def test_cogvideox_videos_and_unsupported(cog):
    kw = {"prompt": "a cat", "num_inference_steps": 4, **COG}
    for output_type in ("pt", "np"):
        ref, out, _ = cog_run(cog, {}, output_type=output_type, **kw)
        assert max_abs(out, ref) < 1e-10
    out = parallelize(cog, tol=0)(generator=gen(), output_type="np", **kw)
    assert type(out).__name__ == "CogVideoXPipelineOutput" and out.frames.shape == (1, 9, 16, 16, 3)
    padded = tiny_cogvideox(patch_size_t=2).to(torch.float64)  # padding frames dropped
    ref, out, _ = cog_run(padded, {}, output_type="pt", **kw)
    assert out.shape == ref.shape and max_abs(out, ref) < 1e-10
    with pytest.raises(TypeError, match="'timesteps' of CogVideoXPipeline"):
        parallelize(cog)(timesteps=[999, 500], **kw)
    dpm = tiny_cogvideox(dpm=True)
    with pytest.raises(TypeError, match="CogVideoXDPMScheduler is not supported"):
        parallelize(dpm)
    with pytest.warns(SequentialWarning):
        fast = parallelize(dpm, on_unsupported="sequential")
    out = fast(generator=gen(), output_type="latent", **kw).frames
    assert torch.equal(out, dpm(generator=gen(), output_type="latent", **kw).frames)


# --- LTX-Video -----------------------------------------------------------------------------

LTX = {"height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 16}


@pytest.fixture(scope="module")
def ltx():
    return tiny_ltx().to(torch.float64)


def ltx_run(pipe, options, **kw):
    """The float64 reference and picard's tol=0 result: latents, steps and outputs float64."""
    with float64_loop(pipe), float64_outputs(pipe.transformer):
        ref = pipe(generator=gen(), **kw).frames
        fast = parallelize(pipe, tol=0, **options)
        out = fast(generator=gen(), **kw).frames
    return ref, out, fast.stats


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": ["a cat", "a dog"], "negative_prompt": ["blurry", "dark"]},
        {"prompt": ["a cat", "a dog"], "guidance_rescale": 0.7, "frame_rate": 12},
        {"prompt": "a cat", "num_videos_per_prompt": 2, "guidance_scale": 1.0},
    ],
    ids=["prompts-negatives", "rescale-frame-rate", "videos-no-cfg"],
)
def test_ltx_matches_float64(ltx, extra):
    kw = {"num_inference_steps": 10, **LTX, "output_type": "latent", **extra}
    for options in ({"window": 4}, {"window": 3, "per_sample": True}):
        ref, out, stats = ltx_run(ltx, options, **kw)
        assert out.shape == ref.shape and max_abs(out, ref) < 1e-12
        assert stats.iterations <= 10
    # the pipeline itself: float32 latents and steps, outputs rounded to float32, as picard
    real = ltx(generator=gen(), **kw).frames
    assert max_abs(parallelize(ltx, tol=0, window=4)(generator=gen(), **kw).frames, real) < 1e-6


def test_ltx_embeddings_with_masks_and_decode_noise():
    """Given embeddings and masks; the decoder's timestep conditioning draws its noise from
    the call's generator after the loop, as the pipeline does."""
    pipe = tiny_ltx(timestep_conditioning=True).to(torch.float64)
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        ["a cat", "a dog"], ["blurry", "dark"], max_sequence_length=16
    )
    kw = {
        "prompt_embeds": embeds, "prompt_attention_mask": mask,
        "negative_prompt_embeds": negative, "negative_prompt_attention_mask": negative_mask,
        "num_inference_steps": 6, "decode_timestep": 0.05, "decode_noise_scale": 0.03, **LTX,
    }  # fmt: skip
    ref, out, _ = ltx_run(pipe, {"window": 3}, output_type="pt", **kw)
    assert out.shape == (2, 9, 3, 32, 32) and max_abs(out, ref) < 1e-10
    out = parallelize(pipe, tol=0)(generator=gen(), output_type="np", return_dict=False, **kw)
    assert max_abs(out[0], pipe(generator=gen(), output_type="np", **kw).frames) < 1e-6


def test_ltx_float32_default_tolerance_and_refusals():
    pipe = tiny_ltx()
    kw = {"prompt": ["a cat", "a dog"], "num_inference_steps": 20, **LTX, "output_type": "latent"}
    ref = pipe(generator=gen(), **kw).frames
    assert max_abs(parallelize(pipe, tol=0, window=8)(generator=gen(), **kw).frames, ref) < 1e-5
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).frames
    assert fast.stats.iterations < 20
    assert sample_error(loose, ref) < 0.01  # the default tol
    assert runner_for(pipe)[0] == "LTXPipeline"
    with pytest.raises(TypeError, match="'timesteps' of LTXPipeline"):
        fast(timesteps=[999, 500], **kw)
    embeds, mask, _, _ = pipe.encode_prompt("a cat", do_classifier_free_guidance=False,
                                            max_sequence_length=16)  # fmt: skip
    with pytest.raises(ValueError, match="num_videos_per_prompt=2 is not applied"):
        fast(prompt_embeds=embeds, prompt_attention_mask=mask, num_videos_per_prompt=2,
             **{**kw, "prompt": None})  # fmt: skip


# --- AnimateDiff ---------------------------------------------------------------------------

ANIMATEDIFF = {"num_frames": 3, "height": 8, "width": 8}
LINEAR = {"beta_schedule": "linear", "timestep_spacing": "linspace", "steps_offset": 1}


def animatediff_scheduler(name):
    import diffusers

    return getattr(diffusers, name)(**LINEAR)


@pytest.mark.parametrize(
    ("scheduler", "extra"),
    [
        (None, {"prompt": ["a cat", "a dog"], "negative_prompt": ["blurry", "dark"]}),
        (None, {"prompt": "a cat", "eta": 1.0}),  # DDIM's noise, drawn once
        ("EulerAncestralDiscreteScheduler", {"prompt": ["a cat", "a dog"]}),
        ("DPMSolverMultistepScheduler", {"prompt": "a cat", "guidance_scale": 1.0}),
    ],
    ids=["ddim-negatives", "ddim-eta", "euler-ancestral", "dpm-no-cfg"],
)
def test_animatediff_matches_float64(scheduler, extra):
    sched = None if scheduler is None else animatediff_scheduler(scheduler)
    pipe = tiny_animatediff(scheduler=sched).to(torch.float64)
    kw = {"num_inference_steps": 8, **ANIMATEDIFF, "output_type": "latent", **extra}
    euler = "Euler" in type(pipe.scheduler).__name__  # its steps round to float32 in diffusers
    for options in ({"window": 4}, {"window": 3, "per_sample": True}):
        with float64_steps(pipe.scheduler) if euler else contextlib.nullcontext():
            ref = pipe(generator=gen(), **kw).frames
            fast = parallelize(pipe, tol=0, **options)
            out = fast(generator=gen(), **kw).frames
        assert out.shape == ref.shape and relative(out, ref) < 1e-13
        assert fast.stats.iterations <= 8


def test_animatediff_float32_default_tolerance_and_videos():
    pipe = tiny_animatediff()
    kw = {"prompt": ["a cat", "a dog"], **ANIMATEDIFF, "num_inference_steps": 16}
    ref = pipe(generator=gen(), output_type="latent", **kw).frames
    out = parallelize(pipe, tol=0, window=8)(generator=gen(), output_type="latent", **kw).frames
    assert relative(out, ref) < 1e-5
    fast = parallelize(pipe)
    loose = fast(generator=gen(), output_type="latent", **kw).frames
    assert fast.stats.iterations < 16 and sample_error(loose, ref) < 0.01
    video = fast(generator=gen(), output_type="np", decode_chunk_size=2, **kw)
    assert type(video).__name__ == "AnimateDiffPipelineOutput"
    assert video.frames.shape == (2, 3, 8, 8, 3)
    assert max_abs(video.frames, pipe(generator=gen(), output_type="np", **kw).frames) < 0.02


def test_animatediff_refusals():
    pipe = tiny_animatediff()
    assert runner_for(pipe)[0] == "AnimateDiffPipeline"
    fast = parallelize(pipe)
    kw = {"prompt": "a cat", **ANIMATEDIFF, "num_inference_steps": 4}
    with pytest.raises(TypeError, match="'ip_adapter_image_embeds' of AnimateDiffPipeline"):
        fast(ip_adapter_image_embeds=[torch.zeros(2, 1, 8)], **kw)
    with pytest.raises(TypeError, match="'callback' of AnimateDiffPipeline is not supported"):
        fast(callback=lambda *a: None, **kw)
    pipe.enable_free_init(num_iters=2)
    try:
        with pytest.raises(TypeError, match="FreeInit is not supported"):
            fast(**kw)
    finally:
        pipe.disable_free_init()


# --- HunyuanVideo --------------------------------------------------------------------------

HUNYUAN = {**WAN, "prompt_template": HUNYUAN_TEMPLATE}


@pytest.fixture(scope="module")
def hunyuan():
    return tiny_hunyuan_video().to(torch.float64)


@pytest.mark.parametrize(
    ("guidance_embeds", "extra"),
    [
        (True, {"prompt": ["a cat", "a dog"], "guidance_scale": 4.0}),
        (
            True,
            {"prompt": ["a cat", "a dog"], "negative_prompt": ["x", "y"], "true_cfg_scale": 3.0},
        ),
        (False, {"prompt": "a cat", "sigmas": [1.0, 0.9, 0.7, 0.5, 0.3, 0.1]}),
    ],
    ids=["guidance-embedding", "true-cfg", "sigmas"],
)
def test_hunyuan_video_matches_float64(hunyuan, guidance_embeds, extra):
    pipe = (
        hunyuan if guidance_embeds else tiny_hunyuan_video(guidance_embeds=False).to(torch.float64)
    )
    kw = {"num_inference_steps": 8, **HUNYUAN, "output_type": "latent", **extra}
    for options in ({"window": 4}, {"window": 3, "per_sample": True}):
        ref, out, stats = wan_run(pipe, options, **kw)  # float64 latents and steps
        assert out.shape == ref.shape and max_abs(out, ref) < 1e-12
        assert stats.rows_per_evaluation == (2 if "true_cfg_scale" in extra else 1)
    real = pipe(generator=gen(), **kw).frames  # float32 latents and steps
    assert max_abs(parallelize(pipe, tol=0)(generator=gen(), **kw).frames, real) < 2e-6


def test_hunyuan_video_embeddings_videos_and_default_tolerance(hunyuan):
    embeds, pooled, mask = hunyuan.encode_prompt(
        ["a cat", "a dog"], prompt_template=HUNYUAN_TEMPLATE, max_sequence_length=8
    )
    kw = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
          "prompt_attention_mask": mask, "num_inference_steps": 6, **HUNYUAN}  # fmt: skip
    ref, out, _ = wan_run(hunyuan, {"window": 3}, output_type="np", **kw)
    assert out.shape == (2, 9, 16, 16, 3) and max_abs(out, ref) < 1e-10
    with pytest.raises(ValueError, match="num_videos_per_prompt=2 is not applied"):
        parallelize(hunyuan)(num_videos_per_prompt=2, **kw)
    pipe = tiny_hunyuan_video()
    kw = {"prompt": ["a cat", "a dog"], "num_inference_steps": 16, **HUNYUAN}
    ref = pipe(generator=gen(), output_type="latent", **kw).frames
    fast = parallelize(pipe)
    loose = fast(generator=gen(), output_type="latent", **kw).frames
    assert fast.stats.iterations < 16 and sample_error(loose, ref) < 0.01
    assert runner_for(pipe)[0] == "HunyuanVideoPipeline"
