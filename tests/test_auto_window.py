"""window="auto": the controller's climb on simulated devices, and its contract in solves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_solver import linear_rule

import picard
import picard.core.window
from picard.core.acceptance import ConvergedPrefix
from picard.core.window import AutoWindow

torch.set_num_threads(1)


def _drive(cost, stride, sweeps=60, cap=1000, columns=1, **kw):
    """Run the controller against a simulated device; the windows it chose, per sweep."""
    now = [0.0]
    auto = AutoWindow(cap, columns, 1, {}, clock=lambda: now[0], **kw)
    chosen = []
    for k in range(sweeps):
        w = auto.width(columns)
        chosen.append(w)
        now[0] += cost(w * columns)
        auto.after(np.array([stride(w, k)]), np.array([w]))
    return auto, chosen


def test_no_parallel_capacity_settles_on_a_small_window():
    # time grows with the rows, a sweep finalizes at most 5 steps: small windows win
    auto, chosen = _drive(lambda rows: 1e-3 * rows, lambda w, k: min(w, 5))
    assert auto.settled and auto.choice <= 4
    assert chosen[-1] == auto.choice


def test_parallel_capacity_climbs_to_where_batching_stops():
    # flat cost up to 256 rows, linear after: every step of the window converges
    auto, _ = _drive(lambda rows: 1e-2 * max(rows, 256) / 256, lambda w, k: w, sweeps=80)
    assert auto.choice == 256
    assert set(auto.report()) >= {16, 32, 64, 128, 256}


def test_rows_count_the_samples():
    # capacity is in rows: with 8 samples per window it runs out 8 times sooner
    auto, _ = _drive(lambda rows: 1e-2 * max(rows, 256) / 256, lambda w, k: w, columns=8)
    assert auto.choice == 32


def test_review_moves_down_when_steps_converge_slower_later():
    # a fixed cost per call favours large windows while every step converges; strides
    # fall to 4 after sweep 20: the smallest window it timed is faster again
    _, chosen = _drive(
        lambda rows: 1e-2 + 1e-4 * rows, lambda w, k: w if k < 20 else min(w, 4), 40, cap=256
    )
    assert 256 in chosen[:21] and chosen[-1] == 16


@settings(max_examples=30, deadline=None)
@given(
    knee=st.sampled_from([1, 4, 16, 64, 512]),
    depth=st.integers(1, 300),
    noise=st.floats(0, 0.05),
)
def test_choice_is_near_the_best_window(knee, depth, noise):
    """On simulated devices, the settled window's rate is within 2x of the best one."""
    rng = np.random.default_rng(knee * 1000 + depth)

    def cost(rows):
        return 1e-3 * max(rows, knee) * (1 + noise * rng.random())

    def rate(w):
        return min(w, depth) / (1e-3 * max(w, knee))

    auto, _ = _drive(cost, lambda w, k: min(w, depth), sweeps=80)
    best = max(rate(2**j) for j in range(11))
    assert rate(auto.choice) >= best / 2


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _model()

    def forward(self, t, y):
        return self.net(y)


def test_auto_is_the_default_and_reproducible_in_one_process():
    net = _model()
    rule = picard.Recursion(lambda i, x: 0.01 * net(x), 300, batch_dims=1)
    x0 = torch.randn(4, 3)
    with torch.no_grad():
        a = picard.solve(rule, x0, tol=1e-4)
        b = picard.solve(rule, x0, tol=1e-4)
        seq = picard.sequential(rule, x0).final
    assert a.stats.cost and a.stats.cost == b.stats.cost
    assert a.stats.window == b.stats.window and a.stats.window_starts == b.stats.window_starts
    assert torch.equal(a.final, b.final)
    assert float((a.final - seq).norm() / seq.norm()) < 1e-3


class Jitter:
    """A clock whose sweeps take random times (a loaded machine)."""

    def __init__(self, seed):
        self.now, self.gen = 0.0, np.random.default_rng(seed)

    def __call__(self):
        self.now += float(self.gen.exponential(1e-3))
        return self.now


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def _solve_on(clock, seed=0):
    picard.core.window._CURVES.clear()
    picard.core.window.default_clock = clock
    net = _model()
    rule = picard.Recursion(lambda i, x: 0.01 * net(x), 300, batch_dims=1)
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return picard.solve(rule, x0, tol=1e-4)


def test_deterministic_algorithms_take_the_window_from_a_cost_model_not_the_clock(
    deterministic, monkeypatch
):
    """Issue 22: under torch.use_deterministic_algorithms(True) the same solve gives bitwise
    the same result whatever the sweeps' times; with the clock, jitter changes the windows."""
    monkeypatch.setattr(picard.core.window, "default_clock", picard.core.window.default_clock)
    runs = [_solve_on(Jitter(seed)) for seed in range(3)]
    for other in runs[1:]:
        assert torch.equal(other.final, runs[0].final)
        assert other.stats.window_starts == runs[0].stats.window_starts
        assert other.stats.cost == runs[0].stats.cost
    cost = picard.core.window.ModeledCost(picard.core.window.MODELED_CAPACITY["cpu"])
    assert all(t == cost(rows) for rows, t in runs[0].stats.cost.items())
    torch.use_deterministic_algorithms(False)
    measured = [_solve_on(Jitter(seed)).stats.window_starts for seed in range(3)]
    assert len(set(measured)) > 1  # the same jitter moves the measured windows


def test_deterministic_auto_is_the_same_in_another_process_under_load(tmp_path):
    """Two processes, one sharing its core with a busy thread: the same bits."""
    script = tmp_path / "solve.py"
    script.write_text(
        "import hashlib, sys, threading, time, torch, picard\n"
        "torch.set_num_threads(1); torch.use_deterministic_algorithms(True)\n"
        "if sys.argv[1] == 'busy':\n"
        "    stop = time.time() + 30\n"
        "    threading.Thread(target=lambda: [0 for _ in iter(lambda: time.time() > stop, True)],"
        " daemon=True).start()\n"
        "torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(),"
        " torch.nn.Linear(32, 3))\n"
        "rule = picard.Recursion(lambda i, x: 0.01 * net(x), 400, batch_dims=1)\n"
        "with torch.no_grad():\n"
        "    sol = picard.solve(rule, torch.randn(4, 3))\n"
        "print(hashlib.sha256(sol.final.numpy().tobytes()).hexdigest(), sol.stats.window_starts)\n"
    )
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(picard.__file__).parents[1]))  # this picard
    out = [
        subprocess.run(
            [sys.executable, str(script), load], capture_output=True, text=True, check=True, env=env
        ).stdout
        for load in ("idle", "busy")
    ]
    assert out[0] == out[1]


def test_fixed_window_stores_nothing_and_warm_start_takes_the_whole_grid():
    fn, _ = linear_rule(40, 3, seed=1, gain=1.0)
    rule = picard.Recursion(fn, 40)
    x0 = torch.ones(3, dtype=torch.float64)
    fixed = picard.solve(rule, x0, window=8, tol=1e-9)
    assert fixed.stats.cost == {} and fixed.stats.window == 8
    ys = picard.solve(rule, x0, window=1, tol=0, save=True).ys
    warm = picard.solve(rule, x0, tol=1e-9, init=ys)
    assert warm.stats.iterations == 1 and warm.stats.window == 40


def test_stored_times_are_kept_per_model():
    picard.core.window._CURVES.clear()
    x0 = torch.randn(2, 3)
    with torch.no_grad():
        for net in (_model(), _model()):
            picard.odeint(
                lambda t, y, net=net: net(y),
                x0,
                torch.linspace(0, 1, 200),
                tol=1e-4,
                method="euler",
            )
    assert len(picard.core.window._CURVES) == 1  # lambdas: their problem type only
    with torch.no_grad():
        for field in (Field(), Field()):
            picard.odeint(field, x0, torch.linspace(0, 1, 200), tol=1e-4, method="euler")
    assert len(picard.core.window._CURVES) == 3  # a module: one per module


@pytest.mark.parametrize(
    "window, error, match",
    [
        ("full", ValueError, "window must be 'auto'"),
        (0, ValueError, "window"),
        (2.5, TypeError, "window"),
    ],
)
def test_bad_window_names_the_argument(window, error, match):
    with pytest.raises(error, match=match):
        picard.Options.of(window=window)


def test_accelerate_auto_is_the_secant_on_large_diffusion_windows_only():
    from diffusers import DDPMScheduler
    from diffusion_helpers import gaussian_denoiser

    from picard.adapters.diffusers import from_scheduler

    sched = DDPMScheduler()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def solve(window, **kw):
        gen = torch.Generator().manual_seed(1)
        problem = from_scheduler(sched, gaussian_denoiser(sched), 300, generator=gen)
        return picard.solve(problem, x, window=window, **kw)

    large, small = solve(300), solve(64)
    assert large.stats.accelerated > 0 and small.stats.accelerated == 0
    plain = solve(300, accelerate=None)
    assert plain.stats.acceleration == {} and large.stats.iterations < plain.stats.iterations
    assert torch.equal(small.final, solve(64, accelerate=None).final)  # below 128: plain
    _, stats = picard.odeint(lambda t, y: -y, torch.ones(3), torch.linspace(0, 1, 300),
                             window=300, return_stats=True, method="euler")  # fmt: skip
    assert stats.acceleration == {}


def test_acceptance_option_names_the_rule():
    fn, _ = linear_rule(60, 3, seed=2, gain=1.0)
    rule, x0 = picard.Recursion(fn, 60), torch.ones(3, dtype=torch.float64)
    ours = picard.solve(rule, x0, window=60, tol=1e-6)
    theirs = picard.solve(rule, x0, window=60, tol=1e-6, acceptance="first-unconverged")
    seq = picard.sequential(rule, x0).final
    assert ours.stats.window_starts != theirs.stats.window_starts  # the option takes effect
    for sol in (ours, theirs):
        assert float((sol.final - seq).abs().max()) < 1e-6
    assert picard.Options.of().acceptance == ConvergedPrefix()
    with pytest.raises(ValueError, match="acceptance must be one of"):
        picard.Options.of(acceptance="strict")
    with pytest.raises(TypeError, match="acceptance must be"):
        picard.Options.of(acceptance=3)
