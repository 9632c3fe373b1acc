"""parallelize on PixArt-α/Σ and DiT: the sequential sample, per-sample conditioning, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from picard.adapters.diffusers import parallelize
from picard.models.tiny_pixart_dit import t5_prompt_embeds, tiny_dit, tiny_pixart


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def pixart_args(pipe, lengths=(3, 7), negative=(1, 2), **extra):
    """Two prompts of different lengths (their masks differ), negative embeddings."""
    dtype = pipe.transformer.dtype
    embeds, mask = t5_prompt_embeds(pipe, list(lengths))
    kw = {
        "prompt_embeds": embeds.to(dtype),
        "prompt_attention_mask": mask,
        "use_resolution_binning": False,
        "output_type": "latent",
        "num_inference_steps": 15,
    }
    if negative is not None:
        neg, neg_mask = t5_prompt_embeds(pipe, list(negative), seed=1)
        kw |= {
            "negative_prompt": None,
            "negative_prompt_embeds": neg.to(dtype),
            "negative_prompt_attention_mask": neg_mask,
        }
    return kw | extra


def both(pipe, kw, seed=0, **options):
    """The sequential and the parallel call on the same arguments and seed."""
    ref = pipe(generator=gen(seed), **kw)
    fast = parallelize(pipe, **options)
    return ref, fast(generator=gen(seed), **kw), fast


@pytest.fixture(scope="module", params=["alpha", "sigma"])
def pixart64(request):
    return tiny_pixart(request.param).to(torch.float64)


@pytest.mark.parametrize(
    ("scheduler", "eta"),
    [(DPMSolverMultistepScheduler(), 0.0), (DDIMScheduler(clip_sample=False), 0.7)],
    ids=["dpm++2m", "ddim-eta"],
)
def test_pixart_matches_float64(pixart64, scheduler, eta):
    """Several prompts × 2 images, a window smaller than N, DDIM's eta noise."""
    pixart64.scheduler = scheduler
    kw = pixart_args(pixart64, num_images_per_prompt=2, eta=eta)
    ref, out, fast = both(pixart64, kw, tol=0, window=6)
    assert out.images.shape == (4, 4, 8, 8)
    assert max_abs(out.images, ref.images) < 1e-10
    assert fast.stats.rows_per_evaluation == 2 and fast.stats.window == 6


@pytest.mark.parametrize("kind", ["alpha", "sigma"])
def test_pixart_float32_parity_and_default_tolerance(kind):
    pipe = tiny_pixart(kind)
    kw = pixart_args(pipe, num_inference_steps=20)
    ref, out, _ = both(pipe, kw, tol=0)
    scale = float(ref.images.abs().max())
    assert max_abs(out.images, ref.images) <= 1e-6 * scale  # ~3e-4 on latents of ~700
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 20
    assert max_abs(loose, ref.images) < 0.05 * scale


def test_pixart_options(pixart64):
    """No guidance, given latents, generator lists, per-sample windows, output types."""
    latents = torch.randn(2, 4, 8, 8, generator=gen(3), dtype=torch.float64)
    cases = [
        pixart_args(pixart64, negative=None, guidance_scale=1.0, latents=latents),
        pixart_args(pixart64, guidance_scale=2.0, num_inference_steps=7),
    ]
    cases[0]["num_inference_steps"] = 7
    for kw in cases:
        ref, out, fast = both(pixart64, kw, tol=0)
        assert max_abs(out.images, ref.images) < 1e-10
        assert fast.stats.rows_per_evaluation == (2 if kw.get("guidance_scale") > 1 else 1)
    kw = pixart_args(pixart64, lengths=(1, 4, 9), negative=(2, 2, 5), num_inference_steps=8)
    ref = pixart64(generator=[gen(1), gen(2), gen(3)], **kw).images
    fast = parallelize(pixart64, tol=0, window=4, per_sample=True)
    out = fast(generator=[gen(1), gen(2), gen(3)], **kw).images
    assert max_abs(out, ref) < 1e-10
    kw = pixart_args(pixart64, num_inference_steps=4)
    for output_type in ("pil", "np", "pt"):
        ref, out, _ = both(pixart64, kw | {"output_type": output_type}, tol=0)
        if output_type == "pil":
            assert out.images[0].size == ref.images[0].size == (16, 16)
        else:
            assert type(out.images) is type(ref.images)
            assert max_abs(out.images, ref.images) < 1e-10
    (tup,) = parallelize(pixart64, tol=0)(generator=gen(), return_dict=False, **kw)
    assert tup.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("kind", ["alpha", "sigma"])
def test_pixart_resolution_binning(kind):
    """The size goes to its aspect-ratio bin and the decoded image is resized back."""
    pipe = tiny_pixart(kind, sample_size=32, patch_size=8)
    kw = pixart_args(pipe, lengths=(4,), negative=(2,), num_inference_steps=3)
    kw |= {"use_resolution_binning": True, "height": 64, "width": 96, "output_type": "pt"}
    ref, out, _ = both(pipe, kw, tol=0)
    assert out.images.shape == ref.images.shape == (1, 3, 64, 96)
    assert max_abs(out.images, ref.images) < 1e-4
    latent = parallelize(pipe, tol=0)(generator=gen(), **kw | {"output_type": "latent"})
    assert latent.images.shape == (1, 4, 104, 152)  # the bin's size (208x304 px), not 64x96


def test_pixart_alpha_size_conditions():
    """PixArt-α at sample_size 128 conditions each row on its resolution and aspect ratio."""
    pipe = tiny_pixart("alpha", sample_size=128, patch_size=16).to(torch.float64)
    assert pipe.transformer.use_additional_conditions
    kw = pixart_args(pipe, num_inference_steps=5, height=256, width=192)
    ref, out, _ = both(pipe, kw, tol=0, window=3)
    assert out.images.shape == (2, 4, 128, 96)
    assert max_abs(out.images, ref.images) < 1e-10


def test_pixart_refusals():
    pipe = tiny_pixart("alpha")
    fast = parallelize(pipe)
    kw = pixart_args(pipe, num_inference_steps=3)
    with pytest.raises(TypeError, match="'callback' of PixArtAlphaPipeline is not supported"):
        fast(callback=lambda step, t, latents: None, **kw)
    with pytest.raises(TypeError, match="'timesteps' of PixArtAlphaPipeline is not supported"):
        fast(**kw | {"timesteps": [999, 500], "num_inference_steps": None})
    with pytest.raises(TypeError, match="'sigmas' of PixArtAlphaPipeline is not supported"):
        fast(sigmas=[1.0, 0.5], **kw)
    with pytest.raises(ValueError, match="num_inference_steps=1"):
        fast(**kw | {"num_inference_steps": 1})
    with pytest.raises(ValueError, match="use_resolution_binning needs a transformer sample_size"):
        fast(**kw | {"use_resolution_binning": True})
    odd = tiny_pixart("sigma", out_channels=5)
    with pytest.raises(ValueError, match="out_channels=5"):
        parallelize(odd)(**pixart_args(odd, num_inference_steps=3))
    sigma = tiny_pixart("sigma")
    with pytest.raises(TypeError, match="'callback' of PixArtSigmaPipeline is not supported"):
        parallelize(sigma)(callback=print, **pixart_args(sigma, num_inference_steps=3))


def test_pixart_sigma_single_step():
    """PixArt-Σ steps normally with N = 1 (α returns the denoised estimate: refused)."""
    pipe = tiny_pixart("sigma").to(torch.float64)
    ref, out, _ = both(pipe, pixart_args(pipe, num_inference_steps=1), tol=0)
    assert max_abs(out.images, ref.images) < 1e-10


DIT64 = tiny_dit().to(torch.float64)
DIT64_SIGMA_FREE = tiny_dit(out_channels=4).to(torch.float64)  # no learned-sigma half


@settings(max_examples=8)
@given(
    labels=st.lists(st.integers(0, 999), min_size=1, max_size=3),
    guidance=st.sampled_from([1.0, 4.0]),
    window=st.integers(2, 12),
    learned_sigma=st.booleans(),
)
def test_dit_matches_float64(labels, guidance, window, learned_sigma):
    """Class ids per row, guidance on eps only, learned sigma dropped, any window."""
    pipe = DIT64 if learned_sigma else DIT64_SIGMA_FREE
    kw = {"class_labels": labels, "guidance_scale": guidance, "num_inference_steps": 12}
    ref, out, fast = both(pipe, kw | {"output_type": "pt"}, tol=0, window=window)
    assert max_abs(out.images, ref.images) < 1e-10
    assert fast.stats.rows_per_evaluation == (2 if guidance > 1 else 1)


def test_dit_float32_parity_default_tolerance_and_outputs():
    pipe = tiny_dit(scheduler=DPMSolverMultistepScheduler())
    kw = {"class_labels": [1, 207, 999], "num_inference_steps": 20, "output_type": "pt"}
    ref, out, _ = both(pipe, kw, tol=0, window=7)
    assert max_abs(out.images, ref.images) < 1e-4
    fast = parallelize(pipe)
    loose = fast(generator=gen(), **kw).images
    assert fast.stats.iterations < 20 and max_abs(loose, ref.images) < 0.05
    np_ref, np_out, _ = both(pipe, kw | {"output_type": "np"}, tol=0)
    assert isinstance(np_out.images, np.ndarray) and np_out.images.shape == (3, 16, 16, 3)
    assert max_abs(np_out.images, np_ref.images) < 1e-4
    pil = parallelize(pipe)(generator=gen(), **kw | {"output_type": "pil"}).images
    assert pil[0].size == (16, 16)
    (tup,) = parallelize(pipe, tol=0)(generator=gen(), return_dict=False, **kw)
    assert max_abs(tup, ref.images) < 1e-4


def test_dit_per_sample_windows():
    kw = {"class_labels": [3, 500, 999, 0], "num_inference_steps": 10, "output_type": "pt"}
    ref, out, _ = both(DIT64, kw, tol=0, window=3, per_sample=True)
    assert max_abs(out.images, ref.images) < 1e-10


def test_dit_stochastic_scheduler_without_guidance():
    """DiT's DDPM noise comes from torch's global generator: the same draws, in order."""
    pipe = tiny_dit(scheduler=DDPMScheduler()).to(torch.float64)
    kw = {"class_labels": [5, 6], "guidance_scale": 1.0, "num_inference_steps": 10}
    kw["output_type"] = "pt"
    torch.manual_seed(123)
    ref = pipe(generator=gen(), **kw).images
    torch.manual_seed(123)
    out = parallelize(pipe, tol=0, window=4)(generator=gen(), **kw).images
    assert max_abs(out, ref) < 1e-10


def test_dit_refusals():
    pipe = tiny_dit(scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="guidance_scale > 1 and the stochastic DDPMScheduler"):
        parallelize(pipe)([1], num_inference_steps=5)
    pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="steps the state after scale_model_input"):
        parallelize(pipe)([1], num_inference_steps=5, guidance_scale=1.0)
    odd = tiny_dit(out_channels=6)
    with pytest.raises(ValueError, match="out_channels=6"):
        parallelize(odd)([1], num_inference_steps=5)
    with pytest.raises(TypeError, match="DiTPipeline: got an unexpected keyword argument"):
        parallelize(tiny_dit())([1], latents=torch.zeros(1, 4, 8, 8))
