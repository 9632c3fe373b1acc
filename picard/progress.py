"""Progress of a solve shown by a tqdm bar: ``progress=`` callbacks for :func:`picard.solve`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["follow"]


def follow(bar: Any) -> Callable[[int, int], None]:
    """A ``progress=`` callback that moves a tqdm ``bar`` to the steps done and counts sweeps.

    Args:
        bar: a ``tqdm.tqdm`` bar (e.g. a diffusers pipeline's ``pipe.progress_bar(total=N)``,
            which honours ``pipe.set_progress_bar_config``).

    Returns:
        ``progress(done, total)``.

    Example:
        >>> import io
        >>> from tqdm import tqdm
        >>> out = io.StringIO()
        >>> bar = tqdm(total=10, file=out)
        >>> progress = follow(bar)
        >>> progress(4, 10); progress(10, 10); bar.close()
        >>> bar.n, "sweeps=2" in out.getvalue()
        (10, True)
    """
    sweeps = 0

    def progress(done: int, total: int) -> None:
        nonlocal sweeps
        sweeps += 1
        bar.set_postfix(sweeps=sweeps, refresh=False)
        bar.update(done - bar.n)

    return progress
