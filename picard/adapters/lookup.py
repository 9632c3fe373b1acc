"""Finding a registry entry by class: the class itself, or a diffusers parent it keeps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["registered"]


def registered(cls: type, table: Mapping[str, Any], methods: tuple[str, ...]) -> Any:
    """``(name, entry)`` of ``cls`` in ``table`` (keyed by class name), or ``None``.

    ``cls`` itself if its name is registered; else the nearest diffusers class in its MRO
    that is, unless a class in between defines one of ``methods`` — a subclass that
    changes what picard reproduces is never treated as its parent.

    Args:
        cls: the class of a scheduler or pipeline.
        table: the registry.
        methods: the methods whose override makes a subclass unsupported.

    Returns:
        ``(registered class name, entry)``, or ``None``.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> class Quiet(DDIMScheduler):
        ...     pass
        >>> class Changed(DDIMScheduler):
        ...     def step(self, *args, **kwargs):
        ...         return None
        >>> table = {"DDIMScheduler": "ddim"}
        >>> registered(Quiet, table, ("step",)), registered(Changed, table, ("step",))
        (('DDIMScheduler', 'ddim'), None)
    """
    if cls.__name__ in table:
        return cls.__name__, table[cls.__name__]
    mro = cls.__mro__
    for k, base in enumerate(mro):
        if base.__name__ in table and base.__module__.startswith("diffusers."):
            if any(m in c.__dict__ for c in mro[:k] for m in methods):
                return None
            return base.__name__, table[base.__name__]
    return None
