"""The demo: the main job end to end on real EM data with the shipped U-Net.

A mosaic of the 30 ISBI 2012 test sections (5 x 6 sections of 512 x 512 = 2560 x 3072 pixels)
is written chunk by chunk into a Zarr store, segmented with :func:`chunkseg.predict_to_zarr`
(membrane vs cell), and a figure is saved.
"""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from ._check import positive_int
from ._version import __version__
from .engine import predict_to_zarr
from .errors import OutputExistsError
from .objects.instances import label
from .objects.regions import regions
from .outputs._arrays import ArrayWriter, create_array
from .outputs._lifecycle import writing
from .outputs._target import MARKER, check_output_target, describe_location
from .plan import plan_tiles
from .viz import figures, plot_overview

__all__ = ["SECTION_SIZE", "build_mosaic", "load_test_sections", "run_demo"]

SECTION_SIZE = 512
ISBI_PIXEL_NM = 4.0
"""Pixel size of the ISBI 2012 sections, nanometres (Cardona et al. 2010)."""
"""Side of one ISBI 2012 section, pixels."""


def load_test_sections() -> list[np.ndarray]:
    """The 30 ISBI 2012 test sections shipped with the package.

    Returns
    -------
    list of (512, 512) ndarray of uint8
        In file order (``00.png`` ... ``29.png``); 7.5 MiB in all.

    Raises
    ------
    ImportError
        If pillow is missing (``pip install "chunkseg[io]"``).
    """
    from PIL import Image

    folder = files("chunkseg") / "data" / "isbi2012_test"
    sections = []
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".png")),
                       key=lambda p: p.name):
        with path.open("rb") as fh:
            sections.append(np.asarray(Image.open(fh).convert("L")))
    return sections


def build_mosaic(store: str | Path, *, rows: int = 5, cols: int = 6, overwrite: bool = False):
    """Write a ``rows x cols`` mosaic of ISBI 2012 test sections into a Zarr v3 array.

    Sections are placed row-major (section ``(r * cols + c) % 30`` at row ``r``, column ``c``,
    so mosaics larger than the 30 sections repeat them); each is read from its PNG and written
    as one 512 x 512 chunk, so the mosaic is never held whole.

    Parameters
    ----------
    store : str or Path
        Output Zarr array path.
    rows, cols : int, default 5 and 6
        Mosaic size in sections (the default uses each of the 30 sections once).
    overwrite : bool, default False
        Replace an existing store.

    Returns
    -------
    zarr.Array
        ``(rows * 512, cols * 512, 1)`` uint8, dims ``("y", "x", "c")``, chunks 512 x 512.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``rows`` or ``cols`` is not an int.
    chunkseg.errors.InvalidValueError
        If ``rows`` or ``cols`` is not positive.
    chunkseg.errors.OutputExistsError
        If the store holds data and ``overwrite`` is False.
    """
    import zarr
    from zarr.codecs import ZstdCodec

    rows, cols = positive_int(rows, "rows"), positive_int(cols, "cols")
    with writing(str(store), overwrite=overwrite, what="chunkseg demo") as target:
        s = SECTION_SIZE
        arr = create_array(
            str(target.store), shape=(rows * s, cols * s, 1), chunks=(s, s, 1), dtype="uint8",
            compressor=ZstdCodec(level=3), dimension_names=("y", "x", "c"), overwrite=True,
            attributes={"source": "ISBI 2012 test sections (Cardona et al. 2010), mosaic",
                        "layout": f"{rows} x {cols} sections, row-major",
                        MARKER: __version__, "complete": False},
        )
        writer = ArrayWriter(arr, describe_location(str(store)), "mosaic",
                             fix="Free space and run the demo again with --overwrite.")
        sections = load_test_sections()
        for i in range(rows * cols):
            r, c = divmod(i, cols)
            writer[r * s : (r + 1) * s, c * s : (c + 1) * s, 0] = sections[i % len(sections)]
        arr.attrs["complete"] = True
    return zarr.open_array(str(store), mode="r")


def run_demo(
    out: str | Path = "chunkseg-demo",
    *,
    rows: int = 5,
    cols: int = 6,
    tile: int = 256,
    overlap: int = 64,
    chunks: int = 768,
    window: str = "gaussian",
    batch_size: int = 8,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build the ISBI mosaic, segment it with the shipped U-Net, write Zarr and a figure.

    Parameters
    ----------
    out : str or Path, default "chunkseg-demo"
        Output folder: ``mosaic.zarr`` (input), ``segmentation.zarr`` (logits, probabilities,
        labels, and ``instances``: the cells, ``chunkseg.label(..., cls=0,
        method="watershed")`` with its defaults, one id across chunks), ``regions.parquet`` (one row per cell: area in nm^2 at ISBI's 4 nm
        pixels, centroid, bounding box, mean intensity and probability), ``demo.png`` and
        ``figures/`` (the patch figures of :func:`chunkseg.viz.figures`).
    rows, cols : int, default 5 and 6
        Mosaic size in 512 x 512 sections.
    tile, overlap, chunks, window, batch_size
        As :func:`chunkseg.predict`. ``tile`` must be divisible by ``2**depth`` of the shipped U-Net (16).
    scheduler, workers, progress
        As :func:`chunkseg.predict_to_zarr`.
    overwrite : bool, default False
        Replace outputs of an earlier run.

    Returns
    -------
    dict
        Paths (``mosaic``, ``segmentation``, ``figure``, ``regions``), ``plan`` (dict),
        ``seconds`` (of the prediction), the membrane fraction of the labels, the number of
        ``cells`` and their median area in nm^2.

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If outputs exist and ``overwrite`` is False (checked before anything is written).
    ImportError
        If torch, pillow or matplotlib is missing (``pip install "chunkseg[all]"``).
    """
    out = Path(out)
    paths = {"mosaic": out / "mosaic.zarr", "segmentation": out / "segmentation.zarr",
             "figure": out / "demo.png", "regions": out / "regions.parquet",
             "figures": out / "figures"}
    for key in ("mosaic", "segmentation"):  # all checked before anything is written
        check_output_target(str(paths[key]), overwrite=overwrite)
    if (paths["regions"].exists() or paths["figures"].exists()) and not overwrite:
        raise OutputExistsError(
            f"`out` {str(out)!r} holds an earlier demo's regions.parquet or figures. Pass `overwrite=True` "
            "(CLI: --overwrite) to replace the demo's outputs, or choose another folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    mosaic = build_mosaic(paths["mosaic"], rows=rows, cols=cols, overwrite=True)
    t0 = time.perf_counter()
    ds = predict_to_zarr(
        str(paths["mosaic"]), "isbi2012-unet", str(paths["segmentation"]), tile=tile,
        overlap=overlap, chunks=chunks, window=window, batch_size=batch_size,
        outputs=("logits", "probabilities", "labels"), scheduler=scheduler, workers=workers,
        progress=progress, overwrite=True,
    )
    seconds = time.perf_counter() - t0
    # the cells: a seeded watershed of the cell-interior class, one id across chunks
    cells = label(str(paths["segmentation"]), cls=0, method="watershed", scheduler=scheduler,
                  workers=workers, progress=progress)
    table = regions(str(paths["segmentation"]), paths["regions"], image=str(paths["mosaic"]),
                    pixel_size=ISBI_PIXEL_NM, unit="nanometer", overwrite=True,
                    scheduler=scheduler, workers=workers, progress=progress)
    plan = plan_tiles(mosaic.shape, tile, overlap, chunks)
    plot_overview(_Channel(mosaic), ds.probabilities[1].data, ds.labels.data, plan,
                  paths["figure"],
                  title=f"chunkseg demo: ISBI 2012 test mosaic, shipped U-Net, {window} "
                        f"blending, {plan.n_tiles} tiles in {plan.n_chunks} chunks")
    shown = figures(str(paths["segmentation"]), paths["figures"], image=str(paths["mosaic"]),
                    model="isbi2012-unet", cls=0, overwrite=True, progress=progress)
    membrane = float((ds.labels.data == 1).mean().compute())
    return {**{k: str(v) for k, v in paths.items()}, "plan": plan.to_dict(),
            "seconds": seconds, "membrane_fraction": membrane,
            "patch_figures": {k: str(v) for k, v in shown.items()},
            "cells": int(cells.attrs["objects"]), "median_cell_area_nm2":
                float(table["area_physical"].median()) if len(table) else 0.0}


class _Channel:
    """Index a (y, x, 1) zarr array as (y, x) with basic slices only (no full read)."""

    def __init__(self, arr):
        self.arr = arr

    def __getitem__(self, key):
        return self.arr[key + (0,)]
