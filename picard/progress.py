"""A one-line text progress bar on stderr (no dependencies), for the command line."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``bar(done, total)`` redraws ``label [#####-----] done/total steps, k sweeps, 0.3 s``.

    Usable as the ``progress`` callback of :func:`picard.solve`; silent when ``stream``
    is not a terminal unless ``force``.

    Args:
        label: the text before the bar.
        stream: where to draw (default ``sys.stderr``).
        width: the bar's length in characters.
        force: draw even when ``stream`` is not a terminal.

    Attributes:
        sweeps: how many times the bar was called (sweeps so far).
        enabled: whether the bar draws.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = ProgressBar("demo", stream=out, force=True)
        >>> bar(5, 10); bar.close()
        >>> "5/10 steps, 1 sweeps" in out.getvalue()
        True
        >>> quiet = ProgressBar("demo", stream=io.StringIO())  # not a terminal: silent
        >>> quiet(1, 2); quiet.sweeps, quiet.enabled, quiet.stream.getvalue()
        (1, False, '')
    """

    def __init__(
        self, label: str, stream: TextIO | None = None, width: int = 30, force: bool = False
    ):
        self.label, self.width = label, width
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.sweeps = 0
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        """Record one more sweep that reached ``done`` of ``total`` steps."""
        self.sweeps += 1
        if not self.enabled:
            return
        filled = self.width * done // max(total, 1)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'-' * (self.width - filled)}] {done}/{total} "
            f"steps, {self.sweeps} sweeps, {elapsed:.1f} s"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
