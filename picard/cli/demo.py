"""``picard demo``: the shipped models sampled sequentially and with picard, side by side.

1. The 2-D model (two moons), DDPM (1000 steps): the wall-clock of one sample both ways,
   and the quality — sliced Wasserstein distance to the data — of 512 samples both ways,
   over two seeds.
2. The digits model, DDPM (1000 steps), 8 images per seed, two seeds: wall-clock, sweeps,
   and the Fréchet distance to the real digits in the shipped classifier's feature space
   and its label histogram, both ways.

Writes ``moons.png`` (samples over the data), ``digits.png`` (the grids side by side) and
``convergence.png`` (window position and residual per sweep).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import picard.cli.plots as plots
from picard.cli.common import progress_bar
from picard.cli.metrics import digit_labels, digits_quality, sliced_wasserstein
from picard.cli.runs import median_time, sample_in_parallel, sample_sequentially, start_latent
from picard.models import load

__all__ = ["DemoRow", "run_demo"]


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table.

    Attributes:
        model: the model's label.
        samples: the samples (or images) solved at once in the timed runs.
        sweeps: picard's sweeps in the timed run.
        evals_per_step: picard's model evaluations per step and sample.
        sequential_s: the sequential loop's wall-clock, in seconds (median).
        parallel_s: picard's wall-clock, in seconds (median).
        deviation: the largest absolute difference of picard's sample from the sequential
            loop's (same seed).
        metric: what the quality columns measure.
        quality_sequential: the quality of the sequential loop's samples, as text.
        quality_parallel: the quality of picard's samples, as text.
        details: further lines, one per sample (the digits: each image's deviation and
            labels).

    Example:
        >>> row = DemoRow("moons (2-D MLP)", 1, 5, 1.6, 1.0, 0.25, 1e-3, "sliced W1 to data",
        ...               "0.100 ± 0.010", "0.101 ± 0.011")
        >>> text = format_table([row])
        >>> "4.0x" in text, text.splitlines()[-1]  # the speedup; picard's quality
        (True, '  picard     0.101 ± 0.011')
    """

    model: str
    samples: int
    sweeps: int
    evals_per_step: float
    sequential_s: float
    parallel_s: float
    deviation: float
    metric: str
    quality_sequential: str
    quality_parallel: str
    details: tuple[str, ...] = ()


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def _moons(
    steps: int, window: int | str, tol: float, repeats: int, seeds: int, samples: int
) -> tuple[DemoRow, dict[str, Any]]:
    model = load("moons")
    sched, den = model.scheduler, model.denoiser
    assert model.data is not None

    def one(seed: int, n: int, parallel_run: bool) -> Any:
        gen = torch.Generator().manual_seed(seed)
        x_T = start_latent(sched, steps, (n, 2), gen)
        if parallel_run:
            return sample_in_parallel(sched, den, steps, x_T, gen, window=window, tol=tol)
        return sample_sequentially(sched, den, steps, x_T, gen)

    ref, seq_s = median_time(lambda: one(0, 1, False), repeats)
    sol, par_s = median_time(lambda: one(0, 1, True), repeats)
    q_seq, q_par, panels = [], [], {}
    for seed in range(seeds):
        s_seq = one(100 + seed, samples, False)
        s_par = one(100 + seed, samples, True).final
        q_seq.append(sliced_wasserstein(s_seq, model.data))
        q_par.append(sliced_wasserstein(s_par, model.data))
        if seed == 0:
            panels = {f"sequential DDPM-{steps}": s_seq, f"picard DDPM-{steps}": s_par}
    row = DemoRow(
        "moons (2-D MLP)",
        1,
        sol.stats.iterations,
        sol.stats.evaluations / steps,
        seq_s,
        par_s,
        float((sol.final - ref).abs().max()),
        f"sliced W1 to data ({samples} samples x {seeds} seeds)",
        _spread(q_seq),
        _spread(q_par),
    )
    return row, {"panels": panels, "data": model.data, "stats": sol.stats}


def _digits(
    steps: int, window: int | str, tol: float, images: int, seeds: int, verbose: bool
) -> tuple[DemoRow, dict]:
    model = load("digits")
    sched, den = model.scheduler, model.denoiser
    refs, outs, seq_times, par_times, first = [], [], [], [], None
    estimates: list[float] = []  # each image's estimated deviation, from the sweeps
    for seed in range(seeds):
        x_T, gen = _digit_start(sched, steps, images, model.sample_shape, 7 + seed)
        t0 = time.perf_counter()
        refs.append(sample_sequentially(sched, den, steps, x_T, gen))
        seq_times.append(time.perf_counter() - t0)
        x_T, gen = _digit_start(sched, steps, images, model.sample_shape, 7 + seed)
        bar = progress_bar(f"digits, seed {seed}", steps, disable=not verbose)
        t0 = time.perf_counter()
        sol = sample_in_parallel(sched, den, steps, x_T, gen, window=window, tol=tol, progress=bar)
        par_times.append(time.perf_counter() - t0)
        bar.close()
        outs.append(sol.final)
        estimates.extend(sol.stats.estimated_errors or ())
        first = first or sol
    assert first is not None
    ref, out = torch.cat(refs), torch.cat(outs)
    fd_seq, hist_seq = digits_quality(ref)
    fd_par, hist_par = digits_quality(out)
    row = DemoRow(
        "digits (UNet)",
        images,
        first.stats.iterations,
        first.stats.evaluations / steps / images,
        statistics.median(seq_times),
        statistics.median(par_times),
        float((out - ref).abs().max()),
        f"Fréchet distance to real digits ({len(ref)} images; small-n biased: compare "
        "the two) and labels",
        f"{fd_seq:.1f} labels {hist_seq}",
        f"{fd_par:.1f} labels {hist_par}",
        _per_image(ref, out, estimates),
    )
    panels = {f"sequential DDPM-{steps}": refs[0], f"picard DDPM-{steps}": outs[0]}
    return row, {"panels": panels, "stats": first.stats}


def _per_image(ref: torch.Tensor, out: torch.Tensor, estimates: Sequence[float]) -> tuple[str, ...]:
    """Each image's deviation from its sequential image and both labels, one line each.

    With ``estimates`` (one per image), each line also gives picard's estimate of the
    deviation, from the sweeps alone (``Stats.estimated_errors``).
    """
    deviation = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    seq, par = digit_labels(ref), digit_labels(out)
    est = [f" (estimated {e:.1e})" for e in estimates] if len(estimates) == len(seq) else None
    lines = [
        f"image {k:2d}: relative deviation {float(d):.1e}{est[k] if est else ''}, "
        f"label {a} / {b}" + ("" if a == b else "  <- label changed")
        for k, (d, a, b) in enumerate(zip(deviation, seq, par, strict=True))
    ]
    changed = sum(a != b for a, b in zip(seq, par, strict=True))
    worst = int(deviation.argmax())
    summary = (
        f"per image (sequential label / picard label): {changed} of {len(seq)} labels "
        f"changed; the worst image ({worst}) deviates {float(deviation[worst]):.1e}"
    )
    return (summary, *lines)


def _digit_start(
    sched: Any, steps: int, images: int, shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    return start_latent(sched, steps, (images, *shape), gen), gen


def run_demo(
    out: Path,
    *,
    steps: int = 1000,
    window: int | str = "auto",
    tol: float = 0.01,
    repeats: int = 3,
    seeds: int = 2,
    samples: int = 512,
    images: int = 8,
    verbose: bool = True,
) -> tuple[list[DemoRow], list[Path]]:
    """Run the demo; returns the table rows and the figures written into ``out``.

    Args:
        out: the folder for the figures (created if missing).
        steps: DDPM steps of both models.
        window: picard's window (steps per sweep, at most).
        tol: picard's tolerance, relative to each state's RMS.
        repeats: timing repeats of the 2-D model (the median is kept).
        seeds: seeds for the quality metrics (and digit runs).
        samples: 2-D samples per seed for the quality metric.
        images: digit images per seed (at least 2, for the Fréchet distance).
        verbose: draw a progress bar for the digit runs even when stderr is not a terminal.

    Returns:
        ``(rows, files)``: the moons and digits rows of the table, and the paths of
        ``moons.png``, ``digits.png`` and ``convergence.png``.

    Example:
        >>> import tempfile
        >>> rows, files = run_demo(Path(tempfile.mkdtemp()), steps=10, repeats=1, seeds=1,
        ...                        samples=32, images=2, verbose=False)
        >>> [r.model for r in rows], [f.name for f in files]
        (['moons (2-D MLP)', 'digits (UNet)'], ['moons.png', 'digits.png', 'convergence.png'])
        >>> all(r.sweeps <= 10 for r in rows), all(f.stat().st_size > 0 for f in files)
        (True, True)
    """
    out.mkdir(parents=True, exist_ok=True)
    moons_row, moons = _moons(steps, window, tol, repeats, seeds, samples)
    digits_row, digits = _digits(steps, window, tol, images, seeds, verbose)
    files = [
        plots.points(moons["panels"], moons["data"], out / "moons.png"),
        plots.digit_grids(digits["panels"], out / "digits.png"),
        plots.convergence(
            {"moons, 1 sample": moons["stats"], f"digits, {images} images": digits["stats"]},
            out / "convergence.png",
        ),
    ]
    return [moons_row, digits_row], files


def format_table(rows: list[DemoRow]) -> str:
    """The demo table as aligned text."""
    header = (
        "model",
        "samples",
        "sweeps",
        "evals/step",
        "sequential",
        "picard",
        "speedup",
        "max |picard - seq|",
    )
    lines = [header] + [
        (
            r.model,
            str(r.samples),
            str(r.sweeps),
            f"{r.evals_per_step:.1f}",
            f"{r.sequential_s:.2f} s",
            f"{r.parallel_s:.2f} s",
            f"{r.sequential_s / r.parallel_s:.1f}x",
            f"{r.deviation:.1e}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append("")
    for r in rows:
        text.append(f"{r.model} — {r.metric}:")
        text.append(f"  sequential {r.quality_sequential}")
        text.append(f"  picard     {r.quality_parallel}")
        text.extend(f"  {line}" for line in r.details)
    return "\n".join(text)
