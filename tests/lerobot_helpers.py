"""lerobot's DiffusionPolicy for the tests and the benchmark: imported here, built tiny.

lerobot 0.5 and later need Python 3.12; this environment runs 3.11 with a CPU build of
torch 2.13, so lerobot 0.4.4 is installed (``pip install --no-deps lerobot==0.4.4`` plus
the few packages its import chain needs). Two things stand between it and an import:

- every lerobot import path reaches ``import torchvision`` (its dataset transforms, the
  diffusion policy's ResNet encoder), and the torchvision wheels on PyPI are CUDA builds
  that do not load beside a CPU torch. A policy whose observations are states only
  (``observation.state`` and ``observation.environment_state``, no images) never calls
  torchvision, so when torchvision is not installed :func:`import_lerobot` lets the import
  through with placeholder ``torchvision`` modules, present *only during the import*:
  any torchvision name used raises ``ImportError``, and afterwards ``torchvision`` is
  absent again for every other library;
- lerobot 0.4 predates transformers 5 (its GR00T config no longer defines), so
  transformers is hidden during the import (lerobot's own no-transformers path; the
  diffusion policy does not use it) and put back after.

The diffusion policy itself is lerobot's, unmodified.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import torch

STATE_DIM, ENV_DIM, ACTION_DIM = 2, 4, 2


class _Unavailable:
    """A torchvision name: may be subclassed, fails when instantiated."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise ImportError(f"{type(self).__qualname__}: torchvision is not installed")


class _Placeholder(types.ModuleType):
    """A torchvision module: every public name is an :class:`_Unavailable` class."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (_Unavailable,), {"__module__": self.__name__})
        setattr(self, name, cls)
        return cls


class _Placeholders(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``torchvision`` and its submodules as :class:`_Placeholder` modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.split(".")[0] != "torchvision":
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_lerobot() -> Any:
    """lerobot's diffusion policy module (``DiffusionPolicy``, ``DiffusionConfig``).

    Returns:
        ``lerobot.policies.diffusion.modeling_diffusion``.

    Raises:
        ImportError: lerobot (or a package its import needs) is not installed.
    """
    name = "lerobot.policies.diffusion.modeling_diffusion"
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec("lerobot") is None:
        raise ImportError("lerobot is not installed")
    # What lerobot imports and that caches whether torchvision exists: imported first,
    # so that they see the environment as it is.
    for module in ("diffusers", "datasets", "accelerate"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    finder = None
    if importlib.util.find_spec("torchvision") is None:
        finder = _Placeholders()
        sys.meta_path.insert(0, finder)
    hidden = sys.modules.get("transformers", ...)
    sys.modules["transformers"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(name)
    finally:
        if hidden is ...:
            del sys.modules["transformers"]
        else:
            sys.modules["transformers"] = hidden
        if finder is not None:
            sys.meta_path.remove(finder)
            for key in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
                del sys.modules[key]


def tiny_policy(
    scheduler: str = "DDPM",
    steps: int = 100,
    *,
    seed: int = 0,
    horizon: int = 16,
    down_dims: tuple[int, ...] = (32, 64),
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A state-only lerobot DiffusionPolicy with random weights, in eval mode.

    Args:
        scheduler: ``"DDPM"`` or ``"DDIM"`` (lerobot's ``noise_scheduler_type``).
        steps: ``num_inference_steps`` (``num_train_timesteps`` is lerobot's 100).
        seed: the seed of the weights.
        horizon: the action chunk's length (a multiple of ``2 ** len(down_dims)``).
        down_dims: the UNet's widths (lerobot's default is (512, 1024, 2048)).
        dtype: the parameters' dtype.

    Returns:
        The ``DiffusionPolicy``.
    """
    lerobot = import_lerobot()
    from lerobot.configs.types import FeatureType, PolicyFeature

    config = lerobot.DiffusionConfig(
        input_features={
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
            "observation.environment_state": PolicyFeature(type=FeatureType.ENV, shape=(ENV_DIM,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        horizon=horizon,
        n_action_steps=8,
        down_dims=down_dims,
        kernel_size=3,
        n_groups=4,
        diffusion_step_embed_dim=32,
        noise_scheduler_type=scheduler,
        num_inference_steps=steps,
        device="cpu",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = lerobot.DiffusionPolicy(config)
    return policy.to(dtype).eval()


def observation(batch: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """A batch of state observations for :func:`tiny_policy`.

    Args:
        batch: the number of environments.
        seed: the seed.
        dtype: the dtype.

    Returns:
        ``{"observation.state": (batch, 2), "observation.environment_state": (batch, 4)}``.
    """
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(batch, STATE_DIM, generator=g, dtype=dtype),
        "observation.environment_state": torch.randn(batch, ENV_DIM, generator=g, dtype=dtype),
    }


def reaching_batch(policy: Any, batch: int, generator: torch.Generator) -> dict:
    """A training batch of a two-goal reaching task: the data the benchmark trains on.

    The state is a point in the plane, the environment state two goals; the action chunk
    moves from the state to one of the goals, chosen at random (a bimodal action
    distribution, as diffusion policies are meant for), along a smooth ramp.

    Args:
        policy: the policy (its ``horizon`` and ``n_obs_steps`` are read).
        batch: the number of examples.
        generator: the generator of the examples.

    Returns:
        lerobot's training batch: observations ``(batch, n_obs_steps, dim)``, ``action``
        ``(batch, horizon, 2)`` and ``action_is_pad``.
    """
    horizon, n_obs = policy.config.horizon, policy.config.n_obs_steps
    state = torch.rand(batch, STATE_DIM, generator=generator) * 1.6 - 0.8
    goals = torch.rand(batch, 2, ACTION_DIM, generator=generator) * 1.6 - 0.8
    goal = goals[torch.arange(batch), torch.randint(0, 2, (batch,), generator=generator)]
    s = torch.linspace(0, 1, horizon)[None, :, None]
    ramp = s * s * (3 - 2 * s)
    return {
        "observation.state": state[:, None].expand(-1, n_obs, -1),
        "observation.environment_state": goals.reshape(batch, ENV_DIM)[:, None].expand(
            -1, n_obs, -1
        ),
        "action": state[:, None] + (goal - state)[:, None] * ramp,
        "action_is_pad": torch.zeros(batch, horizon, dtype=torch.bool),
    }


def train(policy: Any, steps: int, *, batch: int = 64, seed: int = 0) -> Any:
    """Train ``policy`` for ``steps`` AdamW steps on :func:`reaching_batch` (lerobot's loss).

    Args:
        policy: the policy.
        steps: the optimizer steps.
        batch: examples per step.
        seed: the seed of the data.

    Returns:
        The policy, in eval mode.
    """
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # lerobot's loss draws its noise from the global generator
        torch.manual_seed(seed)
        for _ in range(steps):
            loss, _ = policy.forward(reaching_batch(policy, batch, g))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return policy.eval()
