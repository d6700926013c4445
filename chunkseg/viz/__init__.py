"""Figures of a written output, of the tiling and of the seam report.

Reading (:mod:`~chunkseg.viz.data`: strided overviews, crops; :mod:`~chunkseg.viz.model_arrays`:
the model on a crop's tiles and on naive patches) is numpy, dask and zarr only; drawing
(:mod:`~chunkseg.viz.output_figures`, :mod:`~chunkseg.viz.demo_figures`,
:mod:`~chunkseg.viz.seam_plots`) imports matplotlib when a figure is drawn.
"""

from __future__ import annotations

from .data import (
    MAX_CROP_PIXELS,
    crop_tiles,
    default_crop,
    display_step,
    output_plan,
    read_overview,
)
from .demo_figures import plot_overview, plot_windows
from .model_arrays import MAX_TILE_PANELS, naive_patches, seam_arrays, tile_components
from .output_figures import (
    FIGURES,
    figures,
    overview,
    reconstruction,
    seams,
    tile_decomposition,
    tile_predictions,
)
from .seam_plots import plot_seam_report, save_seam_report

__all__ = [
    "plot_overview",
    "plot_windows",
    "display_step",
    "FIGURES",
    "MAX_CROP_PIXELS",
    "MAX_TILE_PANELS",
    "figures",
    "overview",
    "tile_decomposition",
    "tile_predictions",
    "reconstruction",
    "seams",
    "read_overview",
    "output_plan",
    "default_crop",
    "crop_tiles",
    "tile_components",
    "naive_patches",
    "seam_arrays",
    "plot_seam_report",
    "save_seam_report",
]
