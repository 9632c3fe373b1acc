"""Where each sweep's rows come from: sliding windows, one per lane.

A plan owns a solve's workspace — the current guesses of the states of the running windows
— and knows how its problem is called. :class:`Windows` slides one window per *lane*, what
slides as one: the whole batch (one lane; the worst sample decides; rows are slices of the
workspace, viewed as numpy arrays on the CPU — the fast path) or each sample (one lane per
sample; rows gathered with index arrays; finished samples leave). :func:`SharedWindow` and
:func:`PerSampleWindows` build the two. Either way a sweep reaches the loop in one form,
:class:`picard.core.sweep.Sweep`. The workspace holds two windows and is compacted as the
windows slide, so memory stays O(window) — unless every state is saved, when the one
lane's workspace is the whole trajectory (and the result).
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

__all__ = ["PerSampleWindows", "Plan", "SharedWindow", "Windows", "check_per_lane"]


@runtime_checkable
class Plan(Protocol):
    """The window layout of a solve and its workspace, as the loop drives it.

    :class:`Windows` implements it, with one window for the batch or one per sample; a
    sweep reaches strategies in one form either way, a :class:`~picard.core.sweep.Sweep`
    whose arrays are ``(rows, lanes)``.

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
    samples: int
    """The batch's samples (its batch dimensions flattened)."""

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


class Windows:
    """Sliding windows, one per *lane*, over one workspace ``(length, *x0.shape)``.

    A lane is what slides as one: the whole batch (one window, the worst sample decides)
    or, with ``per_sample=True``, each sample (``problem.increments`` gets
    :class:`picard.Lanes`; a sample that reaches the last step leaves, and each sample's
    iterates are those of solving it alone). Every lane keeps its first step not final
    (``start``), the state in row 0 of its part of the workspace (``off``) and its last
    guessed state (``high``); the workspace holds two windows and each lane's part is
    compacted as it slides, so memory stays O(window) — unless every state is saved, when
    it is the whole trajectory (and the result). The one lane spanning the batch is the
    fast path: its bookkeeping is Python ints and its rows are slices (viewed as numpy
    arrays on the CPU); many lanes gather their rows with index arrays.

    Args:
        problem: the recursion; with ``per_sample``, one batch dimension and
            :attr:`~picard.Problem.per_lane` increments.
        x0: the initial state (``(batch, ...)`` with ``per_sample``).
        saved: the state indices to keep (``None``: only the final state).
        cap: the longest window.
        per_sample: one lane per sample instead of one for the batch.
        ops: the bookkeeping's array operations (default: numpy on the CPU).
        on_step: one lane for the batch only: called as ``on_step(i, x_{i+1})`` for every
            step ``i`` in order, as its result becomes final (``x_{i+1}`` in ``x0``'s dtype;
            valid during the call).

    Example:
        >>> import torch, picard
        >>> plan = Windows(picard.Recursion(lambda i, x: -x, 10), torch.ones(3), None, 4)
        >>> plan.running, plan.lengths(width=4, left=None).tolist(), plan.columns
        (True, [4], 1)
    """

    def __init__(
        self,
        problem: Problem,
        x0: Tensor,
        saved: Sequence[int] | None,
        cap: int,
        *,
        per_sample: bool = False,
        ops: Arrays | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ):
        if per_sample:
            check_per_lane(problem)
        self.problem, self.n, self.saved = problem, problem.num_steps, saved
        self.on_step, self.dtype = on_step, x0.dtype
        self.shared = not per_sample  # one lane for every sample
        self.samples = per_sample_size(x0.shape, problem.batch_ndim)[0]
        self.columns = self.samples if self.shared else 1  # samples per lane
        self.keep_all = self.shared and saved is not None and len(saved) == self.n + 1
        length = self.n + 1 if self.keep_all else min(self.n + 1, 2 * cap + 1)
        self.xs_t = x0.detach().to(working_dtype(x0.dtype)).expand(length, *x0.shape).clone()
        self.ops = ops or arrays_for(self.xs_t.device)
        self.xs, self.dev, self.length = self.ops.view(self.xs_t), self.xs_t.device, length
        self.saver = (
            None if self.keep_all or saved is None else Saver(saved, self.xs_t[0], self.ops)
        )
        self.lanes = np.arange(1 if self.shared else self.samples)  # the running lanes
        # start, off, high: ints for the one lane of the batch, else arrays indexed by lane
        self.start: Any = 0 if self.shared else np.zeros(self.samples, dtype=np.int64)
        self.off: Any = 0 if self.shared else np.zeros(self.samples, dtype=np.int64)
        self.high: Any = 0 if self.shared else np.zeros(self.samples, dtype=np.int64)
        self.history: Tensor | None = None  # the outputs of the last final steps
        self.running = True  # steps remain
        self.active = self.samples  # samples evaluated per window step
        self._lengths = np.zeros(1, dtype=np.int64)  # one lane: rewritten when it changes
        self._w = 0  # one lane: the window of the current sweep
        self._kept: Any = None  # what commit needs of the current sweep

    def front(self) -> int:
        """The first step not final (the slowest lane's)."""
        return self.start if self.shared else int(self.start.min())

    def lengths(self, width: int, left: int | None) -> np.ndarray:
        """Each running lane's next window: ``width`` capped by its steps and ``left``."""
        if not self.shared:
            lengths = np.minimum(width, self.n - self.start[self.lanes])
            return lengths if left is None else np.minimum(lengths, left)
        w = min(width, self.n - self.start)
        w = w if left is None else min(w, left)
        if w != self._w:
            self._w = w
            self._lengths = np.array([w])  # a new array: a sweep's may still be referenced
        return self._lengths

    def sweep(
        self, lengths: np.ndarray, problem: Problem, state: Any, guess: Guess, tol: Tolerance
    ) -> Sweep:
        """Enter new steps, evaluate every window in one call, form their Picard values.

        The one lane of the batch, here, takes rows as slices of the workspace; many lanes
        gather theirs (:meth:`_gathered`).
        """
        if not self.shared:
            return self._gathered(lengths, problem, state, guess, tol)
        w, start, ops = self._w, self.start, self.ops
        if start + w - self.off >= self.length:
            self.off = self._compact((), start, self.off, self.high)
        if start + w > self.high:
            self._enter_slice(start + w, guess, state)
        lo = start - self.off
        states = self.xs_t[lo : lo + w]
        inc, out = problem.increments(states, start, state, self.history)
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
        self._kept = (new, out)
        shape = (w, self.columns, -1)
        new3, old3 = new.reshape(shape), self.xs[lo + 1 : lo + w + 1].reshape(shape)
        delta = new3 - old3
        change = tol.measure(ops, new3, old3, delta)
        worst = change if self.columns == 1 else change.max(axis=1, keepdims=True)
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
            slice(start, start + w),
            tol,
            math.isfinite(worst.item(w - 1)),  # a cumsum carries NaN/Inf to the last state
            w * self.columns,
            start,
            self.n,
            delta,
        )

    def _gathered(
        self, lengths: np.ndarray, problem: Problem, state: Any, guess: Guess, tol: Tolerance
    ) -> Sweep:
        """The sweep of one lane per sample: rows gathered with index arrays."""
        ops, alive, dev = self.ops, self.lanes, self.dev
        starts = self.start[alive]
        need = starts + lengths
        for k, s in enumerate(alive):
            if need[k] - self.off[s] >= self.length:
                self.off[s] = self._compact((s,), self.start[s], self.off[s], self.high[s])
        entering = need > self.high[alive]
        if entering.any():
            self._enter_gather(alive[entering], need[entering], guess, state)
        j = np.arange(int(lengths.max()))[:, None]
        valid = j < lengths[None, :]
        steps = np.where(valid, starts[None, :] + j, -1)
        rows = (starts - self.off[alive])[None, :] + np.minimum(j, lengths[None, :] - 1)
        r, c = ops.index(rows, dev), ops.index(np.broadcast_to(alive, rows.shape), dev)
        x = self.xs[r, c]
        samples = torch.as_tensor(alive, device=dev)
        history = None if self.history is None else self.history[:, samples]
        x_t = ops.tensor(x)
        inc, out = problem.increments(
            x_t, Lanes(samples, torch.as_tensor(steps, device=dev)), state, history
        )
        if not isinstance(inc, Tensor) or inc.shape != x_t.shape or inc.dtype != x_t.dtype:
            bad_increments(inc, x_t)
        inc_a = ops.view(inc)
        new = ops.cumsum(inc_a) + x[:1]
        shape = (*rows.shape, -1)
        new3, old3 = new.reshape(shape), self.xs[r + 1, c].reshape(shape)
        delta = new3 - old3
        change = np.where(valid, tol.measure(ops, new3, old3, delta), 0.0)
        self._kept = (new, out, rows, valid)
        last = change[lengths - 1, np.arange(len(lengths))]  # a cumsum carries NaN/Inf there
        return Sweep(
            ops,
            alive,
            starts,
            lengths,
            x.reshape(shape),
            inc_a.reshape(shape),
            new3,
            old3,
            change,
            np.where(valid, steps, 0),
            tol,
            bool(np.isfinite(last).all()),
            int(lengths.sum()),
            int(self.start.min()),
            self.n,
            delta,
        )

    def non_finite(self, sweep: Sweep, number: int, where: str | None) -> NonFiniteError:
        """The error for a sweep whose states are not finite."""
        if self.shared:
            first = int(np.argmax(~np.isfinite(sweep.change[:, 0])))
            step = self.start + first
            label = self.problem.step_label(step)
            overflow = bool(torch.isfinite(torch.as_tensor(self._kept[0][first])).all())
            what = "the change of the state overflowed"
            what = what if overflow else "the increment was NaN or Inf"
        else:
            rows, cols = np.nonzero(~np.isfinite(sweep.change))
            at = int(np.argmin(sweep.steps[rows, cols]))
            step = int(sweep.steps[rows[at], cols[at]])
            label = f"{self.problem.step_label(step)} of sample {int(sweep.lanes[cols[at]])}"
            what = "the increment or the change of the state was NaN or Inf"
        if where is not None:
            return NonFiniteError(f"{label}: NaN or Inf {where}", step=step)
        return NonFiniteError(f"{label}: {what} in sweep {number}", step=step, sweep=number)

    def commit(self, sweep: Sweep, stride: np.ndarray) -> None:
        """Keep each window's new iterate; its first ``stride`` states are final; slide.

        The one lane of the batch, here, writes a slice; many lanes scatter
        (:meth:`_scattered`).
        """
        if not self.shared:
            return self._scattered(stride)
        (new, out), w, start, s = self._kept, self._w, self.start, int(stride[0])
        lo = start - self.off
        self.xs[lo + 1 : lo + w + 1] = new
        if self.saver is not None:
            self.saver.add(new, start, s)
        if self.on_step is not None:
            final = self.xs_t[lo + 1 : lo + s + 1].to(self.dtype)
            for j in range(s):
                self.on_step(start + j, final[j])
        if self.problem.memory:
            self.history = remember(self.history, out, s, self.problem.memory)
        # Guesses beyond the window's end are stale: the next steps past it enter anew.
        self.high = start + w
        self.start = start + s
        self.running = self.start < self.n

    def _scattered(self, stride: np.ndarray) -> None:
        """One lane per sample: the new iterates scattered; finished samples leave."""
        new, out, rows, valid = self._kept
        alive, ops, dev = self.lanes, self.ops, self.dev
        vr, vc = np.nonzero(valid)
        self.xs[ops.index(rows[vr, vc] + 1, dev), ops.index(alive[vc], dev)] = new[
            ops.index(vr, dev), ops.index(vc, dev)
        ]
        if self.problem.memory:
            self.history = remember_per_sample(
                self.history, out, alive, stride, self.problem.memory, self.samples
            )
        if self.saver is not None:
            self.saver.add_lanes(ops.tensor(new), alive, self.start[alive], stride)
        self.start[alive] += stride
        self.lanes = alive[self.start[alive] < self.n]
        self.running, self.active = bool(self.lanes.size), int(self.lanes.size)

    def _compact(self, lane: tuple, start: int, off: int, high: int) -> int:
        """Move a lane's live states to the front of its part of the workspace; its new off."""
        live = self.ops.copy(self.xs[(slice(start - off, high - off + 1), *lane)])
        self.xs[(slice(0, high - start + 1), *lane)] = live
        return start

    def _guesses(
        self, last: Tensor, at: Any, count: int, fresh: bool, guess: Guess, state: Any
    ) -> Tensor | None:
        """The guesses of ``count`` steps entering past ``last`` (``None``: copy ``last``)."""
        if fresh and guess.needs_history:  # nothing to extrapolate from before step 0
            return None
        return guess.guess(self.problem, last, at, count, state)

    def _enter_slice(self, need: int, guess: Guess, state: Any) -> None:
        """The one lane of the batch: states ``high + 1 … need`` get starting guesses."""
        lo, hi = self.high + 1 - self.off, need + 1 - self.off
        last = self.xs_t[self.high - self.off]
        fill = self._guesses(last, self.high, need - self.high, self.high == 0, guess, state)
        self.xs[lo:hi] = self.ops.view(last if fill is None else fill.to(last.dtype))
        self.high = need

    def _enter_gather(
        self, samples: np.ndarray, need: np.ndarray, guess: Guess, state: Any
    ) -> None:
        """One lane per sample: states ``high[s] + 1 … need`` of ``samples`` get guesses."""
        dev, xs = self.dev, self.xs_t
        ends = self.high[samples].copy()
        counts = need - ends
        j = np.arange(int(counts.max()))[:, None]
        valid = torch.as_tensor(j < counts[None, :], device=dev)
        rows = torch.as_tensor(ends - self.off[samples] + 1 + j, device=dev)[valid]
        cols = torch.as_tensor(np.broadcast_to(samples, valid.shape).copy(), device=dev)[valid]
        self.high[samples] = need
        who = torch.as_tensor(samples, device=dev)
        last = xs[torch.as_tensor(ends - self.off[samples], device=dev), who]
        steps = torch.as_tensor(np.where(j < counts[None, :], ends + j, -1), device=dev)
        fill = self._guesses(
            last, Lanes(who, steps), int(counts.max()), ends.max() == 0, guess, state
        )
        if fill is None:
            fill = last.expand(valid.shape[0], *last.shape)
        xs[rows, cols] = fill.to(xs.dtype)[valid]

    def _lows(self) -> Tensor:
        """Each sample's state at its lane's first step not final (the final state when done)."""
        if self.shared:
            return self.xs_t[self.start - self.off]
        every = torch.arange(self.samples, device=self.dev)
        return self.xs_t[torch.as_tensor(self.start - self.off, device=self.dev), every]

    def progress_note(self) -> str:
        """How far a stopped solve got, for error messages."""
        if self.shared:
            return f"converged {self.start} of {self.n} steps"
        return (
            f"left {self.lanes.size} of {self.samples} samples unfinished (the slowest at step "
            f"{int(self.start[self.lanes].min())} of {self.n})"
        )

    def partial(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """What a stopped solve has final: each lane's first state not final (and saved)."""
        ys: Tensor | None = None
        steps: Sequence[int] | None = None
        if self.keep_all:
            ys, steps = self.xs_t[: self.start + 1], range(self.start + 1)
        elif self.saver is not None and self.shared:
            ys, steps = self.saver.ys_t[: self.saver.k], self.saver.steps[: self.saver.k]
        return solution(self._lows(), ys, steps, stats, dtype)

    def solution(self, stats: Stats, dtype: torch.dtype) -> Solution:
        """The finished solve's result."""
        ys = self.xs_t if self.keep_all else None if self.saver is None else self.saver.ys_t
        return solution(self._lows(), ys, self.saved, stats, dtype)


def SharedWindow(
    problem: Problem,
    x0: Tensor,
    saved: Sequence[int] | None,
    cap: int,
    ops: Arrays | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> Windows:
    """One window for the whole batch: :class:`Windows` with one lane.

    Args:
        problem: the recursion.
        x0: the initial state.
        saved: the state indices to keep (``None``: only the final state).
        cap: the longest window.
        ops: the bookkeeping's array operations (default: numpy on the CPU).
        on_step: called as ``on_step(i, x_{i+1})`` for every step ``i`` in order, as its
            result becomes final.

    Returns:
        The plan.

    Example:
        >>> import torch, picard
        >>> plan = SharedWindow(picard.Recursion(lambda i, x: -x, 10), torch.ones(3), None, 4)
        >>> plan.running, plan.lengths(width=4, left=None).tolist(), plan.columns
        (True, [4], 1)
    """
    return Windows(problem, x0, saved, cap, ops=ops, on_step=on_step)


def PerSampleWindows(
    problem: Problem, x0: Tensor, saved: Sequence[int] | None, cap: int
) -> Windows:
    """One window per sample: :class:`Windows` with one lane per sample.

    Args:
        problem: the recursion, with one batch dimension and
            :attr:`~picard.Problem.per_lane` increments.
        x0: the initial states, ``(batch, ...)``.
        saved: the state indices to keep (``None``: only the final state).
        cap: the longest window.

    Returns:
        The plan.

    Example:
        >>> import torch
        >>> from diffusers import DDIMScheduler
        >>> from picard.adapters.diffusers import from_scheduler
        >>> problem = from_scheduler(DDIMScheduler(), lambda x, t: 0.1 * x, 10)
        >>> plan = PerSampleWindows(problem, torch.ones(3, 1, 2, 2), None, 4)
        >>> plan.lengths(width=4, left=None).tolist()  # one window per sample
        [4, 4, 4]
    """
    return Windows(problem, x0, saved, cap, per_sample=True)


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
        self.lane_k: np.ndarray | None = None  # one window per sample: each one's k

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

    def add_lanes(
        self, new: Tensor, lanes: np.ndarray, starts: np.ndarray, strides: np.ndarray
    ) -> None:
        """Per sample: ``new[j, k]`` is state ``starts[k] + 1 + j`` of sample ``lanes[k]``.

        That sample's states up to ``starts[k] + strides[k]`` are final.
        """
        if self.lane_k is None:
            self.lane_k = np.full(self.ys_t.shape[1], self.k)
        steps = self.steps
        for k, s in enumerate(lanes):
            first, start = int(self.lane_k[s]), int(starts[k])
            stop = bisect.bisect_right(steps, start + int(strides[k]), lo=first)
            for idx in range(first, stop):
                self.ys_t[idx, s] = new[steps[idx] - start - 1, k]
            self.lane_k[s] = stop


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
