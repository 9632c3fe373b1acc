"""A k-diffusion sampler as a table: one row of coefficients per model evaluation.

Every sampler of :mod:`picard.adapters.k_diffusion` is, per model evaluation k (an
*entry*: a step of a one-evaluation sampler, or one stage of a two-evaluation one), the
linear update

    x_{k+1} = cx_k x_k + cd_k D_k + Σ_{m=1}^{M} c{m}_k s_{k-m} + cz_k z_k
    s_k     = kx_k x_k + kd_k D_k + kz_k z_k

of the entry's state x_k, the model's denoised estimate D_k = D(x_k; σ_k), the values
s_{k-m} that earlier entries stored (``memory`` M: the previous denoised estimates of the
multistep samplers, LMS's derivatives, or what a first stage hands its second), and the
entry's pre-drawn noise z_k. The family modules (:mod:`~picard.adapters.k_samplers.karras`,
:mod:`~picard.adapters.k_samplers.lms`, :mod:`~picard.adapters.k_samplers.dpmpp`) fill
the rows from the published update formulas; :class:`TableRule` runs any table as an
:class:`~picard.adapters.rule.UpdateRule` (a window of entries in a few tensor operations).

A second stage is written as an increment of its own state (as
:mod:`picard.adapters.schedulers.heun` does): its first stage stores the terms that
carry over, so that Picard's increments stay near the identity. For the same reason the
rule runs on states divided by the sampler's noise-free path on unit Gaussian data
(:func:`gaussian_path`; for Euler the VP scaling ``√(σ² + 1)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers.sigma_rules import ancestral_tol_scale
from picard.problem import extend_rows

__all__ = ["START", "Draw", "Table", "TableRule", "gaussian_path"]

START = -1
"""The target of a draw that perturbs the starting state (the churn of step 0)."""

_UPDATE = ("cx", "cd", "cz", "kx", "kd", "kz")

NoiseSampler = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Draw:
    """One call of the noise sampler, in the sequential sampler's order.

    Attributes:
        entry: the entry whose ``z`` it is, :data:`START`, or ``None`` (drawn and unused,
            to leave the random generator where the sequential sampler leaves it).
        sigma: the sampler call's first argument.
        sigma_next: its second argument.
        scale: for :data:`START`, the factor of the draw added to the starting state.

    Example:
        >>> draw = Draw(START, torch.tensor(2.0), torch.tensor(1.0), scale=0.5)
        >>> draw.entry == START, draw.scale
        (True, 0.5)
    """

    entry: int | None
    sigma: Tensor
    sigma_next: Tensor
    scale: Tensor | float = 1.0


@dataclass
class Table:
    """The entries of one sampler call on a sigma grid, filled in sequential order.

    Args:
        sigmas: the grid ``σ_0 … σ_N`` (k-diffusion's ``sigmas``).
        memory: M, the stored values each entry may read.

    Attributes:
        sigma_in: the σ the model receives at each entry (0-d tensors in the grid's dtype,
            computed as the sequential sampler computes them).
        step: the sampler step (0 … N-1) each entry belongs to.
        first: whether the entry is its step's first evaluation (where the callback fires).
        sigma_hat: per step, the ``sigma_hat`` the callback reports.
        rows: per entry, its coefficients by name (missing ones are 0).
        draws: the noise sampler's calls, in order.

    Example:
        >>> table = Table(torch.tensor([2.0, 1.0, 0.0]))
        >>> table.add(0, torch.tensor(2.0), cx=0.5, cd=0.5)
        0
        >>> table.add(1, torch.tensor(1.0), cd=1.0)
        1
        >>> table.step, table.first
        ([0, 1], [True, True])
    """

    sigmas: Tensor
    memory: int = 0
    sigma_in: list[Tensor] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    first: list[bool] = field(default_factory=list)
    sigma_hat: dict[int, Tensor] = field(default_factory=dict)
    rows: list[dict[str, float]] = field(default_factory=list)
    draws: list[Draw] = field(default_factory=list)

    def add(self, step: int, sigma_in: Tensor, **coefficients: float) -> int:
        """Append an entry of ``step`` where the model sees ``sigma_in``; return its index.

        Args:
            step: the sampler step.
            sigma_in: the σ of the model call.
            **coefficients: ``cx, cd, cz, kx, kd, kz`` and ``c1 … cM`` (floats, default 0).

        Returns:
            The entry's index k.
        """
        allowed = {*_UPDATE, *(f"c{m}" for m in range(1, self.memory + 1))}
        unknown = set(coefficients) - allowed
        if unknown:
            raise ValueError(f"unknown coefficients {sorted(unknown)}; allowed {sorted(allowed)}")
        self.first.append(not self.step or self.step[-1] != step)
        self.step.append(step)
        self.sigma_in.append(sigma_in)
        self.sigma_hat.setdefault(step, sigma_in)
        self.rows.append({k: float(v) for k, v in coefficients.items()})
        return len(self.rows) - 1

    def draw(self, entry: int | None, sigma: Tensor, sigma_next: Tensor, scale=1.0) -> None:
        """Record the next noise-sampler call (see :class:`Draw`)."""
        self.draws.append(Draw(entry, sigma, sigma_next, scale))

    def coefficient(self, entry: int, name: str, value: float) -> None:
        """Set one coefficient of an entry added before (a noise term known later)."""
        self.rows[entry][name] = float(value)

    @property
    def num_entries(self) -> int:
        """K, the number of model evaluations of the sequential sampler."""
        return len(self.rows)

    def arrays(self) -> dict[str, np.ndarray]:
        """The coefficients as float64 arrays ``(K,)`` by name."""
        names = (*_UPDATE, *(f"c{m}" for m in range(1, self.memory + 1)))
        return {n: np.array([r.get(n, 0.0) for r in self.rows], dtype=np.float64) for n in names}


def gaussian_path(table: Table) -> np.ndarray:
    """The noise-free path ``P_0 = 1 … P_K`` of the table when the data are unit Gaussian.

    With ``D(x; σ) = x/(1 + σ²)`` (the denoiser of N(0, I) data) every entry is linear and
    the sampler maps x_0 to ``P_k x_0``; dividing the states by P_k makes each step's
    linear part the identity there, which is where Picard iteration converges fastest.
    For Euler this is the VP scaling ``√(σ_k² + 1)/√(σ_0² + 1)`` (the probability-flow ODE's
    exact solution); for ancestral steps it includes their extra contraction. Falls back
    to the VP scaling if the path is not positive and finite.

    Args:
        table: the filled table.

    Returns:
        float64 ``(K + 1,)``: P_0 = 1, …, P_K.

    Example:
        >>> from picard.adapters.k_samplers.karras import euler
        >>> path = gaussian_path(euler(torch.tensor([3.0, 1.0, 0.0])))
        >>> [round(p, 3) for p in path.tolist()]  # √(σ² + 1)/√10 would be 1, 0.447, 0.316
        [1.0, 0.4, 0.2]
    """
    rows = table.arrays()
    sigma = np.array([float(s) for s in table.sigma_in])
    path, x, stores = [1.0], 1.0, [0.0] * table.memory
    for k in range(table.num_entries):
        d = x / (1 + sigma[k] ** 2)
        nxt = rows["cx"][k] * x + rows["cd"][k] * d
        for m in range(1, table.memory + 1):
            nxt += rows[f"c{m}"][k] * stores[-m]
        if table.memory:
            stores = [*stores[1:], rows["kx"][k] * x + rows["kd"][k] * d]
        x = nxt
        path.append(x)
    out = np.array(path)
    if np.all(np.isfinite(out)) and np.all(out > 1e-30):
        return out
    last = float(table.sigmas[-1])
    return np.sqrt(np.append(sigma, last) ** 2 + 1)


class TableRule(UpdateRule):
    """The update of a :class:`Table`, on the scaled states ``y_k = x_k / P_k``.

    ``P`` is :func:`gaussian_path`: on y each step's linear part is the identity for unit
    Gaussian data, and Picard iteration converges in far fewer sweeps than on x (Euler,
    moons, 25 Karras steps: 8 sweeps instead of 18). The model receives ``x = P_k y``
    (:meth:`model_input`), returns the denoised estimate D (``prediction_type="sample"``),
    and ``y' = (cx P_k/P_{k+1}) y + (cd D + Σ c{m} s_{k-m} + cz z)/P_{k+1}``; what entries
    store stays in x's units. ``signal_keys`` ``(1/P, σ/P)``: y = x_0/P + (σ/P) ε, so the
    solver's guesses hold D fixed.

    Args:
        table: the filled table.
        noisy: per entry, whether it receives a drawn noise tensor.

    Attributes:
        scales: ``(K + 1,)`` the P_k (the solve starts from ``x / P_0`` and ends at
            ``P_K y_K``).

    Example:
        >>> table = Table(torch.tensor([2.0, 0.0]))
        >>> _ = table.add(0, torch.tensor(2.0), cd=1.0)  # x_1 = D(x_0; 2)
        >>> rule = TableRule(table, np.zeros(1, dtype=bool))
        >>> rule.scales.tolist()  # D(x; 2) = x/5 for unit Gaussian data
        [1.0, 0.2]
        >>> c = {k: torch.as_tensor(v).reshape(-1, 1, 1) for k, v in rule.coefficients.items()}
        >>> x = torch.ones(1, 1, 2, dtype=torch.float64)
        >>> y, _ = rule.update(x, torch.full_like(x, 0.2), c, None, None)
        >>> (y * rule.scales[1]).tolist()  # back in x: D
        [[[0.2, 0.2]]]
    """

    prediction_type = "sample"

    def __init__(self, table: Table, noisy: np.ndarray):
        k = table.num_entries
        sigma_in = torch.stack(table.sigma_in)
        self.num_steps = k
        self.timesteps = sigma_in
        self.memory = table.memory
        after = torch.cat([sigma_in, table.sigmas[-1:].to(sigma_in.dtype)]).detach().cpu()
        u = gaussian_path(table)
        self.scales = u
        rows = table.arrays()
        own, nxt = u[:-1], u[1:]
        scaled = {name: v / nxt for name, v in rows.items() if name not in ("kx", "kd", "kz")}
        scaled["cx"] = rows["cx"] * own / nxt
        self.coefficients = {
            **scaled,
            "kx": rows["kx"] * own,
            "kd": rows["kd"],
            "kz": rows["kz"],
            "u": own,
            "alpha": 1 / own,
            "sigma": sigma_in.detach().double().cpu().numpy() / own,
        }
        self.signal_keys = ("alpha", "sigma")
        self.noise_draws = np.asarray(noisy, dtype=bool)
        self.tol_scale = ancestral_tol_scale(after, k) / nxt

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """The k-diffusion state ``P_k y`` of the scaled state ``y``."""
        return x * c["u"]

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """The window's next states, and the values its entries store for later ones."""
        nxt = c["cx"] * x + c["cd"] * out
        stored = None
        if self.memory:
            stored = c["kx"] * x + c["kd"] * out
            if noise is not None:
                stored = stored + c["kz"] * noise
            w, m = x.shape[0], self.memory
            ext = extend_rows(stored, history, m)  # ext[m + j]: what window entry j stores
            for back in range(1, m + 1):
                nxt = nxt + c[f"c{back}"] * ext[m - back : m - back + w]
        if noise is not None:
            nxt = nxt + c["cz"] * noise
        return nxt, stored
