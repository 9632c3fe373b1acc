"""A torchsde ``sde`` object's functions, evaluated on a window's rows at once.

torchsde's ``sde`` has ``f(t, y)`` and ``g(t, y)`` for one time and a ``(batch, d)``
state — or any of ``f_and_g``, ``g_prod``, ``f_and_g_prod`` instead, renamed by
``names=``, and ``h`` (the prior drift) for ``logqp``. :class:`SDEFunctions` builds from
them the calls the methods make (``f``, ``g``, ``f_and_g``, ``g_prod``, ``f_and_g_prod``,
``prod``, and ``g_prod_and_gdg_prod`` for Milstein) as torchsde composes them, each
vectorised over rows (``(M,)`` times, ``(M, batch, ...)`` states) by
:func:`torch.func.vmap`, or row by row where vmap cannot run the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["NAMES", "NOISE_TYPES", "SDE_TYPES", "SDEFunctions"]

NOISE_TYPES = ("diagonal", "additive", "scalar", "general")
"""torchsde's noise types."""

SDE_TYPES = ("ito", "stratonovich")
"""torchsde's SDE types."""

NAMES = {
    "drift": "f",
    "diffusion": "g",
    "prior_drift": "h",
    "drift_and_diffusion": "f_and_g",
    "drift_and_diffusion_prod": "f_and_g_prod",
}
"""torchsde's ``names=`` keys and the methods they rename."""


class SDEFunctions:
    """The functions of torchsde's ``sde``, composed as torchsde does, batched over rows.

    Args:
        sde: torchsde's ``sde`` object (``noise_type``, ``sde_type`` and its functions).
        names: torchsde's ``names=`` (which methods of ``sde`` play which role).
        logqp: add torchsde's log-ratio channel: the state's last column integrates
            ``|u|² / 2`` with ``u = (f - h) / g`` (``g⁺ (f - h)`` for matrix noise).

    Example:
        >>> class SDE:
        ...     noise_type, sde_type = "diagonal", "ito"
        ...     def f(self, t, y): return -y
        ...     def g(self, t, y): return 0.1 * torch.ones_like(y)
        >>> fns = SDEFunctions(SDE())
        >>> t, y = torch.zeros(3), torch.ones(3, 2, 4)  # 3 rows of a (2, 4) state
        >>> fns.f_and_g_prod(t, y, torch.ones(3, 2, 4))[1][0, 0]
        tensor([0.1000, 0.1000, 0.1000, 0.1000])
    """

    def __init__(self, sde: Any, names: dict[str, str] | None = None, logqp: bool = False):
        names = dict(names or {})
        unknown = sorted(set(names) - set(NAMES) - {"diffusion_prod"})
        if unknown:
            raise ValueError(
                f"names has unknown key {unknown[0]!r}; torchsde's are {sorted(NAMES)}"
            )
        self.sde = sde
        self.noise_type = getattr(sde, "noise_type", None)
        self.sde_type = getattr(sde, "sde_type", None)
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(
                f"sde.noise_type must be one of {NOISE_TYPES}, got {self.noise_type!r}"
            )
        if self.sde_type not in SDE_TYPES:
            raise ValueError(f"sde.sde_type must be one of {SDE_TYPES}, got {self.sde_type!r}")
        own = {role: getattr(sde, names.get(key, role), None) for key, role in NAMES.items()}
        own["g_prod"] = getattr(sde, names.get("diffusion_prod", "g_prod"), None)
        self.diagonal = self.noise_type == "diagonal"
        base = _Composed(own, self.diagonal)
        self.base = _Logqp(base, self.diagonal) if logqp else base
        self.model = sde
        self._batched: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or name not in _BATCHED:
            raise AttributeError(name)
        if name not in self._batched:
            self._batched[name] = _rows(getattr(self.base, name), name)
        return self._batched[name]

    def prod(self, g: Tensor, v: Tensor) -> Tensor:
        """``g v``: elementwise (diagonal noise) or matrix-vector (the others)."""
        return self.base.prod(g, v)


_BATCHED = (
    "f", "g", "f_and_g", "g_prod", "f_and_g_prod", "g_prod_and_gdg_prod", "dg_ga_jvp_column_sum",
)  # fmt: skip


class _Composed:
    """torchsde's compositions of whichever functions ``sde`` defines (one time, one state)."""

    def __init__(self, own: dict[str, Any], diagonal: bool):
        self.own, self.diagonal = own, diagonal

    def _need(self, *roles: str) -> list[Any]:
        found = [self.own[r] for r in roles]
        if any(fn is None for fn in found):
            missing = [r for r, fn in zip(roles, found, strict=True) if fn is None]
            raise ValueError(f"sde has no method {missing[0]!r}, which this method needs")
        return found

    def prod(self, g: Tensor, v: Tensor) -> Tensor:
        return g * v if self.diagonal else (g @ v.unsqueeze(-1)).squeeze(-1)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        if self.own["f"] is not None:
            return self.own["f"](t, y)
        return self.f_and_g(t, y)[0]

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        if self.own["g"] is not None:
            return self.own["g"](t, y)
        return self._need("f_and_g")[0](t, y)[1]

    def h(self, t: Tensor, y: Tensor) -> Tensor:
        return self._need("h")[0](t, y)

    def f_and_g(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.own["f_and_g"] is not None:
            return self.own["f_and_g"](t, y)
        return self.f(t, y), self.g(t, y)

    def g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> Tensor:
        if self.own["g_prod"] is not None:
            return self.own["g_prod"](t, y, v)
        return self.prod(self.g(t, y), v)

    def f_and_g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.own["f_and_g_prod"] is not None:
            return self.own["f_and_g_prod"](t, y, v)
        if self.own["f"] is not None and self.own["g_prod"] is not None:
            return self.own["f"](t, y), self.own["g_prod"](t, y, v)
        f, g = self.f_and_g(t, y)
        return f, self.prod(g, v)

    def g_prod_and_gdg_prod(
        self, t: Tensor, y: Tensor, v1: Tensor, v2: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``g v1`` and Milstein's ``Σ_{j,l} g_{jl} ∂g_{jl}/∂y_i v2_l`` (a VJP)."""
        g, pull = torch.func.vjp(lambda x: self.g(t, x), y)
        weights = g * v2 if self.diagonal else g * v2.unsqueeze(-2)
        (gdg,) = pull(weights)
        return self.prod(g, v1), gdg

    def dg_ga_jvp_column_sum(self, t: Tensor, y: Tensor, a: Tensor) -> Tensor:
        """The log-ODE term ``Σ_{j,k,l} ∂g_{il}/∂y_j g_{jk} A_{kl}`` (general noise)."""
        g = self.g(t, y)
        ga = g @ a
        total = torch.zeros_like(y)
        for col in range(g.shape[-1]):
            _, out = torch.func.jvp(lambda x, c=col: self.g(t, x)[..., c], (y,), (ga[..., col],))
            total = total + out
        return total


class _Logqp(_Composed):
    """torchsde's ``logqp``: one more state column, ``d logqp = |u|² / 2 dt``, no noise."""

    def __init__(self, base: _Composed, diagonal: bool):
        super().__init__(base.own, diagonal)
        self.inner = base

    def _log_rate(self, f: Tensor, g: Tensor, h: Tensor) -> Tensor:
        if self.diagonal:  # torchsde's stable division: |g| floored at 1e-7, its sign kept
            safe = torch.where(g.abs().detach() > 1e-7, g, torch.full_like(g, 1e-7) * g.sign())
            u = (f - h) / safe
        else:
            u = (torch.linalg.pinv(g) @ (f - h).unsqueeze(-1)).squeeze(-1)
        return 0.5 * (u**2).sum(dim=1, keepdim=True)

    def _zero_noise(self, y: Tensor, g: Tensor) -> Tensor:
        if self.diagonal:
            return torch.cat([g, y.new_zeros((y.shape[0], 1))], dim=1)
        return torch.cat([g, y.new_zeros((g.shape[0], 1, g.shape[-1]))], dim=1)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.f_and_g(t, y)[0]

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        x = y[:, :-1]
        return self._zero_noise(x, self.inner.g(t, x))

    def f_and_g(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = y[:, :-1]
        f, g, h = self.inner.f(t, x), self.inner.g(t, x), self.inner.h(t, x)
        return torch.cat([f, self._log_rate(f, g, h)], dim=1), self._zero_noise(x, g)

    def g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return self.prod(self.g(t, y), v)

    def f_and_g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        f, g = self.f_and_g(t, y)
        return f, self.prod(g, v)


def _rows(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` over rows: ``(M,)`` times and ``(M, ...)`` arguments, by vmap or row by row."""
    mapped = torch.func.vmap(fn)
    state = {"vmap": True}

    def batched(t: Tensor, *args: Tensor) -> Any:
        if state["vmap"]:
            try:
                return mapped(t, *args)
            except Exception:
                state["vmap"] = False
        outs = [fn(t[m], *(a[m] for a in args)) for m in range(t.shape[0])]
        if isinstance(outs[0], tuple):
            return tuple(
                torch.stack(list(p)) if isinstance(p[0], Tensor) else p[0]
                for p in zip(*outs, strict=True)
            )
        return torch.stack(outs)

    batched.__name__ = name
    return batched
