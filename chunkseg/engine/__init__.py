"""The engine: :func:`predict` (a lazy dataset) and :func:`predict_to_zarr` (written chunk by
chunk), over a dask graph of block reads, per-block accumulation and a forward-only
overlap-add.

Modules
-------
- ``settings``: defaults, argument checks, :class:`~chunkseg.engine.settings.RunSetup`.
- ``runner``: reading blocks (:class:`~chunkseg.engine.runner.BlockReader`) and the per-block
  work (:class:`~chunkseg.engine.runner.TileRunner`).
- ``graph``: the task graph (:func:`~chunkseg.engine.graph.blend_graph`).
- ``lazy``: :func:`predict`; ``to_zarr``: :func:`predict_to_zarr`.
- ``threads``: the cores other blocks leave idle take parts of each CPU batch;
  ``placement``: on a cluster, the runner and writer on every worker before the blocks.
- where the graph runs is :mod:`chunkseg.scheduling`'s.

Each tile belongs to the block in which it starts, so every contribution to an output chunk
comes from blocks at or before it in row-major order: the chunk is final as soon as its own
block is done, and only the overhanging pieces (less than a tile wide) wait for the next row::

    accumulate (i, j): read the block (chunk's tiles, reflect padding at the image edges)
                       straight from the input, run its tiles, accumulate -> pieces
    piece (i, j -> k, l): the part of block (i, j) that falls in output chunk (k, l)
    fold (k, l): overlap-add of its own piece and the overhang of the blocks before it,
                 normalise -> logits (k, l)   [predict]
                 ... -> logits / probabilities / labels written to Zarr   [predict_to_zarr]

:func:`predict`'s default chunks on the CPU are tile cells (one tile per block, 2 x 2 tiles per
output chunk, :attr:`chunkseg.plan.TilePlan.tile_cells`): dask's culling of this same graph
then runs only the tiles of the cells a slice touches.
"""

from __future__ import annotations

from .lazy import predict
from .settings import OUTPUTS
from .to_zarr import predict_to_zarr

__all__ = ["OUTPUTS", "predict", "predict_to_zarr"]
