"""Parallel diffusion sampling on the tiny pipelines: picard vs sequential vs ParaDiGMS.

For each sampler (DDPM-1000, DDIM-200/-50, DPM-Solver++ 2M-50/-25, Euler-50,
flow-matching-28) on the tiny Stable Diffusion pipeline (classifier-free guidance) and
on a tiny unconditional UNet pipeline: sweeps, evaluations per step, max abs difference
of the final latent to the sequential pipeline's, and wall-clock ratios to the
sequential pipeline and, where diffusers has it (DDPM, DDIM on Stable Diffusion), to
``StableDiffusionParadigmsPipeline`` at the same window and tolerance — measured in one
run, medians of interleaved repeats, torch on one thread. Random weights: sweep counts
are those of an untrained model (issue 4 brings trained ones).
Every picard run uses ParaDiGMS's test (``tol`` relative to each step's noise std,
``relative=False``), the semantics these figures were first measured under.

    python benchmarks/diffusion.py [--repeats 3] [--window 64] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from harness import write_results

from picard import NonFiniteError
from picard.adapters.diffusers import parallelize
from picard.models.tiny import tiny_stable_diffusion, tiny_unet_pipeline

SAMPLERS = [  # (name, scheduler class, steps, extra scheduler config)
    ("DDPM", "DDPMScheduler", 1000, {}),
    ("DDIM", "DDIMScheduler", 200, {}),
    ("DDIM", "DDIMScheduler", 50, {}),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", 50, {"solver_order": 2}),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", 25, {"solver_order": 2}),
    ("Euler", "EulerDiscreteScheduler", 50, {}),
    ("flow-matching Euler", "FlowMatchEulerDiscreteScheduler", 28, {"shift": 3.0}),
]
PARADIGMS = {"DDPMScheduler": "DDPMParallelScheduler", "DDIMScheduler": "DDIMParallelScheduler"}


def scheduler(name: str, latent: bool, extra: dict[str, Any]) -> Any:
    """The sampler's scheduler: Stable Diffusion's betas (and no clipping) for the latent
    pipeline, diffusers' defaults (linear betas, clipping) for the pixel-space UNet."""
    import diffusers

    cls = getattr(diffusers, name)
    if name.startswith("FlowMatch") or not latent:
        return cls(**extra)
    config: dict[str, Any] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
    }
    if name in ("DDPMScheduler", "DDIMScheduler"):
        config["clip_sample"] = False
    return cls(**config, **extra)


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def paradigms_pipeline(sd: Any, ours: Any) -> Any:
    """StableDiffusionParadigmsPipeline on sd's components, with the parallel twin of ours."""
    import diffusers

    names = ("vae", "text_encoder", "tokenizer", "unet", "safety_checker", "feature_extractor")
    config = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    sched = getattr(diffusers, PARADIGMS[type(ours).__name__])(**config)
    pipe = diffusers.StableDiffusionParadigmsPipeline(
        **{k: sd.components[k] for k in names}, scheduler=sched, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Counter:
    """Counts the model calls (sweeps) and rows of a module."""

    def __init__(self, module: Any) -> None:
        self.calls = self.rows = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module: Any, args: tuple[Any, ...]) -> None:
        self.calls += 1
        self.rows += args[0].shape[0]

    def reset(self) -> None:
        self.calls = self.rows = 0


def unconditional_loop(unet: Any, sched: Any, steps: int, x: torch.Tensor) -> torch.Tensor:
    """The DDPMPipeline loop, on latents (the pipeline only adds randn and post-processing)."""
    s = copy.deepcopy(sched)
    s.set_timesteps(steps)
    scale = getattr(s, "scale_model_input", lambda x, t: x)  # flow matching has none
    generator = torch.Generator().manual_seed(1)
    for t in s.timesteps:
        x = s.step(unet(scale(x, t), t).sample, t, x, generator=generator).prev_sample
    return x


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sd = tiny_stable_diffusion()
    counter = Counter(sd.unet)
    unet = tiny_unet_pipeline("ddpm").unet
    rows = []
    for label, cls, steps, extra in SAMPLERS[2:4] if args.quick else SAMPLERS:
        for pipe_name in ("tiny SD (CFG 7.5)", "tiny UNet"):
            if cls.startswith("FlowMatch") and pipe_name.startswith("tiny SD"):
                continue  # StableDiffusionPipeline cannot run a flow-matching scheduler
            n = min(steps, 50) if args.quick else steps
            sched = scheduler(cls, pipe_name.startswith("tiny SD"), extra)
            if pipe_name.startswith("tiny SD"):
                row = measure_sd(sd, counter, sched, n, args)
            else:
                row = measure_unet(unet, sched, n, args)
            row = {"pipeline": pipe_name, "sampler": f"{label}-{n}", **row}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summary(ref: Any, out: Any, stats: Any, times: dict[str, list[float]]) -> dict[str, Any]:
    seq_t, pic_t = statistics.median(times["seq"]), statistics.median(times["picard"])
    return {
        "window": stats.window,
        "tol": stats.tol,
        "sweeps": stats.iterations,
        "evals_per_step": stats.evaluations / stats.num_steps,
        "model_rows": stats.model_rows,
        "max_abs_diff": float((out - ref).abs().max()),
        "latent_scale": float(ref.abs().max()),
        "sequential_s": seq_t,
        "picard_s": pic_t,
        "speedup_vs_sequential": seq_t / pic_t,
    }


def measure_sd(sd: Any, counter: Counter, sched: Any, n: int, args: argparse.Namespace) -> dict:
    """The tiny Stable Diffusion pipeline: sequential, picard, and ParaDiGMS if it has it."""
    window = min(args.window, n)
    sd.scheduler = sched
    para = paradigms_pipeline(sd, sched) if type(sched).__name__ in PARADIGMS else None
    kw = {
        "prompt": "a photo of a cat",
        "height": 16,
        "width": 16,
        "output_type": "latent",
        "num_inference_steps": n,
    }
    fast = parallelize(sd, window=window, tol=args.tol, relative=False)
    times: dict[str, list[float]] = {"seq": [], "picard": [], "paradigms": []}

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    for _ in range(args.repeats):
        ref, t = timed(lambda: sd(generator=seeded(), **kw).images)
        times["seq"].append(t)
        out, t = timed(lambda: fast(generator=seeded(), **kw).images)
        times["picard"].append(t)
        if para is not None:
            counter.reset()
            theirs, t = timed(
                lambda: para(generator=seeded(), parallel=window, tolerance=args.tol, **kw).images
            )
            times["paradigms"].append(t)
    row = summary(ref, out, fast.stats, times)
    if para is not None:
        par_t = statistics.median(times["paradigms"])
        row.update(
            paradigms_s=par_t,
            speedup_vs_paradigms=par_t / row["picard_s"],
            paradigms_sweeps=counter.calls,
            paradigms_rows=counter.rows,
            paradigms_max_abs_diff=float((theirs - ref).abs().max()),
        )
    return row


def measure_unet(unet: Any, sched: Any, n: int, args: argparse.Namespace) -> dict:
    """The tiny unconditional UNet: diffusers' scheduler loop vs picard, on latents."""
    from picard import solve
    from picard.adapters.diffusers import from_scheduler

    view = copy.deepcopy(sched)
    view.set_timesteps(n)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    start = x_T * getattr(view, "init_noise_sigma", 1.0)
    times: dict[str, list[float]] = {"seq": [], "picard": []}

    def parallel() -> Any:
        problem = from_scheduler(
            sched, lambda x, t: unet(x, t).sample, n, generator=torch.Generator().manual_seed(1)
        )
        return solve(problem, start, window=min(args.window, n), tol=args.tol, relative=False)

    for _ in range(args.repeats):
        ref, t = timed(lambda: unconditional_loop(unet, sched, n, start))
        times["seq"].append(t)
        try:
            sol, t = timed(parallel)
        except NonFiniteError as err:  # Picard iterates of an untrained model can blow up
            return {"window": min(args.window, n), "tol": args.tol, "diverged": str(err)}
        times["picard"].append(t)
    return summary(ref, sol.final, sol.stats, times)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pipeline | sampler | window | sweeps | evals/step | max abs diff (latent scale) "
        "| wall-clock vs sequential | vs ParaDiGMS | ParaDiGMS sweeps, max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "diverged" in r:
            lines.append(
                f"| {r['pipeline']} | {r['sampler']} | {r['window']} | diverged: "
                f"{r['diverged']} | | | | | |"
            )
            continue
        par = "– | –"
        if "speedup_vs_paradigms" in r:
            par = (
                f"{r['speedup_vs_paradigms']:.2f}x | {r['paradigms_sweeps']}, "
                f"{r['paradigms_max_abs_diff']:.2g}"
            )
        lines.append(
            f"| {r['pipeline']} | {r['sampler']} | {r['window']} | {r['sweeps']} "
            f"| {r['evals_per_step']:.1f} | {r['max_abs_diff']:.2g} ({r['latent_scale']:.2g}) "
            f"| {r['speedup_vs_sequential']:.2f}x | {par} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--tol", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="two samplers, <= 50 steps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/diffusion"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with torch.no_grad():
        rows = run(args)
    md = table(rows)
    print(md)
    write_results(args.out, rows, md + "\n", indent=2)


if __name__ == "__main__":
    main()
