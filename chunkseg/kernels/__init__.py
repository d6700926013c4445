"""Per-block numpy and torch work: windows, the numpy blend (the reference), the torch blend,
test-time augmentation and connected components of one block.

Nothing here builds a dask graph or touches a store: each function takes arrays and returns arrays.
The graph that calls them per block is :mod:`chunkseg.engine`'s.
"""
