"""from_scheduler: bad input is refused with errors that name the argument."""

from __future__ import annotations

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, DDIMScheduler, DDPMScheduler

import picard
from picard.adapters.diffusers import from_scheduler


def den(x, t):
    return 0.1 * x


X = torch.randn(2, 3, 4, 4)

CASES = [
    (
        "scheduler",
        lambda: from_scheduler(CMStochasticIterativeScheduler(), den, 10),
        TypeError,
        "scheduler CMStochasticIterativeScheduler is not supported; supported: DDPMScheduler",
    ),
    (
        "denoiser",
        lambda: from_scheduler(DDPMScheduler(), "unet", 10),
        TypeError,
        "denoiser must be callable",
    ),
    (
        "steps-type",
        lambda: from_scheduler(DDPMScheduler(), den, 10.0),
        TypeError,
        "num_inference_steps must be an int",
    ),
    (
        "steps-range",
        lambda: from_scheduler(DDPMScheduler(), den, 0),
        ValueError,
        "num_inference_steps must be in \\[1, 1000\\]",
    ),
    (
        "steps-offset-grid",
        lambda: from_scheduler(DDPMScheduler(steps_offset=1), den, 1000),
        ValueError,
        "leaves the training schedule",
    ),
    ("option-unknown", lambda: from_scheduler(DDPMScheduler(), den, 10, eta=0.5), TypeError, "eta"),
    (
        "eta-negative",
        lambda: from_scheduler(DDIMScheduler(), den, 10, eta=-1.0),
        ValueError,
        "eta must be >= 0",
    ),
    (
        "variance-type",
        lambda: from_scheduler(DDPMScheduler(variance_type="fixed_large_log"), den, 10),
        ValueError,
        "variance_type must be one of",
    ),
    (
        "prediction-type",
        lambda: from_scheduler(DDPMScheduler(prediction_type="flow"), den, 10),
        ValueError,
        "prediction_type must be one of",
    ),
    (
        "generator-type",
        lambda: from_scheduler(DDPMScheduler(), den, 10, generator=3),
        TypeError,
        "generator must be a torch.Generator, a list of them",
    ),
    (
        "generator-count",
        lambda: picard.solve(
            from_scheduler(DDPMScheduler(), den, 10, generator=[torch.Generator()] * 3), X
        ),
        ValueError,
        "list of 3 generators but x_T holds 2 samples",
    ),
    (
        "x_T-no-batch",
        lambda: picard.solve(from_scheduler(DDPMScheduler(), den, 10), torch.randn(4)),
        ValueError,
        "x_T must have a batch dimension",
    ),
    (
        "output-shape",
        lambda: picard.solve(from_scheduler(DDPMScheduler(), lambda x, t: x[:, :1], 10), X),
        ValueError,
        "denoiser returned shape \\(\\d+, 1, 4, 4\\) for input \\(\\d+, 3, 4, 4\\)",
    ),
    (
        "output-tuple",
        lambda: picard.solve(from_scheduler(DDPMScheduler(), lambda x, t: (x,), 10), X),
        TypeError,
        "denoiser must return a torch.Tensor",
    ),
    (
        "learned-channels",
        lambda: picard.solve(from_scheduler(DDPMScheduler(variance_type="learned"), den, 10), X),
        ValueError,
        "expected \\(\\d+, 6, 4, 4\\)",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_nan_from_the_model_names_step_and_timestep():
    def bad(x, t):
        return torch.where((t == 500).reshape(-1, 1, 1, 1), float("nan"), 0.1 * x)

    with pytest.raises(picard.NonFiniteError, match=r"step 4 \(timestep 500\)"):
        picard.solve(from_scheduler(DDPMScheduler(), bad, 10), X)
