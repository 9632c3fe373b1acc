"""distributed=True (torch.distributed, gloo on loopback, 2 spawned processes), devices=[...]
in one process, and chunking after out-of-memory errors (issue 6)."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
import traceback
import warnings
from datetime import timedelta

import pytest
import torch

import picard
from picard.adapters.diffusers import parallelize
from picard.models.tiny import tiny_unet_pipeline

WORLD = 2


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    return net.double()


class Field(torch.nn.Module):
    """A batched vector field f(t, y) = net(y) cos(t)."""

    def __init__(self, seed: int = 0, fail_on_rank: int | None = None, fail_after: int = 0):
        super().__init__()
        self.net = _mlp(seed)
        self.fail_on_rank, self.fail_after, self.calls = fail_on_rank, fail_after, 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_on_rank is not None and self.calls > self.fail_after:
            import torch.distributed as dist

            if dist.is_initialized() and dist.get_rank() == self.fail_on_rank:
                raise RuntimeError("the model broke here")
        return self.net(y) * torch.cos(t).reshape(-1, *([1] * (y.ndim - 1)))


def _cases(rank: int) -> dict:
    """Every case, run on every rank; returns what the parent checks."""
    out: dict = {}
    y0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(0, 2, 31)
    for window in (7, 1, 30):  # 7 rows: shards of 4 and 3; 1 row: rank 1 idle
        one = picard.odeint(Field(), y0, t, method="rk4", window=window, return_stats=True)
        two = picard.odeint(
            Field(), y0, t, method="rk4", window=window, distributed=True, return_stats=True
        )
        out[f"odeint-{window}"] = (
            float((one[0] - two[0]).abs().max()),
            one[1].iterations == two[1].iterations,
            one[1].evaluations == two[1].evaluations,
        )

    def sde(**kw):
        gen = torch.Generator().manual_seed(5)
        f, g = Field(1), lambda t, y: 0.3 * torch.ones_like(y)
        return picard.sdeint(f, g, y0, t, window=9, generator=gen, tol=1e-8, **kw)

    out["sdeint"] = (float((sde() - sde(distributed=True)).abs().max()), True, True)
    pipe = tiny_unet_pipeline("ddpm").to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 20, "batch_size": 3, "output_type": "pt"}
    single = parallelize(pipe, window=5)
    ref = single(generator=torch.Generator().manual_seed(0), **kw).images
    sharded = parallelize(pipe, window=5, distributed=True)
    img = sharded(generator=torch.Generator().manual_seed(0), **kw).images
    out["pipeline"] = (
        float((ref - img).abs().max()),
        single.stats.iterations == sharded.stats.iterations,
        single.stats.evaluations == sharded.stats.evaluations,
    )
    exact = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    tol0 = parallelize(pipe, tol=0, window=5, distributed=True)
    out["pipeline-exact"] = (
        float((tol0(generator=torch.Generator().manual_seed(0), **kw).images - exact).abs().max()),
        True,
        True,
    )
    begin = time.monotonic()
    try:
        picard.odeint(
            Field(fail_on_rank=1, fail_after=2), y0, t, window=8, distributed=True, method="euler"
        )
        out["failure"] = ("no error", 0, 0.0)
    except picard.RankError as err:
        out["failure"] = (str(err), err.rank, time.monotonic() - begin)
    try:
        picard.odeint(Field(), y0 + rank, t, window=8, distributed=True, method="euler")
        out["mismatch"] = "no error"
    except ValueError as err:
        out["mismatch"] = str(err)
    return out


def _worker(rank: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=60),
        )
        queue.put((rank, _cases(rank)))
    except BaseException:
        queue.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_worker, args=(r, init_file, queue)) for r in range(WORLD)]
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=240) for _ in procs)
        for p in procs:
            p.join(timeout=60)
    for rank, res in results.items():
        assert isinstance(res, dict), f"rank {rank} crashed:\n{res}"
    return results


@pytest.mark.parametrize(
    "case", ["odeint-7", "odeint-1", "odeint-30", "sdeint", "pipeline", "pipeline-exact"]
)
def test_distributed_equals_single_process(two_ranks, case):
    for rank in range(WORLD):
        diff, same_sweeps, same_evals = two_ranks[rank][case]
        # Rows are independent, so a split changes only where they are computed; but a
        # model's kernels may round differently with the number of rows (an MLP's matrix
        # products on some CPUs, a UNet's convolutions): equal to float64 rounding.
        assert diff <= 1e-12, (rank, case, diff)
        assert same_sweeps and same_evals


def test_a_failing_rank_raises_on_every_rank(two_ranks):
    for rank in range(WORLD):
        message, failed, seconds = two_ranks[rank]["failure"]
        assert failed == 1 and "rank 1 failed" in message and "the model broke here" in message
        assert seconds < 30


def test_ranks_must_run_the_same_solve(two_ranks):
    for rank in range(WORLD):
        assert "runs a different solve" in two_ranks[rank]["mismatch"]


def test_distributed_needs_a_process_group():
    with pytest.raises(ValueError, match="init_process_group"):
        picard.odeint(
            Field(), torch.ones(2, 3), torch.linspace(0, 1, 5), distributed=True, method="euler"
        )


def test_devices_warn_that_the_result_is_detached():
    y0 = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="not differentiable"):
        out = picard.odeint(
            Field(), y0, torch.linspace(0, 1, 11), window=5, devices=["cpu"] * 2, method="euler"
        )
    assert not out.requires_grad


@torch.no_grad()
def test_devices_in_one_process_give_identical_results():
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.linspace(0, 1, 41)
    ref = picard.odeint(Field(), y0, t, method="rk4", window=10)
    for devices in (["cpu", "cpu"], ["cpu", "cpu", "cpu"]):
        out = picard.odeint(Field(), y0, t, method="rk4", window=10, devices=devices)
        assert torch.equal(out, ref)

    class Scalar(torch.nn.Module):  # batched=False: vmapped around each replica
        def __init__(self):
            super().__init__()
            self.net = _mlp(2)

        def forward(self, t, y):
            return self.net(y) * torch.cos(t)

    ref = picard.odeint(Scalar(), y0, t, window=10, batched=False, method="euler")
    out = picard.odeint(
        Scalar(), y0, t, window=10, batched=False, devices=["cpu", "cpu"], method="euler"
    )
    assert torch.equal(out, ref)
    pipe = tiny_unet_pipeline("ddim").to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 15, "batch_size": 2, "output_type": "pt"}
    ref = parallelize(pipe, window=6)(generator=torch.Generator().manual_seed(0), **kw).images
    fast = parallelize(pipe, window=6, devices=["cpu", "cpu"])
    out = fast(generator=torch.Generator().manual_seed(0), **kw).images
    assert float((out - ref).abs().max()) < 1e-12  # a UNet: rounding depends on the rows


def test_devices_errors_name_the_argument():
    y0, t = torch.ones(2, 3), torch.linspace(0, 1, 5)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        picard.odeint(lambda t, y: -y, y0, t, devices=["cpu", "cpu"], method="euler")
    with pytest.raises(TypeError, match="devices must be a list"):
        picard.odeint(Field(), y0, t, devices="cpu", method="euler")
    with pytest.raises(ValueError, match="empty"):
        picard.odeint(Field(), y0, t, devices=[], method="euler")
    with pytest.raises(ValueError, match="not a torch device"):
        picard.odeint(Field(), y0, t, devices=["nonsense"], method="euler")
    with pytest.raises(ValueError, match="do not combine"):
        picard.odeint(Field(), y0, t, devices=["cpu"], distributed=True, method="euler")


def test_out_of_memory_splits_the_call_and_says_so_once():
    calls = []

    class Small(torch.nn.Module):  # "runs out of memory" above 7 rows
        def forward(self, t, y):
            calls.append(y.shape[0])
            if y.shape[0] > 7:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return -y * torch.cos(t)[:, None, None]

    y0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(0, 1, 41)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():  # no trace call
        warnings.simplefilter("always")
        out = picard.odeint(Small(), y0, t, window=20, method="euler")
    memory = [w for w in caught if issubclass(w.category, picard.MemoryWarning)]
    assert len(memory) == 1 and "chunks of at most 5 rows" in str(memory[0].message)
    assert max(calls[3:]) <= 7  # after the first call, chunks that fit
    ref = picard.odeint(
        lambda t, y: -y * torch.cos(t)[:, None, None], y0, t, window=20, method="euler"
    )
    assert torch.equal(out, ref)

    class Never(torch.nn.Module):
        def forward(self, t, y):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        picard.odeint(Never(), y0, t, window=20, method="euler")


def test_prompts_follow_their_rows_across_devices():
    """Stable Diffusion's rows carry their sample indices, so any split keeps each image's
    prompt (two prompts, guidance, rows split unevenly over three devices)."""
    from picard.models.tiny import tiny_stable_diffusion

    pipe = tiny_stable_diffusion().to(torch.float64)
    kw = {
        "prompt": ["a cat", "a dog"],
        "num_inference_steps": 12,
        "height": 16,
        "width": 16,
        "output_type": "latent",
    }
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    fast = parallelize(pipe, tol=0, window=5, devices=["cpu", "cpu", "cpu"])
    out = fast(generator=torch.Generator().manual_seed(0), **kw).images
    assert float((out - ref).abs().max()) < 1e-9
