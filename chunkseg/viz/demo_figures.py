"""The demo's figures: the tile grid over the image with the blended result, and the windows.

:func:`plot_overview` and :func:`plot_windows` save PNGs with matplotlib's pyplot on the Agg
backend (matplotlib is imported when they are called).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..kernels.windows import WINDOWS, get_window, window_1d
from ..plan import TilePlan
from .data import display_step

__all__ = ["plot_overview", "plot_windows"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid_lines(ax, plan: TilePlan, step: int) -> None:
    h, w = plan.image_shape
    for axis, draw in ((0, ax.axhline), (1, ax.axvline)):
        size = (h, w)[axis]
        for o in plan.tile_origins()[axis]:
            for edge in (o, o + plan.tile[axis]):
                if 0 < edge < size:
                    draw(edge / step - 0.5, color="#2aa8ff", lw=0.4, alpha=0.6)
        for c in np.cumsum(plan.output_chunks()[axis])[:-1]:
            draw(c / step - 0.5, color="#ff3b30", lw=1.2)


def plot_overview(image, probability, labels, plan: TilePlan, path: str | Path, *,
                  max_pixels: int = 1200, zoom: int = 384, title: str = "") -> Path:
    """Save the demo figure: input with the tile grid, blended probability, labels, and a
    full-resolution zoom on a chunk corner.

    Parameters
    ----------
    image : (H, W) array-like (numpy, dask or xarray)
        Input (one channel). Read decimated.
    probability : (H, W) array-like
        Blended probability of the class of interest, in [0, 1].
    labels : (H, W) array-like of int
        Argmax labels.
    plan : TilePlan
        Grid and chunks to draw: thin blue lines are tile edges, thick red lines chunk edges.
    path : str or Path
        PNG to write.
    max_pixels : int, default 1200
        Longer side of the decimated panels, pixels.
    zoom : int, default 384
        Side of the full-resolution crop centred on the first interior chunk corner.
    title : str, optional

    Returns
    -------
    Path
        ``path``.
    """
    plt = _pyplot()
    step = display_step(plan.image_shape, max_pixels)
    view = (slice(None, None, step), slice(None, None, step))
    img = np.asarray(image[view])
    prob = np.asarray(probability[view])
    lab = np.asarray(labels[view])
    cy = int(plan.output_chunks()[0][0]) if len(plan.output_chunks()[0]) > 1 else plan.image_shape[0] // 2
    cx = int(plan.output_chunks()[1][0]) if len(plan.output_chunks()[1]) > 1 else plan.image_shape[1] // 2
    y0 = max(0, min(cy - zoom // 2, plan.image_shape[0] - zoom))
    x0 = max(0, min(cx - zoom // 2, plan.image_shape[1] - zoom))
    crop = (slice(y0, y0 + zoom), slice(x0, x0 + zoom))
    prob_zoom = np.asarray(probability[crop])

    fig, axes = plt.subplots(1, 4, figsize=(22, 6.2), constrained_layout=True)
    axes[0].imshow(img, cmap="gray")
    _grid_lines(axes[0], plan, step)
    axes[0].set_title(f"input {plan.image_shape[0]}x{plan.image_shape[1]}: tiles (blue), "
                      f"chunks (red)")
    im = axes[1].imshow(prob, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("blended membrane probability")
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[2].imshow(lab, cmap="gray_r", interpolation="nearest")
    axes[2].set_title("labels (argmax; black = membrane)")
    axes[3].imshow(prob_zoom, cmap="magma", vmin=0, vmax=1, extent=(x0, x0 + zoom, y0 + zoom, y0))
    for c in np.cumsum(plan.output_chunks()[0])[:-1]:
        if y0 < c < y0 + zoom:
            axes[3].axhline(c, color="#ff3b30", lw=1, ls="--")
    for c in np.cumsum(plan.output_chunks()[1])[:-1]:
        if x0 < c < x0 + zoom:
            axes[3].axvline(c, color="#ff3b30", lw=1, ls="--")
    axes[3].set_title("full resolution at a chunk corner (dashed): no seam")
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_windows(path: str | Path, tile: int = 256, overlap: int = 64) -> Path:
    """Save a figure explaining the blending: 1-D windows, their overlap-add sums along a row of
    tiles, and the 2-D gaussian window.

    Parameters
    ----------
    path : str or Path
        PNG to write.
    tile, overlap : int
        Tile size and overlap, pixels.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    stride = tile - overlap
    n = 4
    length = (n - 1) * stride + tile
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), constrained_layout=True)
    x = np.arange(tile)
    for name in WINDOWS:
        axes[0].plot(x, window_1d(name, tile, overlap), label=name)
    axes[0].set_title(f"1-D windows, tile {tile}, overlap {overlap}")
    axes[0].set_xlabel("pixel in tile")
    axes[0].legend()
    for name in WINDOWS:
        total = np.zeros(length)
        w = window_1d(name, tile, overlap)
        for k in range(n):
            total[k * stride : k * stride + tile] += w
        axes[1].plot(total, label=name)
    for k in range(n):
        axes[1].axvspan(k * stride, k * stride + tile, color="0.5", alpha=0.06)
    axes[1].set_title(f"summed weight over {n} tiles, stride {stride} (the divisor)")
    axes[1].set_xlabel("pixel")
    axes[1].legend()
    im = axes[2].imshow(get_window("gaussian", tile, overlap), cmap="viridis")
    axes[2].set_title("2-D gaussian window (sigma = 0.125 tile)")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
