"""ComfyUI custom nodes: picard's parallel k-diffusion samplers as a SAMPLER.

``PicardSampler`` returns a ``comfy.samplers.KSAMPLER`` wrapping one of
:data:`picard.adapters.k_diffusion.SAMPLERS`; plug it into ``SamplerCustom`` (or
``SamplerCustomAdvanced``) like ``KSamplerSelect``'s output. ComfyUI and picard are
imported when the node runs, so this module loads without them (and is tested so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "PicardSampler", "comfy_sampler"]

# Which samplers take which ComfyUI-exposed options (k-diffusion's keyword names).
_TAKES_ETA = {
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
    "dpmpp_3m_sde",
}  # fmt: skip
_BROWNIAN = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"}


def _sampler_names() -> list[str]:
    from picard.adapters.k_diffusion import SAMPLERS

    return list(SAMPLERS)


def comfy_sampler(name: str, **picard_options: Any) -> Callable[..., Any]:
    """A ComfyUI ``sampler_function`` running picard's ``name`` sampler.

    ComfyUI calls it as ``fn(model_k, noise, sigmas, extra_args=..., callback=...,
    disable=..., **extra_options)``. As ComfyUI's own samplers do, an ancestral or SDE
    sampler seeds its noise from ``extra_args["seed"]`` when present (a seeded normal
    generator, or a seeded Brownian tree for the SDE samplers). With an inpainting mask
    and more than one sample, ComfyUI's model holds the batch's latent and noise itself,
    so the window's rows are evaluated one batch at a time.

    Args:
        name: a key of :data:`picard.adapters.k_diffusion.SAMPLERS`.
        **picard_options: picard's keywords (``tol``, ``window``, ...).

    Returns:
        The sampler function.
    """
    from picard.adapters.k_diffusion import SAMPLERS

    if name not in SAMPLERS:
        raise ValueError(f"sampler name must be one of {sorted(SAMPLERS)}, got {name!r}")
    run = SAMPLERS[name]

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
        from picard.adapters.k_diffusion import BrownianTreeNoiseSampler, default_noise_sampler

        extra_args = {} if extra_args is None else extra_args
        seed = extra_args.get("seed")
        if name in _TAKES_ETA and kw.get("noise_sampler") is None and seed is not None:
            if name in _BROWNIAN:
                positive = sigmas[sigmas > 0]
                kw["noise_sampler"] = BrownianTreeNoiseSampler(
                    x, positive.min(), sigmas.max(), seed=seed
                )
            else:
                kw["noise_sampler"] = default_noise_sampler(x, seed=seed)
        call = _per_batch(model, x.shape[0]) if _inpainting(extra_args) else model
        return run(call, x, sigmas, extra_args, callback, disable, **kw, **picard_options)

    return sampler_function


def _inpainting(extra_args: dict[str, Any]) -> bool:
    return extra_args.get("denoise_mask") is not None


def _per_batch(model: Callable[..., Any], batch: int) -> Callable[..., Any]:
    """``model`` called on ``batch`` rows at a time (per-row arguments sliced along)."""
    import torch

    from picard.adapters.k_samplers.run import rows_of

    def call(x, sigma, **kwargs):
        if x.shape[0] <= batch:
            return model(x, sigma, **kwargs)
        outs = []
        for begin in range(0, x.shape[0], batch):
            rows = torch.arange(begin, min(begin + batch, x.shape[0]), device=x.device)
            args = rows_of(kwargs, rows, x.shape[0])
            outs.append(model(x[rows], sigma[rows], **args))
        return torch.cat(outs)

    return call


class PicardSampler:
    """A SAMPLER (for SamplerCustom): a k-diffusion sampler solved in parallel by picard.

    ``tol`` 0 reproduces the sequential sampler to float rounding; the default 0.01 keeps
    each image within 1% of its RMS of it. ``window`` 0 lets picard choose.
    """

    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        """The node's inputs, as ComfyUI reads them."""
        return {
            "required": {
                "sampler_name": (_sampler_names(),),
                "tol": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
                "window": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
                "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
            }
        }

    def get_sampler(
        self, sampler_name: str, tol: float, window: int, eta: float = 1.0, s_noise: float = 1.0
    ) -> tuple[Any]:
        """The ``comfy.samplers.KSAMPLER`` of ``sampler_name`` with these options."""
        import comfy.samplers

        options: dict[str, Any] = {}
        if sampler_name in _TAKES_ETA:
            options = {"eta": eta, "s_noise": s_noise}
        fn = comfy_sampler(sampler_name, tol=tol, window=window or "auto")
        return (comfy.samplers.KSAMPLER(fn, options),)


NODE_CLASS_MAPPINGS = {"PicardSampler": PicardSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"PicardSampler": "Picard parallel sampler"}
