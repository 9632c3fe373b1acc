"""Linear multistep (LMS), k-diffusion's ``sample_lms``, as a table.

The probability-flow ODE ``dx/dσ = d(x; σ) = (x - D(x; σ))/σ`` integrated by the
Adams–Bashforth-type multistep on the σ grid: ``x_{i+1} = x_i + Σ_j c_{ij} d_{i-j}`` with
``c_{ij} = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ``, ℓ_j the Lagrange basis polynomial through the
last min(i + 1, order) grid points. The weights are
:func:`picard.adapters.schedulers.lms.lms_coefficients` (the same integrand and
quadrature on the float32 grid — bit for bit k-diffusion's weights when ``sigmas`` is
float32, within 1e-7 of them for a float64 grid). Each entry stores its slope
``d_i = x_i/σ_i - D_i/σ_i``; ``memory = order - 1``.
"""

from __future__ import annotations

from torch import Tensor

from picard.adapters.k_samplers.table import Table
from picard.adapters.schedulers.lms import lms_coefficients
from picard.checks import check_int

__all__ = ["lms"]


def lms(sigmas: Tensor, order: int = 4) -> Table:
    """LMS steps of ``order`` (warm-up: order min(i + 1, order) at step i).

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        order: the multistep's order (≥ 1).

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> import torch
        >>> table = lms(torch.tensor([2.0, 1.0, 0.0]), order=2)
        >>> table.memory, table.arrays()["c1"].round(6).tolist()
        (1, [0.0, 0.5])
    """
    order = check_int("order", order, minimum=1)
    n = len(sigmas) - 1
    memory = min(order, n) - 1
    weights = lms_coefficients(sigmas.detach().cpu(), n, order)
    table = Table(sigmas, memory=memory)
    for i in range(n):
        inv = 1.0 / sigmas[i].double().item()
        own = float(weights[i, 0])
        rest = {f"c{j}": float(weights[i, j]) for j in range(1, memory + 1)}
        table.add(i, sigmas[i], cx=1 + own * inv, cd=-own * inv, kx=inv, kd=-inv, **rest)
    return table
