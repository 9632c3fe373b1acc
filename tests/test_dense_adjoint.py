"""The backward solve of small states: exact from per-sample Jacobians, in one round.

References are autograd through torchdiffeq's fixed-grid loop and through
:func:`picard.sequential`; the Picard backward solve (forced by ``DENSE_MAX = 0``) must
give the same gradients, so that both paths stay tested.
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import picard
from picard.core import jacobians

F64 = torch.float64


def field(dim: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim)
    ).to(F64)


def rel_err(got, expected) -> float:
    num = max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))
    return num / max(float(e.abs().max()) for e in expected)


def gradients(odeint, f, y0, t, params, **kw):
    """The gradients of a weighted loss of every output, and picard's stats (or ``None``)."""
    x = y0.clone().requires_grad_(True)
    out = odeint(f, x, t, method="rk4", **kw)
    ys, stats = out if isinstance(out, tuple) else (out, None)
    weights = torch.randn(ys.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    return torch.autograd.grad((weights * ys.sin()).sum(), [x, *params]), stats


def test_rows_mapped_on_their_own_need_few_products_and_give_autograd_gradients():
    net = field()

    def f(t, y):
        return net(y) * torch.cos(t).reshape(*t.shape, *([1] * (y.ndim - t.ndim))) - 0.3 * y

    y0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.linspace(0, 2, 41, dtype=F64)
    params = list(net.parameters())
    expected, _ = gradients(torchdiffeq.odeint, f, y0, t, params)
    got, stats = gradients(picard.odeint, f, y0, t, params, tol=0, return_stats=True)
    assert rel_err(got, expected) <= 1e-12
    (back,) = stats.backward
    # one state of 8 × 3 (batch_dims=0): three colours and the check, not 24 products
    assert back.acceleration == {"jacobian_products": 4, "fallbacks": 0}
    assert back.iterations == 2  # one probe call (two steps) and one chunk of all 40 steps


def test_a_coupling_the_probes_miss_is_caught_by_the_check():
    net = field()

    def f(t, y):  # rows coupled only for t in (0.4, 1): the probes sit at t = 1.5 and 2.95
        c = (torch.clamp(t - 0.4, min=0) * torch.clamp(1 - t, min=0)).reshape(*t.shape, 1, 1)
        return net(y) + c * y.roll(1, -2)

    y0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    t = torch.linspace(0, 3, 61, dtype=F64)
    params = list(net.parameters())
    expected, _ = gradients(torchdiffeq.odeint, f, y0, t, params)
    got, stats = gradients(picard.odeint, f, y0, t, params, tol=0, return_stats=True)
    assert rel_err(got, expected) <= 1e-12
    (back,) = stats.backward
    assert back.acceleration["fallbacks"] == 1


def test_coupled_rows_take_one_product_per_entry():
    def f(t, y):
        return -((y - y.mean(dim=(-2, -1), keepdim=True)) ** 3) - 0.1 * y

    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    t = torch.linspace(0, 1, 21, dtype=F64)
    expected, _ = gradients(torchdiffeq.odeint, f, y0, t, [])
    got, stats = gradients(picard.odeint, f, y0, t, [], tol=0, return_stats=True)
    assert rel_err(got, expected) <= 1e-12
    assert stats.backward[0].acceleration["jacobian_products"] == 8


@pytest.mark.parametrize("dense_max", [0, jacobians.DENSE_MAX])
def test_picard_and_dense_backward_solves_agree(monkeypatch, dense_max):
    monkeypatch.setattr(jacobians, "DENSE_MAX", dense_max)
    net = field(4)
    y0 = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    t = torch.linspace(0, 1.5, 31, dtype=F64)
    params = list(net.parameters())

    def f(t, y):
        return torch.tanh(net(y))

    expected, _ = gradients(torchdiffeq.odeint, f, y0, t, params)
    got, stats = gradients(picard.odeint, f, y0, t, params, tol=0, return_stats=True)
    assert rel_err(got, expected) <= 1e-12
    (back,) = stats.backward
    assert ("jacobian_products" in back.acceleration) == (dense_max > 0)


def test_large_states_and_multistep_rules_keep_the_picard_backward():
    # a per-sample state above DENSE_MAX
    y0 = torch.randn(2, jacobians.DENSE_MAX + 1, dtype=F64, requires_grad=True)
    rule = picard.Recursion(lambda i, x: -0.05 * torch.tanh(x), 20, batch_dims=1)
    sol = picard.solve(rule, y0, tol=0)
    sol.final.sum().backward()
    assert "jacobian_products" not in sol.stats.backward[0].acceleration
    # Adams–Bashforth reads earlier steps: its adjoints are coupled
    ys, stats = picard.odeint(
        lambda t, y: -y, torch.ones(2, dtype=F64, requires_grad=True),
        torch.linspace(0, 1, 11, dtype=F64), method="explicit_adams", return_stats=True, tol=0,
    )  # fmt: skip
    ys[-1].sum().backward()
    assert "jacobian_products" not in stats.backward[0].acceleration


def test_chunks_hold_few_jacobians_and_a_state_free_field(monkeypatch):
    monkeypatch.setattr(jacobians, "MAX_ENTRIES", 2 * 9 * 7)  # 7 steps of 2 × 3 × 3
    rule = picard.Recursion(lambda i, x: 0.1 * torch.sin(x + i.reshape(-1, 1, 1)), 30, batch_dims=1)
    x0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    ref = torch.autograd.grad(picard.sequential(rule, x0).final.pow(2).sum(), x0)
    sol = picard.solve(rule, x0, tol=0)
    (got,) = torch.autograd.grad(sol.final.pow(2).sum(), x0)
    assert rel_err([got], ref) <= 1e-12
    (back,) = sol.stats.backward
    assert back.window == 7 and back.window_starts == (0, 7, 14, 21, 28)
    # an increment that reads no state: the gradient passes straight through
    t = torch.linspace(0, 1, 6, dtype=F64)
    y0 = torch.ones(3, dtype=F64, requires_grad=True)
    picard.odeint(
        lambda t, y: torch.cos(t)[..., None].expand(*t.shape, 3), y0, t, method="rk4", tol=0
    )[-1].sum().backward()
    assert torch.equal(y0.grad, torch.ones(3, dtype=F64))


class _Cube(torch.autograd.Function):
    """x³ with a backward that vmap cannot batch (no ``setup_context``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


def test_a_backward_vmap_cannot_batch_is_taken_one_product_at_a_time():
    rule = picard.Recursion(lambda i, x: -0.1 * _Cube.apply(x), 12, batch_dims=1)
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    x0.requires_grad_(True)
    ref = torch.autograd.grad(picard.sequential(rule, x0).final.sum(), x0)
    (got,) = torch.autograd.grad(picard.solve(rule, x0, tol=0).final.sum(), x0)
    assert rel_err([got], ref) <= 1e-12
