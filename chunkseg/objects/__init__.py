"""Objects across chunks: connected-component labelling of a written output (:func:`label`),
a table of regions (:func:`regions`) and per-tile instance models (:func:`predict_instances`).
"""

from __future__ import annotations

from .instances import label
from .regions import regions
from .tile_instances import predict_instances

__all__ = ["label", "regions", "predict_instances"]
