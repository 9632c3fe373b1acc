"""Wall-clock of competing runs, measured side by side.

Each round calls every run once, in turn, so that a slow spell of the machine falls on
all of them alike; the first ``warmup`` rounds are not counted. What a run needs that is
not to be timed (a fresh Brownian motion, a leaf tensor) comes from ``setup``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from picard.ode.paths import PATHS

__all__ = ["SETTLE", "interleaved"]

SETTLE = 2 * len(PATHS)
"""Warm-up rounds that cover a repeated ``odeint`` call's trials (:mod:`picard.ode.paths`
tries each way twice): the rounds counted after them are the settled calls a training
loop sees."""


def interleaved(
    runs: Mapping[str, Callable[[Any], Any]],
    repeats: int,
    setup: Callable[[str], Any] = lambda label: None,
    warmup: int = 1,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each run's median seconds over ``repeats`` interleaved rounds, and its last result.

    Args:
        runs: label -> ``run(prepared)``, timed.
        repeats: rounds counted.
        setup: label -> what its run receives, made before the clock starts.
        warmup: rounds run first and not counted.

    Returns:
        ``(medians, results)``: per label, the median seconds and the last run's result.

    Example:
        >>> medians, results = interleaved({"a": lambda _: 1, "b": lambda _: 2}, 3)
        >>> sorted(medians), results
        (['a', 'b'], {'a': 1, 'b': 2})
    """
    times: dict[str, list[float]] = {label: [] for label in runs}
    results: dict[str, Any] = {}
    for round_ in range(warmup + repeats):
        for label, run in runs.items():
            prepared = setup(label)
            start = time.perf_counter()
            results[label] = run(prepared)
            if round_ >= warmup:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}, results
