"""Shared test set-up: one torch thread (two stall on these machines), hypothesis profiles.

The default profile is derandomized, so CI runs the same examples every time; explore
new ones with ``PICARD_HYPOTHESIS=explore`` (and ``PICARD_HYPOTHESIS_EXAMPLES=500``).
"""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

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
