"""mkdocs hooks: the executed code blocks run with one torch thread (two stall on small CPUs)."""

from __future__ import annotations

from typing import Any


def on_startup(**kwargs: Any) -> None:
    """Before the build: one torch thread, as the tests and benchmarks use."""
    import torch

    torch.set_num_threads(1)
