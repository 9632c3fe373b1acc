"""What a problem is: N steps ``x_{i+1} = x_i + Δ_i(x_i)`` with batched increments.

The solver (:mod:`picard.solver`) only ever asks a problem for the increments of a run
of consecutive steps, evaluated at given states, in one call. Everything that makes a
problem an ODE, an SDE or a diffusion sampler lives behind that one method.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.checks import check_callable, check_int
from picard.evaluation import map_rows

__all__ = [
    "Lanes",
    "Problem",
    "Recursion",
    "Traits",
    "call_batched",
    "extend_rows",
    "model_parameters",
    "working_dtype",
]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype picard keeps states, cumulative sums and residuals in (>= float32).

    Args:
        dtype: the user's dtype (of ``x0``).

    Returns:
        ``dtype`` promoted to at least float32.

    Example:
        >>> working_dtype(torch.float16), working_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


def model_parameters(fn: Any) -> list[Tensor]:
    """The parameters of a model callable: an ``nn.Module``, or a bound method of one.

    Args:
        fn: the callable.

    Returns:
        Its parameters (empty for other callables).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> len(model_parameters(net)), len(model_parameters(net.forward))
        (2, 2)
        >>> model_parameters(lambda x: x)
        []
    """
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        try:
            return list(owner.parameters())
        except AttributeError:  # a subclass that never called Module.__init__: none
            return []
    return []


@dataclass(frozen=True)
class Lanes:
    """The rows of a call over per-sample windows: which sample each column is, at which steps.

    Passed to :meth:`Problem.increments` and :meth:`Problem.guess` in place of the first
    step when every sample has its own window (``solve(per_sample=True)``).

    Attributes:
        samples: ``(S,)`` long indices of the columns' samples in the batch.
        steps: ``(w, S)`` long step indices, consecutive down each column; ``-1`` marks
            padding rows (a column with fewer steps), whose results are ignored.

    Example:
        >>> lanes = Lanes(torch.tensor([0, 2]), torch.tensor([[3, 7], [4, -1]]))
        >>> lanes.valid.tolist(), lanes.at.tolist()
        ([[True, True], [True, False]], [[3, 7], [4, 0]])
    """

    samples: Tensor
    steps: Tensor

    @property
    def valid(self) -> Tensor:
        """``(w, S)``: which rows are steps (not padding)."""
        return self.steps >= 0

    @property
    def at(self) -> Tensor:
        """``(w, S)``: the steps, padding rows at step 0 (safe to index with)."""
        return self.steps.clamp(min=0)


@dataclass(frozen=True)
class Traits:
    """Facts a problem states about its recursion, for the strategies that can use them.

    A strategy reads them when a solve binds it to the problem (``bind(problem)``):
    ``accelerate="auto"`` picks its acceleration by :attr:`kind`
    (:data:`picard.core.acceleration.AUTO_ACCELERATIONS`), and the secant starts rows that
    have no history from :attr:`slopes`. They say what the recursion is, never how to
    solve it.

    Attributes:
        kind: the family of the recursion: ``"recursion"`` (nothing more is known) or
            ``"diffusion"`` (a denoising sampler's steps).
        slopes: per step, an estimate of the scalar slope ``∂Δ_i/∂x_i`` (for diffusion
            samplers: the slope each step has when the data are unit Gaussian), or
            ``None``.
        amplification: how much the later steps may amplify an error accepted at a step,
            at most (``>= 1``). The relative test (``relative=True``) accepts a state's
            change at ``tol / amplification``, so that ``tol`` bounds the final state's
            error relative to its own RMS, not each step's change.

    Example:
        >>> Traits().kind, Traits(kind="diffusion").slopes is None, Traits().amplification
        ('recursion', True, 1.0)
    """

    kind: str = "recursion"
    slopes: np.ndarray | None = field(default=None, compare=False)
    amplification: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.amplification) and self.amplification >= 1):
            raise ValueError(
                f"Traits.amplification must be finite and >= 1, got {self.amplification}"
            )


class Problem(ABC):
    """A sequential recursion of ``num_steps`` steps, ``x_{i+1} = x_i + Δ_i(x_i)``.

    Subclasses set ``num_steps`` and implement :meth:`increments`. Optional hooks:
    :meth:`init` (draw noise once, at the start of a solve), :meth:`scale` (per-step
    scale of the convergence test), :meth:`guess` (cheap starting guesses for the steps
    entering a window), :meth:`traits` (what strategies may know of it) and
    :meth:`step_label` (how errors name a step). A problem whose :meth:`increments` and
    :meth:`guess` also take :class:`Lanes` sets :attr:`per_lane` (per-sample windows).

    Attributes:
        num_steps: N, the number of steps.
        batch_ndim: how many leading dimensions of the state index independent samples;
            the convergence test takes the worst sample, and evaluations count samples.
        stages: drift calls per step (e.g. 4 for RK4); used for :attr:`Stats.nfe`.
        memory: how many outputs of earlier steps an increment reads (multistep rules);
            the solver hands them back through ``history``.
        default_tol: the tolerance :func:`picard.solve` uses when given none (for the
            test :attr:`relative_tol` selects; see :meth:`default_tolerance`).
        relative_tol: whether ``tol`` is relative to each state's RMS unless the solve
            says otherwise (``solve(relative=None)``); ``False`` scales it by
            :meth:`scale`.
        rows_per_evaluation: model rows behind one (step, sample) evaluation (2 with
            classifier-free guidance); reported in :class:`picard.Stats`.
        sequential_only: the problem runs only by its own step-by-step :meth:`loop`.
        per_lane: :meth:`increments` and :meth:`guess` also take :class:`Lanes`
            (per-sample windows; needs ``batch_ndim == 1``).

    Example:
        >>> import torch, picard
        >>> class Decay(picard.Problem):
        ...     num_steps = 10
        ...     def increments(self, x, start, state, history):
        ...         return -0.1 * x, None
        >>> picard.solve(Decay(), torch.ones(3), tol=0).final
        tensor([0.3487, 0.3487, 0.3487])
    """

    num_steps: int
    batch_ndim: int = 0
    stages: int = 1
    memory: int = 0
    default_tol: float = 1e-5
    relative_tol: bool = False
    rows_per_evaluation: int = 1
    sequential_only: bool = False
    per_lane: bool = False

    def parameters(self) -> Iterable[Tensor]:
        """The tensors the increments depend on, for gradients (default: none).

        :func:`picard.solve` run with autograd on sends gradients to these (and ``x0``);
        the shipped problems return their model's parameters when it is an
        ``nn.Module`` or a bound method of one.
        """
        return ()

    def loop(self, x0: Tensor) -> Tensor:
        """The final state by the problem's own step-by-step loop (``sequential_only``).

        A problem that cannot be evaluated out of order — a scheduler picard does not
        reproduce, run by its own stateful ``step`` — sets ``sequential_only`` and
        implements this; :func:`picard.solve` then calls it instead of sweeping.
        """
        raise NotImplementedError(f"{type(self).__name__} has no loop")

    def traits(self) -> Traits:
        """What the problem says of itself, for strategies to read (see :class:`Traits`).

        Returns:
            ``Traits()`` here: a generic recursion, no slope estimates.
        """
        return Traits()

    def default_tolerance(self, relative: bool) -> float:
        """The tolerance a solve uses when given none, for the chosen test.

        Args:
            relative: whether the solve measures changes relative to each state's RMS.

        Returns:
            ``default_tol`` (the same for both tests unless a subclass says otherwise).
        """
        return self.default_tol

    def init(self, x0: Tensor) -> Any:
        """Called once when a solve starts; the result is passed to every increments call.

        Draw pre-sampled noise here (in the order a sequential sampler draws it), so that
        it is drawn once and reused by every sweep. The default returns ``None``.
        """
        return None

    @abstractmethod
    def increments(
        self, x: Tensor, start: int | Lanes, state: Any, history: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Increments of a window's steps in one batched call.

        One window for the whole batch (the common case, and the only one unless the
        problem sets :attr:`per_lane`): ``start`` is the index of the first step, and ``x``
        holds states ``x_start … x_{start+M-1}``, shape ``(M, *x0.shape)``. Per-sample
        windows (``solve(per_sample=True)``): ``start`` is a :class:`Lanes` — column k of
        ``x``, shape ``(w, S, *sample_shape)``, holds batch sample ``start.samples[k]`` at
        steps ``start.steps[:, k]``, whose padding rows (``-1``) must not be evaluated.

        Args:
            x: the states, in the working dtype (float32 or float64); do not modify it.
            start: the first step, or the :class:`Lanes` of per-sample windows.
            state: what :meth:`init` returned.
            history: the outputs of the ``memory`` steps before the window (fewer near the
                start of the grid; per-sample windows: ``(memory, S, …)``, zeros where
                there are none), stacked on dim 0; ``None`` when ``memory == 0``.

        Returns:
            ``(increments, outputs)``: increments shaped like ``x`` (padding rows are
            ignored); outputs stacked per step on dim 0 for later steps' ``history``
            (``None`` when ``memory == 0``).
        """

    def guess(self, x: Tensor, start: int | Lanes, count: int, state: Any) -> Tensor | None:
        """Cheap guesses of the states after steps ``start … start + count - 1``, or ``None``.

        Called after every sweep for the steps that enter the next window, with ``x`` the
        newest estimate of state ``start`` (the window's last), so the guesses are of
        states ``start + 1 … start + count``. Per-sample windows: ``start`` is a
        :class:`Lanes` whose column k (batch sample ``start.samples[k]``, newest state
        ``x[k]``, ``x`` shaped ``(S, *sample_shape)``) guesses after the steps
        ``start.steps[:, k]`` (``-1``: padding, ignored), and ``count`` is their rows. A
        guess costs no model call (e.g. the last increment call's model output, reused);
        it only decides how fast the sweeps converge, never what they converge to.
        ``None`` (the default) copies ``x``, as ParaDiGMS does. :meth:`increments` may
        keep what a guess needs in ``state``.

        Returns:
            ``(count, *x.shape)`` in ``x``'s dtype, or ``None``.
        """
        return None

    def scale(self) -> Sequence[float] | np.ndarray | Tensor | None:
        """Per-step scale of the convergence test (length N, each >= 0), or ``None`` for 1.

        Step i converges when the RMS change of state ``i + 1`` between sweeps is at most
        ``tol * scale[i]``. A scale of 0 demands an unchanged state.
        """
        return None

    def step_label(self, step: int) -> str:
        """How error messages name ``step``."""
        return f"step {step}"


class Recursion(Problem):
    """A problem from any batched increment function ``fn(steps, x) -> Δ``.

    Args:
        fn: ``fn(steps, x)`` with ``steps`` a long tensor ``(M,)`` of step indices and
            ``x`` of shape ``(M, *x0.shape)``, like ``func(t, y)`` of :func:`picard.odeint`;
            returns the increments ``x_{i+1} - x_i`` of those rows, shaped like ``x``.
            Called once per sweep with the whole window.
        num_steps: N.
        scale: optional per-step scale of the convergence test (length N).
        batch_dims: leading dimensions of the state that index independent samples.

    Example:
        >>> import torch, picard
        >>> rule = picard.Recursion(lambda i, x: -0.1 * x, num_steps=10)
        >>> picard.solve(rule, torch.ones(2), tol=0).final
        tensor([0.3487, 0.3487])
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        num_steps: int,
        *,
        scale: Sequence[float] | np.ndarray | Tensor | None = None,
        batch_dims: int = 0,
    ):
        self.fn = check_callable("fn", fn)
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.batch_ndim = check_int("batch_dims", batch_dims, minimum=0)
        self._scale = scale

    def increments(
        self, x: Tensor, start: int, state: Any, history: Tensor | None
    ) -> tuple[Tensor, None]:
        """Evaluate ``fn`` on the rows of ``x`` (see :class:`Problem`)."""
        steps = torch.arange(start, start + x.shape[0], device=x.device)
        return call_batched(self.fn, "fn", steps, x, x.dtype), None

    def scale(self) -> Sequence[float] | np.ndarray | Tensor | None:
        """The scale given at construction."""
        return self._scale

    def parameters(self) -> Iterable[Tensor]:
        """``fn``'s parameters when it is an ``nn.Module`` or a bound method of one."""
        return model_parameters(self.fn)


def call_batched(
    fn: Callable[[Tensor, Tensor], Any], name: str, t: Tensor, y: Tensor, in_dtype: torch.dtype
) -> Tensor:
    """Call ``fn(t, y)`` on a batch of rows and check that it returns a tensor like ``y``.

    ``y`` is cast to ``in_dtype`` (the user's dtype) for the call; the result comes back
    in ``y``'s dtype.

    Args:
        fn: the batched function, ``fn(t: (M,), y: (M, ...)) -> (M, ...)``.
        name: how error messages name ``fn``.
        t: the times (or step indices) of the M rows.
        y: the M rows of states, in the working dtype.
        in_dtype: the dtype ``fn`` receives ``y`` in.

    Returns:
        ``fn``'s result, checked to have ``y``'s shape and device, in ``y``'s dtype.

    Raises:
        TypeError: ``fn`` returned no tensor, or not a real floating one.
        ValueError: ``fn`` returned the wrong shape or device.

    Example:
        >>> seen = []
        >>> def scale(t, y):
        ...     seen.append(y.dtype)
        ...     return t[:, None] * y
        >>> y = torch.ones(2, 3, dtype=torch.float64)
        >>> out = call_batched(scale, "fn", torch.arange(2.0), y, torch.float32)
        >>> out.tolist(), seen, out.dtype  # fn sees float32; the result is y's float64
        ([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [torch.float32], torch.float64)
    """
    out = map_rows(fn, t, y if y.dtype == in_dtype else y.to(in_dtype))
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != y.shape:
        raise ValueError(
            f"{name} returned shape {tuple(out.shape)} for a batch of shape {tuple(y.shape)}; "
            "expected the same shape"
        )
    if out.device != y.device:
        raise ValueError(f"{name} returned a tensor on {out.device}; expected {y.device}")
    if out.dtype != y.dtype:
        if out.is_complex() or not out.is_floating_point():
            raise TypeError(f"{name} returned dtype {out.dtype}; expected a real floating dtype")
        out = out.to(y.dtype)
    return out


def extend_rows(rows: Tensor, before: Tensor | None, k: int) -> Tensor:
    """A window's per-step ``rows`` after the ``k`` remembered before it (zeros where fewer).

    The ``history`` of :meth:`Problem.increments` and the window's own outputs as one
    sequence: ``ext[k + j]`` is window row j, ``ext[k - d + j]`` the row d steps before it.

    Args:
        rows: the window's outputs, one per step on dim 0.
        before: the outputs of up to ``k`` steps before the window (``None``: none).
        k: how many earlier steps the sequence keeps room for.

    Returns:
        ``(k + len(rows), ...)``, zero-padded in front.

    Example:
        >>> extend_rows(torch.tensor([3.0, 4.0]), torch.tensor([2.0]), 2).tolist()
        [0.0, 2.0, 3.0, 4.0]
    """
    before = rows[:0] if before is None else before.to(rows.dtype)
    pad = rows.new_zeros((k - before.shape[0], *rows.shape[1:]))
    return torch.cat([pad, before, rows])


def per_sample_size(shape: torch.Size, batch_ndim: int) -> tuple[int, int]:
    """``(samples, elements per sample)`` of a state of ``shape``."""
    return math.prod(shape[:batch_ndim]), math.prod(shape[batch_ndim:])
