"""``picard sample``: a shipped model or a diffusers pipeline folder, sampled by picard."""

from __future__ import annotations

import argparse
import inspect
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import picard.cli.plots as plots
from picard.cli.common import WINDOW_HELP, CLIError, progress_bar, window
from picard.cli.runs import (
    SCHEDULERS,
    make_scheduler,
    sample_in_parallel,
    sample_sequentially,
    start_latent,
)
from picard.models import MODELS, load

__all__ = ["add_arguments", "sample"]

SUFFIXES = (".png", ".pt", ".npy")


def add_arguments(
    p: argparse.ArgumentParser, positive: Callable[[str], Any], tolerance: Callable[[str], float]
) -> None:
    """The options of ``picard sample``.

    Args:
        p: the parser (or subparser) to add the options to.
        positive: ``positive(name)`` gives the type of a count option ``name`` (a parser
            of positive integers, as the command line's).
        tolerance: the type of ``--tol`` (a parser of non-negative numbers).

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p, lambda name: int, float)
        >>> args = p.parse_args(["--model", "moons", "--steps", "20", "--out", "x.npy"])
        >>> args.model, args.steps, args.window, args.tol, args.count, str(args.out)
        ('moons', 20, 'auto', 0.01, 16, 'x.npy')
        >>> p.parse_args(["--model", "moons", "--pipeline", "folder"])  # one source only
        Traceback (most recent call last):
        SystemExit: 2
    """
    _add_solve_options(p, positive, tolerance)
    _add_pipeline_inputs(p)
    _add_outputs(p)


def _add_solve_options(
    p: argparse.ArgumentParser, positive: Callable[[str], Any], tolerance: Callable[[str], float]
) -> None:
    """What to sample and how: the model or pipeline, sampler, steps, window, tol, seed, count."""
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--model", default="digits", help=f"shipped model: {', '.join(MODELS)} (default digits)"
    )
    source.add_argument(
        "--pipeline",
        type=Path,
        default=None,
        help="a diffusers pipeline folder on disk (DDPM, DDIM, Stable "
        "Diffusion), run through picard.adapters.diffusers.parallelize",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help=f"sampler: {', '.join(SCHEDULERS)} (default: ddpm for models, the "
        "pipeline's own for pipelines)",
    )
    p.add_argument(
        "--steps",
        type=positive("steps"),
        default=None,
        help="inference steps (default 1000 for models, 50 for pipelines)",
    )
    p.add_argument("--window", type=window, default="auto", help=WINDOW_HELP)
    p.add_argument(
        "--tol",
        type=tolerance,
        default=0.01,
        help="tolerance, relative to each state's RMS (default 0.01)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--count", type=positive("count"), default=16, help="samples / images (default 16)"
    )


def _add_pipeline_inputs(p: argparse.ArgumentParser) -> None:
    """The inputs of conditional pipelines: prompt, image, mask, class label."""
    p.add_argument(
        "--prompt", default="a photo of a cat", help="prompt, for text-to-image pipelines"
    )
    p.add_argument(
        "--image", type=Path, default=None,
        help="input image (PNG), for img2img, inpainting and ControlNet pipelines",
    )  # fmt: skip
    p.add_argument("--mask", type=Path, default=None, help="mask image, for inpainting")
    p.add_argument(
        "--class-label", type=int, default=0, help="class id, for class-conditional pipelines"
    )


def _add_outputs(p: argparse.ArgumentParser) -> None:
    """Verification, the sequential sampler instead, and the output file."""
    p.add_argument(
        "--verify",
        action="store_true",
        help="estimate the sample's error (a warm-started re-solve at tol/100) and refine "
        "until it meets --tol",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run the sequential sampler instead (same seed, same sample)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("picard-samples.png"),
        help="output: .png (figure), .pt or .npy (tensor) (default picard-samples.png)",
    )


def _check_out(path: Path) -> None:
    """Fail early if ``path`` cannot be written, without creating it.

    A run that fails later leaves no empty file behind.
    """
    if path.suffix not in SUFFIXES:
        raise CLIError(f"--out must end in {', '.join(SUFFIXES)}, got {path.name!r}")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".picard-", suffix=path.suffix):
            pass
        if path.is_dir() or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError(13, "not a writable file")
    except OSError as err:
        raise CLIError(f"cannot write {path}: {err.strerror or err}") from None


def sample(args: argparse.Namespace) -> int:
    """Run ``picard sample``; prints the solve's statistics and writes ``--out``.

    Args:
        args: the options of :func:`add_arguments`: ``model`` or ``pipeline`` (a
            diffusers pipeline folder), ``scheduler`` (``None``: DDPM for models, the
            pipeline's own), ``steps`` (``None``: 1000 for models, 50 for pipelines),
            ``window``, ``tol``, ``seed``, ``count``, ``prompt`` (text-to-image
            pipelines), ``verify`` (estimate the error and refine to ``tol``),
            ``sequential`` (run the sequential sampler instead) and ``out`` (``.png``,
            ``.pt`` or ``.npy``).

    Returns:
        The exit status, 0.

    Raises:
        picard.cli.CLIError: an unknown model or scheduler, a bad or unwritable ``out``,
            or an unsupported pipeline.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "moons.npy"
        >>> args = argparse.Namespace(model="moons", pipeline=None, scheduler="ddim",
        ...                           steps=20, window=8, tol=1e-3, seed=0, count=4,
        ...                           verify=False, sequential=False, out=out)
        >>> sample(args)
        moons: ... sweeps for 20 steps, ... evaluations per step, ... s
        wrote ...moons.npy
        0
        >>> picard_samples = np.load(out)
        >>> picard_samples.shape
        (4, 2)
        >>> args.sequential = True  # the same seed: the same samples
        >>> sample(args)
        moons: 20 sequential steps, ... s
        wrote ...moons.npy
        0
        >>> float(abs(np.load(out) - picard_samples).max()) < 1e-3
        True
        >>> sample(argparse.Namespace(out=Path("samples.txt")))
        Traceback (most recent call last):
        picard.cli.common.CLIError: --out must end in .png, .pt, .npy, got 'samples.txt'
    """
    _check_out(args.out)
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise CLIError(
            f"unknown scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}"
        )
    if args.pipeline is not None:
        return _pipeline(args)
    return _shipped(args)


def _shipped(args: argparse.Namespace) -> int:
    """``picard sample`` on a shipped model (``args.model``)."""
    if args.model not in MODELS:
        raise CLIError(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
    model = load(args.model)
    steps = args.steps or 1000
    sched = make_scheduler(args.scheduler or "ddpm", model.scheduler)
    gen = torch.Generator().manual_seed(args.seed)
    x_T = start_latent(sched, steps, (args.count, *model.sample_shape), gen)
    t0 = time.perf_counter()
    if args.sequential:
        samples = sample_sequentially(sched, model.denoiser, steps, x_T, gen)
        summary = f"{steps} sequential steps"
    else:
        bar = progress_bar(f"{args.model}, {args.count} samples", steps)
        sol = sample_in_parallel(
            sched,
            model.denoiser,
            steps,
            x_T,
            gen,
            window=args.window,
            tol=args.tol,
            progress=bar,
            verify=args.verify,
        )
        bar.close()
        samples, s = sol.final, sol.stats
        summary = (
            f"{s.iterations} sweeps for {s.num_steps} steps, "
            f"{s.evaluations / s.num_steps / args.count:.1f} evaluations per step" + _estimate(s)
        )
    print(f"{args.model}: {summary}, {time.perf_counter() - t0:.2f} s")
    _write(samples, args.out, model.data)
    print(f"wrote {args.out}")
    return 0


def _estimate(stats: Any) -> str:
    if stats.error_estimate is None:
        return ""
    return f", estimated relative error {stats.error_estimate:.1e}"


def _write(samples: torch.Tensor, path: Path, data: torch.Tensor | None) -> None:
    if path.suffix == ".pt":
        torch.save(samples, path)
    elif path.suffix == ".npy":
        np.save(path, samples.numpy())
    elif samples.ndim == 2:
        plots.points({"samples": samples}, data if data is not None else samples[:0], path)
    else:
        plots.digit_grids({"samples": samples[:, :1]}, path)


def _pipeline(args: argparse.Namespace) -> int:
    from diffusers import DiffusionPipeline

    from picard.adapters.diffusers import PIPELINES, parallelize
    from picard.adapters.pipelines import runner_for

    if not args.pipeline.is_dir():
        raise CLIError(f"--pipeline {args.pipeline} is not a folder")
    pipe = DiffusionPipeline.from_pretrained(str(args.pipeline), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler)
    kind = type(pipe).__name__
    found = runner_for(pipe)
    if found is None:
        raise CLIError(f"pipeline {kind} is not supported; supported: {', '.join(PIPELINES)}")
    inputs = _inputs(args, kind, found[1].inputs, _per_prompt(pipe))
    steps = args.steps or 50
    gen = torch.Generator().manual_seed(args.seed)
    runner = (
        pipe
        if args.sequential
        else parallelize(pipe, window=args.window, tol=args.tol, verify=args.verify)
    )
    t0 = time.perf_counter()
    out = runner(**inputs, num_inference_steps=steps, generator=gen, output_type="pt")
    images = _output(out, kind, args.out)
    stats = (
        ""
        if args.sequential or runner.stats is None
        else (
            f"{runner.stats.iterations} sweeps for {runner.stats.num_steps} steps"
            f"{_estimate(runner.stats)}, "
        )
    )
    print(f"{kind}: {stats}{time.perf_counter() - t0:.2f} s")
    if args.out.suffix == ".png":
        plots.image_grid(images, columns=len(images)).save(args.out)
    else:
        _write(images, args.out, None)
    print(f"wrote {args.out}")
    return 0


def _output(out: Any, kind: str, path: Path) -> torch.Tensor:
    """The pipeline output's samples: images, video frames or audio waveforms.

    Video and audio are written as arrays only (``--out`` ending ``.pt`` or ``.npy``).
    """
    for field in ("images", "frames", "audios"):
        value = getattr(out, field, None)
        if value is not None:
            break
    else:
        raise CLIError(f"{kind} returned no images, frames or audios")
    samples = torch.as_tensor(value)
    if field != "images" and path.suffix not in (".pt", ".npy"):
        raise CLIError(f"{kind} returns {field}: write them with --out ending .pt or .npy")
    return samples


def _per_prompt(pipe: Any) -> str:
    """The name of the pipeline call's samples-per-prompt argument (images, videos, audio)."""
    names = inspect.signature(pipe.__call__).parameters
    for name in ("num_images_per_prompt", "num_videos_per_prompt", "num_waveforms_per_prompt"):
        if name in names:
            return name
    return "num_images_per_prompt"


def _inputs(
    args: argparse.Namespace, kind: str, inputs: str, per_prompt: str = "num_images_per_prompt"
) -> dict[str, Any]:
    """The pipeline call's inputs from the command line, by what the pipeline takes."""
    if inputs == "none":
        return {"batch_size": args.count}
    if inputs == "class":
        return {"class_labels": [args.class_label] * args.count}
    call: dict[str, Any] = {"prompt": args.prompt, per_prompt: args.count}
    for part, name, path in (("image", "image", args.image), ("mask", "mask_image", args.mask)):
        if part in inputs:
            if path is None:
                raise CLIError(f"{kind} needs --{part} (a PNG file)")
            call[name] = _load_image(path, part)
    return call


def _load_image(path: Path, what: str) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("L" if what == "mask" else "RGB")
    except OSError as err:
        raise CLIError(f"--{what} {path}: {err}") from None
