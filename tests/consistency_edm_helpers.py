"""Parity helpers for the LCM, TCD and EDM Euler adapter tests.

They build the :class:`DiffusionProblem` from the rule directly (the scheduler registry
of ``picard.adapters.diffusers`` does not know these samplers) and compare with diffusers'
own loop (``diffusion_helpers.sequential``).
"""

from __future__ import annotations

import torch
from diffusion_helpers import max_abs, sequential
from torch import Tensor

import picard
from picard.adapters.rule import DiffusionProblem, UpdateRule


def latent(shape=(2, 3, 8, 8), sigma: float = 1.0, seed: int = 1, dtype=torch.float32) -> Tensor:
    """x_T as a pipeline draws it: standard normal times ``init_noise_sigma``."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return z * sigma


def solve_rule(rule: UpdateRule, den, x_T: Tensor, seed=2, **solve_kw):
    """picard's solve of ``rule`` with a generator seeded ``seed`` (or a list of seeds)."""
    if isinstance(seed, list | tuple):
        gen = [torch.Generator().manual_seed(s) for s in seed]
    else:
        gen = torch.Generator().manual_seed(seed)
    return picard.solve(DiffusionProblem(rule, den, generator=gen), x_T, **solve_kw), gen


def rule_parity(
    scheduler,
    rule: UpdateRule,
    den,
    x_T: Tensor,
    *,
    seed: int = 2,
    windows=(None, 1, 3, 7),
    timestep_options=None,
    no_upcast: bool = False,
    **step_kw,
) -> tuple[float, float]:
    """The largest |picard - diffusers| over ``windows`` (and per-sample windows), at tol 0,
    and the largest |diffusers' sample|.

    Also asserts that each solve leaves the generator where diffusers' loop leaves it.
    """
    gen_ref = torch.Generator().manual_seed(seed)
    ref = sequential(
        scheduler,
        den,
        rule.num_steps,
        x_T,
        gen_ref,
        timestep_options=timestep_options,
        no_upcast=no_upcast,
        **step_kw,
    )
    assert torch.isfinite(ref).all()
    errs = []
    runs = [dict(window=w) for w in windows] + [dict(window=3, per_sample=True)]
    for kw in runs:
        sol, gen = solve_rule(rule, den, x_T, seed, tol=0, **kw)
        errs.append(max_abs(sol.final, ref))
        assert torch.equal(gen.get_state(), gen_ref.get_state()), f"generator state ({kw})"
        assert sol.stats.iterations <= rule.num_steps
    return max(errs), float(ref.abs().max())


def bound32(ref_scale: float, states: float = 0.0) -> float:
    """The float32 bound: 1e-5 relative to the sample's size, or 4 ulps of the largest
    state where noise is added to it (picard's ``x + Σ Δ`` can differ by an ulp of x)."""
    return max(1e-5 * max(ref_scale, 1.0), 5e-7 * states)
