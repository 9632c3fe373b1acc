"""Explicit Runge–Kutta methods as Butcher tableaus, fixed-grid and embedded pairs.

The embedded pairs torchdiffeq runs adaptively run here at fixed steps. A method is its
tableau plus nothing else: :class:`picard.ode.ODEProblem` evaluates every stage of a
window's steps in one batched call. torchdiffeq's names are used.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ADAPTIVE", "METHODS", "Tableau", "tableau_for"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge–Kutta method: ``c`` nodes, ``a`` strictly lower rows, ``b`` weights.

    Attributes:
        c: the nodes c_s, one per stage (stage s is evaluated at ``t_i + c_s h_i``).
        a: the rows of the strictly lower triangular Runge–Kutta matrix; row s holds the
            s weights of the earlier stages' slopes (row 0 is empty).
        b: the weights of the stages' slopes in the step, one per stage.
        order: the method's order of accuracy.
        error: for an embedded pair, the weights of the local error estimate ``h Σ e_s
            k_s`` (the solution's weights less the embedded ones); one more than the
            stages when the last is the slope at the step's end, ``f(t + h, y_{n+1})``
            (first same as last: the next step's first stage). ``None``: no estimate.

    Example:
        >>> Tableau(c=(0.0,), a=((),), b=(1.0,), order=1).stages
        1
        >>> rk4 = METHODS["rk4"]
        >>> rk4.stages, rk4.order, sum(rk4.b)  # consistent: the weights sum to 1
        (4, 4, 1.0)
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    error: tuple[float, ...] | None = None

    @property
    def stages(self) -> int:
        """Number of stages (drift calls per step)."""
        return len(self.b)


METHODS: dict[str, Tableau] = {
    "euler": Tableau(c=(0.0,), a=((),), b=(1.0,), order=1),
    "midpoint": Tableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2),
    "heun2": Tableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2),
    "heun3": Tableau(
        c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(0.25, 0.0, 0.75), order=3
    ),
    # torchdiffeq's "rk4" is Kutta's 3/8 rule; so is ours, so the two agree to rounding.
    "rk4": Tableau(
        c=(0.0, 1 / 3, 2 / 3, 1.0),
        a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        b=(0.125, 0.375, 0.375, 0.125),
        order=4,
    ),
}
"""The fixed-grid methods, by name (torchdiffeq's names; ``"heun"`` means ``"heun2"``)."""

# Prince & Dormand (1981), RK8(7)13M: the 8th-order solution's 13 stages.
_DOPRI8_C = (
    0.0,
    1 / 18,
    1 / 12,
    1 / 8,
    5 / 16,
    3 / 8,
    59 / 400,
    93 / 200,
    5490023248 / 9719169821,
    13 / 20,
    1201146811 / 1299019798,
    1,
    1,
)
_DOPRI8_A = (
    (),
    (1 / 18,),
    (
        1 / 48,
        1 / 16,
    ),
    (
        1 / 32,
        0,
        3 / 32,
    ),
    (
        5 / 16,
        0,
        -75 / 64,
        75 / 64,
    ),
    (
        3 / 80,
        0,
        0,
        3 / 16,
        3 / 20,
    ),
    (
        29443841 / 614563906,
        0,
        0,
        77736538 / 692538347,
        -28693883 / 1125000000,
        23124283 / 1800000000,
    ),
    (
        16016141 / 946692911,
        0,
        0,
        61564180 / 158732637,
        22789713 / 633445777,
        545815736 / 2771057229,
        -180193667 / 1043307555,
    ),
    (
        39632708 / 573591083,
        0,
        0,
        -433636366 / 683701615,
        -421739975 / 2616292301,
        100302831 / 723423059,
        790204164 / 839813087,
        800635310 / 3783071287,
    ),
    (
        246121993 / 1340847787,
        0,
        0,
        -37695042795 / 15268766246,
        -309121744 / 1061227803,
        -12992083 / 490766935,
        6005943493 / 2108947869,
        393006217 / 1396673457,
        123872331 / 1001029789,
    ),
    (
        -1028468189 / 846180014,
        0,
        0,
        8478235783 / 508512852,
        1311729495 / 1432422823,
        -10304129995 / 1701304382,
        -48777925059 / 3047939560,
        15336726248 / 1032824649,
        -45442868181 / 3398467696,
        3065993473 / 597172653,
    ),
    (
        185892177 / 718116043,
        0,
        0,
        -3185094517 / 667107341,
        -477755414 / 1098053517,
        -703635378 / 230739211,
        5731566787 / 1027545527,
        5232866602 / 850066563,
        -4093664535 / 808688257,
        3962137247 / 1805957418,
        65686358 / 487910083,
    ),
    (
        403863854 / 491063109,
        0,
        0,
        -5068492393 / 434740067,
        -411421997 / 543043805,
        652783627 / 914296604,
        11173962825 / 925320556,
        -13158990841 / 6184727034,
        3936647629 / 1978049680,
        -160528059 / 685178525,
        248638103 / 1413531060,
        0,
    ),
)
_DOPRI8_B = (
    14005451 / 335480064,
    0,
    0,
    0,
    0,
    -59238493 / 1068277825,
    181606767 / 758867731,
    561292985 / 797845732,
    -1041891430 / 1371343529,
    760417239 / 1151165299,
    118820643 / 751138087,
    -528747749 / 2220607170,
    1 / 4,
)


_TSIT5_B = (
    0.09646076681806522952,
    0.01,
    0.4798896504144995748,
    1.379008574103741893,
    -3.290069515436080680,
    2.324710524099773982,
)


def _less(high: tuple[float, ...], low: tuple[float, ...]) -> tuple[float, ...]:
    """An embedded pair's error weights: the solution's weights less the embedded ones."""
    return tuple(h - lo for h, lo in zip(high, low, strict=True))


ADAPTIVE: dict[str, Tableau] = {
    # Dormand & Prince (1980): the 5th-order solution; its 7th (FSAL) stage has weight 0.
    # The error is against the 4th-order weights torchdiffeq uses (Shampine's), so that
    # the same steps pass its test.
    "dopri5": Tableau(
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0),
        a=(
            (),
            (1 / 5,),
            (3 / 40, 9 / 40),
            (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        ),
        b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
        order=5,
        error=_less(
            (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
            (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60),
        ),
    ),
    # Prince & Dormand (1981), RK8(7)13M: the error is against its 7th-order weights.
    "dopri8": Tableau(
        c=_DOPRI8_C,
        a=_DOPRI8_A,
        b=_DOPRI8_B,
        order=8,
        error=_less(
            _DOPRI8_B,
            (
                13451932 / 455176623,
                0.0,
                0.0,
                0.0,
                0.0,
                -808719846 / 976000145,
                1757004468 / 5645159321,
                656045339 / 265891186,
                -3867574721 / 1518517206,
                465885868 / 322736535,
                53011238 / 667516719,
                2 / 45,
                0.0,
            ),
        ),
    ),
    # Tsitouras (2011), 5(4): the 5th-order solution (its FSAL 7th stage weighs 0); the
    # error is against the 4th-order weights. torchdiffeq steps with the 4th-order weights
    # themselves; both pass the same error test, the 5th-order answer is the nearer.
    "tsit5": Tableau(
        c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045096857, 1.0),
        a=(
            (),
            (0.161,),
            (-0.008480655492356988544, 0.3354806554923569885),
            (2.897153057105493432, -6.359448489975074843, 4.362295432869581411),
            (
                5.325864828439256604,
                -11.74888356406282788,
                7.495539342889836208,
                -0.09249506636175524926,
            ),
            (
                5.861455442946420029,
                -12.92096931784710929,
                8.159367898576158643,
                -0.07158497328140099722,
                -0.02826905039406838291,
            ),
        ),
        b=_TSIT5_B,
        order=5,
        error=_less(
            (*_TSIT5_B, 0.0),
            (
                0.09468075576583945807,
                0.009183565540343253097,
                0.4877705284247615708,
                1.234297566930478986,
                -2.707712349983525455,
                1.866628418170587036,
                1 / 66,
            ),
        ),
    ),
    # Bogacki & Shampine (1989): the 3rd-order solution (the FSAL 4th stage weighs 0).
    "bosh3": Tableau(
        c=(0.0, 1 / 2, 3 / 4),
        a=((), (1 / 2,), (0.0, 3 / 4)),
        b=(2 / 9, 1 / 3, 4 / 9),
        order=3,
        error=_less((2 / 9, 1 / 3, 4 / 9, 0.0), (7 / 24, 1 / 4, 1 / 3, 1 / 8)),
    ),
    # Fehlberg's RK1(2): the 2nd-order solution.
    "fehlberg2": Tableau(
        c=(0.0, 1 / 2, 1.0),
        a=((), (1 / 2,), (1 / 256, 255 / 256)),
        b=(1 / 512, 255 / 256, 1 / 512),
        order=2,
        error=_less((1 / 512, 255 / 256, 1 / 512), (1 / 256, 255 / 256, 0.0)),
    ),
    # Heun's method, torchdiffeq's "adaptive_heun" solution.
    "adaptive_heun": Tableau(
        c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, error=_less((0.5, 0.5), (1.0, 0.0))
    ),
}
"""Embedded pairs torchdiffeq steps adaptively; picard runs their solution at fixed steps
(given a step size)."""

_ALIASES = {"heun": "heun2"}


def tableau_for(method: object, fixed_steps: bool) -> Tableau:
    """The tableau of ``method`` (a name), checking it can run.

    Args:
        method: a name of :data:`METHODS` (``"heun"`` means ``"heun2"``) or of
            :data:`ADAPTIVE`.
        fixed_steps: whether a step size is given (an embedded pair without one runs
            adaptively).

    Returns:
        The tableau.

    Raises:
        TypeError: ``method`` is not a string.
        ValueError: an unknown method.

    Example:
        >>> tableau_for("rk4", fixed_steps=False).stages
        4
        >>> tableau_for("dopri5", fixed_steps=False).error is not None  # error-controlled
        True
        >>> tableau_for("dopri8", fixed_steps=False).order
        8
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    name = _ALIASES.get(method, method)
    if name in METHODS:
        return METHODS[name]
    if name in ADAPTIVE:
        if not fixed_steps and ADAPTIVE[name].error is None:
            raise ValueError(
                f"method={method!r} is adaptive in torchdiffeq; picard runs it at fixed steps: "
                "give options={'step_size': h} (torchdiffeq's grid) or step_size=h (each "
                f"interval of t split evenly), or use one of {sorted(METHODS)}"
            )
        return ADAPTIVE[name]
    names = sorted([*METHODS, *_ALIASES, *ADAPTIVE])
    raise ValueError(f"method must be one of {names}, got {method!r}")
