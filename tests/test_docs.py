"""Every Python block of the documentation runs, page by page, top to bottom (offline,
small settings); the figures script runs; every public name is documented."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, tmp_path, monkeypatch):
    blocks = BLOCK.findall((DOCS / page).read_text())
    monkeypatch.chdir(tmp_path)  # pages that write files write them here
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": f"docs_{page}"}
    try:
        for block in blocks:
            exec(compile(block, str(DOCS / page), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)


def test_figures_script_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("figures", DOCS / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = module.main(["--out", str(tmp_path)])
    assert [p.name for p in paths] == ["sweeps.png", "convergence.png", "window.png", "tol.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)


def _modules():
    import pkgutil

    import picard

    yield "picard"
    for info in pkgutil.walk_packages(picard.__path__, "picard."):
        yield info.name


def _public():
    """Every function and class a module of picard exports (``__all__``), once."""
    for name in _modules():
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            defined_here = getattr(obj, "__module__", name) == name or name == "picard"
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and defined_here:
                yield f"{name}.{attr}", obj


@pytest.mark.parametrize("name,obj", list(_public()), ids=[n for n, _ in _public()])
def test_public_names_are_documented(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Example" in doc, f"{name}: no example"
    if inspect.isclass(obj) and issubclass(obj, Warning):
        return  # a warning category: no arguments of its own
    try:
        signature = inspect.signature(obj)
    except ValueError:  # an exception class with the builtin constructor
        signature = inspect.Signature()
    params = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
    if params:
        assert "Args:" in doc or "Attributes:" in doc, f"{name}: arguments not described"
    if inspect.isfunction(obj) and signature.return_annotation not in (None, "None"):
        assert "Returns:" in doc, f"{name}: return not described"
