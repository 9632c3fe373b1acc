"""Per-sample windows: every sample of a batch slides its own window (``per_sample=True``).

The shared-window loop (:mod:`picard.solver`) slides the batch's window by the *worst*
sample's converged prefix, and keeps evaluating samples that are already done. Here each
sample ``s`` keeps its own window start ``b_s``; one sweep evaluates, in one batched call
(:meth:`picard.Problem.increments_at`), rows ``b_s … b_s + w_s - 1`` of every unfinished
sample, and each sample slides by its own converged prefix. A sample that reaches the
last step leaves the batch, and with a row budget (``max_rows``) its rows go to the
samples still running (longer windows). Each sample's iterates are those of solving it
alone with the same window, so every guarantee of the shared loop holds per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.errors import ConvergenceError, NonFiniteError
from picard.problem import Problem, working_dtype
from picard.solution import Solution, Stats

__all__ = ["per_sample_sweeps"]


def per_sample_sweeps(
    problem: Problem,
    x0: Tensor,
    window: int,
    threshold2: np.ndarray,
    inv_scale: np.ndarray,
    tol: float,
    max_iters: int,
    saved: Sequence[int] | None,
    progress: Callable[[int, int], None] | None,
    options: Any,
    draw: Callable[[Tensor], Any] | None = None,
) -> Solution:
    """The sweep loop with one window per sample (arguments checked by :func:`picard.solve`).

    ``threshold2`` holds the squared-norm thresholds per step, ``inv_scale`` the
    reciprocal norm scale per step (for :attr:`picard.Stats.residuals`), ``options`` the
    solve's :class:`picard.solver.SolveOptions`.

    Args:
        problem: the recursion, with one batch dimension and
            :meth:`picard.Problem.increments_at`.
        x0: the initial states, ``(batch, ...)``.
        window: the longest window (steps per sample per sweep).
        threshold2: ``(N,)`` squared-norm convergence thresholds, one per step.
        inv_scale: ``(N,)`` reciprocal norm scales, one per step.
        tol: the tolerance (reported in the stats).
        max_iters: the sweep budget.
        saved: the state indices to keep in ``Solution.ys``, or ``None`` for none.
        progress: called after every sweep as ``progress(steps_done, num_steps)``
            (the slowest sample's), or ``None``.
        options: the solve's :class:`picard.solver.SolveOptions`.
        draw: returns the solve's state for ``x0`` (default :meth:`picard.Problem.init`;
            verification solves reuse the first solve's noise through it).

    Returns:
        The :class:`picard.Solution`, each sample as solving it alone would give.

    Raises:
        picard.ConvergenceError: the budget ran out (with ``on_budget="raise"``).
        picard.NonFiniteError: a sweep met NaN or Inf (with ``on_nonfinite="raise"``).

    Example:
        >>> import torch, picard
        >>> from picard.adapters import ddim
        >>> from picard.adapters.rule import DiffusionProblem
        >>> p = DiffusionProblem(ddim.from_config({}, 5), lambda x, t: 0.1 * x)  # DDIM, 5 steps
        >>> x0 = torch.ones(2, 1, 2, 2)
        >>> sol = picard.solve(p, x0, per_sample=True, tol=0)  # runs per_sample_sweeps
        >>> sol.final.shape, torch.equal(sol.final, picard.sequential(p, x0).final)
        (torch.Size([2, 1, 2, 2]), True)
    """
    max_rows, predict, init = options.max_rows, options.predict, options.init
    n, batch = problem.num_steps, x0.shape[0]
    memory, rpe = problem.memory, problem.rows_per_evaluation

    def width(active: int) -> int:  # the common window length for `active` samples
        if max_rows is None:
            return window
        return max(1, min(window, max_rows // (active * rpe)))

    length = min(n + 1, 2 * width(1) + 1)
    buf = x0.detach().to(working_dtype(x0.dtype)).expand(length, *x0.shape).clone()
    dev = buf.device
    guesses = None if init is None else init.to(buf.dtype)
    state = (draw or problem.init)(x0)
    start = np.zeros(batch, dtype=np.int64)  # per sample: its window's first step
    off = np.zeros(batch, dtype=np.int64)  # buf[k, s] is state off[s] + k of sample s
    high = np.zeros(batch, dtype=np.int64)  # per sample: the last state holding a guess
    hist: Tensor | None = None  # (memory, batch, ...): each sample's last outputs
    final = torch.empty_like(buf[0])
    ys = None if saved is None else buf.new_empty((len(saved), *x0.shape))
    if ys is not None and saved is not None and saved[0] == 0:
        ys[0] = buf[0]
    starts: list[int] = []
    residuals: list[float] = []
    evaluations = 0
    active = np.arange(batch)
    stopped = False
    while active.size:
        lengths = np.minimum(width(active.size), n - start[active])
        if options.max_evaluations is not None:
            lengths = np.minimum(lengths, (options.max_evaluations - evaluations) // active.size)
        if len(starts) == max_iters or lengths.max() <= 0:
            if options.on_budget == "sequential":
                stopped = True
                break
            lows = [buf[start[s] - off[s], s] if start[s] < n else final[s] for s in range(batch)]
            stats = _stats(problem, width(1), tol, evaluations, starts, residuals)
            what = (
                f"max_iters={max_iters} sweeps"
                if len(starts) == max_iters
                else f"max_evaluations={options.max_evaluations} evaluations"
            )
            state_now = torch.stack(lows).to(x0.dtype)
            raise ConvergenceError(
                f"{what} left {active.size} of {batch} samples unfinished (the slowest at "
                f"step {int(start[active].min())} of {n}); raise the budget or tol, or pass "
                'on_budget="sequential" to finish step by step',
                stats=stats,
                steps_done=int(start[active].min()),
                state=state_now,
                solution=Solution(final=state_now, ys=None, steps=None, stats=stats),
            )
        for k, s in enumerate(active):
            if start[s] + lengths[k] - off[s] >= length:  # compact this sample's column
                keep = high[s] - start[s] + 1
                buf[:keep, s] = buf[start[s] - off[s] : high[s] - off[s] + 1, s].clone()
                off[s] = start[s]
        need = start[active] + lengths
        entering = need > high[active]
        if entering.any():
            _enter(
                problem, buf, active[entering], off, high, need[entering], state, predict, guesses
            )
        j = np.arange(int(lengths.max()))[:, None]
        valid = j < lengths[None, :]
        steps = np.where(valid, start[active][None, :] + j, -1)
        rows_np = (start[active] - off[active])[None, :] + np.minimum(j, lengths[None, :] - 1)
        rows = torch.as_tensor(rows_np, device=dev)
        cols = torch.as_tensor(np.broadcast_to(active, rows_np.shape).copy(), device=dev)
        samples = torch.as_tensor(active, device=dev)
        x = buf[rows, cols]
        history = None if hist is None else hist[:, samples]
        inc, out = problem.increments_at(
            x, torch.as_tensor(steps, device=dev), samples, state, history
        )
        if not isinstance(inc, Tensor) or inc.shape != x.shape or inc.dtype != x.dtype:
            raise ValueError(
                f"problem.increments_at returned {getattr(inc, 'shape', type(inc).__name__)}; "
                f"expected {tuple(x.shape)} {x.dtype}, like its input"
            )
        new = torch.cumsum(inc, 0) + x[:1]
        diff = (new - buf[rows + 1, cols]).reshape(*rows_np.shape, -1)
        change = torch.sum(diff * diff, -1)
        if options.relative:
            flat = new.reshape(*rows_np.shape, -1)
            change = change / torch.sum(flat * flat, -1).clamp(min=torch.finfo(flat.dtype).tiny)
        change = np.where(valid, change.cpu().numpy(), 0.0)
        at = np.where(valid, steps, 0)
        evaluations += int(lengths.sum())
        starts.append(int(start[active].min()))
        if not np.isfinite(change).all():
            if options.on_nonfinite == "sequential":
                stopped = True
                break
            raise _non_finite(problem, change, steps, active, len(starts))
        residuals.append(float(np.sqrt((change * np.square(inv_scale[at])).max())))
        bad = (change > threshold2[at]) & valid
        stride = np.where(bad.any(0), bad.argmax(0) + 1, lengths)
        vr, vc = (torch.as_tensor(v, device=dev) for v in np.nonzero(valid))
        buf[rows[vr, vc] + 1, cols[vr, vc]] = new[vr, vc]
        if memory:
            hist = _remember(hist, out, active, stride, memory, batch)
        if ys is not None and saved is not None:
            _save(ys, saved, new, active, start, stride)
        start[active] += stride
        done = start[active] >= n
        for s in active[done]:
            final[s] = buf[n - off[s], s]
        active = active[~done]
        if progress is not None:
            progress(int(start.min()), n)
    rounds = 0
    if stopped:  # the rest step by step, every unfinished sample one step per round
        rounds, evaluations = _finish(
            problem, state, buf, start, off, active, hist, final, ys, saved, evaluations
        )
    stats = _stats(problem, width(1), tol, evaluations, starts, residuals, rounds)
    return Solution(
        final=final.to(x0.dtype),
        ys=None if ys is None else ys.to(x0.dtype),
        steps=saved,
        stats=stats,
    )


def _finish(
    problem: Problem,
    state: Any,
    buf: Tensor,
    start: np.ndarray,
    off: np.ndarray,
    active: np.ndarray,
    hist: Tensor | None,
    final: Tensor,
    ys: Tensor | None,
    saved: Sequence[int] | None,
    evaluations: int,
) -> tuple[int, int]:
    """Finish the ``active`` samples one step per round; returns (rounds, evaluations)."""
    n, memory, dev = problem.num_steps, problem.memory, buf.device
    cur = buf[torch.as_tensor(start[active] - off[active], device=dev), torch.as_tensor(active)]
    rounds = 0
    while active.size:
        samples = torch.as_tensor(active, device=dev)
        steps = torch.as_tensor(start[active][None, :], device=dev)
        history = None if hist is None else hist[:, samples]
        inc, out = problem.increments_at(cur[None], steps, samples, state, history)
        cur = cur + inc[0]
        rounds += 1
        evaluations += active.size
        bad = ~torch.isfinite(cur.reshape(active.size, -1)).all(1)
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            step = int(start[active[k]])
            raise NonFiniteError(
                f"{problem.step_label(step)} of sample {int(active[k])}: NaN or Inf even when "
                "taken sequentially (the fallback after the sweeps stopped)",
                step=step,
            )
        one = np.ones(active.size, dtype=np.int64)
        if memory:
            hist = _remember(hist, out, active, one, memory, final.shape[0])
        if ys is not None and saved is not None:
            _save(ys, saved, cur[None], active, start, one)
        start[active] += 1
        done = start[active] >= n
        for k in np.flatnonzero(done):
            final[active[k]] = cur[k]
        keep = ~done
        active, cur = active[keep], cur[torch.as_tensor(keep, device=dev)]
    return rounds, evaluations


def _enter(
    problem: Problem,
    buf: Tensor,
    samples: np.ndarray,
    off: np.ndarray,
    high: np.ndarray,
    need: np.ndarray,
    state: Any,
    predict: bool,
    guesses: Tensor | None,
) -> None:
    """Fill states ``high[s] + 1 … need`` of ``samples`` in ``buf`` with starting guesses.

    Warm start (``guesses``), the problem's prediction, or a copy of state ``high[s]``.
    """
    dev = buf.device
    ends = high[samples].copy()
    counts = need - ends
    j = np.arange(int(counts.max()))[:, None]
    valid = torch.as_tensor(j < counts[None, :], device=dev)
    rows = torch.as_tensor(ends - off[samples] + 1 + j, device=dev)[valid]
    cols = torch.as_tensor(np.broadcast_to(samples, valid.shape).copy(), device=dev)[valid]
    high[samples] = need
    if guesses is not None:
        buf[rows, cols] = guesses[torch.as_tensor(ends + 1 + j, device=dev)[valid], cols]
        return
    who = torch.as_tensor(samples, device=dev)
    last = buf[torch.as_tensor(ends - off[samples], device=dev), who]
    if predict:
        fill = problem.guess_at(
            last, who, torch.as_tensor(ends, device=dev), torch.as_tensor(counts, device=dev), state
        )
        if fill is not None:
            expected = (int(counts.max()), *last.shape)
            if tuple(fill.shape) != expected:
                raise ValueError(
                    f"problem.guess_at returned shape {tuple(fill.shape)}; expected {expected}"
                )
            buf[rows, cols] = fill.to(buf.dtype)[valid]
            return
    buf[rows, cols] = last.expand(valid.shape[0], *last.shape)[valid]


def _remember(
    hist: Tensor | None, out: Any, active: np.ndarray, stride: np.ndarray, memory: int, batch: int
) -> Tensor:
    """Each sample's outputs of its last ``memory`` finalized steps (zeros before step 0)."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"a problem with memory={memory} must return its outputs as a Tensor from "
            f"increments_at, got {type(out).__name__}"
        )
    if hist is None:
        hist = out.new_zeros((memory, batch, *out.shape[2:]))
    for k, s in enumerate(active):
        hist[:, s] = torch.cat([hist[:, s], out[: stride[k], k]])[-memory:]
    return hist


def _save(
    ys: Tensor,
    saved: Sequence[int],
    new: Tensor,
    active: np.ndarray,
    start: np.ndarray,
    stride: np.ndarray,
) -> None:
    """Copy the saved states each sample finalized this sweep into ``ys``."""
    steps = np.asarray(saved)
    for k, s in enumerate(active):
        lo, hi = np.searchsorted(steps, [start[s] + 1, start[s] + stride[k] + 1])
        for idx in range(lo, hi):
            ys[idx, s] = new[steps[idx] - start[s] - 1, k]


def _non_finite(
    problem: Problem, change: np.ndarray, steps: np.ndarray, active: np.ndarray, sweep: int
) -> NonFiniteError:
    rows, cols = np.nonzero(~np.isfinite(change))
    first = int(np.argmin(steps[rows, cols]))
    step = int(steps[rows[first], cols[first]])
    sample = int(active[cols[first]])
    return NonFiniteError(
        f"{problem.step_label(step)} of sample {sample}: the increment or the change of the "
        f"state was NaN or Inf in sweep {sweep}",
        step=step,
        sweep=sweep,
    )


def _stats(
    problem: Problem,
    window: int,
    tol: float,
    evaluations: int,
    starts: list[int],
    residuals: list[float],
    rounds: int = 0,
) -> Stats:
    return Stats(
        num_steps=problem.num_steps,
        window=window,
        tol=tol,
        iterations=len(starts) + rounds,
        evaluations=evaluations,
        stages=problem.stages,
        window_starts=tuple(starts),
        rows_per_evaluation=problem.rows_per_evaluation,
        sweep_residuals=tuple(residuals),
        sequential_steps=rounds,
    )
