"""``picard bench``: the benchmark matrix, with the sequential sampler and ParaDiGMS alongside.

For each model (the exact Gaussian-mixture score, the shipped 2-D and digits models, the
tiny Stable Diffusion pipeline's UNet with guidance) and sampler:

- a window sweep at the default tolerance (speedup against the window), and
- a tolerance sweep at one window (sweeps and error against the tolerance),

each run timed against diffusers' sequential loop on the same seed, and — for DDPM and
DDIM — against the ParaDiGMS loop as published (:func:`picard.cli.baselines.paradigms`) at the
same window and tolerance. Both use ParaDiGMS's test (``tol`` relative to each step's noise
std: ``relative=False``), so the columns compare like with like; picard's own default
(relative to each state's RMS) is measured by ``picard bench --fidelity``.
Writes ``bench.json``, ``bench.md`` and three plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import picard.cli.plots as plots
from picard.cli.baselines import paradigms
from picard.cli.runs import (
    make_scheduler,
    median_time,
    sample_in_parallel,
    sample_sequentially,
    start_latent,
)
from picard.models import load

__all__ = ["BenchRow", "bench_model", "run_bench"]

TOLERANCES = (0.02, 0.05, 0.1, 0.2)
WINDOWS = (16, 64, 256, None)
SAMPLERS = {  # model -> [(scheduler, steps)]
    "gmm": [("ddpm", 1000), ("ddim", 100), ("dpmsolver++", 25)],
    "moons": [("ddpm", 1000), ("ddim", 100), ("dpmsolver++", 25), ("euler", 50)],
    "digits": [("ddpm", 200), ("ddim", 50), ("dpmsolver++", 25)],
    "tiny-sd": [("ddpm", 200), ("ddim", 50), ("dpmsolver++", 25)],
}
BATCH = {"gmm": 16, "moons": 16, "digits": 4, "tiny-sd": 1}


@dataclass(frozen=True)
class BenchRow:
    """One run of the matrix.

    Attributes:
        model: the model's name (``gmm``, ``moons``, ``digits``, ``tiny-sd``).
        sampler: the sampler's name (see :data:`picard.cli.runs.SCHEDULERS`).
        steps: the number of inference steps.
        window: the window picard solved with (steps per sweep, at most).
        tol: the tolerance.
        sweeps: picard's sweeps.
        evals_per_step: picard's model evaluations per step and sample.
        max_abs_error: the largest absolute difference of picard's final sample from the
            sequential loop's (same seed).
        sequential_s: the sequential loop's median wall-clock, in seconds.
        picard_s: picard's median wall-clock, in seconds.
        paradigms_sweeps: the ParaDiGMS loop's sweeps at the same window and tolerance
            (``None`` for samplers other than DDPM and DDIM, as the other ParaDiGMS fields).
        paradigms_evals_per_step: the ParaDiGMS loop's evaluations per step and sample.
        paradigms_max_abs_error: the ParaDiGMS loop's largest absolute difference from
            the sequential loop's sample.
        paradigms_s: the ParaDiGMS loop's median wall-clock, in seconds.

    Example:
        >>> row = BenchRow("gmm", "ddim", 100, 64, 0.1, 5, 3.2, 1e-3, 2.0, 0.5,
        ...                None, None, None, None)
        >>> row.speedup  # sequential_s / picard_s
        4.0
        >>> "| 4.00x | – | – | – |" in table([row])  # no ParaDiGMS run for this row
        True
    """

    model: str
    sampler: str
    steps: int
    window: int
    tol: float
    sweeps: int
    evals_per_step: float
    max_abs_error: float
    sequential_s: float
    picard_s: float
    paradigms_sweeps: int | None
    paradigms_evals_per_step: float | None
    paradigms_max_abs_error: float | None
    paradigms_s: float | None

    @property
    def speedup(self) -> float:
        """Wall-clock of the sequential loop over picard's."""
        return self.sequential_s / self.picard_s


def bench_model(name: str) -> tuple[Callable[[Tensor, Tensor], Tensor], Any, tuple[int, ...]]:
    """A model of the matrix: its denoiser, base scheduler and sample shape.

    Shared with the scripts in ``benchmarks/``, which run the same models.

    Args:
        name: ``gmm``, ``moons`` or ``digits`` (a shipped model, :func:`picard.models.load`),
            or ``tiny-sd`` (the tiny Stable Diffusion pipeline's UNet, built from its config,
            with classifier-free guidance 7.5 on the prompt "a photo of a cat").

    Returns:
        ``(denoiser, scheduler, sample_shape)``: ``denoiser(x, t)`` batched over rows, the
        model's diffusers scheduler, and the shape of one sample.

    Example:
        >>> den, sched, shape = bench_model("moons")
        >>> shape, type(sched).__name__
        ((2,), 'DDPMScheduler')
        >>> den(torch.zeros(3, 2), torch.tensor([10, 10, 10])).shape
        torch.Size([3, 2])
    """
    if name != "tiny-sd":
        m = load(name)
        return m.denoiser, m.scheduler, m.sample_shape
    from picard.models.tiny import tiny_stable_diffusion

    pipe = tiny_stable_diffusion()
    cond, uncond = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "")

    def guided(x: Tensor, t: Tensor) -> Tensor:
        reps = x.shape[0]
        emb = torch.cat([uncond.repeat(reps, 1, 1), cond.repeat(reps, 1, 1)])
        with torch.no_grad():
            out = pipe.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=emb).sample
        u, c = out.chunk(2)
        return u + 7.5 * (c - u)

    return guided, pipe.scheduler, (4, 8, 8)


def _sequential_run(
    model: str, den: Any, sched: Any, n: int, shape: tuple[int, ...]
) -> Callable[[], Tensor]:
    """The sequential loop of one sampler, from the seed every run uses."""

    def run() -> Tensor:
        gen = torch.Generator().manual_seed(0)
        x = start_latent(sched, n, (BATCH[model], *shape), gen)
        return sample_sequentially(sched, den, n, x, gen)

    return run


def _run(
    model: str,
    den: Any,
    base: Any,
    shape: tuple[int, ...],
    sampler: str,
    steps: int,
    window: int | None,
    tol: float,
    repeats: int,
    seq: tuple[Tensor, float],
) -> BenchRow:
    sched = make_scheduler(sampler, base)
    b = BATCH[model]

    def start() -> tuple[Tensor, torch.Generator]:
        gen = torch.Generator().manual_seed(0)
        return start_latent(sched, steps, (b, *shape), gen), gen

    def ours() -> Any:
        x, gen = start()
        return sample_in_parallel(sched, den, steps, x, gen, window=window, tol=tol, relative=False)

    sol, t_ours = median_time(ours, repeats)
    ref, t_seq = seq
    w = sol.stats.window
    par = dict.fromkeys(("sweeps", "evals", "err", "s"))
    if sampler in ("ddpm", "ddim"):

        def theirs() -> Any:
            x, gen = start()
            with torch.no_grad():
                return paradigms(sched, den, steps, x, generator=gen, parallel=w, tolerance=tol)

        r, t_par = median_time(theirs, repeats)
        par = {
            "sweeps": r.sweeps,
            "evals": r.evaluations / steps / b,
            "err": float((r.final - ref).abs().max()),
            "s": t_par,
        }
    return BenchRow(
        model,
        sampler,
        steps,
        w,
        tol,
        sol.stats.iterations,
        sol.stats.evaluations / steps / b,
        float((sol.final - ref).abs().max()),
        t_seq,
        t_ours,
        par["sweeps"],
        par["evals"],
        par["err"],
        par["s"],
    )


def run_bench(
    out: Path,
    *,
    models: tuple[str, ...] = ("gmm", "moons", "digits", "tiny-sd"),
    steps: int | None = None,
    repeats: int = 3,
    tol_window: int = 64,
    log: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Run the matrix; ``steps`` caps every sampler's steps (for quick runs).

    Args:
        out: the folder for ``bench.json``, ``bench.md`` and the plots (created if missing).
        models: the models to run: ``gmm``, ``moons``, ``digits``, ``tiny-sd``.
        steps: a cap on every sampler's steps (``None``: the matrix's own steps).
        repeats: timing repeats (the median is kept).
        tol_window: the window of the tolerance sweep.
        log: called with one line per row as it comes.

    Returns:
        The rows, one per model, sampler, window and tolerance run.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> rows = run_bench(out, models=("gmm",), steps=10, repeats=1,
        ...                  log=lambda line: None)
        >>> sorted({r.sampler for r in rows})
        ['ddim', 'ddpm', 'dpmsolver++']
        >>> {r.steps for r in rows}, sorted({r.tol for r in rows})  # steps capped at 10
        ({10}, [0.02, 0.05, 0.1, 0.2])
        >>> sorted(p.name for p in out.iterdir())
        ['bench.json', 'bench.md', 'error_vs_tol.png', 'speedup_vs_window.png', 'sweeps_vs_tol.png']
    """
    out.mkdir(parents=True, exist_ok=True)
    rows: list[BenchRow] = []
    for model in models:
        den, base, shape = bench_model(model)
        for sampler, n in SAMPLERS[model]:
            n = min(n, steps) if steps else n
            sched = make_scheduler(sampler, base)

            reference = median_time(_sequential_run(model, den, sched, n, shape), repeats)
            # Windows as solved (a window past the last step is the whole grid), once each.
            runs = {(min(w or n, n), 0.1) for w in WINDOWS}
            runs |= {(min(tol_window, n), t) for t in TOLERANCES}
            for window, tol in sorted(runs):
                row = _run(model, den, base, shape, sampler, n, window, tol, repeats, reference)
                rows.append(row)
                log(_line(row))
    _write(out, rows)
    return rows


def _line(r: BenchRow) -> str:
    par = (
        ""
        if r.paradigms_sweeps is None
        else (
            f" | ParaDiGMS {r.paradigms_sweeps} sweeps, {r.paradigms_s:.2f} s, "
            f"err {r.paradigms_max_abs_error:.1e}"
        )
    )
    return (
        f"{r.model} {r.sampler}-{r.steps} W={r.window} tol={r.tol}: {r.sweeps} sweeps, "
        f"{r.evals_per_step:.1f} evals/step, err {r.max_abs_error:.1e}, "
        f"{r.speedup:.2f}x vs sequential{par}"
    )


def table(rows: list[BenchRow]) -> str:
    """The matrix as a Markdown table."""
    lines = [
        "| model | sampler | window | tol | sweeps | evals/step | max abs err "
        "| vs sequential | ParaDiGMS sweeps | ParaDiGMS err | vs ParaDiGMS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.paradigms_sweeps is None:
            par = "– | – | –"
        else:
            assert r.paradigms_s is not None and r.paradigms_max_abs_error is not None
            par = (
                f"{r.paradigms_sweeps} | {r.paradigms_max_abs_error:.1e} "
                f"| {r.paradigms_s / r.picard_s:.2f}x"
            )
        lines.append(
            f"| {r.model} | {r.sampler}-{r.steps} | {r.window} | {r.tol} | {r.sweeps} "
            f"| {r.evals_per_step:.1f} | {r.max_abs_error:.1e} | {r.speedup:.2f}x "
            f"| {par} |"
        )
    return "\n".join(lines)


def _write(out: Path, rows: list[BenchRow]) -> None:
    (out / "bench.json").write_text(
        json.dumps([asdict(r) | {"speedup": r.speedup} for r in rows], indent=2) + "\n"
    )
    (out / "bench.md").write_text(table(rows) + "\n")
    by_run: dict[str, list[BenchRow]] = {}
    for r in rows:
        by_run.setdefault(f"{r.model} {r.sampler}-{r.steps}", []).append(r)
    windows = {
        k: ([r.window for r in v if r.tol == 0.1], [r.speedup for r in v if r.tol == 0.1])
        for k, v in by_run.items()
    }
    plots.lines(
        windows,
        "window",
        "speedup vs sequential (tol 0.1)",
        out / "speedup_vs_window.png",
        logx=True,
    )
    tol_runs = {
        k: sorted((r for r in v if r.window == _tol_window(v)), key=lambda r: r.tol)
        for k, v in by_run.items()
    }
    plots.lines(
        {k: ([r.tol for r in v], [r.sweeps for r in v]) for k, v in tol_runs.items()},
        "tol",
        "sweeps",
        out / "sweeps_vs_tol.png",
        logx=True,
    )
    plots.lines(
        {
            k: ([r.tol for r in v], [max(r.max_abs_error, 1e-12) for r in v])
            for k, v in tol_runs.items()
        },
        "tol",
        "max abs error vs sequential",
        out / "error_vs_tol.png",
        logx=True,
        logy=True,
    )


def _tol_window(rows: list[BenchRow]) -> int:
    """The window of a model's tolerance sweep: the one with several tolerances."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r.window] = counts.get(r.window, 0) + 1
    return max(counts, key=lambda w: counts[w])
