"""PNG figures for the command line (matplotlib, imported when a figure is drawn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["convergence", "digit_grids", "image_grid", "lines", "points"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("figures need matplotlib: pip install 'picard-solver[demo]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: Tensor, columns: int = 8, scale: int = 1) -> Any:
    """Images ``(n, C, H, W)`` in [0, 1] as one PIL grid (diffusers' ``make_image_grid``).

    The last row is padded with white; ``scale`` enlarges each pixel (nearest neighbour).

    Args:
        images: the images, values in [0, 1] (clamped), 1 or 3 channels.
        columns: images per row.
        scale: the enlargement factor.

    Returns:
        A ``PIL.Image``.

    Example:
        >>> image_grid(torch.rand(5, 3, 8, 8), columns=4, scale=2).size
        (64, 32)
    """
    from diffusers.utils import make_image_grid
    from PIL import Image

    n = images.shape[0]
    columns = min(columns, n)
    rows = -(-n // columns)
    pad = torch.ones(rows * columns - n, *images.shape[1:])
    arr = (torch.cat([images.detach().float().cpu().clamp(0, 1), pad]) * 255).round()
    arr = arr.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pil = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]
    grid = make_image_grid(pil, rows=rows, cols=columns)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def digit_grids(panels: dict[str, Tensor], path: Path, columns: int = 8) -> Path:
    """Grids of 1xHxW images in [-1, 1], one labelled panel per entry, one under another.

    Args:
        panels: per panel title, its images, (n, 1, H, W) in [-1, 1] (clamped).
        path: the PNG file to write.
        columns: images per row of a grid.

    Returns:
        ``path``, written.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> out = Path(tempfile.mkdtemp()) / "digits.png"
        >>> images = torch.linspace(-1, 1, 5 * 16 * 16).reshape(5, 1, 16, 16)
        >>> Image.open(digit_grids({"a": images, "b": -images}, out, columns=4)).size
        (256, 296)
    """
    from PIL import Image, ImageDraw

    grids = [(t, image_grid((im + 1) / 2, columns, scale=4)) for t, im in panels.items()]
    label = 20
    width = max(g.width for _, g in grids)
    sheet = Image.new("L", (width, sum(label + g.height for _, g in grids)), 255)
    draw, y = ImageDraw.Draw(sheet), 0
    for title, grid in grids:
        draw.text((4, y + 4), title, fill=0)
        sheet.paste(grid, (0, y + label))
        y += label + grid.height
    sheet.save(path)
    return path


def points(panels: dict[str, Tensor], data: Tensor, path: Path) -> Path:
    """2-D samples over the data, one panel per entry.

    Args:
        panels: per panel title, its samples, (n, 2).
        data: the reference points drawn in grey under every panel's samples, (m, 2).
        path: the PNG file to write.

    Returns:
        ``path``, written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "points.png"
        >>> data = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
        >>> points({"samples": data + 0.1}, data, out).exists()
        True
    """
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 3.6), sharex=True, sharey=True
    )
    for ax, (title, pts) in zip(
        list(axes) if len(panels) > 1 else [axes], panels.items(), strict=True
    ):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8", label="data")
        ax.scatter(pts[:, 0], pts[:, 1], s=3, c="C0", label="samples")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    axes_list = list(axes) if len(panels) > 1 else [axes]
    axes_list[0].legend(loc="lower left", fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def convergence(runs: dict[str, Any], path: Path) -> Path:
    """Per sweep: the window's first step (top) and the largest residual (bottom, log).

    Args:
        runs: per curve name, the :class:`picard.Stats` of a solve (its ``iterations``,
            ``num_steps``, ``window_starts``, ``residuals`` and ``tol`` are drawn).
        path: the PNG file to write.

    Returns:
        ``path``, written.

    Example:
        >>> import tempfile, picard
        >>> sol = picard.solve(picard.Recursion(lambda i, x: -0.1 * x, 8), torch.ones(1))
        >>> out = Path(tempfile.mkdtemp()) / "convergence.png"
        >>> convergence({"decay": sol.stats}, out).exists()
        True
    """
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    for name, stats in runs.items():
        sweeps = range(1, stats.iterations + 1)
        top.plot(sweeps, [s / stats.num_steps for s in stats.window_starts], ".-", label=name)
        bottom.semilogy(sweeps, [max(r, 1e-12) for r in stats.residuals], ".-", label=name)
    top.set_ylabel("window start / N")
    bottom.set_ylabel("max residual / tol scale")
    bottom.set_xlabel("sweep")
    for stats in runs.values():
        bottom.axhline(stats.tol, color="0.6", lw=0.8, ls="--")
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    path: Path,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """A line plot of named (x, y) series.

    Args:
        series: per legend name, the x values and the y values of its line.
        xlabel: the x axis label.
        ylabel: the y axis label.
        path: the PNG file to write.
        logx: a logarithmic x axis.
        logy: a logarithmic y axis.

    Returns:
        ``path``, written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "lines.png"
        >>> series = {"linear": ([1, 2, 4], [1, 2, 4]), "square": ([1, 2, 4], [1, 4, 16])}
        >>> lines(series, "x", "y", out, logx=True, logy=True).exists()
        True
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, "o-", label=name)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
