"""Calling a user's ``func(t, y)`` on a window's rows: batched, vectorised, or row by row.

picard evaluates a window's steps in one call, ``func(t: (M,), y: (M, *y0.shape))``. A
torchdiffeq-style ``func`` is written for one time and one state, and called that way it
may fail — or worse, run and give another answer (a norm over the whole window, a batch
statistic, a ``t`` concatenated as a feature). ``batched="auto"`` (the default) checks once
per solve: a few distinct rows evaluated together against the same rows one at a time.
Equal: the batched call is used. Different (or the batched call fails): ``func`` is
vectorised with :func:`torch.func.vmap`, checked the same way; where vmap cannot run it,
rows are evaluated one at a time (with one :class:`picard.PerformanceWarning`). A func
that branches on a tensor's value (``if y.sum() > 0``) can agree on the probe's rows and
differ on others: vmap detects the branch, and such a func is never called batched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from picard.errors import PerformanceWarning
from picard.evaluation import Replicable, module_device, replicate
from picard.problem import call_batched

__all__ = ["BATCHED", "batch_function", "batched_form", "call_one_row"]

BATCHED = (True, False, "auto")
"""Values of ``batched``."""

Func = Callable[[Tensor, Tensor], Tensor]

PROBE_ROWS = 5
"""Rows of the ``batched="auto"`` probe."""


def batch_function(func: Func, name: str) -> Func:
    """Wrap a one-row ``func(t, y)`` so that it takes a batch of rows (:func:`torch.func.vmap`).

    Args:
        func: the unbatched function, ``func(t: (), y: y0.shape) -> y0.shape``; a
            ``torch.nn.Module`` is wrapped so that ``devices=[...]`` can replicate it.
        name: how error messages name ``func`` (e.g. ``"func"`` or ``"f"``).

    Returns:
        The batched function ``(t: (M,), y: (M, *y0.shape)) -> (M, *y0.shape)``.

    Example:
        >>> f = batch_function(lambda t, y: t * y, "func")
        >>> f(torch.tensor([1.0, 2.0]), torch.ones(2, 3))  # row m scaled by t[m]
        tensor([[1., 1., 1.],
                [2., 2., 2.]])
    """
    return _wrap(func, lambda fn: _vmapped(fn, name))


def _wrap(func: Func, make: Callable[[Func], Func]) -> Func:
    """``make(func)``, rebuilt around a replica for ``devices=[...]`` when ``func`` is a model."""
    if isinstance(func, torch.nn.Module) or hasattr(func, "picard_replicate"):
        batched: Any = Replicable(
            lambda dev: make(func if dev is None else replicate(func, dev)), module_device(func)
        )
    else:
        batched = make(func)
    batched.picard_model = getattr(func, "picard_model", func)  # whose parameters get gradients
    batched.picard_one_row = func  # the user's own call on one row (for one-step solvers)
    return batched


def _vmapped(func: Func, name: str) -> Func:
    mapped = torch.func.vmap(func, in_dims=(0, 0))

    def batched(t: Tensor, y: Tensor) -> Tensor:
        try:
            return mapped(t, y)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            raise TypeError(
                f"{name} could not be vectorised with torch.func.vmap (batched=False): {err}. "
                f"Write {name} to take a batch of times (M,) and states (M, ...) and pass "
                "batched=True, or pass batched='auto' to evaluate its rows one at a time."
            ) from err

    return batched


def _rows(func: Func) -> Func:
    def one_at_a_time(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([func(t[r], y[r]) for r in range(y.shape[0])])

    return one_at_a_time


def batched_form(func: Func, name: str, batched: Any, t: Tensor, y0: Tensor) -> Func:
    """``func`` as a batched call, by ``batched`` (``True``, ``False`` or ``"auto"``).

    With ``"auto"``, probes ``func`` once on a few distinct rows built from times spread
    over ``t`` and ``y0`` (see the module docstring): the probe costs two small batched
    calls (direct and vmapped) and one call per probed row.

    Args:
        func: the user's function.
        name: how messages name it.
        batched: ``True`` (``func`` takes rows), ``False`` (vectorise it) or ``"auto"``.
        t: the grid (the probe's times).
        y0: the initial state (the probe's states are distinct perturbations of it).

    Returns:
        The batched call ``(t: (M,), y: (M, *y0.shape)) -> (M, *y0.shape)``.

    Raises:
        ValueError: ``batched`` is not one of :data:`BATCHED`.

    Example:
        >>> y0, t = torch.ones(3), torch.linspace(0, 1, 5)
        >>> f = batched_form(lambda t, y: -y / y.norm(), "func", "auto", t, y0)
        >>> f(t[:2], torch.ones(2, 3)).norm(dim=1).round(decimals=4).tolist()  # a norm per row
        [1.0, 1.0]
    """
    if batched is True:
        return func
    if batched is False:
        return batch_function(func, name)
    if batched != "auto":
        raise ValueError(f"batched must be True, False or 'auto', got {batched!r}")
    times, rows = _probe_rows(t, y0)
    with torch.no_grad():
        expected = _one_by_one(func, times, rows)
        if expected is None:  # func does not take one row: it is written for batches
            return func
        vmapped = batch_function(func, name)
        mapped, error = _try(vmapped, times, rows)
        if _agrees(_try(func, times, rows)[0], expected, rows) and not _branches(error):
            return func
        if _agrees(mapped, expected, rows):
            return vmapped
    warnings.warn(
        f"{name} cannot be called on a batch of rows (it gives other results than row by "
        "row, or branches on a tensor's value) and torch.func.vmap cannot vectorise it: "
        "picard evaluates its rows one at a time "
        "(correct but slow; write it for a batch of rows and pass batched=True to be fast)",
        PerformanceWarning,
        stacklevel=3,
    )
    rows = _wrap(func, _rows)
    rows.picard_row_by_row = True  # no batched call to gain from: adaptive methods step
    return rows


def _probe_rows(t: Tensor, y0: Tensor) -> tuple[Tensor, Tensor]:
    """A few distinct rows: times spread over the grid, ``y0`` perturbed differently in each.

    Five rows, at the grid's first, last and evenly spaced times between: a time-dependent
    term that vanishes near the start, or a row count equal to a state dimension (which
    broadcasting would hide), cannot make a wrong batched call agree.
    """
    k = min(PROBE_ROWS, t.shape[0])
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn((k, *y0.shape), generator=gen, dtype=torch.float64)
    scale = y0.detach().abs().double().mean().cpu() + 1.0
    rows = y0.detach().unsqueeze(0) + (0.1 * scale * noise).to(y0.dtype).to(y0.device)
    at = torch.linspace(0, t.shape[0] - 1, k).round().long().to(t.device)
    return t[at], rows


def _try(func: Func, times: Tensor, rows: Tensor) -> tuple[Tensor | None, Exception | None]:
    try:
        out = func(times, rows)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        return None, err
    return (out if isinstance(out, Tensor) and out.device == rows.device else None), None


def _branches(error: Exception | None) -> bool:
    """Whether vmap refused ``func`` for branching on a tensor's value.

    ``if y.sum() > 0`` or ``.item()``: a batched call can then agree on the probe's rows
    and differ on others.
    """
    text = str(error)
    return error is not None and ("data-dependent" in text or ".item()" in text)


def _one_by_one(func: Func, times: Tensor, rows: Tensor) -> Tensor | None:
    try:
        outs = [func(times[r], rows[r]) for r in range(rows.shape[0])]
    except (RuntimeError, ValueError, IndexError, TypeError):
        return None
    if not all(
        isinstance(o, Tensor) and o.shape == rows.shape[1:] and o.device == rows.device
        for o in outs
    ):
        return None  # not one-row outputs: func is written for batches (checked when solving)
    return torch.stack(outs)


def _agrees(got: Tensor | None, expected: Tensor, rows: Tensor) -> bool:
    if got is None or got.shape != expected.shape:
        return False
    eps = torch.finfo(expected.dtype).eps if expected.is_floating_point() else 0.0
    scale = float(expected.abs().max()) + float(rows.abs().max()) + 1.0
    return bool((got - expected).abs().max() <= 1e3 * eps * scale)


def call_one_row(func: Func, name: str, t: Tensor, y: Tensor, in_dtype: torch.dtype) -> Tensor:
    """``func`` on one time ``t: ()`` and one state ``y``, as a step-by-step solver calls it.

    A batched form of a one-row function (:func:`batch_function`) is bypassed: the user's
    own function is called directly, as torchdiffeq calls it, without vectorising one row.

    Args:
        func: the batched call (as :func:`batched_form` returns it).
        name: how messages name it.
        t: the time, 0-d.
        y: the state, in the working dtype.
        in_dtype: the dtype ``func`` receives ``y`` in.

    Returns:
        ``func(t, y)`` in ``y``'s dtype, shaped like ``y``.

    Example:
        >>> f = batch_function(lambda t, y: t * y, "func")
        >>> call_one_row(f, "func", torch.tensor(2.0), torch.ones(3), torch.float32)
        tensor([2., 2., 2.])
    """
    one = getattr(func, "picard_one_row", None)
    if one is None:
        return call_batched(func, name, t.reshape(1), y[None], in_dtype)[0]
    out = one(t, y.to(in_dtype))
    if not isinstance(out, Tensor) or out.shape != y.shape:
        return call_batched(func, name, t.reshape(1), y[None], in_dtype)[0]  # its checks
    return out.to(y.dtype)
