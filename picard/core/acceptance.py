"""How far a window slides after a sweep: which states are declared final.

An acceptance rule maps the convergence test's verdicts on a window's states to the number
of states each window makes final (its *stride*). The state at a window's start is final;
state ``b + 1`` is computed from it alone, so it is final after any sweep — a stride of at
least 1 is what guarantees at most N sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from picard.checks import named_or_object

__all__ = [
    "ACCEPTANCES",
    "AcceptAll",
    "Acceptance",
    "ConvergedPrefix",
    "FirstUnconverged",
    "acceptance_of",
]


@runtime_checkable
class Acceptance(Protocol):
    """The protocol of an acceptance rule (see the module docstring).

    Example:
        >>> isinstance(FirstUnconverged(), Acceptance)
        True
    """

    def stride(self, ok: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """States made final per window.

        Args:
            ok: ``(w, lanes)`` whether each state of each window passed the test (rows
                past a window's length are padding and pass).
            lengths: ``(lanes,)`` each window's length.

        Returns:
            ``(lanes,)`` integers in ``[1, lengths]``.
        """
        ...


@dataclass(frozen=True)
class FirstUnconverged:
    """ParaDiGMS's rule: the converged prefix and the first unconverged state are final.

    The first unconverged state was computed from converged inputs, so it is final up to
    the tolerance of its inputs times its step's sensitivity (see :class:`ConvergedPrefix`,
    the default).

    Example:
        >>> import numpy as np
        >>> ok = np.array([[True, True], [False, True], [True, True]])
        >>> FirstUnconverged().stride(ok, np.array([3, 3])).tolist()
        [2, 3]
    """

    def stride(self, ok: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """See :class:`Acceptance`."""
        if ok.shape[1] == 1:  # one shared window: the fast path of the sweep loop
            first = int(ok.argmin())
            return np.array((lengths.item(0) if ok.item(first) else first + 1,))
        bad = ~ok
        return np.where(bad.any(0), bad.argmax(0) + 1, lengths)


@dataclass(frozen=True)
class ConvergedPrefix:
    """The converged prefix is final, and only it (at least one state): the default.

    ParaDiGMS's rule also declares the first unconverged state final: it was computed from
    converged inputs, but from their previous iterate, so it is off by about its step's
    Lipschitz constant times ``tol`` — unbounded where a sampler is sensitive. On the
    fidelity benchmark's mixture that sent samples to another mode (DDPM-1000, DDIM-50)
    with each change accepted at 0.01; sliding past the converged prefix only kept every
    sample at the same sweeps. (At today's default, each change at 0.001, neither rule
    moves a sample: ``benchmarks/results/acceptance.md``.) State ``b + 1`` depends on
    the final ``x_b`` alone, so it is final after any sweep: windows still slide.

    Example:
        >>> import numpy as np
        >>> ok = np.array([[True, False], [False, True], [True, True]])
        >>> ConvergedPrefix().stride(ok, np.array([3, 3])).tolist()
        [1, 1]
    """

    def stride(self, ok: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """See :class:`Acceptance`."""
        if ok.shape[1] == 1:  # one shared window: the fast path of the sweep loop
            first = int(ok.argmin())
            return np.array((lengths.item(0) if ok.item(first) else max(first, 1),))
        bad = ~ok
        return np.where(bad.any(0), np.maximum(bad.argmax(0), 1), lengths)


@dataclass(frozen=True)
class AcceptAll:
    """Every state of the window is final: for windows of one step (the sequential finish).

    Example:
        >>> import numpy as np
        >>> AcceptAll().stride(np.zeros((1, 2), dtype=bool), np.array([1, 1])).tolist()
        [1, 1]
    """

    def stride(self, ok: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """See :class:`Acceptance`."""
        return lengths


ACCEPTANCES: dict[str, type] = {
    "converged-prefix": ConvergedPrefix,
    "first-unconverged": FirstUnconverged,
}
"""``acceptance=`` names and the class each builds."""


def acceptance_of(acceptance: Any) -> Acceptance:
    """``acceptance=`` as an object: a name of :data:`ACCEPTANCES` or an object.

    Args:
        acceptance: a name, or an object with ``stride(ok, lengths)``.

    Returns:
        The rule.

    Raises:
        ValueError: an unknown name.
        TypeError: an object without ``stride``.

    Example:
        >>> acceptance_of("first-unconverged")
        FirstUnconverged()
    """
    return named_or_object("acceptance", acceptance, ACCEPTANCES, Acceptance, "stride(ok, lengths)")
