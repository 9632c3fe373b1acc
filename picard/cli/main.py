"""The ``picard`` command line (also ``python -m picard``).

- ``picard demo``  — the shipped models sampled sequentially and with picard (the main job).
- ``picard sample`` — sample a shipped model, or a diffusers pipeline folder, with picard.
- ``picard bench``  — the benchmark matrix against the sequential sampler and ParaDiGMS.
- ``picard odes``   — ODEs and an SDE solved sequentially and with picard.

Bad input (unknown model, scheduler or option, negative counts, an unwritable output
path) gives one line on stderr and exit status 2, never a traceback (set
``PICARD_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import picard
from picard.cli.common import (
    WINDOW_HELP,
    CLIError,
    Parser,
    positive,
    tolerance,
    window,
    writable_dir,
)

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from picard.cli.demo import format_table, run_demo

    out = writable_dir(args.out)
    print(
        f"picard {picard.__version__} demo — shipped models, DDPM 1000 steps, window "
        f"{args.window}, tol {args.tol:g}, torch on {args.threads} thread(s)\n",
        flush=True,
    )
    rows, files = run_demo(
        out,
        window=args.window,
        tol=args.tol,
        repeats=args.repeats,
        seeds=args.seeds,
        samples=args.samples,
        images=args.images,
        verbose=True,
    )
    print(format_table(rows))
    print(
        "\nsweeps = sequential rounds of batched model calls (the sequential sampler needs "
        "one per step)."
    )
    print("figures: " + ", ".join(str(f) for f in files))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from picard.cli.sample import sample

    return sample(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from picard.cli.bench import run_bench, table

    out = writable_dir(args.out)
    if args.fidelity:
        import picard.cli.fidelity as fidelity

        print(fidelity.HEADER)
        rows = fidelity.run(args.fidelity, log=lambda line: print(line, flush=True))
        fidelity.write(rows, out / "fidelity")
        print(f"wrote {out / 'fidelity.json'} and {out / 'fidelity.md'}")
        return 0
    models = tuple(args.models.split(","))
    unknown = [m for m in models if m not in ("gmm", "moons", "digits", "tiny-sd")]
    if unknown:
        raise CLIError(f"unknown model {unknown[0]!r}; choose from gmm, moons, digits, tiny-sd")
    rows = run_bench(out, models=models, steps=args.steps, repeats=args.repeats)
    print(table(rows))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and plots in {out}")
    return 0


def _cmd_odes(args: argparse.Namespace) -> int:
    from picard.cli.odes import run_odes

    return run_odes(args)


def _add_demo(sub: Any, threads: dict[str, Any]) -> None:
    """The ``demo`` subcommand and its options."""
    p = sub.add_parser("demo", help="the shipped models, sequential vs picard (the main job)")
    p.add_argument(
        "--steps", type=positive("steps"), default=1000, help="DDPM steps (default 1000)"
    )
    p.add_argument("--window", type=window, default="auto", help=WINDOW_HELP)
    p.add_argument(
        "--tol",
        type=tolerance,
        default=0.01,
        help="tolerance, relative to each state's RMS (default 0.01)",
    )
    p.add_argument(
        "--repeats", type=positive("repeats"), default=3, help="timing repeats (default 3)"
    )
    p.add_argument(
        "--seeds",
        type=positive("seeds"),
        default=2,
        help="seeds for the quality metrics (default 2)",
    )
    p.add_argument(
        "--samples",
        type=positive("samples"),
        default=512,
        help="2-D samples per seed for the quality metric (default 512)",
    )
    p.add_argument(
        "--images",
        type=positive("images", 2),  # a Fréchet distance needs a covariance: 2 or more
        default=8,
        help="digit images per seed (default 8, at least 2)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("picard-demo"),
        help="folder for the figures (default ./picard-demo)",
    )
    p.add_argument("--threads", **threads)
    p.set_defaults(run=_cmd_demo)


def _add_sample(sub: Any, threads: dict[str, Any]) -> None:
    """The ``sample`` subcommand and its options."""
    from picard.cli.sample import add_arguments

    p = sub.add_parser("sample", help="sample a shipped model or a diffusers pipeline folder")
    add_arguments(p, positive, tolerance)
    p.add_argument("--threads", **threads)
    p.set_defaults(run=_cmd_sample)


def _add_bench(sub: Any, threads: dict[str, Any]) -> None:
    """The ``bench`` subcommand and its options."""
    p = sub.add_parser("bench", help="the benchmark matrix (sequential, picard, ParaDiGMS)")
    p.add_argument(
        "--models",
        default="gmm,moons,digits,tiny-sd",
        help="comma-separated: gmm, moons, digits, tiny-sd (default: all)",
    )
    p.add_argument(
        "--steps",
        type=positive("steps"),
        default=None,
        help="cap every sampler's steps (for a quick run)",
    )
    p.add_argument(
        "--repeats", type=positive("repeats"), default=3, help="timing repeats (default 3)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("picard-bench"),
        help="folder for bench.json, bench.md and plots (default ./picard-bench)",
    )
    p.add_argument(
        "--fidelity",
        type=positive("fidelity"),
        nargs="?",
        const=64,
        default=None,
        metavar="SAMPLES",
        help="instead: the fidelity benchmark (error of the final sample against tol, mode "
        "changes on a 16-D Gaussian mixture; SAMPLES samples, default 64)",
    )
    p.add_argument("--threads", **threads)
    p.set_defaults(run=_cmd_bench)


def _add_odes(sub: Any, threads: dict[str, Any]) -> None:
    """The ``odes`` subcommand and its options."""
    p = sub.add_parser("odes", help="ODEs and an SDE, sequential vs picard.odeint/sdeint")
    p.add_argument(
        "--steps", type=positive("steps"), default=1000, help="steps per problem (default 1000)"
    )
    p.add_argument("--window", type=window, default="auto", help=WINDOW_HELP)
    p.add_argument("--tol", type=tolerance, default=1e-4, help="tolerance (default 1e-4)")
    p.add_argument(
        "--repeats", type=positive("repeats"), default=5, help="timing repeats (default 5)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", **threads)
    p.set_defaults(run=_cmd_odes)


def _parser() -> argparse.ArgumentParser:
    """The ``picard`` parser: one subparser per subcommand."""
    parser = Parser(prog="picard", description="Sequential samplers made parallel in time.")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    threads = {"type": positive("threads"), "default": 1, "help": "torch threads (default 1)"}
    for add in (_add_demo, _add_sample, _add_bench, _add_odes):
        add(sub, threads)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``picard`` console script and ``python -m picard``.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 for bad input.

    Example:
        >>> main(["odes", "--steps", "20", "--window", "8", "--repeats", "1"])
        picard ... odes: ... sweeps = sequential rounds of batched drift calls ...
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    torch.set_num_threads(args.threads)
    try:
        return int(args.run(args))
    except (
        CLIError,
        ValueError,
        TypeError,
        OSError,
        RuntimeError,
        picard.ConvergenceError,
        picard.NonFiniteError,
    ) as err:
        if os.environ.get("PICARD_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        sys.stderr.write(f"picard {args.command}: error: {message}\n")
        return 2
