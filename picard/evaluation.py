"""How one batched model call is evaluated: whole, in chunks, or sharded.

Every model call a problem makes goes through :func:`map_rows`. Inside a solve it runs
under an :class:`Evaluator` that

- splits the call into chunks when its rows do not fit in memory (an out-of-memory
  error), says so once, and keeps the chunk size for the rest of the solve;
- with ``distributed=True``, evaluates this rank's contiguous shard of the rows and
  gathers every rank's shard (``torch.distributed``: NCCL on GPUs, gloo on CPUs), so that
  all ranks hold the same outputs and take the same decisions;
- with ``devices=[...]``, evaluates contiguous shards on replicas of the model, one
  thread per device, and gathers them in order on the state's device.

Rows are the leading dimension of the call's first tensor argument; every tensor
argument with that leading dimension is split, the others are passed whole. Rows are
independent (the model sees each alone), so sharding changes no result.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from picard.errors import MemoryWarning, RankError

__all__ = ["Replicable", "map_rows", "replicate"]

OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

_CURRENT: ContextVar[Evaluator | None] = ContextVar("picard_evaluator", default=None)


def map_rows(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a batch of rows, as the current solve evaluates calls.

    Problems call their model through it, so that a solve can split the call into
    chunks, ranks or devices; outside a solve it is a plain call.

    Args:
        fn: the batched model call.
        *args: its arguments; tensors whose leading dimension equals that of the first
            tensor argument are rows and may be split.
        **kwargs: its keyword arguments, split the same way.

    Returns:
        What ``fn`` returns, rows in order.

    Example:
        >>> import torch
        >>> map_rows(lambda t, y: y * t[:, None], torch.ones(3), torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """
    evaluator = _CURRENT.get()
    if evaluator is None:
        return fn(*args, **kwargs)
    return evaluator(fn, args, kwargs)


@contextlib.contextmanager
def evaluating(evaluator: Evaluator) -> Iterator[Evaluator]:
    """Run the body's model calls under ``evaluator``."""
    token = _CURRENT.set(evaluator)
    try:
        yield evaluator
    finally:
        _CURRENT.reset(token)
        evaluator.close()


def replicate(fn: Any, device: torch.device) -> Any:
    """A copy of the model ``fn`` on ``device``.

    A module is deep-copied and moved; a callable with a ``picard_replicate(device)``
    method makes its own copy.

    Args:
        fn: a ``torch.nn.Module`` or a callable with ``picard_replicate``.
        device: where the copy goes.

    Returns:
        The copy.

    Raises:
        TypeError: ``fn`` can be neither copied nor rebuilt.

    Example:
        >>> import torch
        >>> copy = replicate(torch.nn.Linear(2, 2), torch.device("cpu"))
        >>> isinstance(copy, torch.nn.Linear)
        True
    """
    make = getattr(fn, "picard_replicate", None)
    if callable(make):
        return make(device)
    if isinstance(fn, torch.nn.Module):
        return copy.deepcopy(fn).to(device)
    raise TypeError(
        "devices=[...] replicates the model on each device: pass it as a torch.nn.Module "
        "(or a callable with a picard_replicate(device) method, as parallelize(pipe) builds); "
        f"got {type(fn).__name__}"
    )


class Evaluator:
    """Evaluates the model calls of one solve (see the module's docstring).

    Args:
        distributed: shard each call over the ranks of ``group`` (default group if None).
        group: a ``torch.distributed`` process group.
        devices: shard each call over replicas of the model on these devices.
    """

    def __init__(
        self,
        distributed: bool = False,
        group: Any = None,
        devices: Sequence[torch.device] | None = None,
    ):
        self.chunk: int | None = None  # rows per call after running out of memory
        self._warned = False
        self.distributed = distributed
        self.group = group
        self.devices = list(devices) if devices else []
        self._replicas: dict[int, tuple[Any, list[Any]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.plain = not distributed and not self.devices

    def __call__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Evaluate ``fn(*args, **kwargs)``: sharded, on devices, or in chunks."""
        first = None
        if self.plain:  # one device, nothing chunked yet: the common case, kept short
            try:
                return fn(*args, **kwargs)
            except OutOfMemory:
                self.plain, first = False, 2  # retry below in halves
        rows = _rows(args)
        if rows is None:
            return fn(*args, **kwargs)
        if self.distributed:
            return self._ranks(fn, args, kwargs, rows)
        if self.devices:
            return self._on_devices(fn, args, kwargs, rows)
        return self._chunked(fn, args, kwargs, rows, None if first is None else (rows + 1) // 2)

    def agree(self, seconds: float) -> float:
        """A time every process agrees on: the slowest rank's when distributed."""
        if not self.distributed:
            return seconds
        import torch.distributed as dist

        t = torch.tensor([seconds], dtype=torch.float64, device=_comm_device(self.group))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t.item())

    def close(self) -> None:
        """Stop the device threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _chunked(
        self, fn: Callable[..., Any], args: tuple, kwargs: dict, rows: int, size: int | None = None
    ) -> Any:
        size = min(size or self.chunk or rows, rows)
        while True:
            try:
                if size >= rows:
                    return fn(*args, **kwargs)
                parts = []
                for lo in range(0, rows, size):
                    a, k = _slice(args, kwargs, rows, lo, min(rows, lo + size))
                    parts.append(fn(*a, **k))
                break
            except OutOfMemory:
                if size <= 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = (size + 1) // 2
        if self.chunk != size:
            if not self._warned:
                warnings.warn(
                    f"picard: a model call of {rows} rows ran out of memory; evaluating in "
                    f"chunks of at most {size} rows from now on in this solve (a smaller "
                    "window or max_rows avoids the retries)",
                    MemoryWarning,
                    stacklevel=2,
                )
                self._warned = True
            self.chunk = size
        return _concat(parts)

    def _ranks(self, fn: Callable[..., Any], args: tuple, kwargs: dict, rows: int) -> Tensor:
        import torch.distributed as dist

        world = dist.get_world_size(self.group)
        rank = dist.get_rank(self.group)
        sizes = [rows // world + (r < rows % world) for r in range(world)]
        lo = sum(sizes[:rank])
        hi = lo + sizes[rank]
        out: Any = None
        error: str | None = None
        raised: BaseException | None = None
        if hi > lo:
            try:
                a, k = _slice(args, kwargs, rows, lo, hi)
                out = self._chunked(fn, a, k, hi - lo)
            except Exception as exc:  # reported to every rank below, then raised on all
                error, raised = f"{type(exc).__name__}: {exc}", exc
            else:
                if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != hi - lo:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    error = f"the model returned {got} for {hi - lo} rows"
        meta = None if out is None or error else (tuple(out.shape[1:]), str(out.dtype))
        status: list[Any] = [None] * world
        dist.all_gather_object(status, (error, meta), group=self.group)
        failed = [(r, msg) for r, (msg, _) in enumerate(status) if msg is not None]
        if failed:
            r, msg = failed[0]
            raise RankError(f"rank {r} failed evaluating its model rows: {msg}", rank=r) from raised
        tail, dtype_name = next(m for _, m in status if m is not None)
        dtype = getattr(torch, dtype_name.removeprefix("torch."))
        home = args[0].device
        comm = _comm_device(self.group)
        per = max(sizes)
        local = torch.zeros((per, *tail), dtype=dtype, device=comm)
        if out is not None:
            local[: hi - lo] = out.to(comm)
        payload = local.reshape(-1).view(torch.uint8)  # any dtype travels as bytes
        gathered = [torch.empty_like(payload) for _ in range(world)]
        dist.all_gather(gathered, payload, group=self.group)
        parts = [g.view(dtype).reshape(per, *tail)[: sizes[r]] for r, g in enumerate(gathered)]
        return torch.cat(parts).to(home)

    def _on_devices(self, fn: Callable[..., Any], args: tuple, kwargs: dict, rows: int) -> Any:
        replicas = self._replicas_of(fn)
        count = len(self.devices)
        sizes = [rows // count + (d < rows % count) for d in range(count)]
        home = args[0].device
        if self._pool is None:
            self._pool = ThreadPoolExecutor(count, thread_name_prefix="picard-device")

        def run(d: int, lo: int, hi: int) -> Any:
            a, k = _slice(args, kwargs, rows, lo, hi)
            dev = self.devices[d]
            a = tuple(x.to(dev) if isinstance(x, Tensor) else x for x in a)
            k = {n: v.to(dev) if isinstance(v, Tensor) else v for n, v in k.items()}
            out = self._chunked(replicas[d], a, k, hi - lo)
            return out.to(home) if isinstance(out, Tensor) else out

        futures, lo = [], 0
        for d, size in enumerate(sizes):
            if size:
                futures.append((d, self._pool.submit(run, d, lo, lo + size)))
            lo += size
        parts = []
        for d, future in futures:
            try:
                parts.append(future.result())
            except Exception as exc:
                raise type(exc)(f"on device {self.devices[d]}: {exc}") from exc
        return parts[0] if len(parts) == 1 else _concat(parts)

    def _replicas_of(self, fn: Any) -> list[Any]:
        cached = self._replicas.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1]
        home = module_device(fn)
        replicas = [fn if dev == home else replicate(fn, dev) for dev in self.devices]
        self._replicas[id(fn)] = (fn, replicas)
        return replicas


def _rows(args: tuple) -> int | None:
    for a in args:
        if isinstance(a, Tensor):
            return a.shape[0] if a.ndim else None
    return None


def _slice(args: tuple, kwargs: dict, rows: int, lo: int, hi: int) -> tuple[tuple, dict]:
    def cut(v: Any) -> Any:
        return v[lo:hi] if isinstance(v, Tensor) and v.ndim and v.shape[0] == rows else v

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _concat(parts: list[Any]) -> Any:
    if not all(isinstance(p, Tensor) for p in parts):
        bad = next(p for p in parts if not isinstance(p, Tensor))
        return bad  # the caller's type check reports it
    return torch.cat(parts)


def _comm_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def module_device(fn: Any) -> torch.device | None:
    if isinstance(fn, torch.nn.Module):
        param = next(fn.parameters(), None)
        return None if param is None else param.device
    return getattr(fn, "picard_device", None)


def check_devices(devices: Any) -> tuple[torch.device, ...] | None:
    """``devices`` as a tuple of ``torch.device`` (``None`` stays ``None``)."""
    if devices is None:
        return None
    if isinstance(devices, (str, torch.device)) or not isinstance(devices, Sequence):
        raise TypeError(
            f"devices must be a list of devices such as ['cuda:0', 'cuda:1'], got {devices!r}"
        )
    if not devices:
        raise ValueError("devices must name at least one device, got an empty list")
    out = []
    for dev in devices:
        try:
            out.append(torch.device(dev))
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"devices holds {dev!r}, which is not a torch device: {err}") from None
    return tuple(out)


def evaluator_for(
    distributed: bool, devices: Sequence[torch.device] | None, x0: Tensor, settings: tuple
) -> Evaluator:
    """The evaluator of a solve.

    With ``distributed``, first checks that every rank runs the same solve (``x0`` and
    ``settings`` alike), before any model call.
    """
    if not distributed:
        return Evaluator(devices=devices)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group (torchrun sets up its environment)"
        )
    mine = (tuple(x0.shape), str(x0.dtype), settings, float(x0.double().sum()))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for r, theirs in enumerate(everyone):
        if theirs != mine:
            raise ValueError(
                f"distributed=True: rank {r} runs a different solve ({theirs[:3]}, sum of x0 "
                f"{theirs[3]:g}) than rank {dist.get_rank()} ({mine[:3]}, {mine[3]:g}); every "
                "rank must call the same solve with the same inputs and seeds"
            )
    return Evaluator(distributed=True)


class Replicable:
    """A model call that can rebuild itself on another device (for ``devices=[...]``).

    Args:
        make: ``make(device)`` builds the call with its model and tensors on ``device``;
            ``make(None)`` builds the original.
        device: where the original's model lives.

    Example:
        >>> import torch
        >>> call = Replicable(lambda dev: (lambda x: 2 * x), torch.device("cpu"))
        >>> call(torch.ones(2)).tolist()
        [2.0, 2.0]
    """

    def __init__(self, make: Callable[[torch.device | None], Callable[..., Any]], device: Any):
        self._make = make
        self.picard_device = device
        self.__wrapped__ = make(None)  # inspect.signature sees the call's own parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the original."""
        return self.__wrapped__(*args, **kwargs)

    def picard_replicate(self, device: torch.device) -> Callable[..., Any]:
        """The call rebuilt on ``device``."""
        return self._make(device)
