"""k-diffusion's sampler calls, solved in parallel: drop-ins for what the community UIs call.

AUTOMATIC1111, Forge and ComfyUI sample with k-diffusion's functions
``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)``, where
``model(x, sigma, **extra_args)`` returns the denoised estimate. The functions here take
the same arguments with the same meanings and defaults, and return the same sample: every
model evaluation of the sequential loop is one step of a recursion that picard solves in
parallel sweeps, one model call per sweep for all the steps of a window (the rows of the
steps concatenated, each with its σ). ``tol=0`` gives k-diffusion's result to float
rounding; the default tolerance keeps each sample within 1% of its RMS of it.

- The noise is drawn before the sweeps, in the order k-diffusion draws it, from the same
  source: ``torch.randn_like(x)`` on torch's global generator (churn, and the default
  ``noise_sampler`` of the ancestral samplers), ``noise_sampler(σ, σ_next)`` when given,
  and for ``dpmpp_sde`` / ``dpmpp_2m_sde`` / ``dpmpp_3m_sde`` a
  :class:`~picard.adapters.k_samplers.noise.BrownianTreeNoiseSampler` seeded from torch's
  global generator, as k-diffusion seeds its own.
- ``callback`` is called once per step, in order, with k-diffusion's dict
  ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``, as each step becomes final.
- ``extra_args`` tensors with one row per sample are gathered to the model call's rows;
  other values are passed unchanged (the model must then accept any number of rows, as
  ComfyUI's model wrapper does).
- picard's own options follow, keyword-only: ``tol``, ``window``, ``return_solution``
  and any option of :func:`picard.solve` (``max_rows``, ``relative``, ...).

:data:`SAMPLERS` names them all. The sampler mathematics is in
:mod:`picard.adapters.k_samplers` (one module per family).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.k_samplers import dpmpp, karras, lms
from picard.adapters.k_samplers.noise import (
    BrownianTreeNoiseSampler,
    NoiseSampler,
    default_noise_sampler,
)
from picard.adapters.k_samplers.run import check_sigmas, checked_input, sample
from picard.adapters.k_samplers.table import Table
from picard.adapters.schedulers.sigma_rules import real_number
from picard.checks import check_nonneg
from picard.core.options import Options
from picard.solution import Solution

__all__ = [
    "SAMPLERS",
    "BrownianTreeNoiseSampler",
    "default_noise_sampler",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
]

Model = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], Any] | None
Result = Tensor | Solution


def _run(
    build: Callable[[Tensor], Table],
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None,
    callback: Callback,
    disable: bool | None,
    noise_sampler: NoiseSampler | None,
    picard: dict[str, Any],
    brownian: bool = False,
) -> Result:
    """Check everything, build the table, then draw and solve (:func:`k_samplers.run.sample`)."""
    x = checked_input(x)
    sigmas = check_sigmas(sigmas)
    back = picard.pop("return_solution", False)
    options = Options.of(**picard)
    if noise_sampler is not None and not callable(noise_sampler):
        kind = type(noise_sampler).__name__
        raise TypeError(f"noise_sampler must be callable or None, got {kind}")
    table = build(sigmas)
    if noise_sampler is None and brownian:
        positive = sigmas[sigmas > 0]
        noise_sampler = BrownianTreeNoiseSampler(x, positive.min(), sigmas.max())
    elif noise_sampler is None:
        noise_sampler = default_noise_sampler(x)
    return sample(table, model, x, extra_args, callback, disable, noise_sampler, options, back)


def _churn(s_churn: Any, s_tmin: Any, s_tmax: Any, s_noise: Any) -> tuple[float, ...]:
    return (
        real_number("s_churn", s_churn),
        real_number("s_tmin", s_tmin),
        real_number("s_tmax", s_tmax),
        real_number("s_noise", s_noise),
    )


@torch.no_grad()
def sample_euler(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """Euler steps with Algorithm 2's churn (Karras et al. 2022), in parallel.

    Args:
        model: ``model(x, sigma, **extra_args)``, the denoiser (``sigma``: one per row).
        x: the starting state, ``(B, ...)`` (noise times ``sigmas[0]`` for txt2img).
        sigmas: the σ grid, descending, usually ending at 0.
        extra_args: the model's keyword arguments.
        callback: called as ``callback({'x', 'i', 'sigma', 'sigma_hat', 'denoised'})``
            once per step, in order.
        disable: ``True`` hides the progress bar.
        s_churn: Algorithm 2's S_churn, the amount of churn (``0``: none).
        s_tmin: the least σ that is churned.
        s_tmax: the largest σ that is churned.
        s_noise: the scale of the churn's noise.

    Other Arguments:
        tol: picard's tolerance (``0``: k-diffusion's result to float rounding; ``None``:
            0.01 of each sample's RMS).
        window: steps per sweep (``"auto"``, an int, or ``None`` for all).
        **options: ``return_solution=True`` returns the :class:`picard.Solution` (with
            ``stats.iterations``, the sweeps); any other option of :func:`picard.solve`.

    Returns:
        The sample, shaped like ``x``.

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_euler(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, tol=0)
        tensor([[0.2812, 0.2812]])
    """
    churn = _churn(s_churn, s_tmin, s_tmax, s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: karras.euler(s, *churn), model, x, sigmas, extra_args, callback, disable,
        None, picard,
    )  # fmt: skip


@torch.no_grad()
def sample_euler_ancestral(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """Ancestral Euler steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        noise_sampler: ``noise_sampler(σ, σ_next)``, called in k-diffusion's order before
            the sweeps (default: ``torch.randn_like(x)``).
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> sample_euler_ancestral(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas).shape
        torch.Size([1, 2])
    """
    eta, s_noise = check_nonneg("eta", eta), real_number("s_noise", s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: karras.euler_ancestral(s, eta, s_noise), model, x, sigmas, extra_args,
        callback, disable, noise_sampler, picard,
    )  # fmt: skip


@torch.no_grad()
def sample_heun(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """Heun steps with Algorithm 2's churn (Karras et al. 2022), in parallel.

    Two model evaluations per step (one into σ = 0), each a step of picard's recursion.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        s_churn: S_churn (0: no churn).
        s_tmin: the least σ that is churned.
        s_tmax: the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_heun(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, tol=0)
        tensor([[0.2363, 0.2363]])
    """
    churn = _churn(s_churn, s_tmin, s_tmax, s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: karras.heun(s, *churn), model, x, sigmas, extra_args, callback, disable,
        None, picard,
    )  # fmt: skip


@torch.no_grad()
def sample_dpm_2(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """DPM-Solver-2 steps (midpoint in log σ) with Algorithm 2's churn, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        s_churn: S_churn (0: no churn).
        s_tmin: the least σ that is churned.
        s_tmax: the largest σ that is churned.
        s_noise: S_noise, the scale of the churn noise.
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_dpm_2(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, tol=0).shape
        torch.Size([1, 2])
    """
    churn = _churn(s_churn, s_tmin, s_tmax, s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: karras.dpm_2(s, *churn), model, x, sigmas, extra_args, callback, disable,
        None, picard,
    )  # fmt: skip


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """Ancestral DPM-Solver-2 steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        noise_sampler: ``noise_sampler(σ, σ_next)``, called in k-diffusion's order before
            the sweeps (default: ``torch.randn_like(x)``).
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> noise = lambda s, t: torch.zeros(1, 2)
        >>> sample_dpm_2_ancestral(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas,
        ...                        noise_sampler=noise, tol=0).shape
        torch.Size([1, 2])
    """
    eta, s_noise = check_nonneg("eta", eta), real_number("s_noise", s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: karras.dpm_2_ancestral(s, eta, s_noise), model, x, sigmas, extra_args,
        callback, disable, noise_sampler, picard,
    )  # fmt: skip


@torch.no_grad()
def sample_lms(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    order: int = 4,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """Linear multistep of ``order`` on the σ grid, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        order: the multistep's order (≥ 1).
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_lms(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, order=2, tol=0).shape
        torch.Size([1, 2])
    """
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: lms.lms(s, order), model, x, sigmas, extra_args, callback, disable, None,
        picard,
    )  # fmt: skip


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """Ancestral DPM-Solver++(2S) steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        noise_sampler: ``noise_sampler(σ, σ_next)``, called in k-diffusion's order before
            the sweeps (default: ``torch.randn_like(x)``).
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_dpmpp_2s_ancestral(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas,
        ...                           eta=0.0, tol=0).shape
        torch.Size([1, 2])
    """
    eta, s_noise = check_nonneg("eta", eta), real_number("s_noise", s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: dpmpp.dpmpp_2s_ancestral(s, eta, s_noise), model, x, sigmas, extra_args,
        callback, disable, noise_sampler, picard,
    )  # fmt: skip


@torch.no_grad()
def sample_dpmpp_sde(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    r: float = 1 / 2,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """DPM-Solver++ (stochastic) steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        noise_sampler: called in k-diffusion's order before the sweeps (default: a
            Brownian tree seeded from torch's global generator).
        r: the intermediate step's place in log σ, in (0, 1].
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_dpmpp_sde(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, tol=0).shape
        torch.Size([1, 2])
    """
    eta, s_noise = check_nonneg("eta", eta), real_number("s_noise", s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: dpmpp.dpmpp_sde(s, eta, s_noise, r), model, x, sigmas, extra_args,
        callback, disable, noise_sampler, picard, brownian=True,
    )  # fmt: skip


@torch.no_grad()
def sample_dpmpp_2m(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """DPM-Solver++(2M) steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_dpmpp_2m(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, tol=0)
        tensor([[0.2656, 0.2656]])
    """
    picard = {"tol": tol, "window": window, **options}
    return _run(dpmpp.dpmpp_2m, model, x, sigmas, extra_args, callback, disable, None, picard)


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_type: str = "midpoint",
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """DPM-Solver++(2M) SDE steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        noise_sampler: called in k-diffusion's order before the sweeps (default: a
            Brownian tree seeded from torch's global generator).
        solver_type: ``'midpoint'`` or ``'heun'``.
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
        >>> sample_dpmpp_2m_sde(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, eta=0.0,
        ...                     solver_type="heun", tol=0).shape
        torch.Size([1, 2])
    """
    eta, s_noise = check_nonneg("eta", eta), real_number("s_noise", s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: dpmpp.dpmpp_2m_sde(s, eta, s_noise, solver_type), model, x, sigmas,
        extra_args, callback, disable, noise_sampler, picard, brownian=True,
    )  # fmt: skip


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    *,
    tol: float | None = None,
    window: int | str | None = "auto",
    **options: Any,
) -> Result:
    """DPM-Solver++(3M) SDE steps, in parallel.

    Args:
        model: as for :func:`sample_euler`.
        x: as for :func:`sample_euler`.
        sigmas: as for :func:`sample_euler`.
        extra_args: as for :func:`sample_euler`.
        callback: as for :func:`sample_euler`.
        disable: as for :func:`sample_euler`.
        eta: η, the share of ancestral noise (0: none).
        s_noise: the scale of the noise.
        noise_sampler: called in k-diffusion's order before the sweeps (default: a
            Brownian tree seeded from torch's global generator).
        tol: picard's tolerance, as for :func:`sample_euler`.
        window: steps per sweep, as for :func:`sample_euler`.
        **options: picard's other options, as for :func:`sample_euler`.

    Returns:
        The sample, shaped like ``x`` (or the solution, with ``return_solution=True``).

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])
        >>> sample_dpmpp_3m_sde(lambda x, s: 0.5 * x, torch.ones(1, 2), sigmas, eta=0.0,
        ...                     tol=0).shape
        torch.Size([1, 2])
    """
    eta, s_noise = check_nonneg("eta", eta), real_number("s_noise", s_noise)
    picard = {"tol": tol, "window": window, **options}
    return _run(
        lambda s: dpmpp.dpmpp_3m_sde(s, eta, s_noise), model, x, sigmas, extra_args,
        callback, disable, noise_sampler, picard, brownian=True,
    )  # fmt: skip


SAMPLERS: dict[str, Callable[..., Result]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
}
"""The parallel samplers by k-diffusion's name (``sample_`` dropped), as the UIs name them.

Example:
    >>> len(SAMPLERS), SAMPLERS["euler"] is sample_euler
    (11, True)
"""
