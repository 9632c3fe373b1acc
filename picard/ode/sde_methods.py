"""torchsde's SDE methods as steps over a window's rows, each call batched over the rows.

A method is one function, ``step(fns, t, h, y, dW, area) -> y_next``, of the rows' start
times ``t: (M,)``, step sizes ``h`` (shaped to broadcast), states ``y: (M, batch, d)``, and
Brownian increments ``dW: (M, batch, m)`` (and space-time Lévy areas ``area`` for the
stochastic Runge–Kutta methods), written as torchsde's method takes one step, so a solve
at ``tol=0`` is torchsde's path driven by the same Brownian increments. :data:`SDE_METHODS`
says which SDE types, noise types and Lévy areas each method takes, as torchsde checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from picard.ode.sde_functions import NOISE_TYPES, SDEFunctions

__all__ = ["SDE_METHODS", "SDEMethod", "default_method"]

Step = Callable[..., Tensor]


@dataclass(frozen=True)
class SDEMethod:
    """A method: its step and what torchsde lets it solve.

    Attributes:
        step: ``step(fns, t, h, y, dW, area, options) -> y_next`` over rows.
        sde_types: the SDE types it solves.
        noise_types: the noise types it solves.
        area: the Lévy area it reads: ``"U"``, the space-time one (``bm(ta, tb,
            return_U=True)``), ``"A"``, the Lévy area itself (``return_A=True``), or
            ``None``.
        approximations: the ``bm``'s ``levy_area_approximation`` that give it.
        calls: calls of the SDE's functions per step (for statistics).
        carries_z: the state is ``cat([y, z], -1)``: reversible Heun's second state ``z``
            travels with ``y`` (torchsde's extra solver state, its ``f``, ``g`` recomputed
            from ``z``).

    Example:
        >>> SDE_METHODS["heun"].sde_types, SDE_METHODS["srk"].area
        (('stratonovich',), 'U')
    """

    step: Step
    sde_types: tuple[str, ...]
    noise_types: tuple[str, ...]
    area: str | None = None
    approximations: tuple[str, ...] = ("none", "space-time", "davie", "foster")
    calls: int = 1
    carries_z: bool = False


def _euler(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
           options: dict[str, Any]) -> Tensor:  # fmt: skip
    f, g_prod = fns.f_and_g_prod(t, y, dW)
    return y + f * h + g_prod


def _milstein(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
              options: dict[str, Any]) -> Tensor:  # fmt: skip
    ito = fns.sde_type == "ito"
    v = dW**2 - h if ito else dW**2
    if options.get("grad_free", False) and fns.noise_type != "additive":
        f, g = fns.f_and_g(t, y)
        g_ = g.squeeze(-1) if g.dim() == y.dim() + 1 else g  # scalar noise: (…, d, 1)
        root = h.sqrt()
        y_prime = y + (h * f if ito else 0.0) + g_ * root
        g_prime = fns.g(t, y_prime)
        return y + f * h + fns.prod(g, dW) + fns.prod(g_prime - g, v) / (2 * root)
    f = fns.f(t, y)
    g_prod, gdg_prod = fns.g_prod_and_gdg_prod(t, y, dW, 0.5 * v)
    return y + f * h + g_prod + gdg_prod


def _heun(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
          options: dict[str, Any]) -> Tensor:  # fmt: skip
    f, g_prod = fns.f_and_g_prod(t, y, dW)
    y_prime = y + h * f + g_prod
    f_prime, g_prod_prime = fns.f_and_g_prod(t + h.reshape(-1), y_prime, dW)
    return y + (h * (f + f_prime) + g_prod + g_prod_prime) * 0.5


def _midpoint(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
              options: dict[str, Any]) -> Tensor:  # fmt: skip
    f, g_prod = fns.f_and_g_prod(t, y, dW)
    half = 0.5 * h
    y_prime = y + half * f + 0.5 * g_prod
    f_prime, g_prod_prime = fns.f_and_g_prod(t + half.reshape(-1), y_prime, dW)
    return y + h * f_prime + g_prod_prime


def _euler_heun(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
                options: dict[str, Any]) -> Tensor:  # fmt: skip
    f, g_prod = fns.f_and_g_prod(t, y, dW)
    g_prod_prime = fns.g_prod(t + h.reshape(-1), y + g_prod, dW)
    return y + h * f + (g_prod + g_prod_prime) * 0.5


def _reversible_heun(fns: SDEFunctions, t: Tensor, h: Tensor, x: Tensor, dW: Tensor,
                     area: Any, options: dict[str, Any]) -> Tensor:  # fmt: skip
    y, z = x.chunk(2, dim=-1)
    f0, g0 = fns.f_and_g(t, z)
    z1 = 2 * y - z + f0 * h + fns.prod(g0, dW)
    f1, g1 = fns.f_and_g(t + h.reshape(-1), z1)
    y1 = y + (f0 + f1) * (0.5 * h) + fns.prod(g0 + g1, 0.5 * dW)
    return torch.cat([y1, z1], dim=-1)


def _log_ode(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
             options: dict[str, Any]) -> Tensor:  # fmt: skip
    """The log-ODE midpoint step: the midpoint step plus the Lévy area's bracket term."""
    f, g_prod = fns.f_and_g_prod(t, y, dW)
    half = 0.5 * h
    t_mid = t + half.reshape(-1)
    y_mid = y + half * f + 0.5 * g_prod
    f_mid, g_prod_mid = fns.f_and_g_prod(t_mid, y_mid, dW)
    y1 = y + h * f_mid + g_prod_mid
    if fns.noise_type == "general":  # Σ_{j,k,l} ∂g_il/∂y_j g_jk A_kl (0 for the others)
        y1 = y1 + fns.dg_ga_jvp_column_sum(t_mid, y_mid, area)
    return y1


# Rößler (2010), "Runge–Kutta methods for the strong approximation of solutions of
# stochastic differential equations": SRI2 (diagonal and scalar noise, strong order 1.5) and
# SRA1 (additive noise), as torchsde runs them.
_SRI2 = {
    "c0": (0, 1, 1 / 2, 0),
    "c1": (0, 1 / 4, 1, 1 / 4),
    "a0": ((), (1,), (1 / 4, 1 / 4), (0, 0, 0)),
    "a1": ((), (1 / 4,), (1, 0), (0, 0, 1 / 4)),
    "b0": ((), (0,), (1, 1 / 2), (0, 0, 0)),
    "b1": ((), (-1 / 2,), (1, 0), (2, -1, 1 / 2)),
    "alpha": (1 / 6, 1 / 6, 2 / 3, 0),
    "beta1": (-1, 4 / 3, 2 / 3, 0),
    "beta2": (1, -4 / 3, 1 / 3, 0),
    "beta3": (2, -4 / 3, -2 / 3, 0),
    "beta4": (-2, 5 / 3, -2 / 3, 1),
}
_SRA1 = {
    "c0": (0, 3 / 4),
    "c1": (1, 0),
    "a0": ((), (3 / 4,)),
    "b0": ((), (3 / 2,)),
    "alpha": (1 / 3, 2 / 3),
    "beta1": (1, 0),
    "beta2": (-1, 1),
}


def _srk(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Any,
         options: dict[str, Any]) -> Tensor:  # fmt: skip
    if fns.noise_type == "additive":
        return _sra1(fns, t, h, y, dW, area)
    tab, rh, root = _SRI2, 1 / h, h.sqrt()
    i_kk = (dW**2 - h) * 0.5
    i_kkk = (dW**3 - 3 * h * dW) / 6
    y1, h0, h1 = y, [], []
    for s in range(4):
        h0s, h1s = y, y
        for j in range(s):
            f = fns.f(t + tab["c0"][j] * h.reshape(-1), h0[j])
            g = fns.g(t + tab["c1"][j] * h.reshape(-1), h1[j])
            g = g.squeeze(-1) if g.dim() == y.dim() + 1 else g
            h0s = h0s + tab["a0"][s][j] * f * h + tab["b0"][s][j] * g * area * rh
            h1s = h1s + tab["a1"][s][j] * f * h + tab["b1"][s][j] * g * root
        h0.append(h0s)
        h1.append(h1s)
        f = fns.f(t + tab["c0"][s] * h.reshape(-1), h0s)
        weight = (tab["beta1"][s] * dW + tab["beta2"][s] * i_kk / root
                  + tab["beta3"][s] * area * rh + tab["beta4"][s] * i_kkk * rh)  # fmt: skip
        y1 = (
            y1 + tab["alpha"][s] * f * h + fns.g_prod(t + tab["c1"][s] * h.reshape(-1), h1s, weight)
        )
    return y1


def _sra1(fns: SDEFunctions, t: Tensor, h: Tensor, y: Tensor, dW: Tensor, area: Tensor) -> Tensor:
    tab, rh = _SRA1, 1 / h
    y1, h0 = y, []
    for i in range(2):
        h0i = y
        for j in range(i):
            f = fns.f(t + tab["c0"][j] * h.reshape(-1), h0[j])
            g_prod = fns.g_prod(t + tab["c1"][j] * h.reshape(-1), y, tab["b0"][i][j] * area * rh)
            h0i = h0i + tab["a0"][i][j] * f * h + g_prod
        h0.append(h0i)
        f = fns.f(t + tab["c0"][i] * h.reshape(-1), h0i)
        weight = tab["beta1"][i] * dW + tab["beta2"][i] * area * rh
        y1 = y1 + tab["alpha"][i] * f * h + fns.g_prod(t + tab["c1"][i] * h.reshape(-1), y, weight)
    return y1


_STRAT = ("stratonovich",)
_U = ("space-time", "davie", "foster")
_A = ("davie", "foster")
_NOT_GENERAL = ("additive", "diagonal", "scalar")

SDE_METHODS: dict[str, SDEMethod] = {
    "euler": SDEMethod(_euler, ("ito",), NOISE_TYPES),
    "milstein": SDEMethod(_milstein, ("ito", "stratonovich"), _NOT_GENERAL, calls=2),
    "srk": SDEMethod(_srk, ("ito",), _NOT_GENERAL, area="U", approximations=_U, calls=8),
    "log_ode": SDEMethod(_log_ode, _STRAT, NOISE_TYPES, area="A", approximations=_A, calls=3),
    "heun": SDEMethod(_heun, _STRAT, NOISE_TYPES, calls=2),
    "midpoint": SDEMethod(_midpoint, _STRAT, NOISE_TYPES, calls=2),
    "euler_heun": SDEMethod(_euler_heun, _STRAT, NOISE_TYPES, calls=2),
    "reversible_heun": SDEMethod(_reversible_heun, _STRAT, NOISE_TYPES, calls=2, carries_z=True),
}
"""The methods picard runs in parallel sweeps, by torchsde's names."""


def default_method(sde_type: str, noise_type: str) -> str:
    """The method torchsde defaults to for an SDE of these types.

    Args:
        sde_type: ``"ito"`` or ``"stratonovich"``.
        noise_type: one of :data:`~picard.ode.sde_functions.NOISE_TYPES`.

    Returns:
        The method's name.

    Example:
        >>> default_method("ito", "diagonal"), default_method("stratonovich", "general")
        ('srk', 'midpoint')
    """
    if sde_type == "stratonovich":
        return "midpoint"
    return "euler" if noise_type == "general" else "srk"
