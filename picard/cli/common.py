"""What the ``picard`` subcommands share: one-line errors, argument types, a progress bar."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from picard.progress import follow

__all__ = ["CLIError", "Parser", "positive", "progress_bar", "tolerance", "writable_dir"]


class CLIError(Exception):
    """A user error: printed as one line after ``picard <command>: error:``, exit status 2.

    Args:
        message: what was wrong, one line.

    Example:
        >>> str(CLIError("--out must end in .png"))
        '--out must end in .png'
    """


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    Args:
        *args: as for :class:`argparse.ArgumentParser`.
        **kwargs: as for :class:`argparse.ArgumentParser`.

    Example:
        >>> import contextlib, io
        >>> p = Parser(prog="picard demo")
        >>> _ = p.add_argument("--steps", type=positive("steps"))
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     try:
        ...         p.parse_args(["--steps", "0"])
        ...     except SystemExit as e:
        ...         e.code
        2
        >>> err.getvalue().strip()
        'picard demo: error: argument --steps: steps must be >= 1, got 0'
    """

    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit status 2 (argparse prints the usage too)."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def window(text: str) -> int | str:
    """The argument type of ``--window``: ``auto`` or an integer >= 1.

    Example:
        >>> window("auto"), window("16")
        ('auto', 16)
    """
    return "auto" if text == "auto" else positive("window")(text)


WINDOW_HELP = "steps per sweep, or auto: learned on this device (default auto)"


def positive(name: str, minimum: int = 1) -> Callable[[str], int]:
    """The argument type of a count option ``name``: an integer >= ``minimum``.

    Args:
        name: the option's name, for the message.
        minimum: the smallest value allowed.

    Returns:
        The parser of the option's text.

    Example:
        >>> positive("steps")("20")
        20
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def tolerance(text: str) -> float:
    """The argument type of ``--tol``: a number >= 0.

    Args:
        text: the option's text.

    Returns:
        The tolerance.

    Example:
        >>> tolerance("0.01")
        0.01
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tol must be a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"tol must be >= 0, got {text}")
    return value


def writable_dir(path: Path) -> Path:
    """``path`` as a folder that can be written to (created if needed).

    Args:
        path: the folder.

    Returns:
        ``path``.

    Raises:
        CLIError: it cannot be created or written.

    Example:
        >>> import tempfile
        >>> writable_dir(Path(tempfile.mkdtemp()) / "out").is_dir()
        True
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".picard-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CLIError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


def progress_bar(label: str, total: int, **tqdm_options: Any) -> Any:
    """A tqdm bar of a solve's steps that is also its ``progress=`` callback.

    Calling it as ``bar(done, total)`` moves the bar to ``done`` steps and counts a sweep
    (:func:`picard.progress.follow`); close it with ``bar.close()``. Hidden when stderr is
    not a terminal (tqdm's ``disable=None``) unless ``disable=False`` is passed.

    Args:
        label: the bar's description.
        total: the number of steps.
        **tqdm_options: further options of :class:`tqdm.tqdm`.

    Returns:
        The bar, callable.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = progress_bar("demo", 10, file=out, disable=False)
        >>> bar(5, 10); bar.close()
        >>> "5/10" in out.getvalue() and "sweeps=1" in out.getvalue()
        True
    """
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        def __call__(self, done: int, total: int) -> None:
            self._follow(done, total)

    bar = _Bar(total=total, desc=label, **{"disable": None, "unit": "step", **tqdm_options})
    bar._follow = follow(bar)
    return bar
