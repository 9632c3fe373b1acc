"""Writing a benchmark's results: the rows as JSON, the table as Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_results"]


def write_results(out: Path, rows: list[dict[str, Any]], markdown: str, *, indent: int = 1) -> None:
    """``out.json`` (the rows) and ``out.md`` (``markdown`` as given), ``out`` without suffix.

    The folder is created if missing.

    Args:
        out: the path of both files, without suffix.
        rows: the benchmark's rows, JSON-serializable.
        markdown: the text of ``out.md`` (its trailing newline included, if any).
        indent: the JSON indent.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "results" / "bench"
        >>> write_results(out, [{"sweeps": 3}], "| sweeps |\\n|---|\\n| 3 |\\n")
        >>> out.with_suffix(".json").read_text()
        '[\\n {\\n  "sweeps": 3\\n }\\n]'
        >>> out.with_suffix(".md").read_text().splitlines()[-1]
        '| 3 |'
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=indent))
    out.with_suffix(".md").write_text(markdown)
