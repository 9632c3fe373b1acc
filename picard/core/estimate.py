"""Each sample's distance from its sequential result, estimated from the sweeps' own changes.

A state made final in the same sweep as the state after it leaves a *defect* in the
trajectory: state ``j + 1`` was computed from state ``j``'s previous value, which then
changed by ``c_j``, so ``x_{j+1} - x_j - Δ_j(x_j) = Δ_j(x_j^old) - Δ_j(x_j) ≈ -D_j c_j``
with ``D_j = ∂Δ_j/∂x_j``. The sweep that made them final also measured how much ``D_j``
moves a change: the defect of the trajectory it evaluated, ``R_j``, is the difference of
two consecutive rows of its changes (no model call), and is ``D_j`` applied to state
``j``'s change in the sweep before, ``c_j'``. So each defect is estimated as
``|R_j| / |c_j'| · |c_j|`` (with ``|R_j| / |c_j'|`` taken as 1 where state ``j`` had no
previous sweep), and a sample's estimate is the sum of its defects, each relative to its
state's norm: the error a sampler that keeps relative errors relative (as diffusion
samplers do for smooth data) ends with.

What it does not see: how much later steps amplify a defect beyond that. Near a boundary
between two modes a sampler amplifies it tens of times; the sweeps' changes point along
the strongly contracting directions and do not reveal it
(``benchmarks/results/estimate.md`` measures both).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from picard.core.sweep import Sweep

__all__ = ["Defects"]


class Defects:
    """The per-sample estimate of a solve's distance from its sequential result.

    The loop calls :meth:`add` with every sweep before its acceleration runs, and
    :meth:`accept` with the states each window made final; :meth:`errors` is the estimate.

    Args:
        num_steps: N.
        samples: the batch's samples (flattened batch dimensions).

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, 8, batch_dims=1)
        >>> x0 = torch.ones(3, 2, dtype=torch.float64)
        >>> sol = picard.solve(rule, x0, window=8, tol=1e-3)
        >>> exact = picard.solve(rule, x0, window=1, tol=0).final
        >>> true = float((sol.final - exact).norm(dim=1).max() / exact.norm(dim=1).max())
        >>> est = sol.stats.estimated_errors
        >>> len(est), f"{max(est):.1e} against {true:.1e}"
        (3, '6.6e-05 against 4.0e-05')
    """

    FOLD_AT = 1 << 20
    """Numbers kept before the records are folded into the running sums (memory stays bounded)."""

    def __init__(self, num_steps: int, samples: int):
        self.samples, self.last = samples, num_steps
        self.records: list[tuple[Any, ...]] = []  # per sweep, not yet folded
        self.kept: tuple[Any, Any, Any] | None = None  # the last sweep's record in the making
        self.floor2 = 0.0
        self.held = 0  # numbers in ``records``
        self.folded = 0  # sweeps folded so far
        self.total, self.waiting = np.zeros(samples), np.zeros(samples)
        self.last_gain2 = np.ones(samples)  # per sample: the last squared gain measured
        # Per state and sample: the squared change in the last sweep, and that sweep's number.
        self.change2 = np.zeros((num_steps + 2, samples))
        self.seen = np.full((num_steps + 2, samples), -1, dtype=np.int64)

    def add(self, sweep: Sweep) -> None:
        """Keep a sweep's squared changes, measured before an acceleration rewrites them."""
        if not self.floor2:  # a change of a few hundred units of rounding measures nothing
            eps = torch.finfo(sweep.ops.tensor(sweep.new).dtype).eps
            self.floor2 = (256 * eps) ** 2
        d = sweep.new - sweep.old if sweep.delta is None else sweep.delta  # (w, columns, size)
        self.kept = (sweep, d, sweep.ops.sq_norms(d))

    def accept(self, stride: np.ndarray) -> None:
        """The states the last sweep made final: ``stride`` per lane.

        Where a lane made two or more states final, the row-to-row differences of their
        changes and their norms are kept too (those rows are final: nothing rewrote them).
        """
        if self.kept is None:
            return
        sweep, d, c2 = self.kept
        self.kept = None
        ops, top = sweep.ops, int(stride.max())
        r2 = n2 = None
        if top >= 2:
            r2 = ops.sq_norms(d[1:top] - d[: top - 1])
            n2 = ops.sq_norms(sweep.new[: top - 1])
        if sweep.lanes.size == 1 and c2.shape[1] == self.samples:  # one window: ints
            record = (None, sweep.front, int(sweep.lengths[0]), int(stride[0]), c2, r2, n2)
        else:
            record = (sweep.lanes, sweep.starts, sweep.lengths, stride.copy(), c2, r2, n2)
        self.records.append(record)
        self.held += c2.shape[0] * c2.shape[1]
        if self.held > self.FOLD_AT:  # a long solve of many samples: fold as it goes
            self._fold()

    def errors(self) -> tuple[float, ...]:
        """Each sample's estimated relative distance from its sequential result.

        Defects whose sample never had a gain measured take 1.
        """
        self._fold()
        return tuple((self.total + np.sqrt(self.last_gain2) * self.waiting).tolist())

    def _fold(self) -> None:
        """Add the kept sweeps' defects to the running sums, in order, and drop them."""
        n, total, waiting, last_gain2 = self.last, self.total, self.waiting, self.last_gain2
        change2, seen = self.change2, self.seen
        host = None
        tiny = np.finfo(np.float64).tiny
        for k, (lanes, starts, lengths, stride, c2, r2, n2) in enumerate(
            self.records, start=self.folded
        ):
            if host is None:
                host = np.asarray if isinstance(c2, np.ndarray) else (lambda a: a.cpu().numpy())
            c2 = host(c2)
            w, columns = c2.shape
            if lanes is None:  # one window for the batch: rows are slices of the states
                b, length = starts, lengths
                if r2 is not None:
                    r2, n2 = host(r2), host(n2)
                    m = r2.shape[0]
                    lo, hi = b + 1, b + 1 + m  # states j of the rows; j + 1 one further
                    measured = (seen[lo:hi] == k - 1) & (seen[lo + 1 : hi + 1] == k - 1)
                    cols = np.arange(columns)
                    gain2, known = _gains(measured, change2[lo:hi], r2, n2 * self.floor2)
                    last_gain2[known] = gain2[-1, known]
                    pairs = np.arange(m)[:, None] < stride - 1
                    rel = np.sqrt(c2[:m] / np.maximum(n2, tiny))
                    total += _settle(waiting, known, gain2, rel, pairs, cols)
                change2[b + 1 : b + 1 + length] = c2[:length]
                seen[b + 1 : b + 1 + length] = k
                continue
            # one lane per sample: rows gathered by (state, sample)
            rows = np.arange(w)[:, None]
            states = np.minimum(starts[None, :] + rows + 1, n)  # padding rows clipped
            col = np.broadcast_to(lanes, states.shape)
            if r2 is not None:
                r2, n2 = host(r2), host(n2)
                m = r2.shape[0]
                j, c = states[:m], col[:m]
                measured = (seen[j, c] == k - 1) & (seen[j + 1, c] == k - 1)
                gain2, known = _gains(measured, change2[j, c], r2, n2 * self.floor2)
                last_gain2[lanes[known]] = gain2[-1, known]
                pairs = rows[:m] < stride[None, :] - 1
                rel = np.sqrt(c2[:m] / np.maximum(n2, tiny))
                total += _settle(waiting, known, gain2, rel, pairs, lanes)
            valid = rows < lengths[None, :]
            change2[states[valid], col[valid]] = c2[valid]
            seen[states[valid], col[valid]] = k
        self.folded += len(self.records)
        self.records, self.held = [], 0


def _gains(
    measured: np.ndarray, prev: np.ndarray, r2: np.ndarray, floor2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Squared gains ``|R_j|² / |c_j'|²`` of a sweep's rows, and which columns have one.

    ``measured`` says which rows had both states in the sweep before, ``prev`` their
    squared change then. Other rows (their states entered the window since) take the gain
    of the nearest row of their column that has one; a column with none waits for its
    sample's next measured gain. Changes at the level of rounding (below ``floor2``)
    measure nothing.
    """
    gain2 = np.divide(r2, prev, out=np.zeros_like(r2), where=prev > 0)
    measured = measured & (prev > floor2)
    known = measured.any(axis=0)
    if not measured.all():  # fill each column from its nearest measured row
        index = np.arange(len(gain2))[:, None]
        below = np.maximum.accumulate(np.where(measured, index, -1), axis=0)
        above = np.minimum.accumulate(np.where(measured, index, len(gain2))[::-1], axis=0)[::-1]
        nearest = np.where(below >= 0, below, np.minimum(above, len(gain2) - 1))
        gain2 = np.take_along_axis(gain2, nearest, axis=0)
    return gain2, known


def _settle(
    waiting: np.ndarray,
    known: np.ndarray,
    gain2: np.ndarray,
    rel: np.ndarray,
    pairs: np.ndarray,
    samples: np.ndarray,
) -> np.ndarray:
    """A sweep's defects added up per sample (``(samples,)`` of the whole batch).

    Columns with a gain take their defects (and those waiting for their sample's first
    gain, from earlier sweeps); the others' defects wait.
    """
    add = np.zeros_like(waiting)
    who = samples[known]
    add[who] = np.sqrt(gain2[0, known]) * waiting[who] + (np.sqrt(gain2) * rel * pairs)[
        :, known
    ].sum(axis=0)
    waiting[who] = 0.0
    waiting[samples[~known]] += (rel * pairs)[:, ~known].sum(axis=0)
    return add
