"""Agglomeration of watershed fragments on their region adjacency graph (RAG).

The graph comes from :func:`chunkseg.kernels.watershed.boundary_pairs`, summed over every
chunk: for each pair of touching fragments ``u < v``, ``total`` (the quantised boundary
probability on both sides of their shared border) and ``count`` (the touching pixel pairs),
both exact integers. :func:`region_graph` adds repeated pairs up and sorts them, so what the
agglomeration sees (edge order included) depends only on the image, never on the chunking or
on the order in which the chunks' pairs arrive. Its edge feature is the mean boundary
probability ``p = total / (2 * QUANT * count)``.

Methods of :func:`agglomerate`:

``"threshold"``
    Join the pairs with ``p < threshold`` and take connected components (union-find,
    :func:`scipy.sparse.csgraph.connected_components`): ``skimage.graph.cut_threshold`` on a
    boundary RAG.
``"multicut"``
    The multicut (correlation clustering) of the graph with the signed edge costs of
    :func:`edge_costs`: the partition that minimises the summed cost of the cut edges. Solved
    approximately by greedy additive edge contraction (GAEC) refined by Kernighan-Lin moves
    (both as in Keuper et al. 2015, "Efficient decomposition of image and mesh graphs by
    lifted multicuts", ICCV), which is ``elf.segmentation.multicut.multicut_kernighan_lin``
    with its default warm start (github.com/constantinpape/elf); solver:
    ``bioimage_cpp.graph.multicut.KernighanLinMulticut``.
``"mutex"``
    The mutex watershed (Wolf et al. 2021, "The mutex watershed and its objective: efficient,
    parameter-free graph partitioning", IEEE TPAMI 43(10)) on the same signed costs: pairs of
    positive cost are attractive edges of weight ``cost``, the others mutex (repulsive) edges
    of weight ``-cost``; all are taken in order of decreasing weight, an attractive edge joins
    its two clusters unless a mutex edge already separates them. Solver:
    ``bioimage_cpp.graph.mutex_watershed.mutex_watershed_clustering``.

On a graph without cycles (a forest) the three methods give the same partition: each cuts
exactly the pairs of negative cost, those with ``p`` at or above the threshold (for the library
methods, :func:`edge_costs`' clipping moves that point by less than 0.001). They differ where
cycles force a choice: the threshold joins whatever a chain of low pairs connects, however
high the direct border between two fragments; the multicut weighs the two, and the mutex
watershed lets the strongest evidence (either way) decide first.

The two library methods need bioimage-cpp (MIT, a nanobind C++ extension depending only on
numpy; wheels for CPython 3.10 to 3.14 on Linux x86_64, macOS and Windows): ``pip install
'chunkseg[agglomerate]'``. Both solvers are deterministic (no random noise, one thread) for a
given graph and edge order, and the edge order is fixed by :func:`region_graph`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError
from .components import graph_components, number_objects
from .watershed import QUANT

__all__ = ["AGGLOMERATIONS", "agglomerate", "check", "edge_costs", "region_graph", "require"]

AGGLOMERATIONS = ("threshold", "multicut", "mutex")
"""The methods of :func:`agglomerate`; the last two need the ``agglomerate`` extra."""

_P_MIN = 0.001
"""Mean probabilities are clipped to [_P_MIN, 1 - _P_MIN] before the logit, as in elf."""


def check(method: str, threshold: float | None) -> None:
    """Check ``method`` and, for a library method, that ``threshold`` is in (0, 1).

    The range of ``threshold`` for ``"threshold"`` ([0, 1] or None) is checked by the caller
    (:class:`chunkseg.objects.watershed.WatershedSettings`).

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``method`` is not a str.
    chunkseg.errors.InvalidValueError
        If ``method`` is not one of :data:`AGGLOMERATIONS`, or ``threshold`` is None or
        outside (0, 1) for a library method.
    """
    if not isinstance(method, str):
        raise InvalidTypeError(
            f"`agglomeration` must be a str, one of {AGGLOMERATIONS}. Got {method!r}.")
    if method not in AGGLOMERATIONS:
        raise InvalidValueError(
            f"`agglomeration` must be one of {AGGLOMERATIONS}. Got {method!r}.")
    if method != "threshold" and (threshold is None or not 0.0 < threshold < 1.0):
        raise InvalidValueError(
            f"`merge_threshold` must be in (0, 1) with agglomeration={method!r}: the mean "
            f"boundary probability at which joining and cutting cost the same (0.5 is elf's "
            f"default). Got {threshold!r}.")


def require(method: str) -> None:
    """Check that the library ``method`` needs imports (nothing for ``"threshold"``).

    Raises
    ------
    chunkseg.errors.MissingDependencyError
        If ``method`` is ``"multicut"`` or ``"mutex"`` and bioimage-cpp is not installed.
    """
    if method != "threshold":
        try:
            import bioimage_cpp.graph  # noqa: F401
        except ImportError as e:
            raise MissingDependencyError(
                f"agglomeration={method!r} needs bioimage-cpp ({e}). Install it with "
                "`pip install 'chunkseg[agglomerate]'`, or use agglomeration='threshold'."
            ) from e


def region_graph(n: int, u: np.ndarray, v: np.ndarray, total: np.ndarray,
                 count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Add up repeated pairs: one edge per touching pair, sorted by ``(u, v)``.

    Parameters
    ----------
    n : int
        Fragments ``1..n``.
    u, v, total, count : ndarray of int64
        Pairs (``u < v``) from :func:`chunkseg.kernels.watershed.boundary_pairs`, over every
        block, in any order, repeats allowed.

    Returns
    -------
    u, v, total, count : ndarray of int64
        One entry per distinct pair, sorted; exact integer sums, so the result is the same for
        any chunking and any order of the input.
    """
    key = np.asarray(u, np.int64) * (n + 1) + np.asarray(v, np.int64)
    keys, inverse = np.unique(key, return_inverse=True)
    t = np.zeros(len(keys), np.int64)
    c = np.zeros(len(keys), np.int64)
    np.add.at(t, inverse.ravel(), total)
    np.add.at(c, inverse.ravel(), count)
    return keys // (n + 1), keys % (n + 1), t, c


def edge_costs(mean: np.ndarray, threshold: float) -> np.ndarray:
    """Signed multicut costs from mean boundary probabilities: positive joins, negative cuts.

    ``cost = log((1 - p) / p) + log((1 - beta) / beta)`` with ``p`` clipped to
    ``[0.001, 0.999]`` (``p -> 0.998 * p + 0.001``) and the boundary bias
    ``beta = 1 - threshold``, so the cost is 0 at ``p = (threshold - 0.001) / 0.998``, within
    0.001 of ``threshold``, positive below it. This is
    ``elf.segmentation.multicut.transform_probabilities_to_costs`` (elf's
    ``compute_edge_costs`` without size weighting; github.com/constantinpape/elf), written in
    terms of ``threshold`` so that it means what it means for the threshold method.

    Parameters
    ----------
    mean : ndarray of float
        Mean boundary probability of each edge, in [0, 1].
    threshold : float
        In (0, 1): the probability of zero cost.

    Returns
    -------
    ndarray of float64
    """
    p = (1.0 - 2 * _P_MIN) * np.asarray(mean, np.float64) + _P_MIN
    beta = 1.0 - threshold
    return np.log((1.0 - p) / p) + np.log((1.0 - beta) / beta)


def agglomerate(n: int, u: np.ndarray, v: np.ndarray, total: np.ndarray, count: np.ndarray,
                method: str, threshold: float | None,
                first: np.ndarray) -> tuple[np.ndarray, int]:
    """Join touching fragments by their border's mean boundary probability.

    Parameters
    ----------
    n : int
        Fragments ``1..n``.
    u, v, total, count : ndarray of int64
        Pairs from :func:`chunkseg.kernels.watershed.boundary_pairs`, summed over every block
        (any order, repeats allowed; see :func:`region_graph`).
    method : {"threshold", "multicut", "mutex"}
        See the module's docstring.
    threshold : float or None
        ``"threshold"``: join where ``mean < threshold``, in [0, 1]; None: no merge.
        ``"multicut"``, ``"mutex"``: the mean boundary probability at which joining and
        cutting cost the same (:func:`edge_costs`), in (0, 1); elf's ``beta`` is
        ``1 - threshold``.
    first : (n,) ndarray of int64
        Raster index in the whole image of each fragment's first pixel.

    Returns
    -------
    lookup : (n + 1,) ndarray of int64
        Fragment id -> object id (``lookup[0] == 0``); objects ``1..N`` numbered in the raster
        order of their first pixel
        (:func:`chunkseg.kernels.components.number_objects`).
    n_objects : int

    Raises
    ------
    chunkseg.errors.InvalidTypeError, chunkseg.errors.InvalidValueError
        As :func:`check`.
    chunkseg.errors.MissingDependencyError
        If a library method's bioimage-cpp is not installed.
    """
    check(method, threshold)
    require(method)
    if n == 0:
        return np.zeros(1, np.int64), 0
    u, v, total, count = region_graph(n, u, v, total, count)
    if method == "threshold" or not len(u):
        if threshold is None:
            u = v = np.zeros(0, np.int64)
        else:
            # mean < threshold, in integers: total < threshold * 2 * QUANT * count
            keep = total < threshold * 2 * QUANT * count
            u, v = u[keep], v[keep]
        return number_objects(graph_components(n, u, v), first)
    from bioimage_cpp.graph import UndirectedGraph

    costs = edge_costs(total / (2.0 * QUANT * count), threshold)
    # sorted and unique (region_graph), as UndirectedGraph.from_unique_edges requires
    uv = np.stack([u - 1, v - 1], axis=1).astype(np.uint64)
    if method == "multicut":
        from bioimage_cpp.graph.multicut import KernighanLinMulticut, MulticutObjective

        # warm-started from GAEC when the objective starts from singletons
        comp = KernighanLinMulticut().optimize(
            MulticutObjective(UndirectedGraph.from_unique_edges(n, uv), costs))
    else:
        from bioimage_cpp.graph.mutex_watershed import mutex_watershed_clustering

        join = costs > 0
        comp = mutex_watershed_clustering(UndirectedGraph.from_unique_edges(n, uv[join]),
                                          costs[join], uv[~join], -costs[~join])
    return number_objects(np.asarray(comp, np.int64), first)

