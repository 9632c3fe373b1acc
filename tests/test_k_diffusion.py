"""picard.adapters.k_diffusion: k-diffusion's sampler calls, solved in parallel.

(a) Against k-diffusion's own functions at ``tol=0`` (when k-diffusion is installed: its
``sampling.py`` is loaded alone, with a stub ``utils``). (b) Always: against diffusers'
schedulers that implement the same steps, against plain loops of the published DPM-Solver++
formulas, the default tolerance per sample, callbacks, batched calls and clear errors.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import picard
from picard.adapters import k_diffusion as kd
from picard.adapters.k_samplers.noise import BrownianTreeNoiseSampler, default_noise_sampler

torch.set_num_threads(1)

MEANS = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=torch.float64)
STD = 0.4


def gmm_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
    """The exact denoiser E[x_0 | x_0 + σ n = x] of a 2-D Gaussian mixture (rows of (B, 2))."""
    s2 = sigma.to(torch.float64).reshape(-1, 1) ** 2
    xx = x.to(torch.float64)
    var = STD**2 + s2  # (B, 1)
    logits = -((xx[:, None] - MEANS[None]) ** 2).sum(-1) / (2 * var)
    weights = logits.softmax(-1)[..., None]
    post = MEANS[None] + (STD**2 / var)[..., None] * (xx[:, None] - MEANS[None])
    return (weights * post).sum(1).to(x.dtype)


def karras_sigmas(n: int, lo: float = 0.03, hi: float = 14.6) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    sig = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    return torch.cat([sig, sig.new_zeros(1)])


def start(batch: int, sigmas: torch.Tensor, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, generator=g, dtype=dtype) * sigmas[0].to(dtype)


def fixed_noise(shape, count: int = 200, seed: int = 7):
    """A noise sampler replaying fixed draws (a fresh replay per call of this function)."""
    g = torch.Generator().manual_seed(seed)
    draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(count)]
    it = iter(draws)
    return lambda sigma, sigma_next: next(it)


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean(1).sqrt() / b.pow(2).mean(1).sqrt()


NOISY = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
         "dpmpp_2m_sde", "dpmpp_3m_sde")  # fmt: skip
CHURN = ("euler", "heun", "dpm_2")


# (a) against k-diffusion ----------------------------------------------------------------


def _load_k_diffusion():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    root = spec.submodule_search_locations[0]
    name = "_k_diffusion_reference"
    if f"{name}.sampling" in sys.modules:
        return sys.modules[f"{name}.sampling"]
    package = types.ModuleType(name)
    package.__path__ = [root]
    utils = types.ModuleType(f"{name}.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules[name], sys.modules[f"{name}.utils"] = package, utils
    loaded = importlib.util.spec_from_file_location(f"{name}.sampling", f"{root}/sampling.py")
    module = importlib.util.module_from_spec(loaded)
    try:
        loaded.loader.exec_module(module)
    except ImportError as err:  # its own dependencies (torchdiffeq, torchsde, tqdm)
        pytest.skip(f"k-diffusion's sampling.py does not import: {err}")
    sys.modules[f"{name}.sampling"] = module
    return module


@pytest.fixture(scope="module")
def kdiff():
    return _load_k_diffusion()


CASES = [
    ("euler", {}),
    ("euler", {"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.01}),
    ("euler_ancestral", {}),
    ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("heun", {}),
    ("heun", {"s_churn": 1.0, "s_tmax": 3.0}),
    ("dpm_2", {}),
    ("dpm_2", {"s_churn": 1.0}),
    ("dpm_2_ancestral", {}),
    ("lms", {}),
    ("lms", {"order": 2}),
    ("dpmpp_2s_ancestral", {}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_sde", {}),
    ("dpmpp_sde", {"r": 0.3, "eta": 0.7}),
    ("dpmpp_2m", {}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5}),
    ("dpmpp_3m_sde", {}),
    ("dpmpp_3m_sde", {"eta": 0.0}),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchsde's float32 interval notices
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_tol0_equals_k_diffusion(kdiff, name, kwargs):
    """Default noise (torch's global generator, or the seeded Brownian tree): bitwise order."""
    sigmas = karras_sigmas(12)
    x = start(3, sigmas)
    torch.manual_seed(5)
    ref = getattr(kdiff, f"sample_{name}")(gmm_denoiser, x, sigmas, disable=True, **kwargs)
    after_ref = torch.rand(1)
    torch.manual_seed(5)
    out = kd.SAMPLERS[name](gmm_denoiser, x, sigmas, disable=True, tol=0, window=5, **kwargs)
    after_out = torch.rand(1)
    assert (out - ref).abs().max() < 1e-12
    assert torch.equal(after_ref, after_out)  # the global generator ends where k-diffusion's


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(kd.SAMPLERS))
def test_callback_and_noise_sampler_match_k_diffusion(kdiff, name):
    """The callback's dicts, in order, and a given noise sampler, at float32 sigmas."""
    sigmas = karras_sigmas(8)
    x = start(2, sigmas)
    kwargs = {"noise_sampler": fixed_noise(x.shape)} if name in NOISY else {}
    seen_ref: list[dict] = []
    ref = getattr(kdiff, f"sample_{name}")(
        gmm_denoiser, x, sigmas, callback=seen_ref.append, disable=True, **kwargs
    )
    kwargs = {"noise_sampler": fixed_noise(x.shape)} if name in NOISY else {}
    seen: list[dict] = []
    out = kd.SAMPLERS[name](
        gmm_denoiser, x, sigmas, callback=seen.append, disable=True, tol=0, window=4, **kwargs
    )
    assert (out - ref).abs().max() < 1e-12
    assert [d["i"] for d in seen] == [d["i"] for d in seen_ref] == list(range(8))
    for mine, theirs in zip(seen, seen_ref, strict=True):
        assert set(mine) == set(theirs)
        assert torch.equal(mine["sigma"], theirs["sigma"])
        assert torch.equal(mine["sigma_hat"], theirs["sigma_hat"])
        assert (mine["x"] - theirs["x"]).abs().max() < 1e-12
        assert (mine["denoised"] - theirs["denoised"]).abs().max() < 1e-12


def test_float64_grid_and_split_sigmas_match_k_diffusion(kdiff):
    """A float64 grid, and a grid that stops above 0 (the first half of a split schedule)."""
    full = karras_sigmas(10).double()
    for sigmas in (full, full[:6]):
        x = start(2, sigmas)
        for name in ("heun", "dpmpp_2m", "dpmpp_3m_sde", "dpm_2_ancestral"):
            kwargs = {"noise_sampler": fixed_noise(x.shape)} if name in NOISY else {}
            ref = getattr(kdiff, f"sample_{name}")(gmm_denoiser, x, sigmas, disable=True, **kwargs)
            kwargs = {"noise_sampler": fixed_noise(x.shape)} if name in NOISY else {}
            out = kd.SAMPLERS[name](gmm_denoiser, x, sigmas, disable=True, tol=0, **kwargs)
            assert (out - ref).abs().max() < 1e-12, name


def test_brownian_tree_matches_k_diffusion(kdiff):
    x = torch.zeros(2, 3)
    mine = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    theirs = kdiff.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    for a, b in ((5.0, 2.0), (2.0, 0.5), (0.5, 0.1)):
        s, t = torch.tensor(a), torch.tensor(b)
        assert torch.equal(mine(s, t), theirs(s, t))


# (b) always: against diffusers' schedulers ---------------------------------------------


def _diffusers_loop(scheduler, sigma_in, x, generator=None):
    """diffusers' loop with an ε-model made from the denoiser at each entry's σ."""
    sample = x.clone()
    kwargs = {} if generator is None else {"generator": generator}
    for k, t in enumerate(scheduler.timesteps):
        sigma = torch.tensor(float(sigma_in[k]), dtype=x.dtype)
        eps = (sample - gmm_denoiser(sample, sigma.expand(len(x)))) / sigma
        sample = scheduler.step(eps, t, sample, **kwargs).prev_sample
    return sample


def _sigmas_in(rule) -> np.ndarray:
    return next(rule.coefficients[k] for k in ("sigma_in", "sigma", "sigma_hat")
                if k in rule.coefficients)  # fmt: skip


@pytest.mark.parametrize("kind", ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral",
                                  "lms"])  # fmt: skip
def test_matches_diffusers_schedulers(kind):
    """The same steps as diffusers' Euler, Euler-ancestral, Heun, KDPM2(-ancestral), LMS."""
    diffusers = pytest.importorskip("diffusers")
    from picard.adapters.schedulers import euler, heun, kdpm2, lms

    n, config = 12, {"use_karras_sigmas": True}
    make = {
        "euler": (diffusers.EulerDiscreteScheduler, lambda: euler.EulerRule(config, n)),
        "euler_ancestral": (diffusers.EulerAncestralDiscreteScheduler,
                            lambda: euler.EulerAncestralRule({}, n)),
        "heun": (diffusers.HeunDiscreteScheduler, lambda: heun.HeunRule(config, n)),
        "dpm_2": (diffusers.KDPM2DiscreteScheduler, lambda: kdpm2.KDPM2Rule(config, n)),
        "dpm_2_ancestral": (diffusers.KDPM2AncestralDiscreteScheduler,
                            lambda: kdpm2.KDPM2AncestralRule(config, n)),
        "lms": (diffusers.LMSDiscreteScheduler, lambda: lms.LMSRule(config, n)),
    }  # fmt: skip
    cls, rule_of = make[kind]
    rule = rule_of()
    scheduler = cls(**({} if kind == "euler_ancestral" else config))
    scheduler.set_timesteps(n)
    grid = getattr(rule, "base_sigmas", rule.sigmas)
    x = start(4, grid, dtype=torch.float32)
    noisy = kind.endswith("ancestral")
    g = torch.Generator().manual_seed(3) if noisy else None
    ref = _diffusers_loop(scheduler, _sigmas_in(rule), x, g)
    kwargs = {}
    if noisy:
        replay = torch.Generator().manual_seed(3)
        kwargs["noise_sampler"] = lambda s, t: torch.randn(x.shape, generator=replay)
    out = kd.SAMPLERS[kind](gmm_denoiser, x, grid, disable=True, tol=0, **kwargs)
    assert (out - ref).abs().max() < 2e-4 * ref.abs().max()


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpmpp_2m_matches_diffusers_dpm_solver(algorithm):
    """DPM-Solver++(2M) (and its SDE, η = 1) = diffusers' multistep on the VP latent."""
    diffusers = pytest.importorskip("diffusers")
    n = 16
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type=algorithm, use_karras_sigmas=True, prediction_type="sample",
        solver_order=2, lower_order_final=False,
    )  # fmt: skip
    scheduler.set_timesteps(n)
    grid = scheduler.sigmas.float()
    x = start(4, grid, dtype=torch.float32)
    g, replay = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    sample = x / (grid[0] ** 2 + 1) ** 0.5  # the VP latent α x
    for k, t in enumerate(scheduler.timesteps):
        scale = (grid[k] ** 2 + 1) ** 0.5
        out = gmm_denoiser(sample * scale, grid[k].expand(len(x)))
        sample = scheduler.step(out, t, sample, generator=g).prev_sample
    if algorithm == "dpmsolver++":
        mine = kd.sample_dpmpp_2m(gmm_denoiser, x, grid, disable=True, tol=0)
    else:
        noise = lambda s, t: torch.randn(x.shape, generator=replay)  # noqa: E731
        mine = kd.sample_dpmpp_2m_sde(
            gmm_denoiser, x, grid, disable=True, tol=0, noise_sampler=noise
        )
    assert (mine - sample).abs().max() < 2e-4 * sample.abs().max()


# (b) always: against plain loops of the published DPM-Solver++ formulas -----------------


def _ancestral(s_from, s_to, eta):
    up = min(s_to, eta * math.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2))
    return math.sqrt(s_to**2 - up**2), up


def _loop(name, x, sigmas, noise, eta=1.0, r=0.5):
    """k-diffusion's DPM-Solver++ samplers, written out from Lu et al. 2022b in float64."""
    sig = [float(s) for s in sigmas]
    den = lambda x, s: gmm_denoiser(x, torch.full((len(x),), s, dtype=x.dtype))  # noqa: E731
    old, hs = [], []
    for i in range(len(sig) - 1):
        s, nxt = sig[i], sig[i + 1]
        d0 = den(x, s)
        if name == "dpmpp_2s_ancestral":
            down, up = _ancestral(s, nxt, eta)
            if down == 0:
                x = d0
            else:
                h = math.log(s / down)
                mid = s * math.exp(-h / 2)
                x2 = (mid / s) * x - math.expm1(-h / 2) * d0
                x = (down / s) * x - math.expm1(-h) * den(x2, mid)
            if nxt > 0:
                x = x + noise() * up
        elif name == "dpmpp_sde":
            if nxt == 0:
                x = d0
                continue
            h = math.log(s / nxt)
            smid = s * math.exp(-r * h)
            down, up = _ancestral(s, smid, eta)
            x2 = (down / s) * x - math.expm1(math.log(down / s)) * d0 + noise() * up
            down2, up2 = _ancestral(s, nxt, eta)
            dd = (1 - 1 / (2 * r)) * d0 + 1 / (2 * r) * den(x2, smid)
            x = (down2 / s) * x - math.expm1(math.log(down2 / s)) * dd + noise() * up2
        else:  # dpmpp_3m_sde
            if nxt == 0:
                x = d0
                continue
            h = math.log(s / nxt)
            he = h * (eta + 1)
            phi2 = math.expm1(-he) / he + 1
            x = math.exp(-he) * x - math.expm1(-he) * d0
            if len(hs) >= 2:
                r0, r1 = hs[-1] / h, hs[-2] / h
                d10, d11 = (d0 - old[-1]) / r0, (old[-1] - old[-2]) / r1
                d1 = d10 + (d10 - d11) * r0 / (r0 + r1)
                d2 = (d10 - d11) / (r0 + r1)
                x = x + phi2 * d1 - (phi2 / he - 0.5) * d2
            elif hs:
                x = x + phi2 * (d0 - old[-1]) / (hs[-1] / h)
            if eta:
                x = x + noise() * nxt * math.sqrt(-math.expm1(-2 * h * eta))
            old.append(d0)
            hs.append(h)
    return x


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"])
def test_matches_published_formulas(name):
    sigmas = karras_sigmas(10).double()
    x = start(3, sigmas)
    draw = fixed_noise(x.shape)
    ref = _loop(name, x, sigmas, lambda: draw(None, None))
    out = kd.SAMPLERS[name](
        gmm_denoiser, x, sigmas, disable=True, tol=0, noise_sampler=fixed_noise(x.shape)
    )
    assert (out - ref).abs().max() < 1e-10


# (b) always: the default tolerance, calls, callbacks, arguments ------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(kd.SAMPLERS))
def test_default_tol_within_tol_per_sample(name):
    """No picard options: each sample within tol = 0.01 of its RMS; fewer sweeps than rounds."""
    sigmas = karras_sigmas(25)
    x = start(8, sigmas)
    torch.manual_seed(11)
    exact = kd.SAMPLERS[name](gmm_denoiser, x, sigmas, disable=True, tol=0, window=None)
    torch.manual_seed(11)
    sol = kd.SAMPLERS[name](gmm_denoiser, x, sigmas, disable=True, return_solution=True)
    assert relative_errors(sol.final, exact).max() <= 0.01
    assert sol.stats.iterations < sol.stats.num_steps


def test_one_model_call_per_sweep_with_rows_and_sigmas():
    sigmas = karras_sigmas(10)
    x = start(3, sigmas)
    calls: list[tuple[int, torch.Tensor]] = []

    def model(rows, sigma):
        calls.append((rows.shape[0], sigma.clone()))
        return gmm_denoiser(rows, sigma)

    sol = kd.sample_heun(model, x, sigmas, disable=True, window=None, return_solution=True)
    assert len(calls) == sol.stats.iterations
    assert calls[0][0] == 3 * sol.stats.num_steps  # every entry of the grid, 3 rows each
    first = calls[0][1].reshape(-1, 3)
    assert torch.equal(first[:, 0:1].expand(-1, 3), first)  # one σ per entry, per row
    assert torch.equal(first[0, 0], sigmas[0]) and torch.equal(first[1, 0], sigmas[1])


def test_extra_args_gathered_per_sample():
    """A per-sample ``cond`` reaches each row's sample, as the one-sample calls get it."""
    sigmas = karras_sigmas(8)
    x = start(3, sigmas)
    cond = torch.tensor([[0.5, 0.0], [0.0, -0.5], [0.2, 0.2]], dtype=torch.float64)

    def model(rows, sigma, cond, scale):
        return gmm_denoiser(rows, sigma) + scale * cond

    args = {"cond": cond, "scale": 0.5}
    both = kd.sample_dpmpp_2m(model, x, sigmas, extra_args=args, disable=True, tol=0, window=3)
    for b in range(3):
        one = {"cond": cond[b : b + 1], "scale": 0.5}
        alone = kd.sample_dpmpp_2m(model, x[b : b + 1], sigmas, extra_args=one, tol=0, window=3)
        assert (both[b] - alone[0]).abs().max() < 1e-12


def test_callback_order_and_values():
    sigmas = karras_sigmas(12)
    x = start(2, sigmas)
    seen: list[dict] = []
    out = kd.sample_heun(
        gmm_denoiser, x, sigmas, callback=seen.append, disable=True, window=4, tol=0
    )
    assert [d["i"] for d in seen] == list(range(12))
    assert all(set(d) == {"x", "i", "sigma", "sigma_hat", "denoised"} for d in seen)
    assert torch.equal(seen[0]["x"], x)
    assert all(torch.equal(d["sigma"], sigmas[d["i"]]) for d in seen)
    assert (seen[-1]["denoised"] - out).abs().max() < 1e-12  # the last step is Euler to 0


def test_default_noise_uses_global_generator_in_order():
    """Ancestral default noise: torch.randn_like on the global generator, k-diffusion's draws."""
    sigmas = karras_sigmas(6)
    x = start(2, sigmas)
    torch.manual_seed(0)
    draws = [torch.randn_like(x) for _ in range(5)]  # σ_{i+1} > 0 at 5 of 6 steps
    it = iter(draws)
    given = kd.sample_euler_ancestral(
        gmm_denoiser, x, sigmas, noise_sampler=lambda s, t: next(it), tol=0
    )
    torch.manual_seed(0)
    default = kd.sample_euler_ancestral(gmm_denoiser, x, sigmas, tol=0)
    assert torch.equal(given, default)
    seeded = default_noise_sampler(x, seed=0)
    assert seeded(sigmas[0], sigmas[1]).shape == x.shape


def test_tol0_equals_sequential_for_any_window():
    sigmas = karras_sigmas(15)
    x = start(2, sigmas)
    results = [
        kd.sample_dpmpp_3m_sde(gmm_denoiser, x, sigmas, tol=0, window=w,
                               noise_sampler=fixed_noise(x.shape))
        for w in (1, 4, None)
    ]  # fmt: skip
    assert (results[0] - results[1]).abs().max() < 1e-12
    assert (results[0] - results[2]).abs().max() < 1e-12


@pytest.mark.parametrize(
    ("call", "error", "word"),
    [
        (lambda x, s: kd.sample_euler(3, x, s), TypeError, "model"),
        (lambda x, s: kd.sample_euler(gmm_denoiser, x[0], s), ValueError, "x"),
        (lambda x, s: kd.sample_euler(gmm_denoiser, x, s[:1]), ValueError, "sigmas"),
        (lambda x, s: kd.sample_euler(gmm_denoiser, x, s.tolist()), TypeError, "sigmas"),
        (lambda x, s: kd.sample_euler(gmm_denoiser, x, -s), ValueError, "sigmas"),
        (lambda x, s: kd.sample_euler(gmm_denoiser, x, s, s_churn="1"), TypeError, "s_churn"),
        (lambda x, s: kd.sample_euler_ancestral(gmm_denoiser, x, s, eta=-1.0), ValueError, "eta"),
        (lambda x, s: kd.sample_euler_ancestral(gmm_denoiser, x, s, noise_sampler=3), TypeError,
         "noise_sampler"),
        (lambda x, s: kd.sample_lms(gmm_denoiser, x, s, order=0), ValueError, "order"),
        (lambda x, s: kd.sample_dpmpp_2m_sde(gmm_denoiser, x, s, solver_type="rk4"), ValueError,
         "solver_type"),
        (lambda x, s: kd.sample_dpmpp_sde(gmm_denoiser, x, s, r=0.0), ValueError, "r"),
        (lambda x, s: kd.sample_dpmpp_2m(gmm_denoiser, x, s, windw=3), TypeError, "windw"),
        (lambda x, s: kd.sample_dpmpp_2m(gmm_denoiser, x, s, tol=-1.0), ValueError, "tol"),
        (lambda x, s: kd.sample_heun(gmm_denoiser, x, s, callback=3), TypeError, "callback"),
        (lambda x, s: kd.sample_heun(gmm_denoiser, x, s, extra_args=[1]), TypeError,
         "extra_args"),
        (lambda x, s: kd.sample_dpmpp_2m(lambda x, s: x[:1], x, s), ValueError, "denoiser"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_argument(call, error, word):
    sigmas = karras_sigmas(4)
    with pytest.raises(error, match=word):
        call(start(2, sigmas), sigmas)


def test_sweeps_fewer_than_steps_at_25_steps():
    """The measured speed-up: at most 0.6 sweeps per sequential model evaluation."""
    sigmas = karras_sigmas(25)
    x = start(16, sigmas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("euler", "heun", "dpmpp_2m"):
            sol = kd.SAMPLERS[name](gmm_denoiser, x, sigmas, window=None, return_solution=True)
            assert sol.stats.iterations <= 0.6 * sol.stats.num_steps, name
    assert isinstance(sol, picard.Solution)


# the ComfyUI node, with a stand-in for comfy.samplers ----------------------------------


@pytest.fixture
def comfy_node(monkeypatch):
    """``integrations/comfyui_picard`` loaded beside a fake ``comfy.samplers.KSAMPLER``."""
    from pathlib import Path

    class KSAMPLER:  # ComfyUI's constructor: (sampler_function, extra_options, inpaint_options)
        def __init__(self, sampler_function, extra_options={}, inpaint_options={}):  # noqa: B006
            self.sampler_function, self.extra_options = sampler_function, extra_options
            self.inpaint_options = inpaint_options

    comfy, samplers = types.ModuleType("comfy"), types.ModuleType("comfy.samplers")
    samplers.KSAMPLER, comfy.samplers = KSAMPLER, samplers
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.samplers", samplers)
    folder = Path(__file__).resolve().parents[1] / "integrations" / "comfyui_picard"
    spec = importlib.util.spec_from_file_location(
        "comfyui_picard", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _comfy_model(x, sigma, denoise_mask=None, model_options={}, seed=None):  # noqa: B006
    """ComfyUI's model call: keyword arguments it ignores here, any number of rows."""
    return gmm_denoiser(x, sigma)


def test_comfyui_node_returns_a_ksampler(comfy_node):
    node = comfy_node.NODE_CLASS_MAPPINGS["PicardSampler"]()
    assert "PicardSampler" in comfy_node.NODE_DISPLAY_NAME_MAPPINGS
    names = node.INPUT_TYPES()["required"]["sampler_name"][0]
    assert names == list(kd.SAMPLERS)
    sigmas = karras_sigmas(10)
    x = start(2, sigmas)
    args = {"model_options": {}, "seed": 3}
    for name in ("dpmpp_2m", "euler_ancestral"):
        (sampler,) = node.get_sampler(name, tol=0.0, window=0)
        seen: list[int] = []
        out = sampler.sampler_function(
            _comfy_model, x, sigmas, extra_args=args, callback=lambda d, s=seen: s.append(d["i"]),
            disable=True, **sampler.extra_options,
        )  # fmt: skip
        noise = {"noise_sampler": default_noise_sampler(x, seed=3)} if "anc" in name else {}
        ref = kd.SAMPLERS[name](_comfy_model, x, sigmas, extra_args=args, tol=0, **noise)
        assert torch.equal(out, ref) and seen == list(range(10))


def test_comfyui_inpainting_calls_one_batch_at_a_time(comfy_node):
    sigmas = karras_sigmas(6)
    x = start(2, sigmas)
    mask = torch.ones(2, 2, dtype=torch.float64)

    def model(x, sigma, denoise_mask=None, seed=None):
        assert x.shape[0] == 2 and denoise_mask.shape[0] == 2  # ComfyUI's latent is (2, ...)
        return gmm_denoiser(x, sigma)

    fn = comfy_node.comfy_sampler("heun", tol=0, window=None)
    out = fn(model, x, sigmas, extra_args={"denoise_mask": mask, "seed": 0}, disable=True)
    assert (out - kd.sample_heun(gmm_denoiser, x, sigmas, tol=0)).abs().max() < 1e-12
    with pytest.raises(ValueError, match="sampler name"):
        comfy_node.comfy_sampler("ddim")
