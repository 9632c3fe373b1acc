"""On a CUDA machine: the torch bookkeeping path, and at most one sync per sweep.

Skipped where there is no GPU (CI has none); run on a lent GPU machine."""

import warnings

import pytest
import torch

import picard

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_matches_cpu():
    def f(t, y):
        return torch.sin(y) - 0.1 * t[:, None] * y

    t = torch.linspace(0, 2, 201, dtype=torch.float64)
    y0 = torch.tensor([0.3, -1.2], dtype=torch.float64)
    cpu = picard.odeint(f, y0, t, window=50, tol=0, method="euler")
    gpu = picard.odeint(f, y0.cuda(), t.cuda(), window=50, tol=0, method="euler")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)


@cuda
def test_one_synchronisation_per_sweep():
    def f(t, y):
        return -y * t[:, None]

    t = torch.linspace(0, 1, 501, device="cuda")
    y0 = torch.ones(4, device="cuda")
    picard.odeint(f, y0, t, window=64, tol=1e-5, method="euler")  # warm up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, stats = picard.odeint(
                f, y0, t, window=64, tol=1e-5, return_stats=True, method="euler"
            )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # The argument checks sync a few times once per solve; the loop once per sweep.
    assert len(syncs) <= stats.iterations + 4, len(syncs)


@cuda
def test_devices_split_rows_between_cpu_and_cuda():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    net = net.double().cuda()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    t = torch.linspace(0, 1, 101, dtype=torch.float64, device="cuda")
    y0 = torch.ones(3, 2, dtype=torch.float64, device="cuda")
    ref = picard.odeint(Field(), y0, t, window=20, method="euler")
    out = picard.odeint(Field(), y0, t, window=20, devices=["cuda:0", "cpu"], method="euler")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
