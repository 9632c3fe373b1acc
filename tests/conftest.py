"""Shared test set-up: one torch thread (two stall on these machines), hypothesis profiles,
and a simulated clock for ``window="auto"``.

``window="auto"`` decides from sweep timings, which vary with the machine's load; the
suite replaces its timer with one that ticks a fixed millisecond per reading (a device
whose sweeps cost the same at any window), so every test takes the same windows on every
machine. ``tests/test_auto_window.py`` drives the controller with its own clocks.

The default profile is derandomized, so CI runs the same examples every time; explore
new ones with ``PICARD_HYPOTHESIS=explore`` (and ``PICARD_HYPOTHESIS_EXAMPLES=500``).
"""

import os

import torch
from hypothesis import HealthCheck, settings

import picard.core.window

torch.set_num_threads(1)


class _Ticks:
    """A clock that advances 1 ms per reading: every sweep takes the same time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-3
        return self.now


picard.core.window.default_clock = _Ticks()

_examples = int(os.environ.get("PICARD_HYPOTHESIS_EXAMPLES", "30"))
settings.register_profile(
    "default",
    max_examples=_examples,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("PICARD_HYPOTHESIS", "default"))
