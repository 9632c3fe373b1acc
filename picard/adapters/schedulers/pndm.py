"""PNDM: pseudo Runge–Kutta and pseudo linear multistep, as diffusers' ``PNDMScheduler``.

Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (ICLR).
Symbols (paper -> diffusers):

- ᾱ_t ``alphas_cumprod[t]``; δ the stride ``num_train_timesteps // num_inference_steps``
  (``r`` below; diffusers always steps by it, whatever the spacing of the grid); past
  t = 0, ᾱ is ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``, else ᾱ_0).
- The transfer part φ (eq. 9; ``_get_prev_sample``), the DDIM step written for an ε:
  ``φ(x_t, ε, t, t−δ) = √(ᾱ_{t−δ}/ᾱ_t) x_t − (ᾱ_{t−δ} − ᾱ_t) ε / (√ᾱ_t (√(ᾱ_t(1−ᾱ_{t−δ}))
  + √((1−ᾱ_t) ᾱ_{t−δ})))`` — ``sample_coeff``, ``alpha_prod_t_prev - alpha_prod_t`` and
  ``model_output_denom_coeff``. With ``v_prediction`` the combined output e' is first
  turned into ε = √ᾱ_t e' + √(1−ᾱ_t) x_t.
- The gradient part: ``ets`` the stored model outputs e_t; ``cur_sample`` the state x_t a
  multi-call step starts from; ``cur_model_output`` the running Runge–Kutta sum; ``counter``
  the loop entry.
- Pseudo Runge–Kutta (PRK, ``skip_prk_steps=False``; F-PNDM's first three steps):
  e₁ = ε(x_t, t), x¹ = φ(x_t, e₁, t, t−δ/2), e₂ = ε(x¹, t−δ/2), x² = φ(x_t, e₂, t, t−δ/2),
  e₃ = ε(x², t−δ/2), x³ = φ(x_t, e₃, t, t−δ), e₄ = ε(x³, t−δ),
  e' = (e₁ + 2e₂ + 2e₃ + e₄)/6, x_{t−δ} = φ(x_t, e', t, t−δ): four loop entries per step.
- Pseudo linear multistep (PLMS): e' = (55e_t − 59e_{t−δ} + 37e_{t−2δ} − 9e_{t−3δ})/24,
  after the warm-up orders (3e_t − e_{t−δ})/2 and (23e_t − 16e_{t−δ} + 5e_{t−2δ})/12.
  With ``skip_prk_steps=True`` (S-PNDM, Stable Diffusion's scheduler) the first step is a
  pseudo improved-Euler (Heun) step: entry 0 goes x_t -> φ(x_t, e₀, t, t−δ), entry 1
  calls the model there at t−δ and restarts from x_t with (e₀ + e₁)/2; entry 2 calls the
  model again at t−δ, now at the corrected state — diffusers' grid lists t−δ twice.

Here each *loop entry* is one step of the rule (the state is the sample the model sees at
that entry) and every entry is the same affine map
``x_{i+1} = sc_i S_i − (Δ_i · E_i) / den_i``, ``E_i = ((Σ_j w_{ij} e_{i−o_{ij}}) · mul_i) /
div_i`` (ε-converted for v-prediction), ``S_i = x_{i−s_i}``: the offsets ``o``, ``s`` and
weights ``w`` replay diffusers' ``counter``/``ets``/``cur_sample`` state machine once, when
the rule is built, so the state lives in coefficient arrays; the outputs each entry
stores are its raw model output and its state, read back through ``memory``. The scalars
are float32, computed on 0-d tensors as diffusers computes them, and the sums keep its
order, so float32 runs agree to rounding and float64 runs (diffusers' PNDM does not cast
to float32) to ~1e-15.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.config import read_option
from picard.adapters.schedulers.multistep import Restarting

__all__ = ["Entry", "PNDMRule", "from_config", "pndm_plan"]

_PREDICTIONS = ("epsilon", "v_prediction")
_TERMS = 4  # at most four model outputs in one combination (PLMS order 4, PRK)


@dataclass
class Entry:
    """One loop entry of diffusers' PNDM loop, with its state machine resolved.

    Attributes:
        timestep: the timestep the model receives (``scheduler.timesteps[i]``).
        t: the timestep of φ's ᾱ_t (differs from ``timestep`` inside PRK steps and at
            the second S-PNDM entry).
        prev: the timestep of φ's ᾱ_{t−δ} (negative: ``final_alpha_cumprod``).
        sample: the entry whose state φ starts from (``cur_sample``), ≤ this entry.
        terms: ``(entry, weight)`` of the model outputs e' sums, in diffusers' order.
        mul: e' = (Σ w e) · mul / div (PLMS order 4 multiplies by 1/24, others divide).
        div: see ``mul``.

    Example:
        >>> first = pndm_plan({"skip_prk_steps": True}, 2)[0]
        >>> first.timestep, first.prev, first.terms
        (500, 0, [(0, 1.0)])
    """

    timestep: int
    t: int
    prev: int
    sample: int
    terms: list[tuple[int, float]] = field(default_factory=list)
    mul: float = 1.0
    div: float = 1.0


def _check_config(config: Mapping[str, Any]) -> None:
    kind = read_option(config, "prediction_type", "epsilon")
    if kind not in _PREDICTIONS:
        raise ValueError(
            f"prediction_type must be one of {_PREDICTIONS} for PNDM (diffusers' PNDM step "
            f"raises for others), got {kind!r}"
        )
    if read_option(config, "rescale_betas_zero_snr", False):
        raise ValueError(
            "rescale_betas_zero_snr=True is not an option of PNDMScheduler; supported: False"
        )


def _grid(config: Mapping[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prk_timesteps, plms_timesteps)`` as ``set_timesteps`` builds them."""
    total = int(read_option(config, "num_train_timesteps", 1000))
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= total:
        raise ValueError(f"num_inference_steps must be an int in [1, {total}], got {n!r}")
    base = schedules.leading_timesteps(config, int(n))[::-1].copy()
    schedules.check_timesteps(base, total, config)
    if read_option(config, "skip_prk_steps", False):
        plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
        return np.array([], dtype=np.int64), plms
    if len(base) < 4:
        raise ValueError(
            f"num_inference_steps must be >= 4 with skip_prk_steps=False (diffusers' "
            f"Runge-Kutta warm-up takes the 4 largest timesteps), got {n}"
        )
    half = total // n // 2
    prk = base[-4:].repeat(2) + np.tile(np.array([0, half]), 4)
    prk = prk[:-1].repeat(2)[1:-1][::-1].copy()
    return prk, base[:-3][::-1].copy()


def pndm_plan(config: Mapping[str, Any], num_inference_steps: int, begin: int = 0) -> list[Entry]:
    """Diffusers' PNDM loop, entry by entry: what each ``step`` call combines.

    Replays ``step_prk``/``step_plms`` on entry indices instead of tensors. A loop over
    ``timesteps[begin:]`` (img2img's ``strength``: PNDM has no ``set_begin_index``)
    starts the state machine afresh there — ``counter`` 0, no stored outputs — while
    ``step_prk`` still reads the whole grid's Runge–Kutta timesteps by its counter.

    Args:
        config: a ``PNDMScheduler`` configuration (mapping).
        num_inference_steps: N (1 … ``num_train_timesteps``; at least 4 for PRK).
        begin: the first entry of ``scheduler.timesteps`` the loop runs.

    Returns:
        One :class:`Entry` per element of diffusers' ``scheduler.timesteps[begin:]``
        (entry indices counted from ``begin``).

    Example:
        >>> plan = pndm_plan({"skip_prk_steps": True, "steps_offset": 1}, 3)
        >>> [e.timestep for e in plan], [(e.t, e.prev, e.sample) for e in plan][:2]
        ([667, 334, 334, 1], [(667, 334, 0), (667, 334, 0)])
        >>> plan[1].terms, plan[1].div
        ([(1, 1.0), (0, 1.0)], 2.0)
    """
    _check_config(config)
    n = num_inference_steps
    skip = bool(read_option(config, "skip_prk_steps", False))
    prk, plms = _grid(config, n)
    total = int(read_option(config, "num_train_timesteps", 1000))
    ratio = total // n
    ets: list[int] = []
    cur: int | None = None
    plan = []
    entries = np.concatenate([prk, plms]).astype(np.int64).tolist()
    if not 0 <= begin < len(entries):
        raise ValueError(f"begin must be in [0, {len(entries)}), got {begin}")
    for i, timestep in enumerate(entries[begin:]):
        if i < len(prk) and not skip:
            e, cur = _prk_entry(i, timestep, prk, total // n // 2, ets, cur)
        else:
            e, cur = _plms_entry(i, timestep, ratio, ets, cur)
        if e.t >= total:
            raise ValueError(
                f"PNDM's entry {begin + i} would use timestep {e.t} >= "
                f"num_train_timesteps={total} (num_inference_steps={n}); use another spacing "
                "or step count"
            )
        plan.append(e)
    return plan


def _prk_entry(
    i: int, timestep: int, prk: np.ndarray, half: int, ets: list[int], cur: int | None
) -> tuple[Entry, int | None]:
    """``step_prk`` at counter i (PRK entries come first, so counter = entry index)."""
    prev = timestep - (0 if i % 2 else half)
    t = int(prk[i // 4 * 4])
    if i % 4 == 0:
        ets.append(i)
        cur = i
    assert cur is not None
    terms = [(i, 1.0)]
    if i % 4 == 3:  # cur_model_output + e/6, summed in diffusers' order
        terms = [(i - 3, 1 / 6), (i - 2, 1 / 3), (i - 1, 1 / 3), (i, 1 / 6)]
    return Entry(timestep, t, prev, cur, terms), cur


def _plms_entry(
    i: int, timestep: int, ratio: int, ets: list[int], cur: int | None
) -> tuple[Entry, int | None]:
    """``step_plms`` at counter i, updating ``ets``/``cur_sample`` as diffusers does."""
    t, prev = timestep, timestep - ratio
    if i != 1:
        ets[:] = [*ets[-3:], i]
    else:
        t, prev = timestep + ratio, timestep
    sample, mul, div = i, 1.0, 1.0
    if len(ets) == 1 and i == 0:
        terms = [(i, 1.0)]
        cur = i
    elif len(ets) == 1 and i == 1:
        terms, div = [(i, 1.0), (ets[-1], 1.0)], 2.0
        assert cur is not None
        sample, cur = cur, None
    elif len(ets) == 2:
        terms, div = [(ets[-1], 3.0), (ets[-2], -1.0)], 2.0
    elif len(ets) == 3:
        terms, div = [(ets[-1], 23.0), (ets[-2], -16.0), (ets[-3], 5.0)], 12.0
    else:
        weights = (55.0, -59.0, 37.0, -9.0)
        terms, mul = [(ets[-1 - k], w) for k, w in enumerate(weights)], 1 / 24
    return Entry(timestep, t, prev, sample, terms, mul, div), cur


def _phi(ab: Tensor, final: Tensor, t: int, prev: int) -> tuple[float, float, float, float, float]:
    """φ's float32 scalars ``(sample_coeff, Δᾱ, denom, √ᾱ_t, √(1−ᾱ_t))`` on 0-d tensors."""
    a_t = ab[t]
    a_prev = ab[prev] if prev >= 0 else final
    beta_t, beta_prev = 1 - a_t, 1 - a_prev
    sample_coeff = (a_prev / a_t) ** 0.5
    denom = a_t * beta_prev ** (0.5) + (a_t * beta_t * a_prev) ** (0.5)
    return (
        float(sample_coeff),
        float(a_prev - a_t),
        float(denom),
        float(a_t**0.5),
        float(beta_t**0.5),
    )


class PNDMRule(Restarting):
    """PNDM (PRK warm-up + PLMS, or S-PNDM) on diffusers' loop entries.

    Supports ``skip_prk_steps`` both ways, the three ``timestep_spacing`` values with
    ``steps_offset``, ``set_alpha_to_one``, the beta schedules of
    :func:`picard.adapters.schedulers.schedules.betas` and prediction types epsilon and v_prediction
    (diffusers' PNDM raises for ``sample``). ``num_steps`` is the number of loop entries:
    N + 1 for S-PNDM, N + 9 with the Runge–Kutta warm-up.

    ``memory`` is the farthest entry an update reads (4 for S-PNDM, 12 with PRK: the first
    PLMS entry combines the outputs of the three PRK steps' first calls); the stored
    outputs are ``cat([model output, state], dim=2)``. ``tol_scale[i]`` is the DDPM
    posterior std of a stride-δ step from the timestep the model sees at entry i + 1
    (0 for the last state). ``signal_keys``: √ᾱ, √(1−ᾱ) at that timestep. :meth:`tail`
    replays the state machine afresh from its first entry, as diffusers' loop over a
    tail of the timesteps runs it (:func:`pndm_plan`).

    Args:
        config: a ``PNDMScheduler`` configuration (mapping).
        num_inference_steps: N.
        begin_index: the first loop entry run (img2img's ``strength``); the rule has the
            entries from there on (``first_step``).

    Attributes:
        plan: the :class:`Entry` of each loop entry.
        coefficients: ``sqrt_alpha``, ``sqrt_beta`` (the model timestep's signal), the
            φ scalars ``sc``, ``delta``, ``den``, ``sa``, ``sb``, the combination
            ``o0…o3``/``w0…w3``/``mul``/``div`` and the sample offset ``s``.

    Example:
        >>> rule = PNDMRule({"skip_prk_steps": True, "steps_offset": 1}, 4)
        >>> rule.timesteps.tolist(), rule.memory
        ([751, 501, 501, 251, 1], 4)
        >>> PNDMRule({"steps_offset": 1}, 4).num_steps  # 12 Runge-Kutta entries + 1
        13
    """

    signal_keys = ("sqrt_alpha", "sqrt_beta")
    per_step = ()

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, *, begin_index: int = 0
    ):
        self.config, self.num_inference_steps = config, num_inference_steps
        self.first_step = begin_index
        self.prediction_type = read_option(config, "prediction_type", "epsilon")
        self.plan = plan = pndm_plan(config, num_inference_steps, begin_index)
        total = int(read_option(config, "num_train_timesteps", 1000))
        ab = schedules.alphas_cumprod(config)
        final = torch.tensor(1.0) if read_option(config, "set_alpha_to_one", False) else ab[0]
        m = len(plan)
        phi = np.array([_phi(ab, final, e.t, e.prev) for e in plan], dtype=np.float64)
        model_t = np.array([e.timestep for e in plan], dtype=np.int64)
        a_model = ab[torch.from_numpy(model_t)]
        co: dict[str, np.ndarray] = {
            "sqrt_alpha": a_model.sqrt().double().numpy(),
            "sqrt_beta": (1 - a_model).sqrt().double().numpy(),
            **{k: phi[:, j].copy() for j, k in enumerate(("sc", "delta", "den", "sa", "sb"))},
            "mul": np.array([e.mul for e in plan]),
            "div": np.array([e.div for e in plan]),
            "s": np.array([float(i - e.sample) for i, e in enumerate(plan)]),
        }
        for j in range(_TERMS):
            pad = [(*e.terms, *[(i, 0.0)] * _TERMS)[j] for i, e in enumerate(plan)]
            co[f"o{j}"] = np.array([float(i - k) for i, (k, _) in enumerate(pad)])
            co[f"w{j}"] = np.array([w for _, w in pad])
        self.num_steps = m
        self.timesteps = torch.from_numpy(model_t)
        self.coefficients = co
        self.noise_draws = np.zeros(m, dtype=bool)
        reach = [co["s"].max()] + [co[f"o{j}"][co[f"w{j}"] != 0].max(initial=0) for j in range(4)]
        self.memory = int(max(reach))
        prev = torch.from_numpy(model_t - total // num_inference_steps)
        a_prev = torch.where(prev >= 0, ab[prev.clamp(min=0)], final)
        std = schedules.posterior_std(a_model.double(), a_prev.double()).numpy()
        self.tol_scale = np.append(std[1:], 0.0)

    def restart(self, begin_index: int) -> PNDMRule:
        """The rule of entries ``begin_index …`` as diffusers' loop over them runs them.

        Example:
            >>> rule = PNDMRule({"skip_prk_steps": True, "steps_offset": 1}, 4)
            >>> tail = rule.restart(3)
            >>> tail.timesteps.tolist(), tail.plan[1].terms  # the Heun-like start again
            ([251, 1], [(1, 1.0), (0, 1.0)])
        """
        return PNDMRule(self.config, self.num_inference_steps, begin_index=begin_index)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """φ of every entry of the window at once, its inputs gathered from the outputs.

        Returns the next states and ``cat([out, x], dim=2)`` to remember.

        Example:
            >>> import torch
            >>> rule = PNDMRule({"skip_prk_steps": True}, 3)
            >>> c = {k: torch.as_tensor(v).float().reshape(-1, 1, 1)
            ...      for k, v in rule.coefficients.items()}
            >>> x = torch.ones(rule.num_steps, 1, 2)
            >>> nxt, mem = rule.update(x, 0.1 * x, c, None, None)
            >>> nxt.shape, mem.shape
            (torch.Size([4, 1, 2]), torch.Size([4, 1, 4]))
        """
        mem = torch.cat([out, x.to(out.dtype)], dim=2)
        if self.memory:
            pick = _gatherer(mem, c, history, self.memory)
            combined = pick("o0", 0) * c["w0"]
            for j in range(1, _TERMS):
                combined = combined + pick(f"o{j}", 0) * c[f"w{j}"]
            sample = pick("s", 1).to(x.dtype)
        else:
            combined, sample = out * c["w0"], x
        e = combined * c["mul"] / c["div"]
        if self.prediction_type == "v_prediction":
            e = c["sa"] * e + c["sb"] * sample
        nxt = c["sc"] * sample - c["delta"] * e / c["den"]
        return nxt, mem


def _gatherer(mem: Tensor, c: Mapping[str, Tensor], history: Tensor | None, k: int):
    """``pick(key, part)``: row ``i − c[key]_i`` of the window's outputs, or of ``history``.

    Part 0 is the model output, 1 the state; zeros before step 0.
    """
    w, s = mem.shape[:2]
    before = mem[:0] if history is None else history.to(mem.dtype)
    pad = mem.new_zeros((k - before.shape[0], *mem.shape[1:]))
    ext = torch.cat([pad, before, mem])  # ext[k + j] = outputs of window row j
    rows = torch.arange(w, device=mem.device)[:, None] + k
    cols = torch.arange(s, device=mem.device)[None, :]
    half = mem.shape[2] // 2

    def pick(key: str, part: int) -> Tensor:
        off = c[key].reshape(w, -1).expand(w, s)  # one offset per row (and sample)
        idx = (rows - off.round().long()).clamp(min=0)
        return ext[idx, cols][:, :, part * half : (part + 1) * half]

    return pick


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> PNDMRule:
    """The rule of a ``PNDMScheduler`` config (its ``step`` takes no options).

    Args:
        config: a ``PNDMScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        The :class:`PNDMRule` over diffusers' loop entries.

    Example:
        >>> from diffusers import PNDMScheduler
        >>> sched = PNDMScheduler(skip_prk_steps=True, steps_offset=1)
        >>> from_config(sched.config, 50).num_steps
        51
    """
    return PNDMRule(config, num_inference_steps)
