"""scipy_solver's gradients: the continuous adjoint, solved by scipy as well."""

import math

import pytest
import torch

import picard

torch.set_num_threads(1)
F64 = torch.float64


@pytest.mark.parametrize("solver", ["LSODA", "RK45", "DOP853"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_gradients_are_the_flows(solver, adjoint):
    # y = y0 e^{w t}: dy(T)/dy0 = e^{wT}, dy(T)/dw = T y0 e^{wT}; and dy(T)/dT = w y(T)
    w = torch.tensor(-0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64, requires_grad=True)
    call = picard.odeint_adjoint if adjoint else picard.odeint
    kwargs = {"adjoint_params": (w,)} if adjoint else {}
    ys = call(
        lambda t, y: w * y, y0, t, method="scipy_solver", options={"solver": solver},
        rtol=1e-10, atol=1e-12, **kwargs,
    )  # fmt: skip
    g_y0, g_w, g_t = torch.autograd.grad(ys[-1].sum(), (y0, w, t))
    e = math.exp(-0.7 * 1.5)
    assert float(g_y0) == pytest.approx(e, rel=1e-6)
    assert float(g_w) == pytest.approx(1.5 * 2.0 * e, rel=1e-6)
    assert float(g_t[-1]) == pytest.approx(-0.7 * 2.0 * e, rel=1e-6)
    assert float(g_t[0]) == pytest.approx(0.7 * 2.0 * e, rel=1e-6)  # moving the start


def test_a_module_funcs_parameters_get_gradients():
    net = torch.nn.Linear(2, 2).double()
    y0 = torch.tensor([1.0, -1.0], dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    ours = picard.odeint(lambda t, y: torch.tanh(net(y)), y0, t, method="scipy_solver",
                         rtol=1e-10, atol=1e-12)  # fmt: skip
    (g_ours,) = torch.autograd.grad(ours[-1].sum(), net.weight)
    ref = picard.odeint(lambda t, y: torch.tanh(net(y)), y0, t, method="dopri8",
                        rtol=1e-12, atol=1e-12)  # fmt: skip
    (g_ref,) = torch.autograd.grad(ref[-1].sum(), net.weight)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-8)
