"""Run a sampler's table as a picard solve, with k-diffusion's calling conventions.

:func:`sample` checks the arguments, draws the noise in sequential order, builds a
:class:`KProblem` (a :class:`~picard.adapters.rule.DiffusionProblem` on the table's
:class:`~picard.adapters.k_samplers.table.TableRule`) and solves it: one model call per
sweep for all the window's entries, ``model(x_rows, sigma_rows, **extra_args)`` with the
rows of every entry concatenated and each row's σ. ``extra_args`` tensors with one row per
sample (leading dimension the batch size) are gathered to the rows' samples; other values
are passed as they are (a model must then accept any number of rows, as ComfyUI's does).
The callback gets k-diffusion's dict for every step, in order, as each becomes final.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from picard.adapters.k_samplers.noise import NoiseSampler, PreDrawn, draw_noise
from picard.adapters.k_samplers.table import Table, TableRule
from picard.adapters.rule import DiffusionProblem
from picard.checks import check_state
from picard.core.options import Options
from picard.problem import Lanes, working_dtype
from picard.solution import Solution
from picard.solver import solve_with

__all__ = ["KProblem", "check_sigmas", "checked_input", "rows_of", "sample"]

Model = Callable[..., Tensor]


def rows_of(value: Any, samples: Tensor, batch: int) -> Any:
    """``value`` for rows of batch indices ``samples``: per-sample tensors gathered.

    Tensors whose leading dimension is ``batch`` are indexed by ``samples``; dicts, lists
    and tuples are gathered item by item; anything else is returned as it is.

    Args:
        value: the model's keyword arguments (or one of them).
        samples: ``(M,)`` the batch index of each row of the call.
        batch: the number of samples.

    Returns:
        ``value`` for the M rows.

    Example:
        >>> import torch
        >>> args = {"cond": torch.tensor([[1.0], [2.0]]), "scale": 7.5}
        >>> rows_of(args, torch.tensor([0, 1, 0, 1]), 2)["cond"].flatten().tolist()
        [1.0, 2.0, 1.0, 2.0]
    """
    if isinstance(value, Tensor):
        if value.ndim and value.shape[0] == batch:
            return value[samples.to(value.device)]
        return value
    if isinstance(value, dict):
        return {k: rows_of(v, samples, batch) for k, v in value.items()}
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(rows_of(v, samples, batch) for v in value)
    return value


def check_sigmas(sigmas: Any) -> Tensor:
    """``sigmas`` if the samplers can step it, else an error naming ``sigmas``.

    Refused: not a 1-D finite floating tensor of ≥ 2 values, a σ ≤ 0 before the last, or a
    negative last σ.

    Args:
        sigmas: the grid σ_0 … σ_N.

    Returns:
        ``sigmas``.

    Example:
        >>> check_sigmas(torch.tensor([1.0, 0.0])).tolist()
        [1.0, 0.0]
        >>> check_sigmas(torch.tensor([1.0]))
        Traceback (most recent call last):
            ...
        ValueError: sigmas must hold at least 2 values (σ_0 … σ_N), got shape (1,)
    """
    if not isinstance(sigmas, Tensor) or not sigmas.is_floating_point():
        kind = type(sigmas).__name__
        raise TypeError(f"sigmas must be a floating-point torch.Tensor, got {kind}")
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(
            f"sigmas must hold at least 2 values (σ_0 … σ_N), got shape {tuple(sigmas.shape)}"
        )
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas must be finite")
    if not bool((sigmas[:-1] > 0).all()) or sigmas[-1] < 0:
        raise ValueError("sigmas must be > 0 before the last value, which must be >= 0")
    return sigmas


class KProblem(DiffusionProblem):
    """A table's entries as a :class:`~picard.adapters.rule.DiffusionProblem`.

    Args:
        rule: the table's rule.
        model: the k-diffusion denoiser ``model(x, sigma, **extra_args)``.
        extra_args: its keyword arguments.
        batch: the number of samples.
        noise: the pre-drawn noise, or ``None``.
        record: per entry, whether to keep its last (state, denoised), for callbacks.

    Example:
        >>> import numpy as np, torch, picard
        >>> from picard.adapters.k_samplers.karras import euler
        >>> from picard.adapters.k_samplers.table import TableRule
        >>> rule = TableRule(euler(torch.tensor([2.0, 1.0, 0.0])), np.zeros(2, dtype=bool))
        >>> problem = KProblem(rule, lambda x, s: 0.5 * x, {}, 1, None)
        >>> picard.solve(problem, torch.ones(1, 2), tol=0).final.shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        rule: TableRule,
        model: Model,
        extra_args: Mapping[str, Any],
        batch: int,
        noise: PreDrawn | None,
        record: tuple[bool, ...] = (),
    ):
        super().__init__(rule, self._denoise_rows)
        self.model, self.extra_args, self.batch = model, extra_args, batch
        self.drawn, self.record = noise, record
        self.seen: dict[int, tuple[Tensor, Tensor]] = {}
        self._calls: list[tuple[Tensor, Tensor]] = []

    def _denoise_rows(self, x: Tensor, t: Tensor, samples: Tensor) -> Tensor:
        """``model(x, σ, **extra_args)`` on rows, per-sample arguments gathered."""
        args = rows_of(dict(self.extra_args), samples, self.batch)
        out = self.model(x, t.to(x.dtype), **args)
        if self.record:
            self._calls.append((x, out))
        return out

    def noise(self, x0: Tensor) -> PreDrawn | None:  # type: ignore[override]
        """The noise drawn before the solve, from the caller's noise sampler."""
        return self.drawn

    def increments(
        self, x: Tensor, start: int | Lanes, state: Any, history: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`DiffusionProblem.increments`, keeping what the callback reports."""
        self._calls.clear()
        inc, out = super().increments(x, start, state, history)
        if self.record and isinstance(start, int) and self._calls:
            rows = torch.cat([r for r, _ in self._calls])
            outs = torch.cat([o for _, o in self._calls])
            b = self.batch
            for j in range(x.shape[0]):
                if self.record[start + j]:
                    self.seen[start + j] = (rows[j * b : (j + 1) * b], outs[j * b : (j + 1) * b])
            self._calls.clear()
        return inc, out


def sample(
    table: Table,
    model: Model,
    x: Tensor,
    extra_args: Mapping[str, Any] | None,
    callback: Callable[[dict[str, Any]], Any] | None,
    disable: bool | None,
    noise_sampler: NoiseSampler,
    options: Options,
    return_solution: bool = False,
) -> Tensor | Solution:
    """Solve ``table`` for ``model`` from ``x`` (see the module notes).

    Args:
        table: the sampler's entries on the grid.
        model: ``model(x, sigma, **extra_args)`` returning the denoised estimate.
        x: the starting state (``sigmas[0]`` times unit noise, for txt2img).
        extra_args: the model's keyword arguments.
        callback: called with k-diffusion's dict for every step, in order.
        disable: ``True`` hides the progress bar (tqdm, if installed).
        noise_sampler: called for every draw, in sequential order.
        options: the solve's checked options.
        return_solution: return the :class:`picard.Solution` (with its stats).

    Returns:
        The final state, or the solution.

    Example:
        >>> import torch, picard
        >>> from picard.adapters.k_samplers.karras import euler
        >>> sigmas = torch.tensor([2.0, 1.0, 0.0])
        >>> noise = lambda s, t: torch.zeros(1, 2)
        >>> sample(euler(sigmas), lambda x, s: 0.5 * x, torch.ones(1, 2), None, None, True,
        ...        noise, picard.Options.of(tol=0))
        tensor([[0.3750, 0.3750]])
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if extra_args is not None and not isinstance(extra_args, Mapping):
        raise TypeError(f"extra_args must be a mapping or None, got {type(extra_args).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if callback is not None and (options.per_sample or options.verify is not False):
        raise ValueError("callback does not combine with per_sample or verify")
    work = working_dtype(x.dtype)
    x0, noise, noisy = draw_noise(table, noise_sampler, x, work)
    rule = TableRule(table, noisy)
    record = tuple(table.first) if callback is not None else ()
    problem = KProblem(rule, model, extra_args or {}, x.shape[0], noise, record)
    sigmas = table.sigmas
    lane_free = not options.per_sample and options.verify is False
    bar = _progress_bar(len(sigmas) - 1, disable) if lane_free else None

    def on_step(k: int, _: Tensor) -> None:
        if bar is not None and (k + 1 == table.num_entries or table.first[k + 1]):
            bar.update(1)
        if callback is None or not table.first[k]:
            return
        i = table.step[k]
        state, denoised = problem.seen.pop(k)
        callback(
            {
                "x": state,
                "i": i,
                "sigma": sigmas[i],
                "sigma_hat": table.sigma_hat[i],
                "denoised": denoised,
            }
        )

    hook = on_step if (callback is not None or bar is not None) else None
    u = rule.scales
    y0 = (x0.to(work) / u[0]).to(x0.dtype)
    try:
        solution = solve_with(problem, y0, options, on_step=hook)
    finally:
        if bar is not None:
            bar.close()
    final = (solution.final.to(work) * u[-1]).to(x.dtype)
    return replace(solution, final=final) if return_solution else final


def _progress_bar(total: int, disable: bool | None) -> Any:
    """A tqdm bar over the sampler's steps, or ``None`` (disabled or no tqdm)."""
    if disable is True:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, disable=disable)


def checked_input(x: Any) -> Tensor:
    """``x`` if it is a finite floating tensor with a batch dimension, else an error naming ``x``.

    Args:
        x: the sampler's starting state.

    Returns:
        ``x``.

    Example:
        >>> checked_input(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """
    x = check_state("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch dimension and a sample shape, got {tuple(x.shape)}")
    return x
