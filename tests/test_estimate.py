"""Issue 22, item 2: each sample's estimated error, from the sweeps alone (picard.core.estimate)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules
from picard.cli.fidelity import mixture

torch.set_num_threads(1)


def _relative(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).numpy()


def _linear(rates):
    """x_{i+1} = x_i + r_i x_i, one rate per sample and step: errors are not amplified."""
    return picard.Recursion(lambda i, x: rates[i] * x, rates.shape[0], batch_dims=1)


@pytest.mark.parametrize("window", [5, 12, 40])
@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_the_estimate_bounds_each_samples_error_where_nothing_amplifies_it(window, tol):
    """The defects are summed by size: never far below the error, above it where they cancel
    (over 20 seeds: 0.32x to 474x the error)."""
    g = torch.Generator().manual_seed(0)
    rates = -0.3 * torch.rand(40, 4, 1, generator=g, dtype=torch.float64)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    rule = _linear(rates)
    sol = picard.solve(rule, x0, window=window, tol=tol)
    true = _relative(sol.final, picard.solve(rule, x0, window=1, tol=0).final)
    est = np.asarray(sol.stats.estimated_errors)
    assert est.shape == (4,)
    assert ((true / 3 <= est) & (est <= 500 * true + 1e-15)).all(), (true, est)


def test_exact_solves_estimate_zero():
    g = torch.Generator().manual_seed(1)
    rule = _linear(-0.1 * torch.rand(30, 2, 1, generator=g, dtype=torch.float64))
    x0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    assert picard.solve(rule, x0, window=8, tol=0).stats.estimated_errors == (0.0, 0.0)
    assert max(picard.solve(rule, x0, window=8, tol=1e-4).stats.estimated_errors) > 0


def test_batch_dimensions_flatten_in_batch_order():
    rule = picard.Recursion(lambda i, x: -0.05 * x * (1 + x.abs()), 20, batch_dims=2)
    x0 = torch.linspace(0.1, 1.2, 6 * 4, dtype=torch.float64).reshape(2, 3, 4)
    sol = picard.solve(rule, x0, window=20, tol=1e-5)
    est = np.asarray(sol.stats.estimated_errors)
    true = _relative(sol.final.reshape(6, 4), picard.solve(rule, x0, tol=0).final.reshape(6, 4))
    assert est.shape == (6,)
    assert ((true / 3 <= est) & (est <= 500 * true + 1e-15)).all(), (true, est)


def _ddim(per_sample, tol=None):
    gmm, base = mixture(3), DDPMScheduler(clip_sample=False)
    sched = DDIMScheduler.from_config(base.config)
    eps = gmm.denoiser(schedules.alphas_cumprod(base.config))

    def solve(**kw):
        gens = [torch.Generator().manual_seed(50 + s) for s in range(16)]
        x = torch.cat([torch.randn(1, 16, generator=g, dtype=torch.float64) for g in gens])
        return picard.solve(from_scheduler(sched, eps, 50, generator=gens), x, **kw)

    opts = {} if tol is None else {"tol": tol}
    sol = solve(window=50, per_sample=per_sample, **opts)
    return sol, _relative(sol.final, solve(window=1, tol=0).final)


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_diffusion_samplers_estimates_follow_its_errors(per_sample):
    """DDIM-50 on a mixture with an exact score (not near a boundary between modes here):
    each estimate at least a tenth of its sample's error and at most 50 times it, in both
    window layouts."""
    sol, true = _ddim(per_sample)
    est = np.asarray(sol.stats.estimated_errors)
    assert est.shape == (16,) and true.max() > 1e-6
    assert ((true / 10 <= est) & (est <= 50 * true)).all(), (true, est)
    tighter, _ = _ddim(per_sample, tol=1e-4)
    assert max(tighter.stats.estimated_errors) < est.max() / 10


def test_verify_keeps_its_own_estimate_beside_the_sweeps_one():
    rule = _linear(-0.1 * torch.ones(30, 1, 1, dtype=torch.float64))
    sol = picard.solve(
        rule, torch.ones(1, 2, dtype=torch.float64), window=30, tol=1e-3, verify=True
    )
    assert sol.stats.sample_errors is not None and sol.stats.estimated_errors is not None
    assert max(sol.stats.estimated_errors) < sol.stats.error_estimate


@pytest.mark.parametrize("per_sample", [False, True])
def test_folding_as_the_solve_goes_gives_the_same_estimate(per_sample, monkeypatch):
    """Long solves of many samples fold the sweeps' records into running sums (bounded
    memory); the estimate is the one folding once at the end gives."""
    from picard.core.estimate import Defects

    once, _ = _ddim(per_sample)
    monkeypatch.setattr(Defects, "FOLD_AT", 1)
    folded, _ = _ddim(per_sample)
    assert once.stats.estimated_errors == folded.stats.estimated_errors
