"""DPM-Solver++ samplers (Lu et al. 2022b) in k-diffusion's forms, as tables.

With t = -log σ (so h = t_{i+1} - t_i = log σ_i/σ_{i+1} > 0) and the denoised estimate D
(the data prediction x_θ), the first-order step is ``x_{i+1} = (σ_{i+1}/σ_i) x_i - (e^{-h}
- 1) D_i`` (DDIM in σ). The samplers differ in what they put in place of D_i:

- ``dpmpp_2s_ancestral``: a single-step midpoint. Toward σ_↓ (ancestral, η), s = t + h/2:
  ``x̃ = (σ_s/σ_t) x - (e^{-h/2} - 1) D``, then ``x' = (σ_↓/σ_t) x - (e^{-h} - 1) D(x̃; σ_s)``,
  ``+ S_noise σ_↑ z``; Euler to σ_↓ when σ_↓ = 0.
- ``dpmpp_sde``: the stochastic single-step with ``s = t + r h``: x̃ is an ancestral step
  from σ_t to σ_s (noise ``z(σ_t, σ_s)``), and the full ancestral step from σ_t to
  σ_{i+1} uses ``(1 - 1/(2r)) D + 1/(2r) D(x̃; σ_s)`` (noise ``z(σ_t, σ_{i+1})``).
- ``dpmpp_2m``: the multistep, ``D_d = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`` with
  r = h_{i-1}/h_i (Lu 2022b, Algorithm 2); first order at the first and a final σ = 0 step.
- ``dpmpp_2m_sde``: the SDE form with ηh: ``x' = (σ_{i+1}/σ_i) e^{-ηh} x + (1 - e^{-h-ηh}) D``
  plus the second-order term (``midpoint``: ``½ (1 - e^{-h-ηh}) (D - D_{i-1})/r``;
  ``heun``: ``((1 - e^{-h-ηh})/(-h-ηh) + 1) (D - D_{i-1})/r``) and
  ``σ_{i+1} √(1 - e^{-2ηh}) S_noise z``; σ_{i+1} = 0 gives ``x' = D``.
- ``dpmpp_3m_sde``: with h_η = (1 + η) h, ``x' = e^{-h_η} x + (1 - e^{-h_η}) D + φ₂ d₁ - φ₃ d₂``,
  φ₂ = (e^{-h_η} - 1)/h_η + 1, φ₃ = φ₂/h_η - ½, and d₁, d₂ the first and second divided
  differences of the last three D (step ratios r₀ = h_{i-1}/h, r₁ = h_{i-2}/h); second
  order at step 1, first at step 0.

Each is a :class:`~picard.adapters.k_samplers.table.Table`: the multistep samplers store
D (``memory`` 1 or 2) and their rows are the D-coefficients; a single-step sampler's first
stage stores what its second stage adds to x̃ (the carried x, D and noise terms).
"""

from __future__ import annotations

from torch import Tensor

from picard.adapters.k_samplers.karras import ancestral_step
from picard.adapters.k_samplers.table import Table
from picard.checks import check_nonneg

__all__ = ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpmpp_3m_sde", "dpmpp_sde"]

SOLVER_TYPES = ("midpoint", "heun")


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _f(value: Tensor | float) -> float:
    return float(value.double().item()) if isinstance(value, Tensor) else float(value)


def _euler_to(table: Table, i: int, sigma: Tensor, target: Tensor) -> int:
    ratio = _f(target - sigma) / _f(sigma)
    return table.add(i, sigma, cx=1 + ratio, cd=-ratio)


def dpmpp_2s_ancestral(sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0) -> Table:
    """DPM-Solver++(2S) ancestral steps, k-diffusion's ``sample_dpmpp_2s_ancestral``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> import torch
        >>> table = dpmpp_2s_ancestral(torch.tensor([2.0, 1.0, 0.0]))
        >>> table.num_entries, [d.entry for d in table.draws]
        (3, [1])
    """
    table = Table(sigmas, memory=1)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        down, up = ancestral_step(sigma, sigmas[i + 1], eta)
        if down == 0:
            last = _euler_to(table, i, sigma, down)
        else:
            t, t_next = _t(sigma), _t(down)
            h = t_next - t
            s = t + 0.5 * h
            half = _f((-h * 0.5).expm1())  # e^{-h/2} - 1
            mid, base = _f(_sigma(s) / _sigma(t)), _f(_sigma(t_next) / _sigma(t))
            table.add(i, sigma, cx=mid, cd=-half, kx=base - mid, kd=half)
            last = table.add(i, _sigma(s), cx=1.0, cd=-_f(h.neg().expm1()), c1=1.0)
        if sigmas[i + 1] > 0:
            table.coefficient(last, "cz", s_noise * _f(up))
            table.draw(last, sigma, sigmas[i + 1])
    return table


def dpmpp_sde(sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> Table:
    """DPM-Solver++ (stochastic) steps, k-diffusion's ``sample_dpmpp_sde``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        r: the intermediate step's place in log σ, in (0, 1].

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> import torch
        >>> table = dpmpp_sde(torch.tensor([2.0, 1.0, 0.0]))
        >>> table.num_entries, [d.entry for d in table.draws]
        (3, [0, 1])
    """
    r = check_nonneg("r", r, positive=True)
    fac = 1 / (2 * r)
    table = Table(sigmas, memory=1)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        if sigmas[i + 1] == 0:
            _euler_to(table, i, sigma, sigmas[i + 1])
            continue
        t, t_next = _t(sigma), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        down, up = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(down)
        mid, keep = _f(_sigma(s_) / _sigma(t)), _f((t - s_).expm1())
        down2, up2 = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(down2)
        base, full = _f(_sigma(t_next_) / _sigma(t)), _f((t - t_next_).expm1())
        # x̃ = mid x - keep D + S σ↑ z₁; x' = base x - full ((1 - fac) D + fac D̃) + S σ↑' z₂
        noise1 = s_noise * _f(up)
        first = table.add(
            i,
            sigma,
            cx=mid,
            cd=-keep,
            cz=noise1,
            kx=base - mid,
            kd=keep - full * (1 - fac),
            kz=-noise1,
        )
        table.draw(first, _sigma(t), _sigma(s))
        second = table.add(i, _sigma(s), cx=1.0, cd=-full * fac, c1=1.0, cz=s_noise * _f(up2))
        table.draw(second, _sigma(t), _sigma(t_next))
    return table


def dpmpp_2m(sigmas: Tensor) -> Table:
    """DPM-Solver++(2M) steps, k-diffusion's ``sample_dpmpp_2m``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> import torch
        >>> table = dpmpp_2m(torch.tensor([4.0, 2.0, 1.0, 0.0]))
        >>> table.arrays()["c1"].round(4).tolist()  # the D_{i-1} weight: step 1 only
        [0.0, -0.25, 0.0]
    """
    table = Table(sigmas, memory=1)
    for i in range(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        t, t_next = _t(sigma), _t(nxt)
        h = t_next - t
        ratio, em = _f(_sigma(t_next) / _sigma(t)), _f(h.neg().expm1())
        if i == 0 or nxt == 0:
            table.add(i, sigma, cx=ratio, cd=-em, kd=1.0)
            continue
        r = (t - _t(sigmas[i - 1])) / h  # h_{i-1}/h_i; the weights as k-diffusion rounds them
        table.add(i, sigma, cx=ratio, cd=-em * _f(1 + 1 / (2 * r)), c1=em * _f(1 / (2 * r)), kd=1.0)
    return table


def dpmpp_2m_sde(
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Table:
    """DPM-Solver++(2M) SDE steps, k-diffusion's ``sample_dpmpp_2m_sde``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        solver_type: ``'midpoint'`` or ``'heun'``, the second-order term.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> import torch
        >>> table = dpmpp_2m_sde(torch.tensor([4.0, 2.0, 1.0, 0.0]), eta=0.0)
        >>> len(table.draws), float(table.arrays()["cd"][-1])  # η = 0: no noise; σ = 0: D
        (0, 1.0)
    """
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    eta = check_nonneg("eta", eta)
    table = Table(sigmas, memory=1)
    h_last = None
    for i in range(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        if nxt == 0:
            table.add(i, sigma, cd=1.0, kd=1.0)
            continue
        h = (-nxt.log()) - (-sigma.log())
        eta_h = eta * h
        decay = (-h - eta_h).expm1().neg()  # 1 - e^{-h-ηh}
        row = {"cx": _f(nxt / sigma * (-eta_h).exp()), "cd": _f(decay), "kd": 1.0}
        if i > 0 and h_last is not None:
            inv_r = 1 / (h_last / h)
            if solver_type == "heun":
                w = _f((decay / (-h - eta_h) + 1) * inv_r)
            else:
                w = _f(0.5 * decay * inv_r)
            row["cd"] += w
            row["c1"] = -w
        k = table.add(i, sigma, **row)
        if eta:
            scale = _f(nxt) * _f((-2 * eta_h).expm1().neg().sqrt()) * s_noise
            table.coefficient(k, "cz", scale)
            table.draw(k, sigma, nxt)
        h_last = h
    return table


def dpmpp_3m_sde(sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0) -> Table:
    """DPM-Solver++(3M) SDE steps, k-diffusion's ``sample_dpmpp_3m_sde``.

    Args:
        sigmas: the grid σ_0 … σ_N (descending; σ_N is usually 0).
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.

    Returns:
        The table (one entry per model evaluation).

    Example:
        >>> import torch
        >>> table = dpmpp_3m_sde(torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0]), eta=0.0)
        >>> table.memory, table.arrays()["c2"].round(4).tolist()  # D_{i-2}: from step 2
        (2, [0.0, 0.0, 0.1883, 0.0])
    """
    eta = check_nonneg("eta", eta)
    table = Table(sigmas, memory=2)
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        if nxt == 0:
            table.add(i, sigma, cd=1.0, kd=1.0)
            h_1, h_2 = h, h_1  # the last step's h, kept as k-diffusion keeps it
            continue
        h = (-nxt.log()) - (-sigma.log())
        h_eta = h * (eta + 1)
        row = {"cx": _f((-h_eta).exp()), "cd": _f((-h_eta).expm1().neg()), "kd": 1.0}
        phi_2t = h_eta.neg().expm1() / h_eta + 1
        phi_2 = _f(phi_2t)
        if h_2 is not None:  # scalars rounded in the grid's dtype, as k-diffusion's
            r0, r1, r01 = _f(h_1 / h), _f(h_2 / h), _f(h_1 / h + h_2 / h)
            phi_3 = _f(phi_2t / h_eta - 0.5)
            a = r0 / r01
            alpha = phi_2 * (1 + a) - phi_3 / r01  # weight of (D - D₁)/r₀
            beta = -phi_2 * a + phi_3 / r01  # weight of (D₁ - D₂)/r₁
            row.update(c1=-alpha / r0 + beta / r1, c2=-beta / r1)
            row["cd"] += alpha / r0
        elif h_1 is not None:
            w = phi_2 / _f(h_1 / h)
            row["cd"] += w
            row["c1"] = -w
        k = table.add(i, sigma, **row)
        if eta:
            scale = _f(nxt) * _f((-2 * h * eta).expm1().neg().sqrt()) * s_noise
            table.coefficient(k, "cz", scale)
            table.draw(k, sigma, nxt)
        h_1, h_2 = h, h_1
    return table
