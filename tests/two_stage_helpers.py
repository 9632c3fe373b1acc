"""Parity helpers for the two-model-call samplers (Heun, KDPM2, flow-matching Heun).

Their ``step`` methods take no ``generator`` (except KDPM2-ancestral's and flow Heun's),
so diffusion_helpers' loop, which always passes one, cannot drive them; and the
adapters registry does not know them yet, so problems are built from the rule directly.
"""

from __future__ import annotations

import copy
import inspect
import sys

import torch
from torch import Tensor

import picard
from picard.adapters.rule import DiffusionProblem

WINDOWS = (None, 1, 2, 3, 7)


class _NoUpcast:
    """``torch``, except that ``float32`` means float64 (a float64 reference stays float64)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def reference(scheduler, den, n: int, x_T: Tensor, generator=None, no_upcast=False, **step_kw):
    """diffusers' own loop: one model call and one ``step`` per entry of ``timesteps``."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n)
    if "generator" in inspect.signature(s.step).parameters:
        step_kw["generator"] = generator
    scale = getattr(s, "scale_model_input", lambda x, t: x)
    module = sys.modules[type(s).__module__]
    real = module.torch
    if no_upcast:
        module.torch = _NoUpcast()
    try:
        x = x_T
        with torch.no_grad():
            for t in s.timesteps:
                out = den(scale(x, t), t.reshape(1).expand(x.shape[0]))
                x = s.step(out, t, x, **step_kw).prev_sample
    finally:
        module.torch = real
    return x


def generator(seed):
    """A generator seeded ``seed``, a list of them for a list of seeds, or None."""
    if seed is None:
        return None
    if isinstance(seed, list):
        return [torch.Generator().manual_seed(s) for s in seed]
    return torch.Generator().manual_seed(seed)


def _states(gen):
    return [g.get_state() for g in (gen if isinstance(gen, list) else [gen])]


def solve(rule, den, x_T: Tensor, seed=None, **kw):
    """picard's solve of the rule (``tol=0`` unless given)."""
    gen = generator(seed)
    kw.setdefault("tol", 0)
    return picard.solve(DiffusionProblem(rule, den, generator=gen), x_T, **kw), gen


def max_abs(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_parity(
    scheduler, rule, den, n, x_T, *, atol=None, seed=2, windows=WINDOWS, per_sample=True, **kw
):
    """tol = 0 reproduces diffusers' loop for every window (and per sample), leaving the
    generator where the loop leaves it. Returns the largest difference.

    The float32 bound is 1e-5 of the sample's size, or 4 float32 units of x_T's where that
    is larger: picard sums increments onto states of x_T's size (σ_max up to 2e4 for
    cosine schedules), where the same sum rounds differently (see test_adapters_euler's
    ``noisy_atol``).
    """
    gen_ref = generator(seed)
    ref = reference(scheduler, den, n, x_T, gen_ref, **kw)
    assert torch.isfinite(ref).all()
    if atol is None:
        size = max(float(ref.abs().max()), 1.0)
        if ref.dtype == torch.float64:
            atol = 1e-10 * size
        else:
            atol = max(1e-5 * size, 5e-7 * float(x_T.abs().max()))
    worst = 0.0
    runs = [{"window": w} for w in windows]
    if per_sample:
        runs.append({"window": 3, "per_sample": True})
    for options in runs:
        sol, gen = solve(rule, den, x_T, seed=seed, **options)
        err = max_abs(sol.final, ref)
        assert err <= atol, f"{options}: max |picard - diffusers| = {err:.3g} > {atol:.3g}"
        assert sol.stats.iterations <= rule.num_steps
        if gen is not None:
            same = map(torch.equal, _states(gen), _states(gen_ref))
            assert all(same), "generator state differs"
        worst = max(worst, err)
    return worst
