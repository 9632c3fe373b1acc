"""Issue 6: picard on one GPU against the sequential sampler, in one run.

Two models built from their configs with random weights (nothing downloaded):

- a Stable-Diffusion-v2-sized ``UNet2DConditionModel`` (865M parameters, 64x64x4
  latents, cross-attention on a fixed random 77x1024 text embedding, no guidance) in
  float16: DDPM-1000 and DDIM-200 at batch 1 and 4;
- a DiffusionPolicy-sized 1-D temporal UNet (``UNet1DModel``, 256/512/1024 channels,
  63M parameters, horizon 16, 2 action dims) in float16: DDPM-100 (squared-cosine
  schedule, clipped samples, as DiffusionPolicy), batch 1.

Then small states, where picard's per-sample Jacobians apply (seconds in all): a neural
ODE's forward and backward with the Jacobian backward against the backward by sweeps,
and on the 16-D mixture ``verify=True`` by Newton steps against re-solving, each side by
side (``small_states``; its own table).

For each: diffusers' sequential loop and ``picard`` (default options: tol 0.01 relative to
each latent's RMS),
CUDA-synchronised wall-clock (median of repeats), sweeps, evaluations, and the final
sample's RMS distance to the sequential one. Random weights make sweep counts those of an
untrained model: the figures measure the machinery (rows per second, sweeps' cost), not a
trained model's convergence. A time budget stops runs that would not finish.

    python benchmarks/gpu.py                 # on a GPU, under 8 minutes
    python benchmarks/gpu.py --smoke         # tiny configs on any device, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import backward_by_sweeps, newton_check, seeded_start, write_results

from picard.cli.runs import make_scheduler, sample_in_parallel, sample_sequentially


class OverBudget(Exception):
    """The run's time budget ran out."""


def sd2_unet(smoke: bool) -> Any:
    """Stable Diffusion v2's UNet (or a tiny one with the same blocks)."""
    from diffusers import UNet2DConditionModel

    if smoke:
        return UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            use_linear_projection=True,
        )
    return UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        use_linear_projection=True,
    )


def policy_unet(smoke: bool) -> Any:
    """A DiffusionPolicy-sized 1-D temporal UNet."""
    from diffusers import UNet1DModel

    channels = (32, 64, 128) if smoke else (256, 512, 1024)
    return UNet1DModel(
        sample_size=16,
        in_channels=2,
        out_channels=2,
        extra_in_channels=0,
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        use_timestep_embedding=True,
        freq_shift=1.0,
        down_block_types=("DownResnetBlock1D",) * 3,
        up_block_types=("UpResnetBlock1D",) * 2,
        mid_block_type="MidResTemporalBlock1D",
        out_block_type="OutConv1DBlock",
        block_out_channels=channels,
        act_fn="mish",
        norm_num_groups=8,
        layers_per_block=1,
        downsample_each_block=False,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[Any, float]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    deadline = time.monotonic() + args.budget
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    from diffusers import DDPMScheduler

    unet = sd2_unet(args.smoke).to(device, dtype).eval()
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    sd_base = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    size = unet.config.sample_size

    def sd_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = text.expand(x.shape[0], -1, -1)
        return unet(x, t.to(device), encoder_hidden_states=emb, return_dict=False)[0]

    policy = policy_unet(args.smoke).to(device, dtype).eval()
    policy_base = DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True
    )

    def policy_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return policy(x, t.to(device)).sample

    steps = {"ddpm-1000": 20 if args.smoke else 1000, "ddim-200": 10 if args.smoke else 200}
    cases = [
        ("sd2-unet", "ddpm", steps["ddpm-1000"], b, sd_base, sd_denoiser, (4, size, size))
        for b in (1, 4)
    ]
    cases += [
        ("sd2-unet", "ddim", steps["ddim-200"], b, sd_base, sd_denoiser, (4, size, size))
        for b in (1, 4)
    ]
    policy_steps = 20 if args.smoke else 100
    cases.append(("policy-unet1d", "ddpm", policy_steps, 1, policy_base, policy_denoiser, (2, 16)))
    with torch.inference_mode():
        sd_denoiser(torch.zeros(2, 4, size, size, device=device, dtype=dtype), torch.ones(2))
        policy_denoiser(torch.zeros(2, 2, 16, device=device, dtype=dtype), torch.ones(2))
        for model, sampler, n, b, base, den, shape in cases:
            if time.monotonic() > deadline:
                print(f"skipped {model} {sampler}-{n} batch {b}: out of time", flush=True)
                continue
            rows.append(
                _case(model, sampler, n, b, base, den, shape, device, dtype, args, deadline)
            )
            rows[-1]["gpu"] = gpu
            print(_line(rows[-1]), flush=True)
    return rows


def _case(
    model: str,
    sampler: str,
    n: int,
    b: int,
    base: Any,
    den: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    args: argparse.Namespace,
    deadline: float,
) -> dict[str, Any]:
    sched = make_scheduler(sampler, base)
    window = min(n, max(8, args.rows // b))
    repeats = 1 if n >= 1000 and not args.smoke else args.repeats

    def start() -> tuple[torch.Tensor, torch.Generator]:
        x, gen = seeded_start(sched, n, (b, *shape))
        return x.to(device, dtype), gen

    def seq() -> torch.Tensor:
        x, gen = start()
        return sample_sequentially(sched, den, n, x, gen)

    def check(done: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise OverBudget(f"stopped at step {done} of {total}")

    def ours() -> Any:
        x, gen = start()
        return sample_in_parallel(sched, den, n, x, gen, window=window, progress=check)

    ref, t_seq = _timed(seq, repeats, device)
    row: dict[str, Any] = {
        "model": model,
        "sampler": f"{sampler}-{n}",
        "batch": b,
        "window": window,
        "dtype": str(dtype).removeprefix("torch."),
        "sequential_s": t_seq,
    }
    try:
        sol, t_par = _timed(ours, repeats, device)
    except OverBudget as stop:
        row.update({"picard_s": None, "note": str(stop)})
        return row
    err = (sol.final.float() - ref.float()).pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt()
    row.update(
        {
            "picard_s": t_par,
            "speedup": t_seq / t_par,
            "sweeps": sol.stats.iterations,
            "evals_per_step": sol.stats.evaluations / n / b,
            "relative_rms_error": float(err),
            "seconds_per_sweep": t_par / sol.stats.iterations,
        }
    )
    return row


def _line(r: dict[str, Any]) -> str:
    if r.get("picard_s") is None:
        return (
            f"| {r['model']} | {r['sampler']} | {r['batch']} | {r['window']} | "
            f"{r['sequential_s']:.2f} | – | – | – | – | – | {r.get('note', '')} |"
        )
    return (
        f"| {r['model']} | {r['sampler']} | {r['batch']} | {r['window']} | "
        f"{r['sequential_s']:.2f} | {r['picard_s']:.2f} | {r['speedup']:.2f}x | {r['sweeps']} | "
        f"{r['evals_per_step']:.2f} | {r['relative_rms_error']:.1e} | |"
    )


HEADER = (
    "| model | sampler | batch | window | sequential s | picard s | speedup | sweeps | "
    "evals/step | rel. RMS err | note |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


SMALL_HEADER = (
    "| case | picard default: s, sweeps | the other way: how, s, sweeps | note |\n|---|---|---|---|"
)


def small_states(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Small states on the device: the Jacobian backward and Newton's check, side by side.

    - a neural ODE (MLP 2 → 64 → 2 of ``y³``, batch 16; 1000 Euler steps on [0, 1])
      forward + backward, the backward by per-sample Jacobians (the default) and by sweeps
      (``DENSE_MAX = 0``);
    - DDIM-200 on the 16-D four-mode mixture (exact score, 64 samples), ``verify=True``:
      by Newton steps (forced) and by re-solving (what the cost model picks on a CPU).
    """
    import picard
    from picard.ode.paths import sweeps_only

    device = torch.device(args.device)
    steps = 100 if args.smoke else 1000
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)).to(
        device
    )
    y0 = torch.randn(16, 2, device=device)
    t = torch.linspace(0, 1, steps + 1, device=device)

    def neural() -> Any:
        x = y0.clone().requires_grad_(True)
        with sweeps_only():  # the sweeps and their backward, not a learned stepping
            ys, stats = picard.odeint(
                lambda t, y: net(y**3), x, t, method="euler", batched=True, return_stats=True
            )
        ys.square().mean().backward()
        return stats

    def by_sweeps() -> Any:
        with backward_by_sweeps():
            return neural()

    rows = []
    a, t_a = _timed(neural, args.repeats, device)
    b, t_b = _timed(by_sweeps, args.repeats, device)
    rows.append({
        "case": f"neural ODE fwd+bwd, Euler-{steps}", "default_s": t_a,
        "default_sweeps": f"{a.iterations} / {a.backward[0].iterations}",
        "other": "backward by sweeps", "other_s": t_b,
        "other_sweeps": f"{b.iterations} / {b.backward[0].iterations}", "note": "fwd / bwd",
    })  # fmt: skip

    from diffusers import DDIMScheduler, DDPMScheduler

    from picard.adapters.diffusers import from_scheduler
    from picard.adapters.schedulers import schedules
    from picard.cli import fidelity

    gmm = fidelity.mixture()
    base = DDPMScheduler(clip_sample=False)
    den64 = gmm.denoiser(schedules.alphas_cumprod(base.config))
    sched = DDIMScheduler.from_config(base.config)
    n = 50 if args.smoke else 200

    def den(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return den64(x.double().cpu(), tt.cpu()).to(x)

    def checked(force: bool) -> Any:
        gens = [torch.Generator().manual_seed(s) for s in range(64)]
        x = torch.cat([torch.randn(1, 16, generator=g) for g in gens]).to(device)
        problem = from_scheduler(sched, den, n, generator=gens)
        if not force:
            return picard.solve(problem, x, verify=True)
        with newton_check():
            return picard.solve(problem, x, verify=True)

    picked, t_p = _timed(lambda: checked(False), args.repeats, device)
    forced, t_f = _timed(lambda: checked(True), args.repeats, device)
    how = "Newton" if "newton_steps" in picked.stats.acceleration else "re-solve"
    rows.append({
        "case": f"verify=True, DDIM-{n} on the mixture ({how} picked)", "default_s": t_p,
        "default_sweeps": str(picked.stats.iterations), "other": "Newton forced",
        "other_s": t_f, "other_sweeps": str(forced.stats.iterations),
        "note": f"estimates {picked.stats.error_estimate:.2e} / {forced.stats.error_estimate:.2e}",
    })  # fmt: skip
    return rows


def _small_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['case']} | {r['default_s']:.3f}, {r['default_sweeps']} | {r['other']}, "
        f"{r['other_s']:.3f}, {r['other_sweeps']} | {r['note']} |"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny configs, few steps")
    parser.add_argument("--rows", type=int, default=64, help="model rows per sweep (about)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    print(HEADER, flush=True)
    rows = run(args)
    small = small_states(args)
    print(SMALL_HEADER, *map(_small_line, small), sep="\n", flush=True)
    text = "\n".join([HEADER, *map(_line, rows), "", SMALL_HEADER, *map(_small_line, small)])
    write_results(args.out, [*rows, *small], text + "\n")
    return rows


if __name__ == "__main__":
    main()
