"""Implicit Runge–Kutta methods (picard.ode.implicit): sequential parity, orders, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torchdiffeq._impl.odeint import SOLVERS

import picard
from picard.ode.implicit import IMPLICIT, ImplicitODEProblem, ImplicitTableau

torch.set_num_threads(1)

F64 = torch.float64
NAMES = list(IMPLICIT)


def nonlinear(t, y):
    """A 2-D nonlinear, non-autonomous drift; batched rows ``(M, ..., 2)``."""
    s = torch.sin(t).reshape(-1, *([1] * (y.ndim - 2)))
    a, b = y[..., 0], y[..., 1]
    return torch.stack([b - a**3 + s, -a - 0.5 * b**3], -1)


class Linear(torch.nn.Module):
    """``dy/dt = L y + g(t)`` with ``L`` a parameter, ``g(t) = (cos t, 0)``."""

    def __init__(self, matrix):
        super().__init__()
        self.L = torch.nn.Parameter(torch.as_tensor(matrix, dtype=F64))

    def forcing(self, t):
        return torch.stack([torch.cos(t), torch.zeros_like(t)], -1)

    def forward(self, t, y):
        return y @ self.L.T + self.forcing(t)


def newton_reference(f, y0, t, tab, tol=1e-13):
    """Sequential steps; each solves the full stage system by dense Newton (exact Jacobian)."""
    s = tab.stages
    a = torch.tensor(tab.a, dtype=F64)
    b = torch.tensor(tab.b, dtype=F64)
    c = torch.tensor(tab.c, dtype=F64)
    ys, y = [y0], y0
    for i in range(len(t) - 1):
        h = t[i + 1] - t[i]
        times = t[i] + c * h

        def residual(k, y=y, h=h, times=times):
            k = k.reshape(s, *y.shape)
            stages = y + h * torch.einsum("pq,q...->p...", a, k)
            return (k - f(times, stages)).reshape(-1)

        k = f(times[:1], y[None]).expand(s, *y.shape).reshape(-1).clone()
        for _ in range(50):
            r = residual(k)
            if float(r.norm()) < tol:
                break
            jac = torch.autograd.functional.jacobian(residual, k)
            k = k - torch.linalg.solve(jac, r)
        else:
            raise AssertionError("reference Newton did not converge")
        y = y + h * torch.einsum("s,s...->...", b, k.reshape(s, *y.shape))
        ys.append(y)
    return torch.stack(ys)


def linear_reference(model, y0, t, tab):
    """The linear problem's steps in closed form (one linear solve each), differentiable."""
    s, d = tab.stages, y0.shape[-1]
    a = torch.tensor(tab.a, dtype=F64)
    b = torch.tensor(tab.b, dtype=F64)
    c = torch.tensor(tab.c, dtype=F64)
    y = y0
    for i in range(len(t) - 1):
        h = t[i + 1] - t[i]
        times = t[i] + c * h
        matrix = torch.eye(s * d, dtype=F64) - h * torch.kron(a, model.L)
        rhs = (model.L @ y)[None].expand(s, d) + model.forcing(times)
        k = torch.linalg.solve(matrix, rhs.reshape(-1)).reshape(s, d)
        y = y + h * b @ k
    return y


def solve(f, y0, t, name, **kwargs):
    newton = kwargs.pop("newton", True)
    problem = ImplicitODEProblem(f, t, IMPLICIT[name], y0.dtype, **kwargs)
    if not newton:
        problem.newton_max_size = 0
    return picard.solve(problem, y0, tol=0, save=True)


GRID = torch.linspace(0, 2, 21, dtype=F64)
Y0 = torch.tensor([1.0, 0.5], dtype=F64)
MATRIX = [[-1.0, 2.0], [-2.0, -0.5]]


def test_tableaus_are_consistent():
    for name, tab in IMPLICIT.items():
        assert math.isclose(sum(tab.b), 1.0), name
        if tab.order >= 2:
            moment = sum(bi * ci for bi, ci in zip(tab.b, tab.c, strict=True))
            assert math.isclose(moment, 0.5), name
        for row, ci in zip(tab.a, tab.c, strict=True):
            assert math.isclose(sum(row), ci, abs_tol=1e-15), name
    assert [IMPLICIT[n].order for n in NAMES] == [1, 2, 2, 3, 4, 5, 6, 2, 2]
    with pytest.raises(ValueError, match="s × s"):
        ImplicitTableau((0.5,), ((0.5, 0.5),), (1.0,), 1)


@pytest.mark.parametrize("name", NAMES)
def test_matches_sequential_reference(name):
    ref = newton_reference(nonlinear, Y0, GRID, IMPLICIT[name])
    sol = solve(nonlinear, Y0, GRID, name, tol=1e-13)
    torch.testing.assert_close(sol.ys, ref, rtol=0, atol=1e-10)
    default = solve(nonlinear, Y0, GRID, name)  # torchdiffeq's stopping rule: 1e-8
    torch.testing.assert_close(default.ys, ref, rtol=0, atol=1e-7)
    fixed = solve(nonlinear, Y0, GRID, name, tol=1e-13, newton=False)
    torch.testing.assert_close(fixed.ys, ref, rtol=0, atol=1e-10)
    model = Linear(MATRIX)
    with torch.no_grad():
        exact = linear_reference(model, Y0, GRID, IMPLICIT[name])
        lin = solve(model, Y0, GRID, name).final
    torch.testing.assert_close(lin, exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_convergence_order(name):
    # dy/dt = -y + cos t, y(0) = 1: y = (cos t + sin t) / 2 + e^{-t} / 2
    def f(t, y):
        return -y + torch.cos(t)[:, None]

    exact = (math.cos(1) + math.sin(1)) / 2 + math.exp(-1) / 2
    errors = []
    for n in (8, 16):
        t = torch.linspace(0, 1, n + 1, dtype=F64)
        y = solve(f, torch.ones(1, dtype=F64), t, name, tol=1e-14).final
        errors.append(abs(float(y) - exact))
    observed = math.log2(errors[0] / errors[1])
    order = IMPLICIT[name].order
    if order <= 4:
        assert abs(observed - order) < 0.5, (name, observed, errors)
    else:
        assert observed > order - 0.5, (name, observed, errors)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "gl4"])
def test_matches_torchdiffeq(name):
    if name not in SOLVERS:
        pytest.skip(f"torchdiffeq {torchdiffeq.__version__} has no method {name!r}")
    t = torch.linspace(0, 1, 11, dtype=F64)
    ref = torchdiffeq.odeint(lambda t, y: nonlinear(t.reshape(1), y[None])[0], Y0, t, method=name)
    sol = solve(nonlinear, Y0, t, name)
    torch.testing.assert_close(sol.ys, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "newton"),
    [("implicit_euler", True), ("implicit_euler", False), ("radauIIA5", True),
     ("trbdf2", True), ("gl6", False)],
)  # fmt: skip
def test_gradients_match_closed_form(name, newton):
    t = torch.linspace(0, 1, 11, dtype=F64)  # h = 0.1: functional iteration contracts
    model = Linear(MATRIX)
    y0 = Y0.clone().requires_grad_(True)
    linear_reference(model, y0, t, IMPLICIT[name]).sum().backward()
    expected = y0.grad.clone(), model.L.grad.clone()
    y0.grad, model.L.grad = None, None
    problem = ImplicitODEProblem(model, t, IMPLICIT[name], F64, tol=1e-13)
    if not newton:
        problem.newton_max_size = 0
    picard.solve(problem, y0, tol=0).final.sum().backward()
    torch.testing.assert_close(y0.grad, expected[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(model.L.grad, expected[1], rtol=0, atol=1e-8)


@pytest.mark.parametrize("newton", [True, False])
def test_gradients_of_a_nonlinear_problem(newton):
    """Against autograd through a sequential functional iteration run to convergence."""
    tab, t = IMPLICIT["gl4"], torch.linspace(0, 1, 11, dtype=F64)
    mu = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def f(t, y):
        return mu * nonlinear(t, y)

    y0 = Y0.clone().requires_grad_(True)
    a, b, c = (torch.tensor(v, dtype=F64) for v in (tab.a, tab.b, tab.c))
    y = y0
    for i in range(len(t) - 1):
        h = t[i + 1] - t[i]
        k = f(t[i : i + 1], y[None]).expand(2, 2)
        for _ in range(60):
            k = f(t[i] + c * h, y + h * a @ k)
        y = y + h * b @ k
    expected = torch.autograd.grad(y.sum(), (y0, mu))
    problem = ImplicitODEProblem(f, t, tab, F64, tol=1e-13)
    if not newton:
        problem.newton_max_size = 0
    got = torch.autograd.grad(picard.solve(problem, y0, tol=0).final.sum(), (y0, mu))
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-8)


def test_stiff_problem_converges_by_newton():
    lam = 1000.0

    def f(t, y):
        return -lam * (y - torch.cos(t)[:, None])

    t = torch.linspace(0, 2, 21, dtype=F64)  # h λ = 100
    y0 = torch.zeros(1, dtype=F64)
    expected, y = [y0], y0
    for i in range(20):  # implicit Euler: (y + h λ cos t_{i+1}) / (1 + h λ)
        h = t[i + 1] - t[i]
        y = (y + h * lam * torch.cos(t[i + 1])) / (1 + h * lam)
        expected.append(y)
    sol = solve(f, y0, t, "implicit_euler")
    torch.testing.assert_close(sol.ys, torch.stack(expected), rtol=0, atol=1e-10)
    # functional iteration multiplies the error by h λ = 100 per iteration: it diverges
    problem = ImplicitODEProblem(f, t, "implicit_euler", F64)
    problem.newton_max_size = 0
    with pytest.warns(RuntimeWarning, match="Functional iteration .* did not converge|non-finite"):
        problem.increments(sol.ys[:-1], 0, problem.init(y0), None)


@pytest.mark.parametrize("name", ["radauIIA3", "trbdf2"])
def test_batched_samples_match_solving_each_alone(name):
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.2], [0.8, -0.6]], dtype=F64)
    batch = solve(nonlinear, y0, GRID, name, batch_ndim=1).ys
    for j in range(3):
        alone = solve(nonlinear, y0[j], GRID, name).ys
        torch.testing.assert_close(batch[:, j], alone, rtol=0, atol=1e-12)


def test_one_call_per_iteration_over_all_rows_and_stages():
    rows = []

    def f(t, y):
        rows.append(y.shape[0])
        return nonlinear(t, y)

    problem = ImplicitODEProblem(f, GRID, "gl6", F64)
    x = Y0.expand(5, 2)
    problem.increments(x, 3, problem.init(Y0), None)
    # f(t_i, x_i), the Jacobian (d = 2 copies of the rows), then rows × stages per iteration
    assert rows[:3] == [5, 10, 15]
    assert len(rows) > 3


def test_perturb_evaluates_inside_the_steps():
    seen = []

    def f(t, y):
        seen.append(t)
        return nonlinear(t, y)

    t = torch.linspace(0, 1, 6, dtype=F64)
    solve(f, Y0, t, "trapezoid", perturb=True)
    times = torch.cat(seen)
    assert not torch.isin(times, t).any()
    seen.clear()
    solve(f, Y0, t, "trapezoid")
    assert torch.isin(torch.cat(seen), t).all()  # stages at c = 0 and 1: grid times


def test_warns_when_the_iteration_does_not_converge():
    problem = ImplicitODEProblem(nonlinear, GRID, "gl4", F64, max_iters=1)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 iterations"):
        picard.solve(problem, Y0, tol=0)


def test_float32_state_and_step_labels():
    t = torch.linspace(0, 1, 11)
    problem = ImplicitODEProblem(nonlinear, t, "radauIIA5", torch.float32)
    ref = newton_reference(nonlinear, Y0, t.double(), IMPLICIT["radauIIA5"])
    sol = picard.solve(problem, Y0.float(), tol=0)
    assert sol.final.dtype == torch.float32
    torch.testing.assert_close(sol.final.double(), ref[-1], rtol=0, atol=1e-5)
    assert problem.step_label(2) == "step 2 (t = 0.2)"
    with pytest.raises(ValueError, match="unknown implicit method"):
        ImplicitODEProblem(nonlinear, t, "gl8", torch.float32)


def test_jacobian_in_chunks(monkeypatch):
    whole = solve(nonlinear, Y0, GRID, "radauIIA5").ys
    monkeypatch.setattr("picard.ode.implicit.JACOBIAN_ELEMENTS", 1)  # one copy per call
    torch.testing.assert_close(solve(nonlinear, Y0, GRID, "radauIIA5").ys, whole)


@pytest.mark.parametrize("name", sorted(IMPLICIT))
def test_odeint_runs_every_implicit_method(name):
    # torchdiffeq's call: the method's name, its max_iters option, a step_size grid
    a = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ys = picard.odeint(lambda t, y: y @ a.T, y0, t, method=name, options={"step_size": 0.05,
                       "max_iters": 50, "interp": "cubic"}, tol=0)  # fmt: skip
    exact = torch.stack([torch.linalg.matrix_exp(a * float(s)) @ y0 for s in t])
    order = IMPLICIT[name].order
    assert (ys - exact).abs().max() < (5e-2 if order == 1 else 2e-3)  # h = 0.05
