"""The scheduler rules' old import paths (before ``picard.adapters.schedulers``) still work."""

from __future__ import annotations

import importlib

import pytest

import picard.adapters

OLD = ("ddim", "ddpm", "deis", "dpmsolver", "dpmsolver_singlestep", "edm_dpmsolver")
OLD += ("edm_euler", "euler", "flow", "flow_heun", "heun", "kdpm2", "lcm", "lms")
OLD += ("multistep", "pndm", "sasolver", "schedules", "tcd", "unipc")


def test_old_import_statements_work():
    import picard.adapters.ddim
    from picard.adapters.schedules import betas

    assert picard.adapters.ddim.DDIMRule.__name__ == "DDIMRule"
    assert betas({"num_train_timesteps": 10}).shape == (10,)


@pytest.mark.parametrize("name", OLD)
def test_old_path_is_the_moved_module(name):
    new = importlib.import_module(f"picard.adapters.schedulers.{name}")
    assert importlib.import_module(f"picard.adapters.{name}") is new
    assert getattr(picard.adapters, name) is new


def test_registry_points_at_the_moved_modules():
    from picard.adapters.schedulers import SCHEDULERS

    for sampler in SCHEDULERS.values():
        assert sampler.factory.startswith("picard.adapters.schedulers.")
        assert callable(sampler.make())


def test_unsupported_scheduler_error_is_typed():
    from picard.adapters.schedulers import sampler_for
    from picard.errors import UnsupportedSchedulerError

    with pytest.raises(UnsupportedSchedulerError, match="scheduler object is not supported"):
        sampler_for(object())
    assert issubclass(UnsupportedSchedulerError, TypeError)
