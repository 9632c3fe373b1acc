"""The registry of diffusers schedulers picard reproduces, and ``from_scheduler``.

One entry per scheduler class: the factory of its update rule (a pure function of the
scheduler's *configuration*, never its stateful ``step``), a line on what it supports, and
the command line's names for it. The API (:func:`from_scheduler`, ``parallelize``), the
command line (``picard sample --scheduler``) and the docs' "Supported" page all read this
one table. Adding a sampler is one rule file plus one line here.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from picard.adapters.lookup import registered
from picard.adapters.rule import DiffusionProblem, Generator, UpdateRule
from picard.adapters.scheduler_loop import SchedulerLoop
from picard.errors import SequentialWarning, UnsupportedSchedulerError

__all__ = ["SCHEDULERS", "Sampler", "from_scheduler", "rule_for", "sampler_for"]


@dataclass(frozen=True)
class Sampler:
    """A supported diffusers scheduler.

    Attributes:
        factory: the rule's factory ``(config, num_inference_steps, **step_options) ->
            UpdateRule``, or ``"module:function"`` naming it (imported when first used).
        supports: what of its configuration picard reproduces (one line, for the docs).
        names: the command line's names for it, each with config overrides.

    Example:
        >>> SCHEDULERS["DDIMScheduler"].step_options()
        ('eta', 'use_clipped_model_output')
    """

    factory: str | Callable[..., UpdateRule]
    supports: str
    names: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def make(self) -> Callable[..., UpdateRule]:
        """The factory function."""
        if callable(self.factory):
            return self.factory
        module, name = self.factory.split(":")
        return getattr(importlib.import_module(module), name)

    def step_options(self) -> tuple[str, ...]:
        """The step options the rule takes (its factory's keyword-only arguments)."""
        params = inspect.signature(self.make()).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


_VP = "beta schedules, timestep spacings, prediction types"

SCHEDULERS: dict[str, Sampler] = {
    "DDPMScheduler": Sampler(
        "picard.adapters.schedulers.ddpm:from_config",
        f"{_VP}; every variance type; clipping and thresholding",
        {"ddpm": {}},
    ),
    "DDPMParallelScheduler": Sampler(
        "picard.adapters.schedulers.ddpm:from_config", "as DDPMScheduler"
    ),
    "DDIMScheduler": Sampler(
        "picard.adapters.schedulers.ddim:from_config",
        f"{_VP}; any eta; set_alpha_to_one either way; clipping and thresholding",
        {"ddim": {}},
    ),
    "DDIMParallelScheduler": Sampler(
        "picard.adapters.schedulers.ddim:from_config", "as DDIMScheduler"
    ),
    "PNDMScheduler": Sampler(
        "picard.adapters.schedulers.pndm:from_config",
        f"{_VP} (epsilon, v_prediction); skip_prk_steps either way (Stable Diffusion 1.5's)",
        {"pndm": {"skip_prk_steps": True}},
    ),
    "LMSDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.lms:from_config",
        f"{_VP}; karras, exponential and beta sigmas; any order",
        {"lms": {}},
    ),
    "DPMSolverMultistepScheduler": Sampler(
        "picard.adapters.schedulers.dpmsolver:from_config",
        f"{_VP}; orders 1–3; dpmsolver(++) and their SDE variants; midpoint/heun; "
        "karras, lu, exponential and beta sigmas; lower_order_final, euler_at_final",
        {"dpmsolver++": {"solver_order": 2}, "dpmsolver++3": {"solver_order": 3}},
    ),
    "DPMSolverSinglestepScheduler": Sampler(
        "picard.adapters.schedulers.dpmsolver_singlestep:from_config",
        "beta schedules, prediction types; orders 1–3; dpmsolver(++), sde-dpmsolver++; "
        "midpoint/heun; karras, exponential and beta sigmas; lower_order_final",
        {"dpmsolver-singlestep": {}},
    ),
    "DEISMultistepScheduler": Sampler(
        "picard.adapters.schedulers.deis:from_config",
        f"{_VP}; orders 1–3; karras, exponential and beta sigmas; lower_order_final",
        {"deis": {}},
    ),
    "EDMDPMSolverMultistepScheduler": Sampler(
        "picard.adapters.schedulers.edm_dpmsolver:from_config",
        "karras/exponential sigma schedules, sigma_data, epsilon/v_prediction; orders 1–3; "
        "dpmsolver++ and sde-dpmsolver++; midpoint/heun",
    ),
    "EulerDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.euler:from_config",
        f"{_VP}; karras, exponential and beta sigmas; churn",
        {"euler": {}},
    ),
    "EulerAncestralDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.euler:ancestral_from_config",
        f"{_VP} (epsilon, v_prediction)",
        {"euler-ancestral": {}},
    ),
    "FlowMatchEulerDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.flow:from_config",
        "shift, dynamic shift (mu), custom sigmas/timesteps, karras/exponential/beta sigmas",
    ),
    "FlowMatchHeunDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.flow_heun:from_config",
        "shift; churn (s_churn, s_tmin, s_tmax, s_noise)",
    ),
    "LCMScheduler": Sampler(
        "picard.adapters.schedulers.lcm:from_config",
        f"{_VP}; original_inference_steps; thresholding; zero-terminal-SNR rescaling",
        {"lcm": {}},
    ),
    "TCDScheduler": Sampler(
        "picard.adapters.schedulers.tcd:from_config",
        f"{_VP}; eta (gamma); original_inference_steps",
        {"tcd": {}},
    ),
    "HeunDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.heun:from_config",
        f"{_VP}; karras, exponential and beta sigmas (two model calls per step)",
        {"heun": {}},
    ),
    "KDPM2DiscreteScheduler": Sampler(
        "picard.adapters.schedulers.kdpm2:from_config",
        f"{_VP} (epsilon, v_prediction); karras, exponential and beta sigmas",
        {"kdpm2": {}},
    ),
    "KDPM2AncestralDiscreteScheduler": Sampler(
        "picard.adapters.schedulers.kdpm2:ancestral_from_config",
        f"{_VP} (epsilon, v_prediction); karras, exponential and beta sigmas",
        {"kdpm2-ancestral": {}},
    ),
    "UniPCMultistepScheduler": Sampler(
        "picard.adapters.schedulers.unipc:from_config",
        f"{_VP}; bh1/bh2; any order; predict_x0; disable_corrector; lower_order_final; "
        "karras, exponential, beta and flow sigmas",
        {"unipc": {}, "unipc3": {"solver_order": 3}},
    ),
    "SASolverScheduler": Sampler(
        "picard.adapters.schedulers.sasolver:from_config",
        f"{_VP}; predictor/corrector orders 1–4; any tau_func; data or noise prediction",
        {"sa-solver": {}},
    ),
    "EDMEulerScheduler": Sampler(
        "picard.adapters.schedulers.edm_euler:from_config",
        "karras and exponential sigma schedules, sigma_data, epsilon/v_prediction, churn",
    ),
    "CogVideoXDDIMScheduler": Sampler(
        "picard.adapters.schedulers.cogvideox_ddim:from_config",
        f"{_VP}; snr_shift_scale; zero-terminal-SNR rescaling of ᾱ (CogVideoX's)",
    ),
}
"""Scheduler class names picard reproduces, and how (see :class:`Sampler`)."""


_STATEFUL = ("step", "set_timesteps", "scale_model_input")
"""A scheduler subclass that overrides one of these is not its parent for picard."""


def sampler_for(scheduler: Any) -> Sampler:
    """The registry entry of ``scheduler``'s class, or of the diffusers class it keeps.

    A subclass that overrides ``step``, ``set_timesteps`` or ``scale_model_input`` is not
    its parent: it is refused.

    Args:
        scheduler: a diffusers scheduler.

    Returns:
        Its :class:`Sampler`.

    Raises:
        UnsupportedSchedulerError: the class is not supported (the message lists what is);
            a ``TypeError``.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> sampler_for(DDIMScheduler()).factory
        'picard.adapters.schedulers.ddim:from_config'
    """
    cls = type(scheduler)
    found = registered(cls, SCHEDULERS, _STATEFUL)
    if found is None:
        changed = ""
        for base in cls.__mro__[1:]:
            if base.__name__ in SCHEDULERS and base.__module__.startswith("diffusers."):
                changed = f" (it changes the {base.__name__} picard reproduces)"
                break
        raise UnsupportedSchedulerError(
            f"scheduler {cls.__name__} is not supported{changed}; supported: "
            f"{', '.join(SCHEDULERS)}"
        )
    return found[1]


def rule_for(scheduler: Any, num_inference_steps: int, **options: Any) -> UpdateRule:
    """The update rule of ``scheduler``'s configuration on ``num_inference_steps`` steps.

    Args:
        scheduler: a diffusers scheduler (its class and ``config`` are read).
        num_inference_steps: N.
        **options: the sampler's step options (``eta`` and ``use_clipped_model_output``
            for DDIM, ``sigmas``/``mu`` for flow matching, see
            :meth:`Sampler.step_options`); others raise ``TypeError``.

    Returns:
        The :class:`~picard.adapters.rule.UpdateRule`.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> rule_for(DDIMScheduler(), 50, eta=0.5).num_steps
        50
    """
    sampler = sampler_for(scheduler)
    config = getattr(scheduler, "config", None)
    if config is None:
        raise UnsupportedSchedulerError(f"scheduler {type(scheduler).__name__} has no config")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(
            f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}"
        )
    return sampler.make()(config, num_inference_steps, **options)


def from_scheduler(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    num_inference_steps: int,
    *,
    generator: Generator = None,
    rows_per_evaluation: int = 1,
    scale_model_input: bool = True,
    begin: int = 0,
    end: int | None = None,
    on_unsupported: str = "raise",
    **options: Any,
) -> DiffusionProblem | SchedulerLoop:
    """The sampler that ``scheduler`` configures, as a problem for :func:`picard.solve`.

    ``picard.solve(problem, x_T).final`` is the sample the sequential loop
    (``for t in scheduler.timesteps: x = scheduler.step(denoiser(x, t), t, x)``) gives,
    within the tolerance. ``x_T`` is the starting latent exactly as the loop starts from
    it (already multiplied by ``problem.rule.init_noise_sigma``); its first dimension
    indexes samples. The sampler's noise is drawn from ``generator`` when the solve
    starts — after the caller drew ``x_T`` — in the order the sequential sampler draws it.

    The default tolerance is 0.01 relative to each state's RMS (``relative=True``), which
    keeps the final sample within about 1% of the sequential one for every sampler;
    ``relative=False`` selects ParaDiGMS's test (0.1 times each step's noise std).

    Args:
        scheduler: a diffusers scheduler; see :data:`SCHEDULERS`.
        denoiser: ``denoiser(x, t)``, the batched model call: ``x: (M, *shape)`` as the
            scheduler's ``scale_model_input`` leaves it, ``t: (M,)`` the scheduler's
            timesteps; returns the model output ``(M, C, ...)``.
        num_inference_steps: N.
        generator: a ``torch.Generator``, or a list with one per sample.
        rows_per_evaluation: model rows per (step, sample), e.g. 2 with classifier-free
            guidance inside ``denoiser``; reported by ``stats.model_rows``.
        scale_model_input: scale the model input as the scheduler's
            ``scale_model_input`` does (the Euler family), as pipelines that call it do.
        begin: start at this step of the grid (a scheduler with ``set_begin_index``, as
            img2img's ``strength`` does): ``x_T`` is then the state at that step.
        end: stop before this step (SDXL's ``denoising_end``); ``None``: the grid's end.
        on_unsupported: ``"raise"`` (default): a scheduler picard does not reproduce
            raises ``TypeError`` naming the supported ones. ``"sequential"``: it runs by
            its own ``step``, one step at a time — exactly the sequential result — after
            one :class:`picard.SequentialWarning`
            (:class:`~picard.adapters.scheduler_loop.SchedulerLoop`).
        **options: the sampler's step options (``eta``, ``use_clipped_model_output``
            for DDIM; ``sigmas``, ``mu`` for flow matching; :meth:`Sampler.step_options`).

    Returns:
        A :class:`~picard.adapters.rule.DiffusionProblem` (or, for an unsupported
        scheduler with ``on_unsupported="sequential"``, a ``SchedulerLoop``).

    Example:
        >>> import torch, picard
        >>> from diffusers import DDIMScheduler
        >>> problem = from_scheduler(DDIMScheduler(), lambda x, t: 0.1 * x, 20)
        >>> sol = picard.solve(problem, torch.randn(2, 3, 4, 4))
        >>> sol.final.shape, sol.stats.iterations <= 20
        (torch.Size([2, 3, 4, 4]), True)
    """
    if on_unsupported not in ("raise", "sequential"):
        raise ValueError(f"on_unsupported must be 'raise' or 'sequential', got {on_unsupported!r}")
    try:
        rule = rule_for(scheduler, num_inference_steps, **options)
        rule = rule.head(rule.num_steps if end is None else end).tail(begin)
    except UnsupportedSchedulerError as err:
        if on_unsupported == "raise":
            raise
        warnings.warn(f"{err}: it runs step by step", SequentialWarning, stacklevel=2)
        return SchedulerLoop(
            scheduler, denoiser, num_inference_steps, generator, rows_per_evaluation,
            scale_model_input, begin, end, **options,
        )  # fmt: skip
    return DiffusionProblem(rule, denoiser, generator, rows_per_evaluation, scale_model_input)
