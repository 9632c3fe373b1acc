"""Issue 6: one solve sharded over ranks with torch.distributed, against one process.

Launch with torchrun (gloo on CPUs, NCCL on GPUs); every rank runs the same solve:

    torchrun --nproc_per_node 2 benchmarks/distributed.py            # CPU, gloo
    torchrun --nproc_per_node 8 benchmarks/distributed.py --device cuda

An ODE whose vector field is an MLP (``--width``), RK4 on 200 steps, window 200, 16
states: wall-clock of the single-process solve (on rank 0 alone, the others waiting) and
of the distributed solve (all ranks), medians of interleaved repeats, and the largest
difference between the two results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

import picard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
        if args.device == "cuda"
        else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, args.width), torch.nn.Tanh(), torch.nn.Linear(args.width, 8)
    ).to(device)
    y0 = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.linspace(0, 1, args.steps + 1, device=device)

    def field(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * net(y)

    def solve(distributed: bool) -> torch.Tensor:
        return picard.odeint(field, y0, t, method="rk4", tol=1e-6, distributed=distributed)

    single, shard = [], []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            ref = solve(False)
        dist.barrier()
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = solve(True)
        dist.barrier()
        shard.append(time.perf_counter() - t0)
    if rank == 0:
        diff = float((out - ref).abs().max())
        a, b = statistics.median(single), statistics.median(shard)
        print(
            f"{world} ranks ({backend}, {device.type}), MLP width {args.width}, RK4 "
            f"{args.steps} steps x 16 states: one process {a:.3f} s, {world} ranks {b:.3f} s "
            f"-> {a / b:.2f}x; max |difference| {diff:.1e}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
