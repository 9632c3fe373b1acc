"""lerobot's DiffusionPolicy sampled by picard (``picard.adapters.lerobot``).

With lerobot (skipped where it is not importable): a tiny state-only policy, built from
its config, gives at ``tol=0`` lerobot's own ``select_action`` for DDPM-100 and DDIM-10,
leaving torch's global generator where lerobot's loop leaves it; the default tolerance
keeps every action chunk within it of lerobot's. Without lerobot: the same adapter on a
stand-in model of the same interface (``unet(x, t, global_cond=)``, a diffusers scheduler,
a sequential ``conditional_sample``), and the errors.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from lerobot_helpers import ENV_DIM, STATE_DIM, import_lerobot, observation, tiny_policy
from torch import nn

from picard.adapters.lerobot import ParallelPolicy, parallelize

CASES = [("DDPM", 100), ("DDIM", 10)]


@pytest.fixture(scope="module")
def lerobot():
    try:
        return import_lerobot()
    except ImportError as err:
        pytest.skip(f"lerobot is not importable: {err}")


def _chunk(policy, obs, seed):
    """The whole action chunk ``select_action`` samples, and the global RNG after it."""
    policy.reset()
    torch.manual_seed(seed)
    first = policy.select_action(dict(obs))
    rest = list(policy._queues["action"])
    return torch.stack([first, *rest]), torch.get_rng_state()


@pytest.mark.parametrize("scheduler,steps", CASES)
def test_select_action_tol0_is_lerobots(lerobot, scheduler, steps):
    policy = tiny_policy(scheduler, steps)
    obs = observation(2)
    ref, rng_ref = _chunk(policy, obs, seed=5)
    with parallelize(policy, tol=0, window=4) as fast:  # any window: the same answer
        got, rng = _chunk(policy, obs, seed=5)
    assert fast.stats.num_steps == steps
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)  # float32: measured 7e-7, 2e-6
    assert torch.equal(rng, rng_ref)  # noise drawn as lerobot draws it


@pytest.mark.parametrize("scheduler,steps", CASES)
def test_default_tol_within_tol(lerobot, scheduler, steps):
    policy = tiny_policy(scheduler, steps)
    model = policy.diffusion
    cond = torch.randn(4, _cond_dim(policy))
    ref = model.conditional_sample(4, cond, generator=torch.Generator().manual_seed(1))
    with parallelize(policy) as fast:
        got = model.conditional_sample(4, cond, generator=torch.Generator().manual_seed(1))
    rms = lambda v: v.pow(2).mean(dim=(1, 2)).sqrt()  # noqa: E731
    assert (rms(got - ref) / rms(ref)).max() <= 0.01  # the default tol, per chunk
    assert fast.stats.iterations <= steps


def test_generator_and_per_sample(lerobot):
    policy = tiny_policy("DDPM", 30)
    model = policy.diffusion
    cond = torch.randn(4, _cond_dim(policy))
    ref = model.conditional_sample(4, cond, generator=torch.Generator().manual_seed(3))
    with parallelize(policy, tol=0, per_sample=True, window=8):
        got = model.conditional_sample(4, cond, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)


def test_restore_gives_lerobots_loop_back(lerobot):
    policy = tiny_policy("DDIM", 10)
    own = type(policy.diffusion).conditional_sample
    fast = parallelize(policy)
    assert fast.parallel and policy.diffusion.conditional_sample == fast.conditional_sample
    assert fast.restore() is policy and not fast.parallel
    assert policy.diffusion.conditional_sample.__func__ is own
    fast.restore()  # twice: nothing to do
    parallelize(policy.diffusion).restore()  # the DiffusionModel itself is accepted


def test_errors(lerobot):
    policy = tiny_policy("DDIM", 10)
    with pytest.raises(ValueError, match="window"):
        parallelize(policy, window=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        parallelize(policy, bogus=1)
    with pytest.raises(ValueError, match="init"):
        parallelize(policy, init=torch.zeros(11, 1, 16, 2))
    with parallelize(policy):
        with pytest.raises(TypeError, match="parallelized already"):
            parallelize(policy)
        model = policy.diffusion
        with pytest.raises(ValueError, match="global_cond holds 2 rows"):
            model.conditional_sample(3, torch.zeros(2, _cond_dim(policy)))
        with pytest.raises(TypeError, match="noise must have a real floating dtype"):
            model.conditional_sample(1, None, noise=torch.zeros(1, 16, 2, dtype=torch.long))
    policy.diffusion.noise_scheduler = _Unsupported()
    with pytest.raises(TypeError, match="not supported"):
        parallelize(policy)


def _cond_dim(policy):
    return policy.config.n_obs_steps * (STATE_DIM + ENV_DIM)


# --- without lerobot: a stand-in of the same interface --------------------------------


class _Unet(nn.Module):
    """``unet(x, timestep, global_cond=)`` as lerobot's DiffusionConditionalUnet1d."""

    def __init__(self, actions: int, cond: int):
        super().__init__()
        self.mix = nn.Linear(actions + cond + 1, actions)
        self.time = nn.Conv1d(actions, actions, 3, padding=1)

    def forward(self, x, timestep, global_cond=None):
        t = (timestep.to(x.dtype) / 100)[:, None, None].expand(-1, x.shape[1], 1)
        c = global_cond[:, None, :].expand(-1, x.shape[1], -1)
        h = torch.tanh(self.mix(torch.cat([x, c, t], -1)))
        return h + 0.1 * self.time(h.transpose(1, 2)).transpose(1, 2)


class _Model(nn.Module):
    """A DiffusionModel-like stand-in: its ``conditional_sample`` is diffusers' loop."""

    def __init__(self, scheduler, steps: int, horizon: int = 8, actions: int = 2, cond: int = 3):
        super().__init__()
        self.config = SimpleNamespace(
            horizon=horizon, action_feature=SimpleNamespace(shape=(actions,))
        )
        self.unet = _Unet(actions, cond)
        self.noise_scheduler = scheduler
        self.num_inference_steps = steps

    def conditional_sample(self, batch_size, global_cond=None, generator=None, noise=None):
        shape = (batch_size, self.config.horizon, self.config.action_feature.shape[0])
        x = noise if noise is not None else torch.randn(shape, generator=generator)
        self.noise_scheduler.set_timesteps(self.num_inference_steps)
        for t in self.noise_scheduler.timesteps:
            out = self.unet(x, torch.full(x.shape[:1], t, dtype=torch.long), global_cond)
            x = self.noise_scheduler.step(out, t, x, generator=generator).prev_sample
        return x


class _Unsupported:
    """A scheduler picard does not reproduce."""

    def __init__(self):
        self.config = {}


STAND_INS = {
    "ddpm": lambda: DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"),
    "ddim": lambda: DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"),
}


@pytest.mark.parametrize("name,steps", [("ddpm", 100), ("ddim", 10)])
def test_stand_in_tol0_and_restore(name, steps):
    torch.manual_seed(0)
    model = _Model(STAND_INS[name](), steps).eval()
    cond = torch.randn(3, 3)
    with torch.no_grad():
        torch.manual_seed(7)
        ref = model.conditional_sample(3, cond)
        rng_ref = torch.get_rng_state()
        fast = parallelize(model, tol=0, window=16)
        torch.manual_seed(7)
        got = model.conditional_sample(3, cond)
        assert torch.equal(torch.get_rng_state(), rng_ref)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        assert fast.stats.iterations <= steps
        fast.restore()
        torch.manual_seed(7)
        assert torch.equal(model.conditional_sample(3, cond), ref)


def test_stand_in_errors():
    model = _Model(STAND_INS["ddim"](), 10)
    with pytest.raises(TypeError, match="lerobot DiffusionPolicy"):
        parallelize(object())
    with pytest.raises(TypeError, match="Linear without unet"):
        parallelize(nn.Linear(1, 1))
    with pytest.raises(ValueError, match="tol"):
        ParallelPolicy(model, tol=-1.0)
    model.noise_scheduler = _Unsupported()
    with pytest.raises(TypeError, match="not supported"):
        parallelize(model)
