"""Errors raised by picard beyond plain ``ValueError``/``TypeError``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from picard.solution import Solution, Stats

__all__ = [
    "AccuracyWarning",
    "ConvergenceError",
    "MemoryWarning",
    "NonFiniteError",
    "PerformanceWarning",
    "RankError",
    "SequentialWarning",
    "UnsupportedSchedulerError",
]


class NonFiniteError(FloatingPointError):
    """A drift (or increment) produced NaN or Inf.

    Attributes:
        step: index of the step whose increment first went non-finite (the step from
            state ``step`` to state ``step + 1``), or ``None`` when unknown.
        sweep: 1-based index of the sweep in which it happened, or ``None`` for a
            sequential solve.

    Example:
        >>> err = NonFiniteError("drift returned NaN", step=3, sweep=1)
        >>> (err.step, err.sweep)
        (3, 1)
    """

    def __init__(self, message: str, *, step: int | None = None, sweep: int | None = None):
        super().__init__(message)
        self.step = step
        self.sweep = sweep


class ConvergenceError(RuntimeError):
    """The sweep budget (``max_iters``) ran out before the last step converged.

    Attributes:
        stats: the statistics of the sweeps that did run.
        steps_done: how many steps were converged; ``state`` is state ``steps_done``.
        state: the last converged state (shaped like ``x0``).
        solution: the partial :class:`picard.Solution`: ``final`` is ``state``, ``ys``
            holds the saved states already final (``steps`` their indices); ``None``
            where a solve cannot tell.

    Example:
        >>> err = ConvergenceError("budget", stats=None, steps_done=0, state=None)
        >>> err.steps_done
        0
    """

    def __init__(
        self,
        message: str,
        *,
        stats: Stats | None,
        steps_done: int,
        state: Any,
        solution: Solution | None = None,
    ):
        super().__init__(message)
        self.stats = stats
        self.steps_done = steps_done
        self.state = state
        self.solution = solution


class RankError(RuntimeError):
    """A rank of a distributed solve failed; raised on every rank, naming the one that failed.

    Attributes:
        rank: the rank (in the solve's process group) whose model call failed.

    Example:
        >>> RankError("rank 1 failed", rank=1).rank
        1
    """

    def __init__(self, message: str, *, rank: int):
        super().__init__(message)
        self.rank = rank


class MemoryWarning(UserWarning):
    """A sweep's model call did not fit in memory and is now evaluated in chunks.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", MemoryWarning)  # make chunking an error
        ...     issubclass(MemoryWarning, UserWarning)
        True
    """


class AccuracyWarning(UserWarning):
    """``verify=`` refined the maximum number of times and the estimate still exceeds its target.

    The solution is returned all the same; ``stats.error_estimate`` says how far off it may be.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", AccuracyWarning)  # make it an error
        ...     issubclass(AccuracyWarning, UserWarning)
        True
    """


class SequentialWarning(UserWarning):
    """Something picard cannot parallelize runs sequentially (``on_unsupported="sequential"``).

    The result is exactly the sequential one; only the speed-up is lost.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     warnings.warn("scheduler X runs step by step", SequentialWarning)
        >>> seen[0].category.__name__
        'SequentialWarning'
    """


class PerformanceWarning(UserWarning):
    """A solve runs correctly but slowly (e.g. a ``func`` evaluated one row at a time).

    Example:
        >>> issubclass(PerformanceWarning, UserWarning)
        True
    """


class UnsupportedSchedulerError(TypeError):
    """A diffusers scheduler picard does not reproduce (its class, or one without a config).

    A ``TypeError``, as before it had a class of its own; ``from_scheduler(...,
    on_unsupported="sequential")`` catches it (by type) and runs the scheduler step by step.

    Example:
        >>> err = UnsupportedSchedulerError("scheduler X is not supported")
        >>> isinstance(err, TypeError), str(err)
        (True, 'scheduler X is not supported')
    """
