"""torchdiffeq's events: ``odeint(event_fn=...)`` and ``odeint_event``, in parallel chunks."""

import math

import pytest
import torch
import torchdiffeq

import picard

torch.set_num_threads(1)
F64 = torch.float64


def _decay(t, y):
    return -y


def _half(t, y):
    return y[0] - 0.5


@pytest.mark.parametrize(
    ("method", "options", "error"),
    [
        # adaptive: within rtol (1e-7) of ln 2 (torchdiffeq's own dopri5 is 4.7e-9 off)
        ("dopri5", {}, 5e-8),
        ("tsit5", {}, 5e-8),
        ("euler", {"step_size": 0.01}, 5e-3),
        ("rk4", {"step_size": 0.01, "interp": "cubic"}, 1e-6),
        ("implicit_adams", {"step_size": 0.01, "interp": "cubic"}, 1e-6),
        ("gl4", {"step_size": 0.01}, 5e-5),
    ],
)
@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
def test_the_event_time_and_state(method, options, error, backwards):
    # forward: y = e^{-t} reaches 1/2 at ln 2; backward from t = 0: y = e^{-t} reaches 2
    y0 = torch.ones(1, dtype=F64)
    t = torch.tensor([0.0, -1.0 if backwards else 1.0], dtype=F64)
    level = 2.0 if backwards else 0.5
    event_t, ys = picard.odeint(
        _decay, y0, t, event_fn=lambda t, y: y[0] - level, method=method, options=options
    )
    expected = -math.log(2) if backwards else math.log(2)
    assert abs(float(event_t) - expected) < error
    assert ys.shape == (2, 1) and float(ys[0]) == 1.0
    assert abs(float(ys[-1]) - level) < 10 * error


def test_the_event_is_torchdiffeqs():
    f = torch.nn.Linear(2, 2).double()
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def event(t, y):
        return torch.stack([y[0] - 3.0, t - 4.0])  # two event functions: the first to zero

    with torch.no_grad():
        theirs = torchdiffeq.odeint(lambda t, y: f(y), y0, t, event_fn=event)
        ours = picard.odeint(lambda t, y: f(y), y0, t, event_fn=event)
    assert abs(float(ours[0] - theirs[0])) < 1e-6
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6)


def test_the_event_time_has_the_implicit_function_gradient():
    # y = y0 e^{-k t} reaches 1/2 at t_e = ln(2 y0) / k
    k = torch.tensor(1.5, dtype=F64, requires_grad=True)
    y0 = torch.ones(1, dtype=F64, requires_grad=True)
    event_t, _ = picard.odeint(
        lambda t, y: -k * y, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=_half
    )
    event_t.backward()
    assert abs(float(y0.grad) - 1 / 1.5) < 1e-6  # d t_e / d y0 = 1 / (k y0)
    assert abs(float(k.grad) + math.log(2) / 1.5**2) < 1e-6  # -ln 2 / k²


def test_odeint_event_moves_the_state_with_the_event_time():
    # at the event y(t_e) = 1/2 whatever y0: the total derivative is 0
    y0 = torch.ones(1, dtype=F64, requires_grad=True)
    event_t, ys = picard.odeint_event(_decay, y0, torch.tensor(0.0, dtype=F64), event_fn=_half)
    assert abs(float(event_t.detach()) - math.log(2)) < 5e-8  # within rtol 1e-7
    (grad,) = torch.autograd.grad(ys[-1].sum(), y0)
    assert abs(float(grad)) < 1e-6


def test_a_tuple_state_and_its_event():
    y0 = (torch.ones(1, dtype=F64), torch.zeros(2, dtype=F64))
    event_t, (a, b) = picard.odeint(
        lambda t, y: (-y[0], torch.ones_like(y[1])),
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        event_fn=lambda t, y: y[1][0] - 0.25,
    )
    assert abs(float(event_t) - 0.25) < 1e-8
    # within the default tolerance (rtol 1e-7, atol 1e-9) of the exact state
    assert abs(float(a[-1]) - math.exp(-0.25)) < 1e-7 * math.exp(-0.25) + 1e-9
    assert b.shape == (2, 2)


def test_an_event_far_away_is_found_by_doubling_chunks():
    y0 = torch.zeros(1, dtype=F64)
    event_t, _, stats = picard.odeint(
        lambda t, y: torch.ones_like(y),
        y0,
        torch.tensor([0.0, 0.1], dtype=F64),
        event_fn=lambda t, y: y[0] - 100.0,
        return_stats=True,
    )
    assert abs(float(event_t) - 100.0) < 1e-6 and stats.iterations > 0


@pytest.mark.parametrize("steps", [10, 63, 64, 65, 74, 129, 700])
def test_a_fixed_step_event_sizes_its_chunks_from_the_event_function(steps):
    """The event lies anywhere relative to the chunks (the first of 64 steps, the next
    sized from the event function's fall): the same event as torchdiffeq's, and the steps
    solved stay near the event's, not the doubled chunks' (64 + 128 for 74)."""
    from picard.ode.events import EventSearch, solve_until_event

    def rise(t, y):
        return 1.5 + torch.cos(t) * torch.ones_like(y)

    at = 0.01 * (steps - 0.5)  # half a step before the step's end
    level = 1.5 * at + math.sin(at)

    def event(t, y):
        return level - y[0]

    y0, t = torch.zeros(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    kw = {"method": "rk4", "options": {"step_size": 0.01}, "event_fn": event}
    theirs, _ = torchdiffeq.odeint(rise, y0, t, **kw)
    ours, _ = picard.odeint(rise, y0, t, **kw)
    assert abs(float(ours - theirs)) < 1e-7
    solved = []

    def solve(y, times):
        solved.append(len(times) - 1)
        return picard.odeint(rise, y, times, method="rk4", return_stats=True)

    search = EventSearch(solve, rise, step=0.01, cubic=False, atol=1e-9, first_span=1.0)
    event_t, _, _ = solve_until_event(search, event, y0, torch.tensor(0.0, dtype=F64), 1.0)
    assert abs(float(event_t - theirs)) < 1e-7
    assert sum(solved) <= max(64, 1.6 * steps + 16), solved


def test_next_chunk_grows_toward_the_event_and_doubles_otherwise():
    from picard.ode.events import MIN_CHUNK_STEPS, next_chunk

    assert next_chunk(64, [2.0, 1.125, 1.0]) == 14  # 8 steps left: 1.5 x 8 + 2
    assert next_chunk(16, [1.0, 0.999]) == 32  # far: at most double
    assert next_chunk(64, [1.0, 1.0]) == 128  # flat: double
    assert next_chunk(64, [1.0, 0.01]) == MIN_CHUNK_STEPS


def test_bad_event_input_is_named():
    with pytest.raises(ValueError, match=r"needs options\['step_size'\]"):
        picard.odeint(_decay, torch.ones(1), torch.tensor([0.0, 1.0]), event_fn=_half,
                      method="rk4")  # fmt: skip
    with pytest.raises(TypeError, match=r"event_fn must return a torch\.Tensor"):
        picard.odeint(_decay, torch.ones(1), torch.tensor([0.0, 1.0]), event_fn=lambda t, y: 1.0)
    with pytest.raises(TypeError, match="event_fn must be callable"):
        picard.odeint(_decay, torch.ones(1), torch.tensor([0.0, 1.0]), event_fn=3)


@pytest.mark.parametrize("level", [0.9, 0.61, 0.5, 0.37])
def test_the_newton_start_is_bisections_zero_in_fewer_calls(level):
    """The adaptive event's first estimate: false position on the chunk's cubic
    interpolant finds bisection's zero (within atol) in fewer event-function calls."""
    from picard.ode.events import EventSearch, _bisect, _false_position

    times = torch.linspace(0, 1, 3, dtype=F64)
    ys = torch.exp(-times)[:, None]
    k = 2 if level < math.exp(-0.5) else 1
    search = EventSearch(None, _decay, step=None, cubic=True, atol=1e-9, first_span=1.0)
    calls = {"bisection": 0, "false position": 0}

    def counted(name):
        def g(t, y):
            calls[name] += 1
            return y[0] - level

        return g

    a = _bisect(search, counted("bisection"), times, ys, k)
    b = _false_position(search, counted("false position"), times, ys, k)
    assert abs(float(a - b)) <= 2e-9
    assert calls["false position"] < calls["bisection"] / 2, calls
