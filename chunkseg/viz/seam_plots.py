"""The seam report's figure and files: :func:`plot_seam_report` draws a
:class:`chunkseg.evaluation.seams.SeamReport`, :func:`save_seam_report` writes the figure and the
JSON (``chunkseg seams``).

The report's numbers are :mod:`chunkseg.evaluation.seams`'; this module only draws and writes
them (matplotlib, imported when a figure is drawn, with the Agg backend of a plain
:class:`~matplotlib.figure.Figure`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..evaluation.seams import CROP, NAIVE, SeamReport, seam_report_paths
from ..outputs._lifecycle import replacing
from ._draw import _figure

__all__ = ["plot_seam_report", "save_seam_report"]

_COLOURS = {NAIVE: "#d62728", CROP: "#7f7f7f", "uniform": "#1f77b4", "linear": "#ff7f0e",
            "gaussian": "#2ca02c", "cosine": "#9467bd"}


def plot_seam_report(report: SeamReport, path: str | os.PathLike | None = None, *,
                     dpi: int = 110):
    """Draw a seam report: error against distance to the tile edge, and the kept maps.

    Parameters
    ----------
    report : SeamReport
        A :func:`chunkseg.seam_report` result.
    path : str or os.PathLike, optional
        Where to save the figure (PNG, by the suffix); not saved when None.
    dpi : int, default 110
        Resolution of the saved figure.

    Returns
    -------
    matplotlib.figure.Figure
        Top: mean ``|logit - reference|`` and label disagreement (%) per distance bin, one
        line per method (the bins that hold pixels, on a categorical axis; a log scale where
        every value is positive). Bottom, one panel per kept map
        (:attr:`SeamReport.maps`, e.g. naive and gaussian): ``|logit - reference|`` averaged
        over the classes, on one colour scale, with that method's tile edges dashed.
    """
    fig_maps = [(n, m) for n, m in report.maps.items() if n in report.methods]
    h, w = report.image_shape
    cols = max(2, len(fig_maps))
    map_h = min(4.6 * h / w, 9.0) + 0.6 if fig_maps else 0.0
    fig = _figure((5.0 * cols, 4.2 + map_h))
    if fig_maps:
        top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[4.2, map_h])
    else:
        top_fig, bottom_fig = fig, None
    shown = [i for i in range(len(report.bins))  # bins that hold pixels of some method
             if any(m["bins"][i]["pixels"] for m in report.methods.values())]
    labels = [report.bin_labels[i] for i in shown]
    x = np.arange(len(labels))
    for ax, (key, title, scale) in zip(top_fig.subplots(1, 2), (
            ("mean_abs_logit_diff", "mean |logit - reference|", 1.0),
            ("disagreement", "label disagreement (% of pixels)", 100.0))):
        for name, m in report.methods.items():
            y = [np.nan if b[key] is None else b[key] * scale
                 for b in (m["bins"][i] for i in shown)]
            ax.plot(x, y, marker="o", lw=1.6, color=_COLOURS.get(name),
                    ls="--" if name in (NAIVE, CROP) else "-",
                    label=f"{name} ({m[key] * scale:.3g} overall)")
        ax.set_xticks(x, labels)
        ax.set_xlabel("distance to the nearest tile edge (px)")
        values = [v for line in ax.get_lines() for v in line.get_ydata() if np.isfinite(v)]
        if values and min(values) > 0:  # a log scale shows the small errors beside naive's
            ax.set_yscale("log")
            title += " (log scale)"
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if bottom_fig is not None:
        top = max(float(np.percentile(m, 99.9)) for _, m in fig_maps) or 1e-6
        axes = np.atleast_1d(bottom_fig.subplots(1, len(fig_maps)))
        for ax, (name, diff) in zip(axes, fig_maps):
            im = ax.imshow(diff, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
            g = report.methods[name]["grid"]
            for e in g["edges_y"]:
                if 0 < e < h:
                    ax.axhline(e - 0.5, color="#00e5ff", lw=0.8, ls="--")
            for e in g["edges_x"]:
                if 0 < e < w:
                    ax.axvline(e - 0.5, color="#00e5ff", lw=0.8, ls="--")
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(f"{name} (grid {g['tile'][0]}/{g['overlap'][0]}): |logit - ref.|, "
                         f"mean {float(diff.mean()):.3g}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        bottom_fig.colorbar(im, ax=list(axes), shrink=0.85,
                            label="logit units (cut at the 99.9th percentile)")
        bottom_fig.suptitle("|logit - reference| averaged over the classes; tile edges inside "
                            "the image dashed", fontsize=9)
    (ty, tx), (oy, ox) = report.tile, report.overlap
    fig.suptitle(f"seam report: {h} x {w} px, tile {ty}x{tx}, overlap {oy}x{ox}, against the "
                 "whole-image forward pass", fontsize=11)
    if path is not None:
        with replacing(path) as part:
            fig.savefig(part, dpi=dpi)
    return fig



def save_seam_report(report: SeamReport, out_dir: str | os.PathLike = ".", *,
                     json_path: str | os.PathLike | None = None, overwrite: bool = False,
                     dpi: int = 110) -> dict[str, Path]:
    """Write a report's figure (``out_dir/seam_report.png``) and, optionally, its JSON.

    Parameters
    ----------
    report : SeamReport
    out_dir : str or os.PathLike, default "."
        Folder for ``seam_report.png``; created if missing.
    json_path : str or os.PathLike, optional
        File for :meth:`SeamReport.to_dict` as JSON (indent 2).
    overwrite : bool, default False
        Replace existing files.
    dpi : int, default 110

    Returns
    -------
    dict of str to Path
        ``{"figure": ..., "json": ...}`` (``json`` only with ``json_path``).

    Raises
    ------
    chunkseg.OutputExistsError
        If a file to write exists and ``overwrite`` is False (nothing is written then).
    """
    paths = seam_report_paths(out_dir, json_path=json_path, overwrite=overwrite)
    paths["figure"].parent.mkdir(parents=True, exist_ok=True)
    plot_seam_report(report, paths["figure"], dpi=dpi)
    if "json" in paths:
        paths["json"].parent.mkdir(parents=True, exist_ok=True)
        with replacing(paths["json"]) as part:
            part.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return paths
