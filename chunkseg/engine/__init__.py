"""The dask graph: block readers and tile runners, the forward-only overlap-add graph,
:func:`predict` (a lazy dataset) and :func:`predict_to_zarr` (written chunk by chunk).
"""

from __future__ import annotations

from .core import OUTPUTS, predict, predict_to_zarr

__all__ = ["OUTPUTS", "predict", "predict_to_zarr"]
