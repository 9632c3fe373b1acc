"""lerobot's DiffusionPolicy with its denoising loop solved by picard.

lerobot's ``DiffusionPolicy`` samples an action chunk with a sequential loop inside
``policy.diffusion.conditional_sample(batch_size, global_cond=None, generator=None,
noise=None)``: draw ``x_T``, then one call ``unet(x, t, global_cond=...)`` and one
diffusers ``scheduler.step`` per timestep. :func:`parallelize` replaces that method *on
the policy's instance* (lerobot is not modified; :meth:`ParallelPolicy.restore` takes it
back) by one that draws ``x_T`` the same way, reads the scheduler's *configuration*
through :func:`picard.adapters.diffusers.rule_for` (DDPM and DDIM, as lerobot configures
them) and solves the steps in parallel sweeps: every sweep is one batched call of the
UNet on all the steps of the window, each row with its sample's ``global_cond``. So
``policy.select_action``, ``policy.predict_action_chunk`` and
``policy.diffusion.generate_actions`` run picard, and ``tol=0`` gives lerobot's own
actions to float rounding. The step noise of DDPM is drawn from ``generator`` (torch's
global generator when ``None``, as ``select_action`` calls it) once, in the order
lerobot's loop draws it, after ``x_T``.

picard never imports lerobot: it reads the policy it is given (``policy.diffusion`` with
``unet``, ``noise_scheduler``, ``num_inference_steps``, ``config.horizon`` and
``config.action_feature``), which lerobot 0.4.4 and 0.6.1 both have (tested with 0.4.4).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from picard.adapters.rule import DiffusionProblem, Generator, UpdateRule
from picard.adapters.schedulers import rule_for, sampler_for
from picard.checks import check_state
from picard.core.options import Options
from picard.solution import Stats
from picard.solver import solve_with

__all__ = ["ParallelPolicy", "parallelize"]

_NEEDED = ("unet", "noise_scheduler", "num_inference_steps", "config", "conditional_sample")


def parallelize(policy: Any, **options: Any) -> ParallelPolicy:
    """Make ``policy`` sample its actions by picard's parallel sweeps, until restored.

    Args:
        policy: a lerobot ``DiffusionPolicy`` (or its ``DiffusionModel``,
            ``policy.diffusion``) with a DDPM or DDIM noise scheduler.
        **options: the solve's options (:class:`picard.Options`), checked now: e.g.
            ``window`` (each UNet call gets ``window × batch`` rows), ``tol`` (``0`` gives
            lerobot's own actions to float rounding; default 0.01 relative to each
            action chunk's RMS), ``per_sample``, ``max_rows``.

    Returns:
        A :class:`ParallelPolicy`: ``.stats`` holds the last sample's
        :class:`picard.Stats`; ``.restore()`` (or leaving a ``with`` block) gives the
        policy back its own loop.

    Raises:
        TypeError: ``policy`` is not a DiffusionPolicy-like object, its scheduler is not
            supported, or it is parallelized already.
        ValueError: a bad option (named).

    Example:
        >>> parallelize(object())
        Traceback (most recent call last):
        ...
        TypeError: policy must be a lerobot DiffusionPolicy (or its .diffusion model) ...

        With a lerobot policy (not run here: lerobot is optional)::

            fast = parallelize(policy, tol=0.01)
            action = policy.select_action(observation)  # sampled by picard
            fast.stats.iterations, fast.restore()
    """
    return ParallelPolicy(policy, **options)


class ParallelPolicy:
    """A DiffusionPolicy whose ``conditional_sample`` runs picard; see :func:`parallelize`.

    Args:
        policy: the ``DiffusionPolicy`` or its ``DiffusionModel``.
        **options: the solve's options (:class:`picard.Options`).

    Attributes:
        policy: the policy, as given.
        model: its ``DiffusionModel`` (``policy.diffusion``), whose instance carries the
            replacement ``conditional_sample`` while parallelized.
        options: the checked :class:`picard.Options`.
        stats: the :class:`picard.Stats` of the last sample (``None`` before the first).

    Example:
        >>> ParallelPolicy(None)
        Traceback (most recent call last):
        ...
        TypeError: policy must be a lerobot DiffusionPolicy (or its .diffusion model) ...
    """

    def __init__(self, policy: Any, **options: Any):
        model = _diffusion_model(policy)
        if "conditional_sample" in vars(model):
            raise TypeError("policy is parallelized already; restore() it first")
        sampler_for(model.noise_scheduler)  # DDPM, DDIM: now, not at the first action
        self.options = Options.of(**options)
        if self.options.init is not None:
            raise ValueError("init (a warm start) is not supported by policies; use solve")
        self.policy, self.model = policy, model
        self.stats: Stats | None = None
        self._rule: tuple[Any, UpdateRule] | None = None
        model.conditional_sample = self.conditional_sample

    def conditional_sample(
        self,
        batch_size: int,
        global_cond: Tensor | None = None,
        generator: Generator = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The policy's ``conditional_sample``, its loop solved in parallel sweeps.

        Args:
            batch_size: the number of action chunks.
            global_cond: ``(batch_size, cond_dim)``, each chunk's conditioning.
            generator: the generator of ``x_T`` and of the step noise (``None``: torch's
                global one, as lerobot).
            noise: ``x_T``, ``(batch_size, horizon, action_dim)``; drawn if ``None``.

        Returns:
            The action chunks, ``(batch_size, horizon, action_dim)``.
        """
        model = self.model
        param = next(model.parameters())
        if noise is None:
            shape = (batch_size, model.config.horizon, model.config.action_feature.shape[0])
            noise = torch.randn(shape, dtype=param.dtype, device=param.device, generator=generator)
        x_t = check_state("noise", noise)
        if global_cond is not None and global_cond.shape[0] != x_t.shape[0]:
            raise ValueError(
                f"global_cond holds {global_cond.shape[0]} rows but noise holds "
                f"{x_t.shape[0]} samples"
            )
        steps = model.num_inference_steps
        scheduler = model.noise_scheduler
        scheduler.set_timesteps(steps)  # leaves the scheduler as lerobot's loop leaves it
        rule = self._rule_for(scheduler, steps)
        if not torch.equal(rule.timesteps.cpu(), scheduler.timesteps.cpu().to(rule.timesteps)):
            raise ValueError(
                f"{type(scheduler).__name__}'s timesteps differ from picard's rule; "
                "this configuration is not supported"
            )

        def denoiser(x: Tensor, t: Tensor, samples: Tensor) -> Tensor:
            cond = None if global_cond is None else global_cond[samples]
            return model.unet(x, t, global_cond=cond)

        problem = DiffusionProblem(rule, denoiser, generator)
        sol = solve_with(problem, x_t, self.options)
        self.stats = sol.stats
        return sol.final

    def _rule_for(self, scheduler: Any, steps: int) -> UpdateRule:
        """The scheduler's rule on ``steps`` steps, built once per configuration."""
        key = (type(scheduler), dict(scheduler.config), steps)
        if self._rule is None or self._rule[0] != key:
            self._rule = (key, rule_for(scheduler, steps))
        return self._rule[1]

    @property
    def parallel(self) -> bool:
        """Whether the policy samples through picard (``False`` after :meth:`restore`)."""
        return vars(self.model).get("conditional_sample") == self.conditional_sample

    def restore(self) -> Any:
        """Give the policy its own ``conditional_sample`` back.

        Returns:
            The policy.
        """
        if self.parallel:
            del self.model.conditional_sample
        return self.policy

    def __enter__(self) -> ParallelPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _diffusion_model(policy: Any) -> Any:
    """The ``DiffusionModel`` of ``policy`` (the policy itself if it is one), checked."""
    model = getattr(policy, "diffusion", policy)
    missing = [name for name in _NEEDED if not hasattr(model, name)]
    if missing or not isinstance(model, torch.nn.Module):
        raise TypeError(
            "policy must be a lerobot DiffusionPolicy (or its .diffusion model) with "
            f"{', '.join(_NEEDED)}; got {type(policy).__name__}"
            + (f" without {', '.join(missing)}" if missing else "")
        )
    return model
