"""Parity of an update rule built directly from a config (no scheduler registry needed).

``assert_rule_parity`` runs diffusers' sequential loop and ``picard.solve(..., tol=0)`` on
``DiffusionProblem(rule_from_config(config, n), ...)`` for several windows and with
per-sample windows, and checks the samples agree.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable

import torch
from diffusion_helpers import max_abs

import picard
from picard.adapters.rule import DiffusionProblem


def sequential(scheduler, denoiser, n: int, x_T: torch.Tensor, generator=None) -> torch.Tensor:
    """diffusers' own loop on a copy of the scheduler (``generator`` only where ``step``
    takes one: DEIS's does not)."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n)
    kw = {"generator": generator} if "generator" in inspect.signature(s.step).parameters else {}
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            out = denoiser(s.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
            x = s.step(out, t, x, **kw).prev_sample
    return x


def solve_rule(rule, denoiser, x_T, *, seed=2, **solve_kw):
    """picard's solve of ``rule`` with a generator seeded like the reference's."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return picard.solve(DiffusionProblem(rule, denoiser, generator=generator), x_T, **solve_kw)


def assert_rule_parity(
    scheduler,
    from_config: Callable,
    denoiser,
    n: int,
    x_T: torch.Tensor,
    *,
    seed: int | None = 2,
    atol: float = 1e-5,
    windows: Iterable[int | None] = (None, 7),
    per_sample: bool = True,
    relative: bool = True,
) -> tuple[torch.Tensor, float]:
    """tol = 0 reproduces diffusers' sequential sample; returns it and the worst error.

    ``atol`` is relative to ``max(1, max |sample|)`` when ``relative`` (the float32 target:
    1e-5 of the sample's magnitude). The bound is at least 4 ulps of the largest |x_T|:
    picard carries state i + 1 as ``x_i + (x_{i+1} − x_i)``, which rounds at the scale of
    x_i — at EDM's σ_max = 80 (|x_T| ~ 270) one float32 ulp is 3e-5.
    """
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    ref = sequential(scheduler, denoiser, n, x_T, gen)
    assert torch.isfinite(ref).all()
    bound = atol * (max(1.0, float(ref.abs().max())) if relative else 1.0)
    bound = max(bound, 4 * torch.finfo(x_T.dtype).eps * float(x_T.abs().max()))
    runs = [{"window": w} for w in windows]
    if per_sample:
        runs.append({"window": 3, "per_sample": True})
    worst = 0.0
    for kw in runs:
        rule = from_config(scheduler.config, n)
        sol = solve_rule(rule, denoiser, x_T, seed=seed, tol=0, **kw)
        err = max_abs(sol.final, ref)
        assert err <= bound, f"{kw}: max |picard - diffusers| = {err:.3g} > {bound:.3g}"
        assert sol.stats.iterations <= rule.num_steps
        worst = max(worst, err)
    return ref, worst
