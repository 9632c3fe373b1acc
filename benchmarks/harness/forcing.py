"""Runs with one of picard's automatic choices forced, for side-by-side benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["backward_by_sweeps", "newton_check"]


@contextlib.contextmanager
def backward_by_sweeps() -> Iterator[None]:
    """Inside: gradients of small states by the Picard sweeps, not per-sample Jacobians.

    Example:
        >>> from picard.core import jacobians
        >>> with backward_by_sweeps():
        ...     jacobians.DENSE_MAX
        0
    """
    from picard.core import jacobians

    saved, jacobians.DENSE_MAX = jacobians.DENSE_MAX, 0
    try:
        yield
    finally:
        jacobians.DENSE_MAX = saved


@contextlib.contextmanager
def newton_check() -> Iterator[None]:
    """Inside: ``verify=`` takes Newton's check wherever it applies, whatever its cost model.

    Example:
        >>> from picard.core import newton
        >>> with newton_check():
        ...     newton.newton_pays(None, 1, 1, "cpu")
        True
    """
    from picard.core import newton, verify

    saved = newton.newton_pays, verify.newton_pays
    newton.newton_pays = verify.newton_pays = lambda *args: True
    try:
        yield
    finally:
        newton.newton_pays, verify.newton_pays = saved
