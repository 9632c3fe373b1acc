"""What a sampler's update rule is, and the problem that runs one over a window.

An :class:`UpdateRule` knows one sampler's step on its grid of N inference steps, as
pure functions of per-step coefficient arrays: nothing in it knows about windows or
sweeps. :class:`DiffusionProblem` turns a rule and a batched denoiser into a
:class:`picard.Problem`: one model call for all the steps of a window, noise drawn once
when the solve starts, in the order the sequential sampler draws it.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.noise import Noise
from picard.adapters.schedulers import schedules
from picard.evaluation import map_rows
from picard.problem import Lanes, Problem, Traits, model_parameters, working_dtype

__all__ = ["DiffusionProblem", "Generator", "UpdateRule"]

Generator = torch.Generator | Sequence[torch.Generator] | None
"""A random generator, or one per sample (as diffusers' pipelines take them)."""

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``denoiser(x, t)``: the batched model call, ``x: (M, *shape)``, ``t: (M,)`` timesteps."""

DEFAULT_DIFFUSION_TOL = 0.01
"""Diffusion samplers' default tolerance: the RMS change of a state relative to its RMS."""

DIFFUSION_AMPLIFICATION = 30.0
"""How much a diffusion sampler's later steps may amplify an error accepted at a step.

The relative test accepts each state's change at ``tol / 30``, so that ``tol`` bounds every
final sample's RMS distance to its sequential sample relative to its RMS. Measured
(``benchmarks/results/final_error.md``): accepting changes at ``tol`` itself, errors of
1e-8 to 1e-4 accepted early grew to another mode (error 1.1) on samples whose trajectory
passes near the boundary between two modes (downstream amplification 30–600, nonlinear
beyond a distance of about 1e-3). At ``tol / 10`` a batch of 64 kept every sample within
``0.7 tol`` (the other samples hold a shared window back, so most states end far below
the test), but two of those samples solved alone — every state accepted exactly at the
test — still ended in the other mode (0.75 and 1.1 away; ``per_sample=True`` solves each
sample as if alone). At ``tol / 30`` every sample of 45 mixture cases, 20 on mixtures never
run while choosing it and the digits UNet stayed within ``0.94 tol`` alone and ``0.25 tol``
in batches, for 0–2 more sweeps and 5–10% more evaluations than at ``tol / 10``. k-diffusion's
sampler calls had taken 30 before (``benchmarks/k_diffusion.py``, the digits model, 50
Karras steps: with 10, Heun, DPM-2 and LMS ended 1–2e-2 from the sequential sample).
"""

PARADIGMS_TOL = 0.1
"""ParaDiGMS's default tolerance, relative to the step's noise std (``relative=False``)."""


class UpdateRule(ABC):
    """One sampler's update ``x_{i+1} = F_i(x_i, model output, history, z_i)``.

    Subclasses fill the per-step arrays in ``__init__`` and implement :meth:`update`
    (docs: "Extending picard" writes one).

    Attributes:
        num_steps: N, the number of inference steps.
        timesteps: (N,) the timestep the model receives at each step (diffusers' values
            and dtype: integer for DDPM/DDIM/DPM-Solver, float for Euler/flow).
        coefficients: per-step float arrays (length N) that :meth:`update` reads, by name.
        noise_draws: (N,) whether the sequential sampler draws a noise tensor at step i
            (drawn even when unused, to leave the generator where the sequential loop
            leaves it).
        tol_scale: (N,) the scale of the convergence test of state i + 1: the noise std
            of step i + 1 (0 for the last state), as ParaDiGMS measures it.
        memory: how many earlier outputs :meth:`update` reads (multistep samplers).
        init_noise_sigma: the std of the starting latent (the pipeline scales by it).
        output_channels: model output channels per latent channel (2 for learned variance).
        noise_dtype: the dtype the sequential sampler draws its noise in (``None``: the
            latent's dtype, as most schedulers draw it).
        signal_keys: the names of the coefficients ``(α_i, σ_i)`` with ``x = α x_0 + σ ε``
            at the model's input, or ``None``; with them (and ``prediction_type``) the
            solver's guesses for new steps hold the denoised estimate fixed, otherwise
            the model output.
        prediction_type: the model output's parametrization (diffusers' names).

    Example:
        >>> from diffusers import DDIMScheduler
        >>> from picard.adapters.schedulers.ddim import from_config
        >>> rule = from_config(DDIMScheduler().config, 10)
        >>> isinstance(rule, UpdateRule), rule.num_steps, rule.timesteps[:3].tolist()
        (True, 10, [900, 800, 700])
    """

    num_steps: int
    timesteps: Tensor
    coefficients: dict[str, np.ndarray]
    noise_draws: np.ndarray
    tol_scale: np.ndarray
    memory: int = 0
    init_noise_sigma: float = 1.0
    output_channels: int = 1
    noise_dtype: torch.dtype | None = None
    signal_keys: tuple[str, str] | None = None
    prediction_type: str = "epsilon"

    def head(self, end: int) -> UpdateRule:
        """The rule of steps ``0 … end-1`` only (SDXL's ``denoising_end``).

        Exact for every rule, multistep ones included: their warm-up is at the start, and
        their later choices read the whole grid, computed already.

        Args:
            end: the number of steps kept.

        Returns:
            The rule of the first ``end`` steps.

        Example:
            >>> from diffusers import DDIMScheduler
            >>> from picard.adapters.schedulers.ddim import from_config
            >>> from_config(DDIMScheduler().config, 10).head(3).timesteps.tolist()
            [900, 800, 700]
        """
        if not 1 <= end <= self.num_steps:
            raise ValueError(f"end must be in [1, {self.num_steps}], got {end}")
        if end == self.num_steps:
            return self
        head = copy.copy(self)
        head.num_steps = end
        head.timesteps = self.timesteps[:end]
        head.coefficients = {k: v[:end] for k, v in self.coefficients.items()}
        head.noise_draws = self.noise_draws[:end]
        head.tol_scale = self.tol_scale[:end]
        return head

    def tail(self, begin: int) -> UpdateRule:
        """The rule of steps ``begin … N-1`` only, as a scheduler set to begin there runs them.

        Used by img2img's ``strength``, inpainting's and SDXL's ``denoising_start``: the
        pipeline calls ``scheduler.set_begin_index(begin)`` and steps through
        ``timesteps[begin:]``. A rule without memory is its own steps, sliced. A multistep
        scheduler starts that loop with an empty history and counts its warm-up from
        ``begin`` (while its lower-order final steps still read the position in the whole
        grid), so slicing is not enough: a rule with memory overrides this method, rebuilds
        its coefficients as the restarted loop has them and may call ``UpdateRule.tail``
        on the rebuilt rule to cut it (diffusers' multistep samplers:
        :class:`picard.adapters.schedulers.multistep.Restarting`). A rule with memory that
        does not override it raises ``NotImplementedError``.

        Args:
            begin: the first step kept.

        Returns:
            The rule of the last ``N - begin`` steps.

        Raises:
            ValueError: ``begin`` outside ``[0, N)``.
            NotImplementedError: a rule with memory that does not say how it restarts.

        Example:
            >>> from diffusers import DDIMScheduler
            >>> from picard.adapters.schedulers.ddim import from_config
            >>> rule = from_config(DDIMScheduler().config, 10)
            >>> rule.tail(6).timesteps.tolist()
            [300, 200, 100, 0]
        """
        if not 0 <= begin < self.num_steps:
            raise ValueError(f"begin must be in [0, {self.num_steps}), got {begin}")
        if begin == 0:
            return self
        if self.memory and type(self).tail is UpdateRule.tail:
            raise NotImplementedError(
                f"{type(self).__name__} reads the outputs of earlier steps (memory="
                f"{self.memory}) and does not define how its loop restarts at step {begin} "
                "(e.g. img2img's strength < 1): override UpdateRule.tail"
            )
        tail = copy.copy(self)
        tail.num_steps = self.num_steps - begin
        tail.timesteps = self.timesteps[begin:]
        tail.coefficients = {k: v[begin:] for k, v in self.coefficients.items()}
        tail.noise_draws = self.noise_draws[begin:]
        tail.tol_scale = self.tol_scale[begin:]
        return tail

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """What the model receives for states ``x`` (identity unless the sampler scales)."""
        return x

    @abstractmethod
    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """The next states of a window of steps.

        Args:
            x: states ``(w, B, *shape)`` in float32/float64.
            out: the model outputs for them, ``(w, B, C', ...)``.
            c: the coefficient arrays sliced to the window, shaped ``(w, 1, 1, …)``.
            noise: the pre-drawn noise of the window's steps ``(w, B, *shape)`` (zero
                where a step draws none), or ``None`` if the rule never uses noise.
            history: the stored outputs of the ``memory`` steps before the window.

        Returns:
            ``(next states, outputs to store for later steps or None)``.
        """


@dataclass(frozen=True)
class _State:
    """What a solve of a :class:`DiffusionProblem` holds: device arrays and its noise."""

    coefficients: dict[str, Tensor]
    timesteps: Tensor
    noise: Noise | None
    latent_dtype: torch.dtype  # what the denoiser receives: the starting latent's dtype
    batch: int  # samples in the batch
    # The last increments call's last row: (step, state, model output), for guesses.
    anchor: list[tuple[int, Tensor, Tensor]] = field(default_factory=list)
    affine: list[Tensor] = field(default_factory=list)  # (A, B) per step, for guesses
    # Per-sample windows: each sample's last evaluated row (step, state, model output).
    anchors: list[Tensor] = field(default_factory=list)


class DiffusionProblem(Problem):
    """A sampler's N steps as a :class:`picard.Problem` (one model call per sweep).

    Args:
        rule: the sampler's update rule.
        denoiser: ``denoiser(x, t)``, the batched model call with ``x: (M, *shape)`` in
            the latent's dtype and ``t: (M,)`` diffusers timesteps; returns ``(M, C', ...)``.
            Rows are independent and may be split across calls, ranks or devices: a
            denoiser that conditions per sample (a prompt per image) must take a
            ``samples`` keyword, ``(M,)`` batch indices of the rows, rather than infer
            them from row positions.
        generator: a generator, or a list with one per sample, for the sampler's noise.
        rows_per_evaluation: model rows per (step, sample) evaluation (2 with
            classifier-free guidance), reported in the stats.
        scale_model_input: apply the sampler's input scaling (``scale_model_input``)
            before the model, as pipelines that call it do.

    Example:
        >>> import torch, picard
        >>> from diffusers import DDPMScheduler
        >>> from picard.adapters.diffusers import from_scheduler
        >>> problem = from_scheduler(DDPMScheduler(), lambda x, t: 0.1 * x, 10)
        >>> picard.solve(problem, torch.ones(2, 1, 4, 4), tol=0).final.shape
        torch.Size([2, 1, 4, 4])
    """

    batch_ndim = 1
    per_lane = True
    default_tol = DEFAULT_DIFFUSION_TOL
    relative_tol = True

    def default_tolerance(self, relative: bool) -> float:
        """0.01 relative to each state's RMS, or ParaDiGMS's 0.1 relative to the noise std.

        Args:
            relative: whether the solve measures changes relative to each state's RMS.

        Returns:
            :data:`DEFAULT_DIFFUSION_TOL` or, with ``relative=False``, :data:`PARADIGMS_TOL`.
        """
        return DEFAULT_DIFFUSION_TOL if relative else PARADIGMS_TOL

    def traits(self) -> Traits:
        """A diffusion sampler, with each step's slope when the data are unit Gaussian.

        The slopes (``schedules.gaussian_slopes``) are of the update with ``x̂_0`` held
        fixed (as the guess rolls it out) under the ideal denoiser of unit Gaussian data;
        ``None`` for rules without ``signal_keys``.

        Returns:
            ``Traits(kind="diffusion", slopes=..., amplification=DIFFUSION_AMPLIFICATION)``.
        """
        return Traits(
            kind="diffusion", slopes=self._slopes(), amplification=DIFFUSION_AMPLIFICATION
        )

    def _slopes(self) -> np.ndarray | None:
        """Each step's slope under unit Gaussian data (computed once), or ``None``."""
        rule = self.rule
        if rule.signal_keys is None:
            return None
        if self._prior is None:
            co = {
                k: torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1, 1)
                for k, v in rule.coefficients.items()
            }
            a, b = _affine(rule, co, torch.zeros(1, 1, dtype=torch.float64))
            alpha, sigma = (co[k].reshape(-1)[: rule.num_steps] for k in rule.signal_keys)
            self._prior = schedules.gaussian_slopes(a, b, alpha, sigma).numpy()
        return self._prior

    def __init__(
        self,
        rule: UpdateRule,
        denoiser: Denoiser,
        generator: Generator = None,
        rows_per_evaluation: int = 1,
        scale_model_input: bool = True,
    ):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        _check_generator(generator)
        self.rule = rule
        self.denoiser = denoiser
        self.generator = generator
        self.num_steps = rule.num_steps
        self.memory = rule.memory
        self.rows_per_evaluation = rows_per_evaluation
        self.scale_model_input = scale_model_input
        self._takes_samples = _takes_samples(denoiser)
        self._prior: np.ndarray | None = None

    def parameters(self) -> list[Tensor]:
        """The denoiser's parameters (an ``nn.Module`` or a bound method of one)."""
        return model_parameters(self.denoiser)

    def with_rule(self, rule: UpdateRule) -> DiffusionProblem:
        """The same problem (denoiser, generator, rows, scaling) with another rule.

        Args:
            rule: the rule, e.g. a wrapper of this problem's.

        Returns:
            The new problem.

        Example:
            >>> from diffusers import DDIMScheduler
            >>> from picard.adapters.diffusers import from_scheduler
            >>> problem = from_scheduler(DDIMScheduler(), lambda x, t: 0.1 * x, 10)
            >>> problem.with_rule(problem.rule.head(4)).num_steps
            4
        """
        return DiffusionProblem(
            rule, self.denoiser, self.generator, self.rows_per_evaluation, self.scale_model_input
        )

    def scale(self) -> np.ndarray:
        """The rule's per-step noise std: with ``relative=False``, ``tol`` is relative to it."""
        return self.rule.tol_scale

    def init(self, x0: Tensor) -> _State:
        """Move the rule's arrays to ``x0``'s device and draw the noise, in sequential order."""
        if x0.ndim < 2:
            raise ValueError(
                f"x_T must have a batch dimension and a sample shape, got shape {tuple(x0.shape)}"
            )
        if isinstance(self.generator, Sequence) and len(self.generator) != x0.shape[0]:
            raise ValueError(
                f"generator is a list of {len(self.generator)} generators but x_T holds "
                f"{x0.shape[0]} samples; give one per sample"
            )
        work = working_dtype(x0.dtype)
        view = (-1,) + (1,) * x0.ndim
        coefficients = {
            k: torch.as_tensor(v, dtype=work).to(x0.device).reshape(view)
            for k, v in self.rule.coefficients.items()
        }
        timesteps = self.rule.timesteps.to(x0.device)
        return _State(coefficients, timesteps, self.noise(x0), x0.dtype, x0.shape[0])

    def noise(self, x0: Tensor) -> Noise | None:
        """All the noise of the solve, drawn now as the sequential sampler draws it.

        A problem whose noise is drawn elsewhere (k-diffusion's samplers draw theirs from
        the caller's noise sampler) overrides this to return it; anything with Noise's
        ``window(start, stop)`` and ``rows(steps, samples)`` serves.

        Args:
            x0: the starting latent (its shape, device and dtype).

        Returns:
            The noise, or ``None`` when the rule draws none.

        Example:
            >>> import torch
            >>> from diffusers import DDPMScheduler
            >>> from picard.adapters.diffusers import from_scheduler
            >>> problem = from_scheduler(DDPMScheduler(), lambda x, t: 0.1 * x, 4)
            >>> problem.noise(torch.zeros(2, 1, 3, 3)).window(0, 4).shape
            torch.Size([4, 2, 1, 3, 3])
        """
        draws = self.rule.noise_draws
        if not draws.any():
            return None
        return Noise(
            draws,
            tuple(x0.shape),
            self.generator,
            x0.device,
            self.rule.noise_dtype or x0.dtype,
            working_dtype(x0.dtype),
        )

    def increments(
        self, x: Tensor, start: int | Lanes, state: _State, history: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """One model call for the window's steps; the rule's update minus the states.

        Per-sample windows (``start`` a :class:`picard.Lanes`): only the valid rows reach the
        model. A denoiser with a ``samples`` parameter gets each row's batch index (for
        per-sample conditioning such as prompts; rows may be split across calls).
        """
        if isinstance(start, Lanes):
            return self._lane_increments(x, start, state, history)
        w, b = x.shape[:2]
        stop = start + w
        c = {k: v[start:stop] for k, v in state.coefficients.items()}
        rows = self.rule.model_input(x, c) if self.scale_model_input else x
        rows = rows.reshape(w * b, *x.shape[2:])
        t = state.timesteps[start:stop].repeat_interleave(b)
        who = torch.arange(b, device=x.device).repeat(w) if self._takes_samples else None
        out = self._denoise(rows, t, who, state)
        out = out.reshape(w, b, *out.shape[1:]).to(x.dtype)
        noise = None if state.noise is None else state.noise.window(start, stop)
        nxt, outputs = self.rule.update(x, out, c, noise, history)
        state.anchor[:] = [(stop - 1, x[-1].clone(), out[-1])]
        return nxt - x, outputs

    def _lane_increments(
        self, x: Tensor, lanes: Lanes, state: _State, history: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`increments` for per-sample windows: rows gathered per column."""
        steps, samples = lanes.steps, lanes.samples
        w, s = steps.shape
        valid, at = lanes.valid, lanes.at
        bshape = (w, s) + (1,) * (x.ndim - 2)
        c = {k: v.reshape(-1)[at].reshape(bshape) for k, v in state.coefficients.items()}
        rows = self.rule.model_input(x, c) if self.scale_model_input else x
        keep = valid.reshape(-1).nonzero().squeeze(1)
        rows = rows.reshape(w * s, *x.shape[2:])[keep]
        t = state.timesteps[at.reshape(-1)[keep]]
        who = samples.expand(w, s).reshape(-1)[keep] if self._takes_samples else None
        got = self._denoise(rows, t, who, state).to(x.dtype)
        out = got.new_zeros((w * s, *got.shape[1:]))
        out[keep] = got
        out = out.reshape(w, s, *got.shape[1:])
        noise = None
        if state.noise is not None:
            noise = state.noise.rows(at, samples)
        nxt, outputs = self.rule.update(x, out, c, noise, history)
        self._anchor(state, x, out, steps, samples, valid.sum(0) - 1)
        return torch.where(valid.reshape(bshape), nxt - x, 0.0), outputs

    def _denoise(self, rows: Tensor, t: Tensor, who: Tensor | None, state: _State) -> Tensor:
        """The denoiser on ``rows`` at timesteps ``t`` (with batch indices ``who``), checked."""
        if who is None:
            out = map_rows(self.denoiser, rows.to(state.latent_dtype), t)
        else:
            out = map_rows(self.denoiser, rows.to(state.latent_dtype), t, samples=who)
        return self._check_output(out, rows)

    @staticmethod
    def _anchor(
        state: _State, x: Tensor, out: Tensor, steps: Tensor, samples: Tensor, last: Tensor
    ) -> None:
        """Keep each sample's last evaluated row (step, state, model output) for guesses."""
        if not state.anchors:
            batch = state.batch
            state.anchors.extend(
                [
                    torch.full((batch,), -1, dtype=torch.long, device=x.device),
                    x.new_zeros((batch, *x.shape[2:])),
                    out.new_zeros((batch, *out.shape[2:])),
                ]
            )
        cols = torch.arange(x.shape[1], device=x.device)
        step_a, x_a, out_a = state.anchors
        step_a[samples] = steps[last, cols]
        x_a[samples] = x[last, cols]
        out_a[samples] = out[last, cols]

    def guess(self, x: Tensor, start: int | Lanes, count: int, state: _State) -> Tensor | None:
        """Roll the sampler forward from ``x`` on the last model call's denoised estimate.

        The last row the model saw gives ``x̂_0`` (per-sample windows: each sample's own
        last row). Held fixed, it makes each step affine, ``x_{i+1} = A_i x_i + B_i x̂_0 +
        (noise term)_i`` — the model output taken as the one that predicts ``x̂_0`` at each
        step's own state and noise level, so multistep corrections vanish — and the
        guesses are that recurrence, in a few batched operations with the pre-drawn noise.
        No model call. ``None`` for rules without ``signal_keys`` (their guess is a copy).
        """
        if self.rule.signal_keys is None:
            return None
        if isinstance(start, Lanes):
            if not state.anchors:
                return None
            samples = start.samples
            step_a, x_a, out_a = (v[samples] for v in state.anchors)
            ends = start.steps[0]
            steps = ends[None, :] + torch.arange(count, device=x.device)[:, None]
            steps = steps.clamp(max=self.num_steps - 1)
            return self._rollout(x, step_a, x_a, out_a, steps, samples, state)
        if not state.anchor:
            return None
        step, x_a, out_a = state.anchor[0]
        b = x.shape[0]
        steps = torch.arange(start, start + count, device=x.device)[:, None].expand(count, b)
        step_a = torch.full((b,), step, device=x.device)
        samples = torch.arange(b, device=x.device)
        return self._rollout(x, step_a, x_a, out_a, steps, samples, state)

    def _rollout(
        self,
        x: Tensor,
        step_a: Tensor,
        x_a: Tensor,
        out_a: Tensor,
        steps: Tensor,
        samples: Tensor,
        state: _State,
    ) -> Tensor:
        """The frozen-``x̂_0`` roll-out: ``(C, S, …)`` guesses of the states after ``x``.

        Column k starts from ``x[k]`` (batch sample ``samples[k]``) with its anchor row
        ``(step_a, x_a, out_a)[k]`` and takes steps ``steps[:, k]``.
        """
        rule = self.rule
        assert rule.signal_keys is not None
        ka, ks = rule.signal_keys
        co = state.coefficients
        count, cols = steps.shape
        channels = x.shape[1]
        ones = (1,) * (x.ndim - 1)
        x0 = schedules.predict_x0(
            rule.prediction_type,
            x_a,
            out_a[:, :channels],
            co[ka].reshape(-1)[step_a].reshape(-1, *ones),
            co[ks].reshape(-1)[step_a].reshape(-1, *ones),
        )
        if not state.affine:
            state.affine.extend(_affine(rule, co, x))
        a, b = (v[steps].to(x.dtype) for v in state.affine)  # (C, S)
        u = b.reshape(count, cols, *ones) * x0
        if state.noise is not None:
            c = {k: v.reshape(-1)[steps].reshape(count, cols, *ones) for k, v in co.items()}
            zero = x.new_zeros((count, *x.shape))
            out = zero.repeat_interleave(rule.output_channels, 2)
            if rule.output_channels > 1:  # a learned variance: the anchor's
                out[:, :, channels:] = out_a[:, channels:]
            history = None  # rules treat a missing history as zeros
            noise = state.noise.rows(steps, samples)
            u = u + rule.update(zero, out, c, noise, history)[0]
        # y_{k+1} = A_k y_k + u_k: the coefficient of u_j in y_{k+1} is Π_{j<i<=k} A_i.
        below = torch.ones(count, count, dtype=torch.bool, device=x.device).tril(-1)
        f = torch.where(below, a.T[:, :, None], 1.0)  # (S, C, C)
        path = torch.cumprod(f, 1).tril()
        flat = path @ u.transpose(0, 1).reshape(cols, count, -1)  # (S, C, D)
        flat += torch.cumprod(a.T, 1)[:, :, None] * x.reshape(cols, 1, -1)
        return flat.transpose(0, 1).reshape(count, *x.shape)

    def _check_output(self, out: Any, rows: Tensor) -> Tensor:
        if not isinstance(out, Tensor):
            raise TypeError(f"denoiser must return a torch.Tensor, got {type(out).__name__}")
        channels = rows.shape[1] * self.rule.output_channels
        expected = (rows.shape[0], channels, *rows.shape[2:])
        if tuple(out.shape) != expected:
            raise ValueError(
                f"denoiser returned shape {tuple(out.shape)} for input {tuple(rows.shape)}; "
                f"expected {expected}"
            )
        if out.device != rows.device:
            raise ValueError(f"denoiser returned a tensor on {out.device}; expected {rows.device}")
        return out

    def step_label(self, step: int) -> str:
        """Name a step by its index and model timestep."""
        return f"step {step} (timestep {self.rule.timesteps[step].item():g})"


def _affine(rule: UpdateRule, co: Mapping[str, Tensor], x: Tensor) -> list[Tensor]:
    """Per step, ``(A_i, B_i)`` of the update with ``x̂_0`` held fixed and no noise.

    Probed on a state of one element per channel: ``A`` from ``(x, x̂_0) = (1, 0)``,
    ``B`` from ``(0, 1)`` (clipping and thresholding, where configured, are ignored:
    the result is only a guess).
    """
    assert rule.signal_keys is not None
    ka, ks = rule.signal_keys
    n = rule.num_steps
    shape = (n, 1, x.shape[1], *([1] * (x.ndim - 2)))
    probes = []
    for xv, x0v in ((1.0, 0.0), (0.0, 1.0)):
        xx = torch.full(shape, xv, dtype=x.dtype, device=x.device)
        x0 = torch.full(shape, x0v, dtype=x.dtype, device=x.device)
        out = schedules.output_for_x0(rule.prediction_type, xx, x0, co[ka], co[ks])
        if rule.output_channels > 1:
            out = torch.cat([out, torch.zeros_like(out)], 2)
        history = None
        if rule.memory:  # the same converted output before: no multistep correction
            _, m = rule.update(xx, out, co, None, None)
            history = None if m is None else m[:1].expand(rule.memory, *m.shape[1:])
        nxt, _ = rule.update(xx, out, co, None, history)
        probes.append(nxt.reshape(n, -1)[:, 0].double())
    return probes


def _takes_samples(denoiser: Any) -> bool:
    """Whether ``denoiser`` accepts a ``samples`` keyword (row -> batch index)."""
    try:
        params = inspect.signature(denoiser).parameters
    except (TypeError, ValueError):
        return False
    return "samples" in params


def _check_generator(generator: Any) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        return
    raise TypeError(
        "generator must be a torch.Generator, a list of them (one per sample) or None, "
        f"got {type(generator).__name__}"
    )
