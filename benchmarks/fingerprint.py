"""Issue 21: a behaviour fingerprint of picard, to check a structural refactor bit for bit.

Runs a broad, fast set of solves through the public API only (``picard.solve``,
``sequential``, ``Recursion``, ``Problem``, ``Secant``, ``Picard``, ``odeint``,
``odeint_adjoint``, ``sdeint``, ``picard.adapters.diffusers.from_scheduler`` and
``parallelize``, ``picard.models.tiny``, ``picard.adapters.schedulers.SCHEDULERS``), so that
it runs unchanged on the tree before and after internal modules move. Per case it records
the sweeps, evaluations, window, a hash of the window starts and of the residuals, the
SHA-256 of the final tensor's bytes (of ``ys`` when saved, of gradients), and the final
tensor's float64 sum and max abs (its values too when it is small), so that results that
are not identical can be compared by their difference. A case that raises records the
exception's type and message. Seeded throughout, one thread; ``window="auto"`` runs under
the simulated clock of ``tests/conftest.py`` (+1 ms per reading).

    PYTHONPATH=$PWD python benchmarks/fingerprint.py --out F.json
    PYTHONPATH=$PWD python benchmarks/fingerprint.py --compare F.json [--only NAME-PART]

(``benchmarks/results/fingerprint_before.json`` is the tree before issue 21's refactor.)

``--compare`` runs again and prints, per case, ``identical`` or what differs (the max abs
difference of the finals, the sweeps and evaluations), then the summary line
``N of M identical; K differ in sweeps or evaluations; max abs difference X``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import random
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import picard

F64 = torch.float64
VALUES_UP_TO = 64  # finals with at most this many elements are stored in full
Case = Callable[[], dict[str, Any]]
CASES: dict[str, Case] = {}


# ---------------------------------------------------------------------------------------------
# Recording


class Ticks:
    """The simulated clock of ``tests/conftest.py``: +1 ms per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-3
        return self.now


def install_clock() -> bool:
    """Give ``window="auto"`` a fresh simulated clock, where picard has one to set.

    ``picard.window.default_clock``, as ``tests/conftest.py`` sets it; should it move, any
    loaded ``picard`` module's ``default_clock`` is set instead.
    """
    with contextlib.suppress(ImportError):
        importlib.import_module("picard.window")
    found = False
    for name, module in list(sys.modules.items()):
        if name.startswith("picard") and callable(getattr(module, "default_clock", None)):
            module.default_clock = Ticks()
            found = True
    return found


def reset_calibration() -> bool:
    """Forget the sweep times ``window="auto"`` stored by earlier cases (isolates each case).

    The times are stored per model, keyed by the ``id`` of its first parameter, which a
    later case's model may reuse; the store is picard's private ``_CURVES``, looked up in
    whichever ``picard`` module holds it, so that this keeps working when it moves.
    """
    found = False
    for name, module in list(sys.modules.items()):
        store = getattr(module, "_CURVES", None) if name.startswith("picard") else None
        if isinstance(store, dict):
            store.clear()
            found = True
    return found


def sha(data: bytes | str) -> str:
    """A short SHA-256 of ``data``."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:24]


def tensor_sha(t: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return sha(f"{t.dtype}{tuple(t.shape)}".encode() + raw)


def summary(t: Tensor) -> dict[str, Any]:
    """The tensor's hash, shape, dtype and float64 sum and max abs (and values when small)."""
    d = t.detach().cpu().to(F64)
    out: dict[str, Any] = {
        "sha": tensor_sha(t),
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sum": float(d.sum()),
        "maxabs": float(d.abs().max()) if d.numel() else 0.0,
    }
    if d.numel() <= VALUES_UP_TO:
        out["values"] = d.reshape(-1).tolist()
    return out


def stats_record(stats: Any) -> dict[str, Any]:
    """What a :class:`picard.Stats` says, with its per-sweep sequences hashed."""
    if stats is None:
        return {}
    out: dict[str, Any] = {}
    for name in ("num_steps", "window", "tol", "iterations", "evaluations", "stages"):
        out[name] = getattr(stats, name, None)
    for name in ("sequential_steps", "verifications", "error_estimate", "rows_per_evaluation"):
        if hasattr(stats, name):
            out[name] = getattr(stats, name)
    if getattr(stats, "acceleration", None):
        out["acceleration"] = dict(sorted(stats.acceleration.items()))
    starts = getattr(stats, "window_starts", None)
    if starts is not None:
        out["window_starts"] = sha(repr(tuple(int(s) for s in starts)))
    try:
        out["residuals"] = sha(repr(tuple(float(r) for r in stats.residuals)))
    except Exception as err:  # a fingerprint too
        out["residuals"] = f"{type(err).__name__}: {err}"
    cost = getattr(stats, "cost", None)
    if cost:
        out["cost"] = sha(repr(sorted((int(k), float(v)) for k, v in cost.items())))
    back = getattr(stats, "backward", None)
    if back:
        out["backward"] = [
            {"iterations": b.iterations, "evaluations": b.evaluations, "window": b.window}
            for b in back
        ]
    return out


def result(
    final: Tensor,
    stats: Any = None,
    ys: Tensor | None = None,
    grads: list[Tensor | None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A case's record from what it computed."""
    out: dict[str, Any] = {"final": summary(final), "stats": stats_record(stats)}
    if ys is not None:
        out["ys"] = tensor_sha(ys)
    if grads is not None:
        out["grads"] = [None if g is None else summary(g) for g in grads]
    out.update(extra)
    return out


def of_solution(sol: Any, **extra: Any) -> dict[str, Any]:
    """A case's record from a :class:`picard.Solution`."""
    steps = None if sol.steps is None else [int(s) for s in sol.steps]
    return result(sol.final, sol.stats, sol.ys, steps=steps, **extra)


def run_case(name: str, case: Case) -> dict[str, Any]:
    """Run one case, seeded, with a fresh clock; record its result, warnings or exception."""
    install_clock()
    reset_calibration()
    torch.manual_seed(zlib.crc32(name.encode()))
    random.seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = case()
        except Exception as err:
            out = {"error": type(err).__name__, "message": str(err)}
    categories = {
        w.category.__name__
        for w in caught
        if w.category.__module__.startswith("picard") or w.category is UserWarning
    }
    if categories:
        out["warnings"] = sorted(categories)
    return out


def case(name: str) -> Callable[[Case], Case]:
    """Register a case under ``name``."""

    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


def add(name: str, fn: Case) -> None:
    """Register ``fn`` under ``name``."""
    case(name)(fn)


# ---------------------------------------------------------------------------------------------
# Recursions


N = 48


def linear(i: Tensor, x: Tensor) -> Tensor:
    """A linear recursion with step-dependent decay."""
    a = -0.3 * torch.cos(0.1 * i.to(x.dtype)) - 0.05
    return a.reshape(-1, *[1] * (x.ndim - 1)) * x / 4


def make_nonlinear() -> Callable[[Tensor, Tensor], Tensor]:
    """A nonlinear recursion: a fixed random map of the last dimension, through tanh."""
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(7), dtype=F64) / 2

    def fn(i: Tensor, x: Tensor) -> Tensor:
        shift = (0.05 * i.to(x.dtype)).reshape(-1, *[1] * (x.ndim - 1))
        return 0.1 * torch.tanh(x @ w.to(x.dtype) + shift) - 0.02 * x

    return fn


class AB2(picard.Problem):
    """Adams–Bashforth 2 on ``dx/dt = cos(x) - 0.3 x``: a problem with memory 1."""

    memory = 1

    def __init__(self, n: int, batch_ndim: int = 0):
        self.num_steps = n
        self.batch_ndim = batch_ndim
        self.h = 2.0 / n

    def increments(
        self, x: Tensor, start: int, state: Any, history: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """AB2's increments and the drift outputs."""
        f = torch.cos(x) - 0.3 * x
        prev = torch.cat([f[:1] if history is None else history, f[:-1]])
        if start == 0:
            prev[0] = f[0]
        return self.h * (1.5 * f - 0.5 * prev), f


def x0_of(shape: tuple[int, ...] = (3, 4), dtype: torch.dtype = F64, seed: int = 1) -> Tensor:
    """A seeded starting state."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


RECURSIONS: dict[str, Callable[[int], picard.Problem]] = {
    "linear": lambda n: picard.Recursion(linear, n, batch_dims=1),
    "nonlinear": lambda n: picard.Recursion(make_nonlinear(), n, batch_dims=1),
    "memory": lambda n: AB2(n, batch_ndim=1),
}
WINDOWS: list[Any] = [1, 3, 8, None]
TOLS = [0.0, 1e-4, 1e-2]
ACCELERATIONS = ["picard", "secant", "auto"]


def accelerate_of(name: str) -> Any:
    """The ``accelerate=`` value of a short name (``"picard"``: plain, ``None``)."""
    return {"picard": None, "secant": "secant", "auto": "auto"}[name]


def solve_case(problem: Callable[[], picard.Problem], x0: Callable[[], Tensor], **kw: Any) -> Case:
    """A case solving ``problem()`` from ``x0()`` with ``kw``, recording progress calls."""

    def run() -> dict[str, Any]:
        calls: list[tuple[int, int]] = []
        sol = picard.solve(problem(), x0(), progress=lambda d, n: calls.append((d, n)), **kw)
        return of_solution(sol, progress=sha(repr(calls)))

    return run


def add_recursion_cases() -> None:
    """The main grid, a sampled grid of the other options, and the odd corners."""
    for rname, make in RECURSIONS.items():
        add(
            f"sequential/{rname}",
            lambda make=make: of_solution(picard.sequential(make(N), x0_of(), save=True)),
        )
        for window, tol, acc in itertools.product(WINDOWS, TOLS, ACCELERATIONS):
            add(
                f"grid/{rname}/w{window}/tol{tol:g}/{acc}",
                solve_case(
                    lambda make=make: make(N),
                    x0_of,
                    window=window,
                    tol=tol,
                    accelerate=accelerate_of(acc),
                ),
            )
    # The other options, sampled from their product (the same sample every run).
    axes = {
        "recursion": list(RECURSIONS),
        "window": [3, 8, None],
        "tol": [0.0, 1e-4, 1e-2],
        "accelerate": ACCELERATIONS,
        "acceptance": ["converged-prefix", "first-unconverged"],
        "predict": [True, False],
        "dtype": ["float64", "float32"],
        "save": ["no", "all", "some"],
        "verify": [False, True],
        "max_rows": [None, 12],
    }
    combos = list(itertools.product(*axes.values()))
    for combo in random.Random(21).sample(combos, 200):
        kw = dict(zip(axes, combo, strict=True))
        rname = kw.pop("recursion")
        dtype = getattr(torch, kw.pop("dtype"))
        save = {"no": False, "all": True, "some": [0, 5, N // 2, N]}[kw.pop("save")]
        kw["accelerate"] = accelerate_of(kw["accelerate"])
        label = "/".join(f"{k}={v}" for k, v in kw.items())
        add(
            f"options/{rname}/{dtype}/save={save if isinstance(save, bool) else 'some'}/{label}",
            solve_case(
                lambda make=RECURSIONS[rname]: make(N),
                lambda dtype=dtype: x0_of(dtype=dtype),
                save=save,
                **kw,
            ),
        )
    lin = RECURSIONS["linear"]
    non = RECURSIONS["nonlinear"]
    corners: dict[str, tuple[Callable[[], picard.Problem], Callable[[], Tensor], dict]] = {
        "float32": (lambda: non(N), lambda: x0_of(dtype=torch.float32), {"window": 8}),
        "float32/tol0": (lambda: non(N), lambda: x0_of(dtype=torch.float32), {"tol": 0}),
        "float16": (lambda: non(N), lambda: x0_of(dtype=torch.float16), {"window": 8}),
        "bfloat16": (lambda: lin(N), lambda: x0_of(dtype=torch.bfloat16), {"tol": 1e-3}),
        "unbatched": (
            lambda: picard.Recursion(make_nonlinear(), N),
            x0_of,
            {"window": 8, "tol": 1e-6},
        ),
        "scale": (
            lambda: picard.Recursion(linear, N, scale=[0.5 + 0.01 * i for i in range(N)]),
            x0_of,
            {"window": 8, "tol": 1e-3},
        ),
        "relative": (lambda: non(N), x0_of, {"window": 8, "tol": 1e-3, "relative": True}),
        "rtol-atol": (lambda: non(N), x0_of, {"window": 8, "rtol": 1e-5, "atol": 1e-7}),
        "rtol": (lambda: non(N), x0_of, {"window": 8, "rtol": 1e-4}),
        "max_iters/raise": (lambda: non(N), x0_of, {"window": 8, "tol": 0, "max_iters": 5}),
        "max_iters/sequential": (
            lambda: non(N),
            x0_of,
            {"window": 8, "tol": 0, "max_iters": 5, "on_budget": "sequential"},
        ),
        "max_evaluations/raise": (
            lambda: non(N),
            x0_of,
            {"window": 8, "tol": 0, "max_evaluations": 200},
        ),
        "max_evaluations/sequential": (
            lambda: non(N),
            x0_of,
            {"window": 8, "tol": 0, "max_evaluations": 200, "on_budget": "sequential"},
        ),
        "max_rows": (lambda: non(N), x0_of, {"max_rows": 20, "tol": 1e-6}),
        "max_rows+window": (lambda: non(N), x0_of, {"max_rows": 40, "window": 6, "tol": 1e-6}),
        "secant-object": (
            lambda: non(N),
            x0_of,
            {"window": 16, "tol": 1e-8, "accelerate": picard.Secant(clip=0.3, min_window=4)},
        ),
        "secant-tighten": (
            lambda: non(N),
            x0_of,
            {"window": None, "tol": 1e-6, "accelerate": picard.Secant(tighten=0.5, prior=False)},
        ),
        "picard-object": (
            lambda: non(N),
            x0_of,
            {"window": 8, "tol": 1e-6, "accelerate": picard.Picard()},
        ),
        "verify=1e-8": (lambda: non(N), x0_of, {"window": 8, "tol": 1e-4, "verify": 1e-8}),
        "verify+max_iters": (
            lambda: non(N),
            x0_of,
            {"window": 8, "tol": 1e-4, "verify": True, "max_iters": 30},
        ),
        "auto/long": (lambda: non(400), x0_of, {"window": "auto", "tol": 1e-6}),
        "auto/long/secant": (
            lambda: non(400),
            x0_of,
            {"window": "auto", "tol": 1e-6, "accelerate": "secant"},
        ),
        "auto/memory": (lambda: AB2(200, 1), x0_of, {"tol": 1e-7}),
        "default": (lambda: non(N), x0_of, {}),
        "nonfinite/raise": (
            lambda: picard.Recursion(infinite_at_7, 20),
            x0_of,
            {"window": 8},
        ),
        "nonfinite/sequential": (
            lambda: picard.Recursion(explode, 30),
            x0_of,
            {"window": 10, "on_nonfinite": "sequential"},
        ),
        "nonfinite/sequential/raise": (
            lambda: picard.Recursion(explode, 30),
            x0_of,
            {"window": 10},
        ),
        "error/per_sample": (lambda: non(N), x0_of, {"per_sample": True}),
        "error/window0": (lambda: non(N), x0_of, {"window": 0}),
        "error/tol-1": (lambda: non(N), x0_of, {"tol": -1.0}),
        "error/unknown": (lambda: non(N), x0_of, {"windw": 4}),
        "error/accelerate": (lambda: non(N), x0_of, {"accelerate": "anderson"}),
        "error/rtol+tol": (lambda: non(N), x0_of, {"rtol": 1e-3, "tol": 1e-3}),
    }
    for name, (problem, x0, kw) in corners.items():
        add(f"corner/{name}", solve_case(problem, x0, **kw))

    def warm(window: Any) -> dict[str, Any]:
        near = picard.solve(non(N), x0_of() * 1.01, window=window, tol=1e-8, save=True)
        return of_solution(picard.solve(non(N), x0_of(), init=near.ys, window=window, tol=1e-8))

    for window in (4, 16, None):
        add(f"corner/init/w{window}", lambda window=window: warm(window))
    add("corner/error/init-shape", solve_case(lambda: non(N), x0_of, init=torch.zeros(3, 4)))
    add("corner/error/save", solve_case(lambda: non(N), x0_of, save=[3, 2]))


def infinite_at_7(i: Tensor, x: Tensor) -> Tensor:
    """Inf at step 7, on every path."""
    return torch.where((i == 7).reshape(-1, 1, 1), math.inf, 0.1 * x)


def explode(i: Tensor, x: Tensor) -> Tensor:
    """+0.1 a step from ``x0_of()``; NaN on states that lag that path (far-off guesses)."""
    lag = x - 0.1 * i.to(x.dtype)[:, None, None] - x0_of().to(x.dtype)
    return torch.where(lag < -0.05, math.nan, 0.1 + 0.01 * torch.sin(lag))


# ---------------------------------------------------------------------------------------------
# Diffusion samplers


class Denoiser(torch.nn.Module):
    """A tiny deterministic denoiser: a fixed random linear map of the sample, then tanh."""

    def __init__(self, size: int, seed: int = 3, dtype: torch.dtype = torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter((torch.randn(size, size, generator=g) / size**0.5).to(dtype))
        self.b = torch.nn.Parameter((0.1 * torch.randn(size, generator=g)).to(dtype))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``tanh(x W + b)`` scaled by the timestep, in ``x``'s shape."""
        flat = x.reshape(x.shape[0], -1)
        scale = 1 + t.to(x.dtype).reshape(-1, 1) / 2000
        out = torch.tanh(flat @ self.w.to(x.dtype) + self.b.to(x.dtype)) * scale
        return out.reshape(x.shape)


SAMPLE = (2, 4, 4)  # channels, height, width
SIZE = math.prod(SAMPLE)


def scheduler_of(name: str, **config: Any) -> Any:
    """A diffusers scheduler by class name."""
    import diffusers

    return getattr(diffusers, name)(**config)


def start_latent(scheduler: Any, n: int, batch: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T as the sequential loop starts from it (times the scheduler's init noise sigma)."""
    scheduler.set_timesteps(n)
    x = torch.randn((batch, *SAMPLE), generator=torch.Generator().manual_seed(11), dtype=dtype)
    return x * getattr(scheduler, "init_noise_sigma", 1.0)


def diffusion_case(
    name: str, config: dict, n: int, batch: int, step_options: dict | None = None, **kw: Any
) -> Case:
    """A case solving the scheduler's sampler with the tiny denoiser."""

    def run() -> dict[str, Any]:
        from picard.adapters.diffusers import from_scheduler

        x = start_latent(scheduler_of(name, **config), n, batch)
        problem = from_scheduler(
            scheduler_of(name, **config),
            Denoiser(SIZE),
            n,
            generator=torch.Generator().manual_seed(5),
            **(step_options or {}),
        )
        return of_solution(picard.solve(problem, x, **kw))

    return run


def add_diffusion_cases() -> None:
    """Every registered scheduler (and each named configuration), DDPM-1000, gradients."""
    from picard.adapters.schedulers import SCHEDULERS

    for cls_name, sampler in SCHEDULERS.items():
        configs: dict[str, dict] = {"default": {}}
        for alias, overrides in dict(getattr(sampler, "names", {}) or {}).items():
            if overrides:
                configs[alias] = dict(overrides)
        for cname, config in configs.items():
            for vname, kw in {
                "default": {},
                "tol0": {"tol": 0},
                "per_sample": {"per_sample": True},
            }.items():
                add(
                    f"scheduler/{cls_name}/{cname}/{vname}",
                    diffusion_case(cls_name, config, 24, 3, **kw),
                )
        add(
            f"scheduler/{cls_name}/default/w8-relative=False",
            diffusion_case(cls_name, {}, 24, 2, window=8, relative=False),
        )
    extra = {
        "DDIM/eta0.5/tol0": ("DDIMScheduler", {}, {"eta": 0.5}, {"tol": 0, "window": 6}),
        "DDIM/eta0.5": ("DDIMScheduler", {}, {"eta": 0.5}, {}),
        "DDIM/verify": ("DDIMScheduler", {}, {}, {"verify": True}),
        "DDPM/secant-w24": ("DDPMScheduler", {}, {}, {"window": 24, "accelerate": "secant"}),
        "DDPM/max_rows": ("DDPMScheduler", {}, {}, {"max_rows": 30}),
        "DDPM/per_sample+max_rows": ("DDPMScheduler", {}, {}, {"max_rows": 30, "per_sample": True}),
        "DDPM/first-unconverged": (
            "DDPMScheduler",
            {},
            {},
            {"acceptance": "first-unconverged", "window": 8},
        ),
        "DDPM/predict=False": ("DDPMScheduler", {}, {}, {"predict": False, "window": 8}),
        "DPM++/sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}, {}),
        "Euler/karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, {}, {}),
        "DDPM/v_prediction": ("DDPMScheduler", {"prediction_type": "v_prediction"}, {}, {}),
    }
    for name, (cls_name, config, step, kw) in extra.items():
        add(f"scheduler/{name}", diffusion_case(cls_name, config, 24, 3, step, **kw))
    for label, kw in {
        "default": {},
        "w128": {"window": 128},
        "w256": {"window": 256},
        "w256/picard": {"window": 256, "accelerate": None},
        "per_sample": {"per_sample": True},
    }.items():
        add(f"ddpm1000/{label}", diffusion_case("DDPMScheduler", {}, 1000, 2, **kw))

    # The solve's options on samplers (where per_sample is allowed), sampled from their product.
    axes = {
        "sampler": [
            ("DDPMScheduler", {}),
            ("DDIMScheduler", {}),
            ("DPMSolverMultistepScheduler", {"solver_order": 3}),
            ("EulerAncestralDiscreteScheduler", {}),
            ("HeunDiscreteScheduler", {}),
        ],
        "window": [1, 3, 8, None],
        "tol": [0.0, 1e-4, 1e-2],
        "accelerate": ACCELERATIONS,
        "acceptance": ["converged-prefix", "first-unconverged"],
        "predict": [True, False],
        "per_sample": [False, True],
        "max_rows": [None, 40],
        "relative": [None, False],
    }
    combos = list(itertools.product(*axes.values()))
    for combo in random.Random(22).sample(combos, 100):
        kw = dict(zip(axes, combo, strict=True))
        cls_name, config = kw.pop("sampler")
        kw["accelerate"] = accelerate_of(kw["accelerate"])
        label = "/".join(f"{k}={v}" for k, v in kw.items())
        add(f"sampler-options/{cls_name}/{label}", diffusion_case(cls_name, config, 24, 3, **kw))

    for cls_name, config in {
        "DDPMScheduler": {},
        "DDIMScheduler": {},
        "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2},
    }.items():
        for label, kw in {
            "tol0/all": {"tol": 0, "window": None},
            "tol0/w6": {"tol": 0, "window": 6},
            "default": {},
        }.items():
            add(f"grad/{cls_name}/{label}", diffusion_grad_case(cls_name, config, kw))


def diffusion_grad_case(name: str, config: dict, kw: dict) -> Case:
    """Gradients of a sample's square sum with respect to x_T and the denoiser's parameters."""

    def run() -> dict[str, Any]:
        from picard.adapters.diffusers import from_scheduler

        den = Denoiser(SIZE, dtype=F64)
        x = start_latent(scheduler_of(name, **config), 20, 3, F64).requires_grad_(True)
        problem = from_scheduler(
            scheduler_of(name, **config), den, 20, generator=torch.Generator().manual_seed(1)
        )
        sol = picard.solve(problem, x, **kw)
        grads = torch.autograd.grad(sol.final.square().sum(), [x, *den.parameters()])
        return of_solution(sol, grads=list(grads))

    return run


# ---------------------------------------------------------------------------------------------
# ODEs and SDEs


class Field(torch.nn.Module):
    """A small seeded MLP vector field ``f(t, y)``."""

    def __init__(self, dim: int = 3, seed: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim)
        ).double()

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """The drift at ``(t, y)``; ``t`` a scalar or one time per row."""
        tt = t.to(y.dtype).reshape(-1, *[1] * (y.ndim - 1)).expand(*y.shape[:-1], 1)
        return self.net(torch.cat([y, tt], -1))


def ode_case(method: str, grad: bool = False, adjoint: bool = False, **kw: Any) -> Case:
    """An ``odeint`` (or ``odeint_adjoint``) case, with a backward pass when ``grad``."""

    def run() -> dict[str, Any]:
        field = Field()
        y0 = x0_of((4, 3), seed=2).requires_grad_(grad)
        t = torch.linspace(0, 1, 21, dtype=F64)
        fn = picard.odeint_adjoint if adjoint else picard.odeint
        ys, stats = fn(field, y0, t, method=method, return_stats=True, **kw)
        grads = None
        if grad:
            grads = list(torch.autograd.grad(ys[-1].square().sum(), [y0, *field.parameters()]))
        return result(ys[-1], stats, ys, grads)

    return run


def sde_case(given_dw: bool = False, grad: bool = False, **kw: Any) -> Case:
    """An ``sdeint`` case with a seeded generator (or given increments)."""

    def run() -> dict[str, Any]:
        field = Field()
        y0 = x0_of((4, 3), seed=2).requires_grad_(grad)
        t = torch.linspace(0, 1, 41, dtype=F64)

        def g(t: Tensor, y: Tensor) -> Tensor:
            return 0.2 * torch.cos(y)

        extra: dict[str, Any] = {}
        if given_dw:
            dw = torch.randn((40, 4, 3), generator=torch.Generator().manual_seed(9), dtype=F64)
            extra["dW"] = dw * 0.025**0.5
        else:
            extra["generator"] = torch.Generator().manual_seed(9)
        ys, stats = picard.sdeint(field, g, y0, t, return_stats=True, **extra, **kw)
        grads = None
        if grad:
            grads = list(torch.autograd.grad(ys[-1].square().sum(), [y0, *field.parameters()]))
        return result(ys[-1], stats, ys, grads)

    return run


class TorchsdeStyle(torch.nn.Module):
    """torchsde's ``sde`` object: ``f``, ``g``, ``noise_type``, ``sde_type``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self) -> None:
        super().__init__()
        self.field = Field()

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """The drift."""
        return self.field(t, y)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """The diagonal diffusion."""
        return 0.1 * torch.ones_like(y)


def add_ode_cases() -> None:
    """Every fixed-step method, step sizes, tolerances, adjoints and SDEs."""
    for method in ("euler", "midpoint", "heun2", "heun3", "rk4", "dopri5", "bosh3"):
        fixed = method in ("dopri5", "bosh3")
        base = {"step_size": 0.05} if fixed else {}
        add(f"odeint/{method}/default", ode_case(method, **base))
        add(f"odeint/{method}/tol0/w4", ode_case(method, tol=0, window=4, **base))
        add(f"odeint/{method}/rtol-atol", ode_case(method, rtol=1e-6, atol=1e-8, **base))
        add(f"odeint/{method}/grad", ode_case(method, grad=True, tol=1e-8, window=8, **base))
        add(f"odeint_adjoint/{method}", ode_case(method, grad=True, adjoint=True, **base))
        if not fixed:
            add(f"odeint/{method}/step_size", ode_case(method, step_size=0.02, tol=1e-7))
            add(
                f"odeint/{method}/options-step_size",
                ode_case(method, options={"step_size": 0.03}, tol=1e-7),
            )
    add("odeint/euler/batched=False", ode_case("euler", batched=False, window=8))
    add("odeint/euler/batched=True", ode_case("euler", batched=True, window=8))
    add("odeint/rk4/secant", ode_case("rk4", accelerate="secant", tol=1e-9))
    add("odeint/rk4/verify", ode_case("rk4", verify=True, tol=1e-6))
    add("odeint/euler/batch_dims", ode_case("euler", batch_dims=1, tol=1e-7, window=5))
    add(
        "odeint/grid_constructor",
        ode_case(
            "euler",
            options={"grid_constructor": lambda f, y0, t: torch.linspace(0, 1, 33, dtype=F64)},
        ),
    )
    add("odeint/error/dopri5-no-step", ode_case("dopri5"))
    add("odeint/error/perturb", ode_case("euler", options={"perturb": True}))
    add("sdeint/generator", sde_case())
    add("sdeint/generator/tol0/w5", sde_case(tol=0, window=5))
    add("sdeint/dW", sde_case(given_dw=True, tol=1e-7))
    add("sdeint/dW/grad", sde_case(given_dw=True, grad=True, tol=1e-9, window=8))
    add("sdeint/generator/grad", sde_case(grad=True))

    def torchsde_call() -> dict[str, Any]:
        ts = torch.linspace(0, 1, 5, dtype=F64)
        torch.manual_seed(3)
        ys, stats = picard.sdeint(
            TorchsdeStyle(), x0_of((4, 3), seed=2), ts, dt=0.05, return_stats=True
        )
        return result(ys[-1], stats, ys)

    add("sdeint/torchsde-call", torchsde_call)


# ---------------------------------------------------------------------------------------------
# Pipelines


def pipeline_case(build: Callable[[], Any], call: dict, **options: Any) -> Case:
    """A tiny pipeline through ``parallelize``."""

    def run() -> dict[str, Any]:
        from picard.adapters.diffusers import parallelize

        fast = parallelize(build(), **options)
        out = fast(generator=torch.Generator().manual_seed(0), output_type="pt", **call)
        images = out.images if hasattr(out, "images") else out[0]
        return result(torch.as_tensor(images), fast.stats)

    return run


def add_pipeline_cases() -> None:
    """The unconditional DDPM and DDIM pipelines and a tiny Stable Diffusion."""
    from picard.models import tiny

    add(
        "pipeline/ddpm/default",
        pipeline_case(
            lambda: tiny.tiny_unet_pipeline("ddpm"), {"num_inference_steps": 6, "batch_size": 2}
        ),
    )
    add(
        "pipeline/ddim/default",
        pipeline_case(
            lambda: tiny.tiny_unet_pipeline("ddim"), {"num_inference_steps": 6, "batch_size": 2}
        ),
    )
    add(
        "pipeline/ddim/tol0/w2",
        pipeline_case(
            lambda: tiny.tiny_unet_pipeline("ddim"), {"num_inference_steps": 6}, tol=0, window=2
        ),
    )
    sd = {"prompt": "a cat", "num_inference_steps": 4, "height": 16, "width": 16}
    add("pipeline/sd/default", pipeline_case(tiny.tiny_stable_diffusion, sd))
    add(
        "pipeline/sd/per_sample",
        pipeline_case(
            tiny.tiny_stable_diffusion, {**sd, "prompt": ["a cat", "a dog"]}, per_sample=True
        ),
    )


# ---------------------------------------------------------------------------------------------
# Running and comparing


def build_cases() -> dict[str, Case]:
    """Every case, in a fixed order."""
    if not CASES:
        add_recursion_cases()
        add_diffusion_cases()
        add_ode_cases()
        add_pipeline_cases()
    return CASES


def run_all(only: str | None = None) -> dict[str, Any]:
    """Run every case (or those whose name contains ``only``) and return the record."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    clock = install_clock()
    isolated = reset_calibration()
    records: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    begin = time.perf_counter()
    for name, fn in build_cases().items():
        if only and only not in name:
            continue
        t = time.perf_counter()
        records[name] = run_case(name, fn)
        seconds[name] = round(time.perf_counter() - t, 4)
    meta = {
        "picard": str(Path(picard.__file__).resolve().parent),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "simulated_clock": clock,
        "calibration_reset": isolated,
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
        "cases": len(records),
        "seconds": round(time.perf_counter() - begin, 1),
    }
    return {"meta": meta, "cases": records, "seconds": seconds}


def final_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Max abs difference of two finals: elementwise where both are stored, else of summaries."""
    if a.get("sha") == b.get("sha"):
        return 0.0
    if "values" in a and "values" in b and len(a["values"]) == len(b["values"]):
        return max((abs(x - y) for x, y in zip(a["values"], b["values"], strict=True)), default=0.0)
    if a.get("shape") != b.get("shape"):
        return math.inf
    return max(abs(a["sum"] - b["sum"]), abs(a["maxabs"] - b["maxabs"]))


def compare(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, int, float]:
    """Print, per case, identical or what differs; return (identical, total, sweeps, max diff)."""
    old, new = before["cases"], after["cases"]
    for key in ("simulated_clock", "calibration_reset"):
        if before["meta"].get(key) != after["meta"].get(key):
            print(f"note: {key} was {before['meta'].get(key)}, is {after['meta'].get(key)}")
    identical = sweeps = 0
    worst = 0.0
    names = list(old) + [n for n in new if n not in old]
    for name in names:
        a, b = old.get(name), new.get(name)
        if a == b:
            identical += 1
            print(f"identical  {name}")
            continue
        if a is None or b is None:
            print(f"differs    {name}: {'new' if a is None else 'missing'} case")
            continue
        notes = []
        if "error" in a or "error" in b:
            notes.append(
                f"error {a.get('error')}: {a.get('message')!r:.80} -> "
                f"{b.get('error')}: {b.get('message')!r:.80}"
            )
        if "final" in a and "final" in b:
            diff = final_difference(a["final"], b["final"])
            worst = max(worst, diff)
            notes.append(f"final max abs diff {diff:.3g}")
            if diff == 0 and a["final"] != b["final"]:
                notes.append(
                    "final bytes or layout differ ("
                    + ", ".join(
                        k
                        for k in sorted(set(a["final"]) | set(b["final"]))
                        if a["final"].get(k) != b["final"].get(k)
                    )
                    + ")"
                )
        sa, sb = a.get("stats", {}), b.get("stats", {})
        moved = False
        for key in ("iterations", "evaluations"):
            if sa.get(key) != sb.get(key):
                moved = True
                notes.append(f"{key} {sa.get(key)} -> {sb.get(key)}")
        sweeps += moved
        keys = sorted(set(a) | set(b))
        other = [k for k in keys if a.get(k) != b.get(k) and k not in ("final", "stats")]
        other += [f"stats.{k}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
        if other:
            notes.append("also " + ", ".join(other))
        print(f"differs    {name}: {'; '.join(notes)}")
    total = len(names)
    print(
        f"{identical} of {total} identical; {sweeps} differ in sweeps or evaluations; "
        f"max abs difference {worst:.3g}"
    )
    return identical, total, sweeps, worst


def dumps(record: dict[str, Any]) -> str:
    """The record as JSON, one case per line (small, and diffable line by line)."""
    lines = [f' "meta": {json.dumps(record["meta"])},', ' "cases": {']
    cases = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record["cases"].items()]
    lines.append(",\n".join(cases))
    lines.append(" },")
    lines.append(f' "seconds": {json.dumps(record["seconds"])}')
    return "{\n" + "\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    """Write a fingerprint (``--out``) or compare this tree against one (``--compare``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprint here")
    parser.add_argument("--compare", type=Path, help="run again and compare with this one")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if argv is None and os.environ.get("PYTHONHASHSEED") != "0":  # string hashing: fixed
        os.execve(
            sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"}
        )
    if args.list:
        print("\n".join(build_cases()))
        print(f"{len(CASES)} cases")
        return 0
    if not args.out and not args.compare:
        parser.error("give --out F.json or --compare F.json (or both)")
    record = run_all(args.only)
    print(
        f"{record['meta']['cases']} cases in {record['meta']['seconds']} s "
        f"(picard from {record['meta']['picard']})",
        file=sys.stderr,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dumps(record))
    if args.compare:
        before = json.loads(args.compare.read_text())
        if args.only:
            before["cases"] = {k: v for k, v in before["cases"].items() if args.only in k}
        identical, total, _, _ = compare(before, record)
        return 0 if identical == total else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
