"""Where each sweep's rows come from: one window for the batch, or one per sample.

A plan owns a solve's workspace — the current guesses of the states of the running windows
— and knows how its problem is called: :class:`SharedWindow` slides one window for the
whole batch (the worst sample decides; rows are slices of the workspace, viewed as numpy
arrays on the CPU), :class:`PerSampleWindows` slides one window per sample (rows gathered
with index arrays; finished samples leave). Both present a sweep to the loop in the same
form, :class:`picard.core.sweep.Sweep`. The workspace holds two windows and is compacted as the
windows slide, so memory stays O(window) — unless every state is saved, when the shared
workspace is the whole trajectory (and the result).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from picard.core.arrays import Arrays, arrays_for
from picard.core.guess import Guess
from picard.core.sweep import Sweep
from picard.core.tolerance import Tolerance
from picard.errors import NonFiniteError
from picard.problem import Lanes, Problem, per_sample_size, working_dtype
from picard.solution import Solution, Stats

__all__ = ["PerSampleWindows", "Plan", "SharedWindow", "check_per_lane"]


@runtime_checkable
class Plan(Protocol):
    """The window layout of a solve and its workspace, as the loop drives it.

    :class:`SharedWindow` (one window for the batch) and :class:`PerSampleWindows` (one
    per sample) implement it; a sweep reaches strategies in one form either way, a
    :class:`~picard.core.sweep.Sweep` whose arrays are ``(rows, lanes)``.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -x, 4)
        >>> isinstance(SharedWindow(rule, torch.ones(1), None, 2), Plan)
        True
    """

    shared: bool
    """One window for every sample (``lanes`` is ``[0]``)."""
    running: bool
    """Steps remain."""
    active: int
    """Samples evaluated per window step (the acceleration's columns)."""

    def front(self) -> int:
        """The first step not final (the slowest lane's)."""
        ...

    def lengths(self, width: int, left: int | None) -> np.ndarray:
        """Each running lane's next window: ``width`` capped by its steps and ``left``."""
        ...

    def sweep(
        self, lengths: np.ndarray, problem: Problem, state: Any, guess: Guess, tol: Tolerance
    ) -> Sweep:
        """Enter new steps, evaluate every window in one call, form their Picard values."""
        ...

    def commit(self, sweep: Sweep, stride: np.ndarray) -> None:
        """Keep the new iterate; each lane's first ``stride`` states are final; slide."""
        ...

    def non_finite(self, sweep: Sweep, number: int, where: str | None) -> NonFiniteError:
        """The error for a sweep whose states are not finite."""
        ...

    def progress_note(self) -> str:
        """How far a stopped solve got, for error messages."""
        ...

    def partial(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """What a stopped solve has final."""
        ...

    def solution(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """The finished solve's result."""
        ...


class SharedWindow:
    """One window for the whole batch: ``problem.increments`` on slices of the workspace.

    Args:
        problem: the recursion.
        x0: the initial state.
        saved: the state indices to keep (``None``: only the final state).
        cap: the longest window.
        ops: the bookkeeping's array operations (default: numpy on the CPU).
        on_step: called as ``on_step(i, x_{i+1})`` for every step ``i`` in order, as its
            result becomes final (``x_{i+1}`` in ``x0``'s dtype; valid during the call).

    Example:
        >>> import torch, picard
        >>> plan = SharedWindow(picard.Recursion(lambda i, x: -x, 10), torch.ones(3), None, 4)
        >>> plan.running, plan.lengths(width=4, left=None).tolist(), plan.columns
        (True, [4], 1)
    """

    def __init__(
        self,
        problem: Problem,
        x0: Tensor,
        saved: Sequence[int] | None,
        cap: int,
        ops: Arrays | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ):
        self.problem, self.n, self.saved = problem, problem.num_steps, saved
        self.on_step, self.dtype = on_step, x0.dtype
        self.columns = per_sample_size(x0.shape, problem.batch_ndim)[0]
        self.keep_all = saved is not None and len(saved) == self.n + 1
        length = self.n + 1 if self.keep_all else min(self.n + 1, 2 * cap + 1)
        self.xs_t = x0.detach().to(working_dtype(x0.dtype)).expand(length, *x0.shape).clone()
        self.ops = ops or arrays_for(self.xs_t.device)
        self.xs = self.ops.view(self.xs_t)
        self.saver = (
            None if self.keep_all or saved is None else Saver(saved, self.xs_t[0], self.ops)
        )
        self.history: Tensor | None = None
        self.start = self.off = self.high = 0  # high: the window's end (its last state)
        self.lanes = np.zeros(1, dtype=np.int64)
        self.shared = True  # one window for every sample
        self.running = True  # steps remain
        self.active = self.columns  # samples evaluated per window step
        self.length = length
        self._lengths = np.zeros(1, dtype=np.int64)  # rewritten when the window changes
        self._w = 0  # the window of the current sweep
        self._new: Any = None
        self._out: Any = None

    def front(self) -> int:
        """The first step not final."""
        return self.start

    def lengths(self, width: int, left: int | None) -> np.ndarray:
        """The window of the next sweep: ``width`` capped by the steps and ``left``."""
        w = min(width, self.n - self.start)
        w = w if left is None else min(w, left)
        if w != self._w:
            self._w = w
            self._lengths = np.array([w])  # a new array: a sweep's may still be referenced
        return self._lengths

    def sweep(
        self, lengths: np.ndarray, problem: Problem, state: Any, guess: Guess, tol: Tolerance
    ) -> Sweep:
        """Enter new steps, evaluate the window in one call, form its Picard values."""
        w, start, ops = self._w, self.start, self.ops
        self._enter(start + w, guess, state)
        lo = start - self.off
        states = self.xs_t[lo : lo + w]
        inc, self._out = problem.increments(states, start, state, self.history)
        if (
            not isinstance(inc, Tensor)
            or inc.shape != states.shape
            or inc.dtype != states.dtype
            or inc.device != states.device
        ):
            bad_increments(inc, states)
        inc_a = ops.view(inc)
        new = ops.cumsum(inc_a)  # states start + 1 … start + w, by plain Picard
        new += self.xs[lo]
        self._new = new
        shape = (w, self.columns, -1)
        new3, old3 = new.reshape(shape), self.xs[lo + 1 : lo + w + 1].reshape(shape)
        change = tol.measure(ops, new3, old3)
        worst = change if self.columns == 1 else change.max(axis=1, keepdims=True)
        steps = slice(start, start + w)
        return Sweep(
            ops,
            self.lanes,
            None,  # [start], made when an acceleration asks
            lengths,
            self.xs[lo : lo + w],
            inc_a,
            new3,
            old3,
            worst,
            steps,
            tol,
            math.isfinite(worst.item(w - 1)),  # a cumsum carries NaN/Inf to the last state
            w * self.columns,
            start,
            self.n,
        )

    def non_finite(self, sweep: Sweep, number: int, where: str | None) -> NonFiniteError:
        """The error for a sweep whose states are not finite."""
        worst = sweep.change[:, 0]
        first = int(np.argmax(~np.isfinite(worst)))
        step = self.start + first
        label = self.problem.step_label(step)
        if where is not None:
            return NonFiniteError(f"{label}: NaN or Inf {where}", step=step)
        overflow = bool(torch.isfinite(torch.as_tensor(self._new[first])).all())
        what = "the change of the state overflowed" if overflow else "the increment was NaN or Inf"
        return NonFiniteError(f"{label}: {what} in sweep {number}", step=step, sweep=number)

    def commit(self, sweep: Sweep, stride: np.ndarray) -> None:
        """Keep the new iterate; the first ``stride`` states are final; slide."""
        w, s, lo = self._w, int(stride[0]), self.start - self.off
        self.xs[lo + 1 : lo + w + 1] = self._new
        if self.saver is not None:
            self.saver.add(self._new, self.start, s)
        if self.on_step is not None:
            final = self.xs_t[lo + 1 : lo + s + 1].to(self.dtype)
            for j in range(s):
                self.on_step(self.start + j, final[j])
        if self.problem.memory:
            self.history = remember(self.history, self._out, s, self.problem.memory)
        # Guesses beyond the window's end are stale: the next steps past it enter anew.
        self.high = self.start + w
        self.start += s
        self.running = self.start < self.n

    def _enter(self, need: int, guess: Guess, state: Any) -> None:
        """Make room for states up to ``need`` and give the new ones starting guesses."""
        if need - self.off >= self.length:  # compact: move the live part to the front
            keep = self.high - self.start + 1
            self.xs[:keep] = self.ops.copy(
                self.xs[self.start - self.off : self.high - self.off + 1]
            )
            self.off = self.start
        if need <= self.high:
            return
        lo, hi = self.high + 1 - self.off, need + 1 - self.off
        last = self.xs_t[self.high - self.off]
        fill = None
        if self.high > 0 or not guess.needs_history:
            fill = guess.guess(self.problem, last, self.high, need - self.high, state)
        self.xs[lo:hi] = self.ops.view(last if fill is None else fill.to(last.dtype))
        self.high = need

    def progress_note(self) -> str:
        """How far a stopped solve got, for error messages."""
        return f"converged {self.start} of {self.n} steps"

    def partial(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """What a stopped solve has final: state ``start`` and the saved states up to it."""
        ys: Tensor | None = None
        steps: Sequence[int] | None = None
        if self.keep_all:
            ys, steps = self.xs_t[: self.start + 1], range(self.start + 1)
        elif self.saver is not None:
            ys, steps = self.saver.ys_t[: self.saver.k], self.saver.steps[: self.saver.k]
        return solution(self.xs_t[self.start - self.off], ys, steps, stats, dtype)

    def solution(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """The finished solve's result."""
        ys = self.xs_t if self.keep_all else None if self.saver is None else self.saver.ys_t
        return solution(self.xs_t[self.n - self.off], ys, self.saved, stats, dtype)


class PerSampleWindows:
    """One window per sample: ``problem.increments`` with :class:`picard.Lanes`, rows gathered.

    Each sample ``s`` keeps its own window start; one sweep evaluates, in one batched call,
    rows ``b_s … b_s + w_s - 1`` of every unfinished sample, and each sample slides by its
    own converged prefix. A sample that reaches the last step leaves the batch. Each sample's
    iterates are those of solving it alone with the same window.

    Args:
        problem: the recursion, with one batch dimension and
            :attr:`~picard.Problem.per_lane` increments.
        x0: the initial states, ``(batch, ...)``.
        saved: the state indices to keep (``None``: only the final state).
        cap: the longest window.

    Example:
        >>> import torch
        >>> from diffusers import DDIMScheduler
        >>> from picard.adapters.diffusers import from_scheduler
        >>> problem = from_scheduler(DDIMScheduler(), lambda x, t: 0.1 * x, 10)
        >>> plan = PerSampleWindows(problem, torch.ones(3, 1, 2, 2), None, 4)
        >>> plan.lengths(width=4, left=None).tolist()  # one window per sample
        [4, 4, 4]
    """

    def __init__(self, problem: Problem, x0: Tensor, saved: Sequence[int] | None, cap: int):
        check_per_lane(problem)
        self.problem, self.n, self.saved = problem, problem.num_steps, saved
        self.batch = x0.shape[0]
        length = min(self.n + 1, 2 * cap + 1)
        self.buf_t = x0.detach().to(working_dtype(x0.dtype)).expand(length, *x0.shape).clone()
        self.ops = arrays_for(self.buf_t.device)
        self.buf = self.ops.view(self.buf_t)
        self.dev = self.buf_t.device
        self.start = np.zeros(self.batch, dtype=np.int64)  # per sample: its window's first step
        self.off = np.zeros(self.batch, dtype=np.int64)  # buf[k, s] is state off[s] + k of s
        self.high = np.zeros(self.batch, dtype=np.int64)  # per sample: the last guessed state
        self.hist: Tensor | None = None  # (memory, batch, ...): each sample's last outputs
        self.final = torch.empty_like(self.buf_t[0])
        self.ys = None if saved is None else self.buf_t.new_empty((len(saved), *x0.shape))
        if self.ys is not None and saved is not None and saved[0] == 0:
            self.ys[0] = self.buf_t[0]
        self.alive = np.arange(self.batch)  # the samples still running
        self.shared = False  # one window per sample
        self.running = True  # a sample is still running
        self.active = self.batch  # samples evaluated per window step
        self._rows: Any = None

    def front(self) -> int:
        """The slowest sample's first step not final."""
        return int(self.start.min())

    def lengths(self, width: int, left: int | None) -> np.ndarray:
        """Each running sample's window: ``width`` capped by its steps and ``left``."""
        lengths = np.minimum(width, self.n - self.start[self.alive])
        return lengths if left is None else np.minimum(lengths, left)

    def sweep(
        self, lengths: np.ndarray, problem: Problem, state: Any, guess: Guess, tol: Tolerance
    ) -> Sweep:
        """Enter new steps, evaluate every window in one call, form their Picard values."""
        ops, alive, dev = self.ops, self.alive, self.dev
        self._compact(lengths)
        need = self.start[alive] + lengths
        entering = need > self.high[alive]
        if entering.any():
            self._enter(alive[entering], need[entering], guess, state)
        j = np.arange(int(lengths.max()))[:, None]
        valid = j < lengths[None, :]
        steps = np.where(valid, self.start[alive][None, :] + j, -1)
        rows = (self.start[alive] - self.off[alive])[None, :] + np.minimum(j, lengths[None, :] - 1)
        cols = np.broadcast_to(alive, rows.shape)
        r, c = ops.index(rows, dev), ops.index(cols, dev)
        x = self.buf[r, c]
        samples = torch.as_tensor(alive, device=dev)
        history = None if self.hist is None else self.hist[:, samples]
        x_t = ops.tensor(x)
        lanes = Lanes(samples, torch.as_tensor(steps, device=dev))
        inc, out = problem.increments(x_t, lanes, state, history)
        if not isinstance(inc, Tensor) or inc.shape != x_t.shape or inc.dtype != x_t.dtype:
            bad_increments(inc, x_t)
        inc_a = ops.view(inc)
        new = ops.cumsum(inc_a) + x[:1]
        shape = (*rows.shape, -1)
        new3, old3 = new.reshape(shape), self.buf[r + 1, c].reshape(shape)
        change = np.where(valid, tol.measure(ops, new3, old3), 0.0)
        self._rows = (rows, valid, out, new)
        at = np.where(valid, steps, 0)
        last = change[lengths - 1, np.arange(len(lengths))]  # a cumsum carries NaN/Inf there
        return Sweep(
            ops,
            alive,
            self.start[alive],
            lengths,
            x.reshape(shape),
            inc_a.reshape(shape),
            new3,
            old3,
            change,
            at,
            tol,
            bool(np.isfinite(last).all()),
            int(lengths.sum()),
            int(self.start.min()),
            self.n,
        )

    def non_finite(self, sweep: Sweep, number: int, where: str | None) -> NonFiniteError:
        """The error for a sweep whose states are not finite."""
        rows, cols = np.nonzero(~np.isfinite(sweep.change))
        first = int(np.argmin(sweep.steps[rows, cols]))
        step = int(sweep.steps[rows[first], cols[first]])
        label = f"{self.problem.step_label(step)} of sample {int(sweep.lanes[cols[first]])}"
        if where is not None:
            return NonFiniteError(f"{label}: NaN or Inf {where}", step=step)
        return NonFiniteError(
            f"{label}: the increment or the change of the state was NaN or Inf in sweep {number}",
            step=step,
            sweep=number,
        )

    def commit(self, sweep: Sweep, stride: np.ndarray) -> None:
        """Keep each window's new iterate; its first ``stride`` states are final; slide."""
        rows, valid, out, new = self._rows
        alive, ops, dev = self.alive, self.ops, self.dev
        vr, vc = np.nonzero(valid)
        self.buf[ops.index(rows[vr, vc] + 1, dev), ops.index(alive[vc], dev)] = new[
            ops.index(vr, dev), ops.index(vc, dev)
        ]
        if self.problem.memory:
            self.hist = remember_per_sample(
                self.hist, out, alive, stride, self.problem.memory, self.batch
            )
        if self.ys is not None and self.saved is not None:
            self._save(ops.tensor(new), stride)
        self.start[alive] += stride
        done = self.start[alive] >= self.n
        for s in alive[done]:
            self.final[s] = self.buf_t[self.n - self.off[s], s]
        self.alive = alive[~done]
        self.running, self.active = bool(self.alive.size), int(self.alive.size)

    def _compact(self, lengths: np.ndarray) -> None:
        """Move each sample's live states to the front of its column when needed."""
        length = self.buf.shape[0]
        for k, s in enumerate(self.alive):
            if self.start[s] + lengths[k] - self.off[s] >= length:
                keep = self.high[s] - self.start[s] + 1
                src = self.buf_t[self.start[s] - self.off[s] : self.high[s] - self.off[s] + 1, s]
                self.buf_t[:keep, s] = src.clone()
                self.off[s] = self.start[s]

    def _enter(self, samples: np.ndarray, need: np.ndarray, guess: Guess, state: Any) -> None:
        """Fill states ``high[s] + 1 … need`` of ``samples`` with starting guesses."""
        dev, buf = self.dev, self.buf_t
        ends = self.high[samples].copy()
        counts = need - ends
        j = np.arange(int(counts.max()))[:, None]
        valid = torch.as_tensor(j < counts[None, :], device=dev)
        rows = torch.as_tensor(ends - self.off[samples] + 1 + j, device=dev)[valid]
        cols = torch.as_tensor(np.broadcast_to(samples, valid.shape).copy(), device=dev)[valid]
        self.high[samples] = need
        who = torch.as_tensor(samples, device=dev)
        last = buf[torch.as_tensor(ends - self.off[samples], device=dev), who]
        fill = None
        if ends.max() > 0 or not guess.needs_history:
            steps = torch.as_tensor(np.where(j < counts[None, :], ends + j, -1), device=dev)
            fill = guess.guess(self.problem, last, Lanes(who, steps), int(counts.max()), state)
        if fill is None:
            fill = last.expand(valid.shape[0], *last.shape)
        buf[rows, cols] = fill.to(buf.dtype)[valid]

    def _save(self, new: Tensor, stride: np.ndarray) -> None:
        """Copy the saved states each sample made final this sweep into ``ys``."""
        assert self.ys is not None and self.saved is not None
        steps = np.asarray(self.saved)
        for k, s in enumerate(self.alive):
            lo, hi = np.searchsorted(steps, [self.start[s] + 1, self.start[s] + stride[k] + 1])
            for idx in range(lo, hi):
                self.ys[idx, s] = new[steps[idx] - self.start[s] - 1, k]

    def progress_note(self) -> str:
        """How far a stopped solve got, for error messages."""
        return (
            f"left {self.alive.size} of {self.batch} samples unfinished (the slowest at step "
            f"{int(self.start[self.alive].min())} of {self.n})"
        )

    def partial(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """What a stopped solve has final: each sample's first state not final."""
        lows = [
            self.buf_t[self.start[s] - self.off[s], s] if self.start[s] < self.n else self.final[s]
            for s in range(self.batch)
        ]
        return solution(torch.stack(lows), None, None, stats, dtype)

    def solution(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """The finished solve's result."""
        return solution(self.final, self.ys, self.saved, stats, dtype)


def check_per_lane(problem: Problem) -> None:
    """Raise unless ``problem`` can run per-sample windows (:attr:`picard.Problem.per_lane`).

    Args:
        problem: the recursion.

    Raises:
        ValueError: it has not one batch dimension, or its increments take no lanes.

    Example:
        >>> import picard
        >>> try:
        ...     check_per_lane(picard.Recursion(lambda i, x: -x, 4, batch_dims=1))
        ... except ValueError as err:
        ...     "per_lane" in str(err)
        True
    """
    if problem.batch_ndim != 1 or not problem.per_lane:
        raise ValueError(
            "per_sample=True needs a problem with one batch dimension (batch_ndim=1) whose "
            "increments take per-sample lanes (per_lane=True), such as the diffusion "
            f"adapters; {type(problem).__name__} has batch_ndim={problem.batch_ndim}"
            + ("" if problem.per_lane else " and per_lane=False")
        )


def solution(
    final: Tensor, ys: Tensor | None, saved: Sequence[int] | None, stats: Stats, dtype: torch.dtype
) -> Solution:
    """A :class:`picard.Solution` in the caller's dtype (the final state copied)."""
    return Solution(
        final=final.to(dtype, copy=True),
        ys=None if ys is None else ys.to(dtype),
        steps=saved,
        stats=stats,
    )


class Saver:
    """Copies the states that ``save`` asked for into ``ys`` as sweeps make them final."""

    def __init__(self, steps: Sequence[int], x: Tensor, ops: Arrays):
        self.steps = steps
        self.ys_t = x.new_empty((len(steps), *x.shape))
        self.ys = ops.view(self.ys_t)
        self.at = ops.index(steps, x.device)
        self.k = 0  # steps[:k] are saved
        if steps[0] == 0:
            self.ys_t[0] = x
            self.k = 1

    def add(self, new: Any, start: int, stride: int) -> None:
        """``new[j]`` is state ``start + 1 + j``; states up to ``start + stride`` are final."""
        k, steps = self.k, self.steps
        stop = bisect.bisect_right(steps, start + stride, lo=k)
        if stop > k:
            if steps[stop - 1] - steps[k] == stop - 1 - k:  # contiguous: a slice, no gather
                self.ys[k:stop] = new[steps[k] - start - 1 : steps[stop - 1] - start]
            else:
                self.ys[k:stop] = new[self.at[k:stop] - (start + 1)]
            self.k = stop


def remember(history: Tensor | None, out: Any, done: int, memory: int) -> Tensor:
    """The outputs of the last ``memory`` final steps, for multistep problems."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"a problem with memory={memory} must return its outputs as a Tensor from "
            f"increments, got {type(out).__name__}"
        )
    new = out[:done] if history is None else torch.cat([history, out[:done]])
    return new[-memory:].clone()


def remember_per_sample(
    hist: Tensor | None, out: Any, alive: np.ndarray, stride: np.ndarray, memory: int, batch: int
) -> Tensor:
    """Each sample's outputs of its last ``memory`` final steps (zeros before step 0)."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"a problem with memory={memory} must return its outputs as a Tensor from "
            f"increments, got {type(out).__name__}"
        )
    if hist is None:
        hist = out.new_zeros((memory, batch, *out.shape[2:]))
    for k, s in enumerate(alive):
        hist[:, s] = torch.cat([hist[:, s], out[: stride[k], k]])[-memory:]
    return hist


def bad_increments(inc: Any, x: Tensor) -> None:
    """Raise the error for increments that are not a tensor like ``x``.

    Raises:
        TypeError: ``inc`` is not a tensor.
        ValueError: its shape, dtype or device differ from ``x``'s.

    Example:
        >>> import torch
        >>> try:
        ...     bad_increments(torch.ones(2), torch.ones(3))
        ... except ValueError as err:
        ...     "expected (3,)" in str(err)
        True
    """
    if not isinstance(inc, Tensor):
        raise TypeError(f"problem.increments must return a Tensor, got {type(inc).__name__}")
    raise ValueError(
        f"problem.increments returned {tuple(inc.shape)} {inc.dtype} on {inc.device}; "
        f"expected {tuple(x.shape)} {x.dtype} on {x.device}, like its input"
    )
