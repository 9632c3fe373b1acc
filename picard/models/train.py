"""Train the shipped models (DDPM objective, 1000-step linear schedule) and save them.

    python -m picard.models.train moons        # 2-D MLP on two moons      (~1 min)
    python -m picard.models.train classifier   # digits classifier + FD reference (~1 min)
    python -m picard.models.train digits       # UNet2DModel on 16x16 digits (~20 min)

Needs the ``train`` extra (scikit-learn, for its bundled digits). Writes
``picard/models/weights/<name>.safetensors`` and ``<name>.json`` (config, the training
command, data, steps, seconds and final loss). Deterministic for a given seed on CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from picard.models.nets import DIGITS_UNET, DigitsClassifier, MLPDenoiser, digits_unet, moons

WEIGHTS = Path(__file__).with_name("weights")
SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
}


def _alphas_cumprod() -> Tensor:
    betas = torch.linspace(float(SCHEDULE["beta_start"]), float(SCHEDULE["beta_end"]), 1000)
    return torch.cumprod(1 - betas, dim=0)


def _ddpm_loss(model: Any, x0: Tensor, ab: Tensor, gen: torch.Generator) -> Tensor:
    """Ho et al. 2020, Algorithm 1: ||ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)||²."""
    t = torch.randint(0, len(ab), (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = ab[t].reshape(-1, *([1] * (x0.ndim - 1)))
    out = model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)
    out = out.sample if hasattr(out, "sample") else out
    return (out - eps).square().mean()


def _fit(
    model: nn.Module, batches: Any, steps: int, lr: float, loss_fn: Any, ema_decay: float = 0.999
) -> tuple[nn.Module, float]:
    """AdamW with cosine decay; returns the EMA of the weights and the final mean loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    ema = copy.deepcopy(model).eval()
    recent: list[float] = []
    for step in range(steps):
        loss = loss_fn(model, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(p, 1 - ema_decay)
        recent = [*recent, loss.item()][-500:]
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step:6d}  loss {sum(recent) / len(recent):.4f}", flush=True)
    return ema, sum(recent) / len(recent)


def _save(
    name: str,
    model: nn.Module,
    config: dict[str, Any],
    training: dict[str, Any],
    extra: dict[str, Tensor] | None = None,
) -> None:
    from safetensors.torch import save_file

    WEIGHTS.mkdir(exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    save_file(tensors, str(WEIGHTS / f"{name}.safetensors"))
    meta = {"config": config, "schedule": SCHEDULE, "training": training}
    (WEIGHTS / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {WEIGHTS / name}.safetensors / .json")


def _digits() -> Tensor:
    from sklearn.datasets import load_digits

    from picard.models.nets import preprocess_digits

    return preprocess_digits(load_digits().images)


def train_moons(steps: int, seed: int) -> None:
    """The 2-D MLP ε-model on fresh two-moons samples each step."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, ab = MLPDenoiser(), _alphas_cumprod()

    def batches() -> Any:
        k = 0
        while True:
            k += 1
            yield moons(1024, seed=seed * 100_000 + k)

    start = time.time()
    ema, loss = _fit(model, batches(), steps, 2e-3, lambda m, x: _ddpm_loss(m, x, ab, gen))
    _save(
        "moons_mlp",
        ema,
        model.config,
        {
            "command": f"python -m picard.models.train moons --steps {steps} --seed {seed}",
            "data": "two moons (noise 0.05), 1024 fresh points per step, scaled (x-(0.5,0.25))/0.5",
            "steps": steps,
            "batch": 1024,
            "seconds": round(time.time() - start),
            "final_loss": loss,
        },
    )


def train_digits(steps: int, seed: int) -> None:
    """A UNet2DModel ε-model on scikit-learn's 1797 digits, upsampled to 16x16."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data, ab = _digits(), _alphas_cumprod()
    model = digits_unet()

    def batches() -> Any:
        while True:
            yield data[torch.randint(0, len(data), (128,), generator=gen)]

    start = time.time()
    ema, loss = _fit(model, batches(), steps, 2e-3, lambda m, x: _ddpm_loss(m, x, ab, gen))
    _save(
        "digits_unet",
        ema,
        DIGITS_UNET,
        {
            "command": f"python -m picard.models.train digits --steps {steps} --seed {seed}",
            "data": "scikit-learn load_digits (1797 8x8 images), bilinear to 16x16, [-1, 1]",
            "steps": steps,
            "batch": 128,
            "seconds": round(time.time() - start),
            "final_loss": loss,
        },
    )


def train_classifier(steps: int, seed: int) -> None:
    """The digits classifier, and the mean/covariance of its features on all the digits."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = _digits()
    labels = torch.as_tensor(load_digits().target)
    perm = torch.randperm(len(data), generator=gen)
    train, test = perm[:1500], perm[1500:]

    def batches() -> Any:
        while True:
            idx = train[torch.randint(0, len(train), (128,), generator=gen)]
            noisy = data[idx] + 0.1 * torch.randn(data[idx].shape, generator=gen)
            yield noisy, labels[idx]

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    start = time.time()
    ema, loss = _fit(DigitsClassifier(), batches(), steps, 2e-3, loss_fn)
    classifier: Any = ema
    with torch.no_grad():
        accuracy = float((classifier(data[test]).argmax(1) == labels[test]).float().mean())
        feats = classifier.features(data).double()
    mean, cov = feats.mean(0), torch.cov(feats.T)
    _save(
        "digits_classifier",
        ema,
        {"features": 64},
        {
            "command": f"python -m picard.models.train classifier --steps {steps} --seed {seed}",
            "data": "scikit-learn load_digits, 1500 train / 297 test, 16x16, noise 0.1",
            "steps": steps,
            "batch": 128,
            "seconds": round(time.time() - start),
            "final_loss": loss,
            "test_accuracy": accuracy,
        },
        extra={"reference_mean": mean, "reference_cov": cov},
    )
    print(f"test accuracy {accuracy:.3f}")


def main() -> None:
    """``python -m picard.models.train {moons,digits,classifier}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["moons", "digits", "classifier"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default = {"moons": 20000, "digits": 6000, "classifier": 3000}[args.model]
    steps = args.steps or default
    {"moons": train_moons, "digits": train_digits, "classifier": train_classifier}[args.model](
        steps, args.seed
    )


if __name__ == "__main__":
    main()
