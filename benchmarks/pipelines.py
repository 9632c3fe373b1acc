"""Every pipeline family in parallel, on tiny random pipelines: sweeps, evaluations, deviation.

For each family (Stable Diffusion and its img2img/inpainting/ControlNet variants, SDXL,
SD3, Flux, PixArt-Σ, DiT) on a tiny pipeline with random weights, built offline from
configs: the pipeline's own sequential call against ``parallelize(pipe)`` with the default
options (and ``window=16``), same seed — sweeps, evaluations per step, the final latent's
relative RMS distance to the sequential one, and the wall-clock ratio (medians of
interleaved repeats, one thread). Random weights make poor sweep counts (see the
diffusion benchmark); the shipped trained models are in ``picard bench``.

    python benchmarks/pipelines.py [--repeats 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import write_results

from picard.adapters.diffusers import parallelize


def cases(steps: int) -> dict[str, tuple[Callable[[], Any], Callable[[Any], dict[str, Any]]]]:
    """Per family: the tiny pipeline's builder and its call's arguments."""
    from picard.models.tiny import tiny_stable_diffusion
    from picard.models.tiny_pixart_dit import t5_prompt_embeds, tiny_dit, tiny_pixart
    from picard.models.tiny_sd3_flux import t5_embeddings, tiny_flux, tiny_sd3
    from picard.models.tiny_sd_variants import tiny_sd_controlnet, tiny_sd_img2img, tiny_sd_inpaint
    from picard.models.tiny_sdxl import tiny_sdxl

    prompts = ["a cat", "a dog"]
    size = {"height": 16, "width": 16}
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float()

    def flux_args(pipe: Any) -> dict[str, Any]:
        pooled = pipe._get_clip_prompt_embeds(prompts, 1, pipe.device)
        return {"prompt_embeds": t5_embeddings(pipe, prompts), "pooled_prompt_embeds": pooled,
                **size}  # fmt: skip

    def pixart_args(pipe: Any) -> dict[str, Any]:
        embeds, mask_ = t5_prompt_embeds(pipe, [5, 7])
        negative, negative_mask = t5_prompt_embeds(pipe, [3, 3], seed=1)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask_,
                "negative_prompt_embeds": negative, "negative_prompt_attention_mask": negative_mask,
                "negative_prompt": None, "use_resolution_binning": False}  # fmt: skip

    return {
        "Stable Diffusion": (tiny_stable_diffusion, lambda p: {"prompt": prompts, **size}),
        "SD img2img (strength 0.8)": (
            tiny_sd_img2img,
            lambda p: {"prompt": prompts, "image": image, "strength": 0.8},
        ),
        "SD inpainting (9-channel)": (
            tiny_sd_inpaint,
            lambda p: {"prompt": prompts, "image": image, "mask_image": mask},
        ),
        "SD ControlNet": (tiny_sd_controlnet, lambda p: {"prompt": prompts, "image": image}),
        "SDXL": (tiny_sdxl, lambda p: {"prompt": prompts}),
        "SD3": (tiny_sd3, lambda p: {"prompt": prompts, **size}),
        "Flux": (tiny_flux, flux_args),
        "PixArt-Σ": (lambda: tiny_pixart("sigma"), pixart_args),
        "DiT": (tiny_dit, lambda p: {"class_labels": [1, 7]}),
    }


def measure(name: str, build: Callable[[], Any], make: Callable[[Any], dict], args: Any) -> dict:
    """One family: sequential vs picard (default, window 16), interleaved repeats."""
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    call = {**make(pipe), "num_inference_steps": args.steps, "output_type": "latent"}
    runs = {
        "sequential": pipe,
        "picard": parallelize(pipe),
        "window 16": parallelize(pipe, window=16),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    out: dict[str, Any] = {}
    for _ in range(args.repeats):
        for key, run in runs.items():
            t0 = time.perf_counter()
            images = run(generator=torch.Generator().manual_seed(0), **call).images
            out[key] = torch.as_tensor(images)  # DiT gives numpy images (no latent output)
            times[key].append(time.perf_counter() - t0)
    ref, seq = out["sequential"].double(), statistics.median(times["sequential"])
    row: dict[str, Any] = {"pipeline": name, "class": type(pipe).__name__}
    for key in ("picard", "window 16"):
        stats = runs[key].stats
        row[key] = {
            "sweeps": stats.iterations,
            "steps": stats.num_steps,
            "evals_per_step": stats.evaluations / stats.num_steps / out[key].shape[0],
            "relative_error": float((out[key].double() - ref).norm() / ref.norm()),
            "speedup": seq / statistics.median(times[key]),
        }
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the rows."""
    lines = [
        "| pipeline | steps | sweeps (default) | evals/step | relative error | vs sequential "
        "| sweeps (window 16) | relative error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, w = r["picard"], r["window 16"]
        lines.append(
            f"| {r['pipeline']} | {d['steps']} | {d['sweeps']} | {d['evals_per_step']:.1f} "
            f"| {d['relative_error']:.1e} | {d['speedup']:.2f}x | {w['sweeps']} "
            f"| {w['relative_error']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipelines"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (build, make) in cases(args.steps).items():
        rows.append(measure(name, build, make, args))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    title = f"**Every pipeline family, tiny random weights, {args.steps} steps, one thread**"
    write_results(args.out, rows, f"{title}\n\n{text}\n", indent=2)


if __name__ == "__main__":
    main()
