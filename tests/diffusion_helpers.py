"""Shared helpers for the diffusion-adapter tests: schedulers, denoisers, the sequential
reference and the parity checks of picard's tol = 0 solves against it.

The parity tests compare picard with diffusers' own sequential loop. Two float32 runs
that round differently can only agree to the conditioning of the sampler: with a random
UNet and DDIM's default clipping, a 1e-7 change of x_T moves the sample by 3e-2. So the
1e-5 float32 parity tests use a well-conditioned analytic denoiser (the exact prediction
for Gaussian data, plus a small nonlinear term); random UNets are used in float64.
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from collections.abc import Callable, Iterable

import pytest
import torch
from torch import Tensor

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import schedules

DATA_STD = 0.5
SPACINGS = [("linspace", 0), ("leading", 0), ("leading", 1), ("trailing", 0)]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
SIGMA_SCHEDULES = [None, "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"]
BETAS = ["linear", "scaled_linear", "squaredcos_cap_v2"]
SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
DPM_UPDATES = [  # DPM-Solver's update methods of orders 1, 2 and 3 (multistep and EDM)
    "dpm_solver_first_order_update",
    "multistep_dpm_solver_second_order_update",
    "multistep_dpm_solver_third_order_update",
]


def scheduler_factory(cls):
    """``scheduler(**kw)`` building ``cls``, with two shorthands: ``schedule="use_…_sigmas"``
    sets that flag, ``spacing=(timestep_spacing, steps_offset)`` sets both."""

    def scheduler(**kw):
        schedule = kw.pop("schedule", None)
        if schedule:
            kw[schedule] = True
        spacing = kw.pop("spacing", None)
        if spacing:
            kw["timestep_spacing"], kw["steps_offset"] = spacing
        return cls(**kw)

    return scheduler


def tiny_unet(channels: int = 3, out_channels: int | None = None, seed: int = 0):
    """A small random UNet2DModel on 8x8 images (built from a config, offline)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=out_channels or channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def unet_denoiser(unet):
    """``denoiser(x, t)`` around a UNet2DModel."""

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        return unet(x, t).sample

    return denoiser


def gaussian_denoiser(
    scheduler, wiggle: float = 0.05, learned_variance: bool = False, data_std: float = DATA_STD
):
    """The exact prediction for N(0, data_std²) data, in the scheduler's prediction type,
    plus ``wiggle * tanh(x)``: smooth, nonlinear and well-conditioned.

    VP schedulers get ᾱ from the training table at the (rounded) timestep; the Euler family
    scales its input to the VP latent first (scale_model_input), so the same formula holds;
    flow matching (prediction "flow") uses σ = t / num_train_timesteps.
    """
    config = scheduler.config
    flow = type(scheduler).__name__.startswith("FlowMatch")
    kind = "flow" if flow else config.get("prediction_type", "epsilon")
    if not flow:
        ab = schedules.alphas_cumprod(config, terminal_floor=True).double()
    s2 = data_std**2

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        xd = x.double()
        if flow:
            sigma = (t.double() / config.num_train_timesteps).reshape(shape)
            denom = (1 - sigma) ** 2 * s2 + sigma**2
            x0 = (1 - sigma) * s2 * xd / denom
            eps = sigma * xd / denom
            out = eps - x0
        else:
            a = ab[t.double().round().long().clamp(0, len(ab) - 1)].reshape(shape)
            eps = (1 - a).sqrt() * xd / (a * s2 + 1 - a)
            x0 = a.sqrt() * s2 * xd / (a * s2 + 1 - a)
            out = {
                "epsilon": eps,
                "sample": x0,
                "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0,
            }[kind]
        out = (out + wiggle * torch.tanh(xd)).to(x.dtype)
        if learned_variance:  # a predicted variance channel block in [-1, 1]
            out = torch.cat([out, torch.tanh(x)], dim=1)
        return out

    return denoiser


def flow_denoiser(sched, wiggle: float = 0.05):
    """The exact velocity ε − x_0 for N(0, DATA_STD²) data at σ = t/T, plus a wiggle."""
    total, s2 = sched.config.num_train_timesteps, DATA_STD**2

    def denoiser(x, t):
        sigma = (t.double() / total).reshape((-1,) + (1,) * (x.ndim - 1))
        denom = (1 - sigma) ** 2 * s2 + sigma**2
        v = (sigma - (1 - sigma) * s2) * x.double() / denom
        return (v + wiggle * torch.tanh(x.double())).to(x.dtype)

    return denoiser


def edm_denoiser(sched, wiggle: float = 0.05):
    """The exact F for N(0, DATA_STD²) data through the scheduler's EDM preconditioning
    (σ read back from c_noise = ¼ ln σ, the model input unscaled by c_in), plus
    ``wiggle * tanh``: smooth, nonlinear and well-conditioned."""
    sd = sched.config.sigma_data
    sign = -1.0 if sched.config.prediction_type == "v_prediction" else 1.0

    def denoiser(x_in, t):
        sigma = torch.exp(4 * t.double()).reshape(-1, *[1] * (x_in.ndim - 1))
        x = x_in.double() * (sigma**2 + sd**2) ** 0.5
        target = DATA_STD**2 * x / (DATA_STD**2 + sigma**2)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sign * sigma * sd / (sigma**2 + sd**2) ** 0.5
        return ((target - c_skip * x) / c_out + wiggle * torch.tanh(x_in.double())).to(x_in.dtype)

    return denoiser


def sequential(
    scheduler,
    denoiser,
    n: int,
    x_T: Tensor,
    generator=None,
    *,
    timestep_options=None,
    no_upcast: bool = False,
    **step_kwargs,
) -> Tensor:
    """diffusers' own sequential loop, on a copy of the scheduler.

    ``generator`` goes to ``step`` only where it takes one (DEIS's, UniPC's do not).
    ``timestep_options`` go to ``set_timesteps`` (flow matching's ``sigmas``, ``mu``).
    ``no_upcast``: diffusers' Euler and flow steps round the sample to float32 even in a
    float64 run; this swaps, inside the scheduler's module, ``torch`` for a stand-in whose
    ``float32`` is float64, so a float64 reference stays float64.
    """
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n, **(timestep_options or {}))
    module = sys.modules[type(s).__module__]
    real = module.torch
    if no_upcast:
        module.torch = _NoUpcast()
    try:
        with torch.no_grad():
            return _loop(s, denoiser, x_T, generator, step_kwargs)
    finally:
        module.torch = real


class _NoUpcast:
    """``torch``, except that ``float32`` means float64 (see :func:`sequential`)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def _loop(s, denoiser, x, generator, step_kwargs):
    scale = getattr(s, "scale_model_input", lambda x, t: x)  # flow matching has none
    if "generator" in inspect.signature(s.step).parameters:
        step_kwargs = {"generator": generator, **step_kwargs}
    for t in s.timesteps:
        out = denoiser(scale(x, t), t.reshape(1).expand(x.shape[0]))
        x = s.step(out, t, x, **step_kwargs).prev_sample
    return x


def latent(shape=(2, 3, 8, 8), sigma: float = 1.0, seed: int = 1, dtype=torch.float32) -> Tensor:
    """x_T as a pipeline draws it: standard normal times ``init_noise_sigma``."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return z * sigma


def start_latent(scheduler, n: int, shape=(2, 3, 8, 8), seed: int = 1, dtype=torch.float32):
    """x_T as a pipeline draws it: standard normal times the scheduler's init_noise_sigma."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n)
    return latent(shape, getattr(s, "init_noise_sigma", 1.0), seed, dtype)


def generator(seed):
    """A generator seeded ``seed``, a list of them for a list of seeds, or None."""
    if seed is None:
        return None
    if isinstance(seed, list | tuple):
        return [torch.Generator().manual_seed(s) for s in seed]
    return torch.Generator().manual_seed(seed)


def same_state(gen, other) -> bool:
    """Whether two generators (or lists of them) are in the same state."""
    states = [[g.get_state() for g in (x if isinstance(x, list) else [x])] for x in (gen, other)]
    return len(states[0]) == len(states[1]) and all(map(torch.equal, *states))


def solve_rule(rule, denoiser, x_T, seed=2, **solve_kw):
    """picard's solve of ``rule`` with a generator seeded ``seed`` (see :func:`generator`);
    returns the solution and the generator."""
    gen = generator(seed)
    return picard.solve(DiffusionProblem(rule, denoiser, generator=gen), x_T, **solve_kw), gen


def per_sample_error(sched, den, n, x_T, rule=None, *, step_kw=None, **solve_kw) -> float:
    """picard's tol = 0 solve with a generator per sample (seeds 5, 6, 7): its largest
    difference from diffusers' loop with the same generators, each of which it must leave
    where the loop leaves it. It solves ``rule``, or by default the registry's problem."""
    gens_a, gens_b = generator([5, 6, 7]), generator([5, 6, 7])
    ref = sequential(sched, den, n, x_T, gens_a, **(step_kw or {}))
    if rule is None:
        problem = from_scheduler(sched, den, n, generator=gens_b)
    else:
        problem = DiffusionProblem(rule, den, generator=gens_b)
    sol = picard.solve(problem, x_T, tol=0, **solve_kw)
    assert same_state(gens_a, gens_b), "generator state differs"
    return max_abs(sol.final, ref)


def parallel(scheduler, denoiser, n: int, x_T: Tensor, seed: int | None = None, **kw):
    """picard's solve of the same sampler; ``kw`` splits into solve and step options."""
    solve_kw = {k: kw.pop(k) for k in ("tol", "window", "max_iters") if k in kw}
    problem = from_scheduler(scheduler, denoiser, n, generator=generator(seed), **kw)
    return picard.solve(problem, x_T, **solve_kw)


def max_abs(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max().detach())


def runs(windows: Iterable[int | None], per_sample: bool = True) -> list[dict]:
    """Solve options: each window, then (``per_sample``) a per-sample window of 3."""
    return [{"window": w} for w in windows] + ([{"window": 3, "per_sample": True}] * per_sample)


def tol0_errors(
    problem: Callable,
    x_T: Tensor,
    ref: Tensor,
    options: Iterable[dict],
    *,
    seed=2,
    bound: float = math.inf,
    steps: int | None = None,
    gen_ref=None,
) -> float:
    """The largest |picard - ref| of picard's tol = 0 solves, one per entry of ``options``.

    ``problem(generator)`` builds each solve's problem, with a fresh generator seeded
    ``seed``. Each error must be at most ``bound``; each solve must take at most ``steps``
    sweeps (if given) and leave its generator where ``gen_ref`` is (if given).
    """
    worst = 0.0
    for kw in options:
        gen = generator(seed)
        sol = picard.solve(problem(gen), x_T, tol=0, **kw)
        err = max_abs(sol.final, ref)
        assert err <= bound, f"{kw}: max |picard - diffusers| = {err:.3g} > {bound:.3g}"
        if steps is not None:
            assert sol.stats.iterations <= steps
        if gen_ref is not None and gen is not None:
            assert same_state(gen, gen_ref), "generator state differs"
        worst = max(worst, err)
    return worst


def _reference(scheduler, denoiser, n, x_T, gen_ref=None, **kw) -> Tensor:
    """diffusers' sequential sample (:func:`sequential`), checked finite."""
    ref = sequential(scheduler, denoiser, n, x_T, gen_ref, **kw)
    assert torch.isfinite(ref).all()
    return ref


def assert_parity(scheduler, denoiser, n, x_T, *, seed=2, atol=1e-5, windows=(None, 7), **kw):
    """tol = 0 reproduces diffusers' sequential sample with the same generator seed.

    Within ``atol``, or a few float units of the sample's size when that is larger: some
    schedules (cosine betas, few steps, no clipping) reach |x| ~ 100, where one float32
    unit is 8e-6 and two roundings of the same sum differ by more than 1e-5.
    """
    ref = _reference(scheduler, denoiser, n, x_T, generator(seed), **kw)
    bound = max(atol, 1e-6 * float(ref.abs().max()) if ref.dtype == torch.float32 else 0.0)

    def problem(gen):
        return from_scheduler(scheduler, denoiser, n, generator=gen, **kw)

    tol0_errors(problem, x_T, ref, runs(windows, False), seed=seed, bound=bound, steps=n)
    return ref


def assert_scheduler_parity(
    scheduler,
    den,
    n,
    x_T,
    *,
    atol=1e-5,
    windows=(None, 7),
    seed=2,
    steps=None,
    timestep_options=None,
    **step_kw,
):
    """tol = 0 matches diffusers' loop within ``atol`` (in at most ``steps`` sweeps, if
    given), and leaves the generator where the loop leaves it. ``timestep_options`` are
    set_timesteps' (``sigmas``, ``mu``), ``step_kw`` step's. Returns the largest difference."""
    options = timestep_options or {}
    gen_ref = generator(seed)
    ref = _reference(scheduler, den, n, x_T, gen_ref, timestep_options=options, **step_kw)

    def problem(gen):
        return from_scheduler(scheduler, den, n, generator=gen, **options, **step_kw)

    opts = runs(windows, False)
    return tol0_errors(problem, x_T, ref, opts, seed=seed, bound=atol, steps=steps, gen_ref=gen_ref)


def assert_rule_parity(
    scheduler,
    from_config: Callable,
    denoiser,
    n: int,
    x_T: Tensor,
    *,
    seed: int | None = 2,
    atol: float | None = 1e-5,
    windows: Iterable[int | None] = (None, 7),
    per_sample: bool = True,
    relative: bool = True,
    ulp_floor: bool = True,
    timestep_options=None,
) -> tuple[Tensor, float]:
    """tol = 0 reproduces diffusers' sequential sample with ``from_config(config, n)``'s
    rule (a fresh one per solve); returns the sample and the worst error.

    ``atol`` is relative to ``max(1, max |sample|)`` when ``relative`` (the float32 target:
    1e-5 of the sample's magnitude; ``None``: 1e-5 in float32, 1e-10 in float64). With
    ``ulp_floor`` the bound is at least 4 ulps of the largest |x_T|: picard carries state
    i + 1 as ``x_i + (x_{i+1} − x_i)``, which rounds at the scale of x_i — at EDM's
    σ_max = 80 (|x_T| ~ 270) one float32 ulp is 3e-5.
    """
    options = timestep_options or {}
    ref = _reference(scheduler, denoiser, n, x_T, generator(seed), timestep_options=options)
    if atol is None:
        atol = 1e-5 if x_T.dtype == torch.float32 else 1e-10
    bound = atol * (max(1.0, float(ref.abs().max())) if relative else 1.0)
    if ulp_floor:
        bound = max(bound, 4 * torch.finfo(x_T.dtype).eps * float(x_T.abs().max()))

    def problem(gen):
        return DiffusionProblem(
            from_config(scheduler.config, n, **options), denoiser, generator=gen
        )

    steps = from_config(scheduler.config, n, **options).num_steps
    opts = runs(windows, per_sample)
    return ref, tol0_errors(problem, x_T, ref, opts, seed=seed, bound=bound, steps=steps)


def assert_sample_parity(
    scheduler, rule, den, n, x_T, *, windows=(None, 1, 3), per_sample=False, **step_kw
) -> float:
    """tol = 0 (no generator, ``per_sample`` at every window) matches diffusers' loop within
    1e-5 of the sample's size (at least 1) in float32, 1e-10 in float64; ``step_kw`` go to
    ``step``. Returns the largest difference."""
    ref = _reference(scheduler, den, n, x_T, **step_kw)
    bound = 1e-5 * max(1.0, float(ref.abs().max())) if x_T.dtype == torch.float32 else 1e-10

    def problem(gen):
        return DiffusionProblem(rule, den)

    opts = [{"window": w, "per_sample": per_sample} for w in windows]
    return tol0_errors(problem, x_T, ref, opts, seed=None, bound=bound)


WINDOWS = (None, 1, 2, 3, 7)


def check_parity(
    scheduler, rule, den, n, x_T, *, atol=None, seed=2, windows=WINDOWS, per_sample=True, **kw
):
    """tol = 0 reproduces diffusers' loop with ``rule`` for every window (and per sample),
    leaving the generator where the loop leaves it. Returns the largest difference.

    The float32 bound is 1e-5 of the sample's size, or 4 float32 units of x_T's where that
    is larger: picard sums increments onto states of x_T's size (σ_max up to 2e4 for
    cosine schedules), where the same sum rounds differently (see test_adapters_euler's
    ``noisy_atol``). ``kw`` go to :func:`sequential` (``no_upcast``, step options).
    """
    gen_ref = generator(seed)
    ref = _reference(scheduler, den, n, x_T, gen_ref, **kw)
    if atol is None:
        size = max(float(ref.abs().max()), 1.0)
        if ref.dtype == torch.float64:
            atol = 1e-10 * size
        else:
            atol = max(1e-5 * size, 5e-7 * float(x_T.abs().max()))

    def problem(gen):
        return DiffusionProblem(rule, den, generator=gen)

    opts = runs(windows, per_sample)
    return tol0_errors(
        problem, x_T, ref, opts, seed=seed, bound=atol, steps=rule.num_steps, gen_ref=gen_ref
    )


def rule_parity(
    scheduler,
    rule,
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
    gen_ref = generator(seed)
    ref = _reference(
        scheduler,
        den,
        rule.num_steps,
        x_T,
        gen_ref,
        timestep_options=timestep_options,
        no_upcast=no_upcast,
        **step_kw,
    )

    def problem(gen):
        return DiffusionProblem(rule, den, generator=gen)

    opts = runs(windows)
    err = tol0_errors(problem, x_T, ref, opts, seed=seed, steps=rule.num_steps, gen_ref=gen_ref)
    return err, float(ref.abs().max())


def bound32(ref_scale: float, states: float = 0.0) -> float:
    """The float32 bound: 1e-5 relative to the sample's size, or 4 ulps of the largest
    state where noise is added to it (picard's ``x + Σ Δ`` can differ by an ulp of x)."""
    return max(1e-5 * max(ref_scale, 1.0), 5e-7 * states)


def recorded_orders(sched, n: int, names: list[str], output=None, x=None, **step_kw) -> list[int]:
    """The order of the update each of diffusers' steps calls: ``names[k]`` is the method
    of order k + 1. From ``x`` (default ones), the model output ``output(s, x, t)``
    (default 0.1 x); ``step_kw`` go to ``step``."""
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    seen: list[int] = []
    for order, name in enumerate(names, start=1):
        method = getattr(s, name)

        def record(*a, _method=method, _order=order, **k):
            seen.append(_order)
            return _method(*a, **k)

        setattr(s, name, record)
    x = torch.ones(1, 1, 2, 2) if x is None else x
    for t in s.timesteps:
        out = 0.1 * x if output is None else output(s, x, t)
        x = s.step(out, t, x, **step_kw).prev_sample
    return seen


def recorded_predictor_corrector(sched, n: int, predictor: str, corrector: str, **step_kw):
    """The orders of diffusers' predictor calls and, per entry, its corrector's order or 0
    (``predictor``, ``corrector``: the methods' names; ``step_kw`` go to ``step``)."""
    s = copy.deepcopy(sched)
    s.set_timesteps(n)
    pred, corr = [], []
    predict, correct = getattr(s, predictor), getattr(s, corrector)

    def p(*a, order=None, **k):
        pred.append(order)
        return predict(*a, order=order, **k)

    def c(*a, order=None, **k):
        corr[-1] = order
        return correct(*a, order=order, **k)

    setattr(s, predictor, p)
    setattr(s, corrector, c)
    x = torch.ones(1, 1, 2, 2)
    for t in s.timesteps:
        corr.append(0)
        x = s.step(0.1 * x, t, x, **step_kw).prev_sample
    return pred, corr


def assert_split_window_equals_one_window(rule, n: int) -> None:
    """``update`` on a window split anywhere, the tail reading the head's remembered rows
    as history, gives what one window gives."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64)
    out = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64)
    c = {k: torch.as_tensor(v).reshape(-1, 1, 1, 1) for k, v in rule.coefficients.items()}
    whole, _ = rule.update(x, out, c, None, None)
    for cut in range(1, n):
        head = {k: v[:cut] for k, v in c.items()}
        tail = {k: v[cut:] for k, v in c.items()}
        first, kept = rule.update(x[:cut], out[:cut], head, None, None)
        second, _ = rule.update(x[cut:], out[cut:], tail, None, kept[-rule.memory :])
        assert torch.allclose(torch.cat([first, second]), whole, rtol=0, atol=1e-14)


def assert_posterior_tol_scale(rule, sigmas=None) -> None:
    """``tol_scale[i]`` is the DDPM posterior std between the grid's σ̃ at i + 1 and i + 2
    (ᾱ = 1/(σ̃² + 1)), positive but for the last, 0."""
    sigmas = rule.sigmas if sigmas is None else sigmas
    ab = 1 / (sigmas.double() ** 2 + 1)
    for i in range(rule.num_steps - 1):
        expected = float(schedules.posterior_std(ab[i + 1], ab[i + 2]))
        assert rule.tol_scale[i] == pytest.approx(expected, rel=1e-12)
    assert rule.tol_scale[-1] == 0 and (rule.tol_scale[:-1] > 0).all()


def assert_default_tolerance(sched, rule, den, n, *, iterations, error) -> None:
    """picard's default tolerance (no generator) is within ``error`` of diffusers' sample
    in fewer than ``iterations`` sweeps."""
    x_T = start_latent(sched, n)
    ref = sequential(sched, den, n, x_T)
    sol, _ = solve_rule(rule, den, x_T, seed=None)
    assert sol.stats.iterations < iterations
    assert float((sol.final - ref).abs().max()) < error


def step_recorder(into: list, timestep: Callable = int):
    """A pipeline's ``callback_on_step_end`` appending ``(i, timestep(t), latents)`` to ``into``."""

    def callback(pipe, i, t, kwargs):
        into.append((i, timestep(t), kwargs["latents"].clone()))
        return kwargs

    return callback
