"""torchsde's sdeint call: every method and noise type, torchsde's path at tol=0."""

import pytest
import torch

import picard

torchsde = pytest.importorskip("torchsde")
torch.set_num_threads(1)
F64 = torch.float64
B, D, M = 3, 2, 2


class _SDE(torch.nn.Module):
    """A small nonlinear SDE of each noise type, Itô or Stratonovich."""

    def __init__(self, noise_type, sde_type):
        super().__init__()
        self.noise_type, self.sde_type = noise_type, sde_type
        torch.manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(D, D, dtype=F64) * 0.3)
        self.b = torch.nn.Parameter(torch.rand(D, dtype=F64) * 0.5 + 0.1)
        self.c = torch.nn.Parameter(torch.randn(D, M, dtype=F64) * 0.2)

    def f(self, t, y):
        return torch.tanh(y @ self.a) * torch.cos(t)

    def h(self, t, y):
        return -y

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return self.b * torch.sin(y) + 0.1
        if self.noise_type == "scalar":
            return (self.b * torch.cos(y)).unsqueeze(-1)
        if self.noise_type == "additive":
            return self.c.expand(y.shape[0], D, M) * (1 + 0 * t)
        return torch.tanh(y).unsqueeze(-1) * self.c  # general


def _noise(noise_type):
    return {"diagonal": D, "scalar": 1, "additive": M, "general": M}[noise_type]


CASES = (
    [
        (noise, "ito", method)
        for noise in ("diagonal", "scalar", "additive")
        for method in ("euler", "milstein", "milstein_grad_free", "srk")
    ]
    + [
        (noise, "stratonovich", method)
        for noise in ("diagonal", "scalar", "additive", "general")
        for method in ("heun", "midpoint", "euler_heun")
    ]
    + [("general", "ito", "euler"), ("diagonal", "stratonovich", "milstein")]
    + [(noise, "stratonovich", "reversible_heun") for noise in ("diagonal", "general")]
    + [(noise, "stratonovich", "log_ode") for noise in ("diagonal", "additive", "general")]
)


@pytest.mark.parametrize(("noise", "sde_type", "method"), CASES)
def test_tol_zero_is_torchsdes_path_and_gradients(noise, sde_type, method):
    options = {"grad_free": True} if method == "milstein_grad_free" else {}
    method = method.replace("_grad_free", "")
    sde = _SDE(noise, sde_type)
    y0 = torch.full((B, D), 0.3, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.2, 0.5], dtype=F64)
    area = {"srk": "space-time", "log_ode": "foster"}.get(method, "none")
    paths, grads = [], []
    for solve, extra in ((torchsde.sdeint, {}), (picard.sdeint, {"tol": 0})):
        bm = torchsde.BrownianInterval(0.0, 0.5, (B, _noise(noise)), dtype=F64, entropy=7,
                                       levy_area_approximation=area)  # fmt: skip
        ys = solve(sde, y0, ts, bm, method=method, dt=0.05, options=dict(options), **extra)
        paths.append(ys)
        grads.append(torch.autograd.grad(ys.square().sum(), [y0, *sde.parameters()],
                                         allow_unused=True))  # fmt: skip
    torch.testing.assert_close(paths[1], paths[0], rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        if theirs is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_the_default_tolerance_is_close_in_fewer_sweeps():
    sde = _SDE("diagonal", "ito")
    y0 = torch.full((B, D), 0.3, dtype=F64)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    out = []
    for solve, extra in ((torchsde.sdeint, {}), (picard.sdeint, {"return_stats": True})):
        bm = torchsde.BrownianInterval(0.0, 1.0, (B, D), dtype=F64, entropy=3,
                                       levy_area_approximation="space-time")  # fmt: skip
        with torch.no_grad():
            out.append(solve(sde, y0, ts, bm, dt=0.01, **extra))  # torchsde's default: srk
    ours, stats = out[1]
    assert (ours - out[0]).abs().max() < 1e-5
    assert stats.iterations < stats.num_steps == 100


def test_adaptive_gradients_attach_to_the_passing_grid_without_solving_again():
    """The passing grid's solution carries the backward pass: gradients equal central
    differences of the adaptive answer (the grid stays put for so small a change)."""
    sde = _SDE("diagonal", "ito")
    ts = torch.linspace(0, 1, 4, dtype=F64)

    def answer(y0):
        bm = torchsde.BrownianInterval(0.0, 1.0, (B, M), dtype=F64, entropy=7)
        return picard.sdeint(sde, y0, ts, bm, method="milstein", dt=0.2, adaptive=True,
                             rtol=1e-3, atol=1e-3, tol=1e-12, return_stats=True)  # fmt: skip

    y0 = torch.full((B, D), 0.3, dtype=F64, requires_grad=True)
    ys, stats = answer(y0)
    (grad,) = torch.autograd.grad(ys[-1].sum(), y0)
    assert len(stats.backward) == 1
    eps, numeric = 1e-6, torch.zeros_like(y0)
    with torch.no_grad():
        for i in range(B):
            for j in range(D):
                up, down = y0.detach().clone(), y0.detach().clone()
                up[i, j] += eps
                down[i, j] -= eps
                numeric[i, j] = (answer(up)[0][-1].sum() - answer(down)[0][-1].sum()) / (2 * eps)
    assert float((grad - numeric).abs().max()) < 1e-6


def test_adaptive_every_step_passes_torchsdes_test_in_parallel():
    sde = _SDE("additive", "ito")
    y0 = torch.full((B, D), 0.3, dtype=F64)
    ts = torch.linspace(0, 1, 4, dtype=F64)
    out = []
    for solve, extra in ((torchsde.sdeint, {}), (picard.sdeint, {"return_stats": True})):
        bm = torchsde.BrownianInterval(0.0, 1.0, (B, M), dtype=F64, entropy=5)
        with torch.no_grad():
            out.append(solve(sde, y0, ts, bm, method="euler", dt=0.2, adaptive=True,
                             rtol=1e-3, atol=1e-3, **extra))  # fmt: skip
    ours, stats = out[1]
    bm = torchsde.BrownianInterval(0.0, 1.0, (B, M), dtype=F64, entropy=5)
    with torch.no_grad():
        fine = torchsde.sdeint(sde, y0, ts, bm, method="euler", dt=1e-4)
    # the same test as torchsde's, not its grid: errors of the same size as torchsde's
    assert (ours - fine).abs().max() < 2 * (out[0] - fine).abs().max()
    assert stats.num_steps > len(ts) - 1 and stats.sequential_steps == 0
    # its steps: every one passes (a tighter test takes more of them)
    bm = torchsde.BrownianInterval(0.0, 1.0, (B, M), dtype=F64, entropy=5)
    with torch.no_grad():
        _, tight = picard.sdeint(sde, y0, ts, bm, method="euler", dt=0.2, adaptive=True,
                                 rtol=1e-4, atol=1e-4, return_stats=True)  # fmt: skip
    assert tight.num_steps > stats.num_steps
    with pytest.warns(UserWarning, match="adaptive time-stepping with the Euler--Maruyama"):
        picard.sdeint(_SDE("diagonal", "ito"), y0, ts, method="euler", dt=0.2, adaptive=True)


def test_logqp_names_and_extra():
    sde = _SDE("diagonal", "ito")
    y0 = torch.full((B, D), 0.3, dtype=F64)
    ts = torch.linspace(0, 0.5, 3, dtype=F64)
    out = []
    for solve, extra in ((torchsde.sdeint, {}), (picard.sdeint, {"tol": 0})):
        bm = torchsde.BrownianInterval(0.0, 0.5, (B, D + 1), dtype=F64, entropy=9)
        with torch.no_grad():
            out.append(solve(sde, y0, ts, bm, method="euler", dt=0.05, logqp=True, **extra))
    (ys, ratio), (ys_t, ratio_t) = out[1], out[0]
    assert ratio.shape == (2, B)
    torch.testing.assert_close(ys, ys_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ratio, ratio_t, rtol=1e-12, atol=1e-12)
    # names: the prior drift as the drift; extra: the (empty) solver state
    bm = torchsde.BrownianInterval(0.0, 0.5, (B, D), dtype=F64, entropy=9)
    with torch.no_grad():
        ys, state = picard.sdeint(sde, y0, ts, bm, method="euler", dt=0.05, tol=0,
                                  names={"drift": "h"}, extra=True)  # fmt: skip
    assert state == () and ys.shape == (3, B, D)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "midpoint"}, "'midpoint' solves stratonovich SDEs"),
        ({"method": "srk", "noise": "general"}, "'srk' does not take noise_type='general'"),
        ({"method": "log_ode"}, "'log_ode' solves stratonovich SDEs"),
        ({"method": "srk", "area": "none"}, "needs a bm with levy_area_approximation"),
        ({"method": "euler", "names": {"drift_fn": "f"}}, "names has unknown key"),
    ],
)
def test_what_torchsde_refuses_is_refused(kwargs, match):
    noise = kwargs.pop("noise", "diagonal")
    area = kwargs.pop("area", "space-time")
    sde = _SDE(noise, "ito")
    bm = torchsde.BrownianInterval(0.0, 1.0, (B, _noise(noise)), dtype=F64,
                                   levy_area_approximation=area)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        picard.sdeint(sde, torch.ones(B, D, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), bm,
                      dt=0.1, **kwargs)  # fmt: skip


def test_reversible_heun_runs_backward_to_its_start():
    sde = _SDE("general", "stratonovich")
    y0 = torch.full((B, D), 0.3, dtype=F64)
    ts = torch.linspace(0, 1, 9, dtype=F64)  # steps of 1/8: the grids align exactly
    bm = torchsde.BrownianInterval(0.0, 1.0, (B, M), dtype=F64, entropy=4)

    class Minus(torch.nn.Module):
        noise_type, sde_type = "general", "stratonovich"

        def f(self, t, y):
            return -sde.f(-t, y)

        def g(self, t, y):
            return -sde.g(-t, y)

    with torch.no_grad():
        ys, (f, g, z) = picard.sdeint(sde, y0, ts, bm, method="reversible_heun", dt=0.125,
                                      extra=True, tol=0)  # fmt: skip
        back = picard.sdeint(Minus(), ys[-1], -ts.flip(0), torchsde.ReverseBrownian(bm),
                             method="reversible_heun", dt=0.125, extra_solver_state=(-f, -g, z),
                             tol=0)  # fmt: skip
    torch.testing.assert_close(back.flip(0), ys, rtol=1e-9, atol=1e-9)
