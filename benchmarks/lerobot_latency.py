"""Issue 25, item 3: lerobot's DiffusionPolicy, latency of ``select_action``, own loop vs picard.

A state-only lerobot ``DiffusionPolicy`` built from its config (lerobot's own
``DiffusionConditionalUnet1d``), sampled by lerobot's loop and by picard
(``picard.adapters.lerobot.parallelize``) at DDPM-100 (ParaDiGMS's robotics setting) and
DDIM-10. Policies: the tiny UNet of the tests, random and trained briefly on a two-goal
reaching task (``tests/lerobot_helpers.py``), and a 10M-parameter UNet, random (training
it is too slow on a CPU). ``select_action`` on one observation (one robot) with an empty
action queue, so every call samples a chunk. Runs interleaved, medians, one torch thread;
the error is the sampled chunk's RMS distance to lerobot's (same seed) relative to its RMS.

    python benchmarks/lerobot_latency.py [--repeats 5] [--train-steps 300]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from harness import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # lerobot_helpers: lerobot's import, tiny policies

from lerobot_helpers import observation, tiny_policy, train  # noqa: E402

from picard.adapters.lerobot import parallelize  # noqa: E402

POLICIES = {  # name: (UNet widths, trained)
    "tiny-trained": ((32, 64), True),
    "tiny-random": ((32, 64), False),
    "10M-random": ((128, 256, 512), False),
}
SAMPLERS = [("DDPM", 100), ("DDIM", 10)]
VARIANTS: dict[str, dict[str, Any] | None] = {  # None: lerobot's own loop
    "lerobot": None,
    "picard default": {},
    "picard window=16": {"window": 16},
    "picard ParaDiGMS test": {"relative": False},
}
HEADER = (
    "| policy | sampler | method | sweeps | evals/step | rel. error | median ms | "
    "vs lerobot |\n|---|---|---|---:|---:|---:|---:|---:|"
)


def _sample(policy: Any, obs: dict, seed: int) -> tuple[float, torch.Tensor]:
    """One ``select_action`` with an empty queue: seconds, and the chunk it sampled."""
    policy.reset()
    torch.manual_seed(seed)
    start = time.perf_counter()
    first = policy.select_action(dict(obs))
    seconds = time.perf_counter() - start
    return seconds, torch.stack([first, *policy._queues["action"]])


def _case(name: str, policy: Any, sampler: str, steps: int, repeats: int) -> list[dict]:
    obs = observation(1, seed=1)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    info: dict[str, dict[str, Any]] = {}
    _sample(policy, obs, 0)  # warm-up
    for r in range(repeats + 1):  # interleaved; round 0 warms every variant up
        ref = None
        for variant, options in VARIANTS.items():
            fast = None if options is None else parallelize(policy, **options)
            seconds, chunk = _sample(policy, obs, seed=r)
            if fast is not None:
                fast.restore()
            if options is None:
                ref = chunk
            if r == 0:
                continue
            times[variant].append(seconds)
            assert ref is not None
            err = ((chunk - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
            stats = None if fast is None else fast.stats
            info.setdefault(variant, {"errors": [], "sweeps": [], "evals": []})
            info[variant]["errors"].append(err)
            info[variant]["sweeps"].append(steps if stats is None else stats.iterations)
            info[variant]["evals"].append(1.0 if stats is None else stats.evaluations / steps)
    base = statistics.median(times["lerobot"])
    rows = []
    for variant in VARIANTS:
        med = statistics.median(times[variant])
        rows.append(
            {
                "policy": name,
                "sampler": f"{sampler}-{steps}",
                "method": variant,
                "sweeps": statistics.median(info[variant]["sweeps"]),
                "evals_per_step": statistics.median(info[variant]["evals"]),
                "relative_error": max(info[variant]["errors"]),
                "median_s": med,
                "ratio": med / base,
            }
        )
    return rows


def _line(r: dict) -> str:
    return (
        f"| {r['policy']} | {r['sampler']} | {r['method']} | {r['sweeps']:g} | "
        f"{r['evals_per_step']:.1f} | {r['relative_error']:.1e} | {1000 * r['median_s']:.0f} | "
        f"{r['ratio']:.2f} |"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the cases; write ``--out`` (.json and .md); return the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lerobot_latency")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows: list[dict] = []
    for name in args.policies:
        dims, trained = POLICIES[name]
        weights = None
        if trained:
            weights = train(tiny_policy("DDPM", 100, down_dims=dims), args.train_steps)
        for sampler, steps in SAMPLERS:
            policy = tiny_policy(sampler, steps, down_dims=dims)
            if weights is not None:  # the same network, lerobot's config for the sampler
                policy.load_state_dict(weights.state_dict())
            for row in _case(name, policy, sampler, steps, args.repeats):
                rows.append(row)
                print(_line(row), flush=True)
    lines = [
        "# lerobot DiffusionPolicy: select_action latency, lerobot's loop vs picard",
        "",
        "`python benchmarks/lerobot_latency.py` "
        f"(repeats {args.repeats}, {args.train_steps} training steps for the trained policy): "
        "one observation, empty action queue (every call samples a chunk of 8 actions of a "
        f"16-step horizon), lerobot {importlib.metadata.version('lerobot')}, torch "
        f"{torch.__version__}, CPU ({os.cpu_count()} cores; load average {load:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end: other jobs shared the machine, so "
        "absolute times vary between runs), one torch thread, medians of interleaved runs. "
        "`sweeps` are picard's sequential rounds of UNet calls (lerobot: one per step); "
        "`evals/step` the UNet rows per step; `rel. error` the worst run's RMS distance of the "
        "chunk to lerobot's (same seed) relative to its RMS. picard default: `tol=0.01` "
        'relative to each chunk\'s RMS, `window="auto"`; ParaDiGMS test: `relative=False` '
        "(0.1 times each step's noise std).",
        "",
        HEADER,
        *(_line(r) for r in rows),
        "",
    ]
    write_results(args.out, rows, "\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
