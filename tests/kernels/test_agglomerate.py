"""Agglomeration of fragments on their region graph: threshold, multicut, mutex watershed.

Known answers on hand-made graphs, the mutex watershed against a plain re-implementation of
its algorithm, the multicut against the optimum found by enumerating every partition, and a
result that depends only on the graph (not on the order or splitting of its pairs)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from chunkseg.errors import InvalidTypeError, InvalidValueError, MissingDependencyError
from chunkseg.kernels.agglomerate import agglomerate, edge_costs, region_graph
from chunkseg.kernels.components import number_objects
from chunkseg.kernels.watershed import QUANT

LIBRARY = ("multicut", "mutex")


def _graph(pairs, counts=None):
    """(u, v, mean p) triples -> u, v, total, count as boundary_pairs gives them."""
    u = np.array([a for a, _, _ in pairs], np.int64)
    v = np.array([b for _, b, _ in pairs], np.int64)
    count = np.ones(len(u), np.int64) if counts is None else np.asarray(counts, np.int64)
    total = np.rint(np.array([p for *_, p in pairs]) * 2 * QUANT * count).astype(np.int64)
    return u, v, total, count


def _random_graph(rng, n, m):
    all_pairs = [(a, b) for a in range(1, n + 1) for b in range(a + 1, n + 1)]
    pick = rng.choice(len(all_pairs), size=m, replace=False)
    count = rng.integers(1, 20, m)
    return _graph([(*all_pairs[i], p) for i, p in zip(pick, rng.random(m))], count)


def _energy(lookup, u, v, costs):
    """The multicut objective: the summed cost of the cut edges."""
    return float(costs[lookup[u] != lookup[v]].sum())


def _partitions(n):
    """Every partition of n nodes, as restricted growth strings."""
    def grow(labels, top):
        if len(labels) == n:
            yield np.array(labels)
            return
        for k in range(top + 2):
            yield from grow(labels + [k], max(top, k))
    yield from grow([0], 0)


class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n + 1))

    def find(self, a):
        while self.parent[a] != a:
            a = self.parent[a]
        return a


def _mutex_reference(n, u, v, costs):
    """Wolf et al. 2021, Algorithm 1: edges by decreasing |cost|; an attractive one joins its
    clusters unless a mutex edge separates them, a repulsive one adds such a mutex edge."""
    uf = _UnionFind(n)
    mutex = {a: set() for a in range(n + 1)}
    for e in np.argsort(-np.abs(costs), kind="stable"):
        a, b = uf.find(int(u[e])), uf.find(int(v[e]))
        if a == b:
            continue
        if costs[e] > 0 and b not in mutex[a]:
            uf.parent[b] = a
            for c in mutex.pop(b):  # a inherits b's constraints, under its own root
                mutex[c].discard(b)
                mutex[c].add(a)
                mutex[a].add(c)
        elif costs[e] <= 0:
            mutex[a].add(b)
            mutex[b].add(a)
    return np.array([uf.find(i) for i in range(1, n + 1)])


def _same_partition(lookup, comp):
    """Fragments together in ``lookup[1:]`` exactly where they are together in ``comp``."""
    lk = lookup[1:]
    return np.array_equal(lk[:, None] == lk[None, :], comp[:, None] == comp[None, :])


def test_the_three_methods_on_a_graph_where_they_differ():
    pytest.importorskip("bioimage_cpp")
    # 1-4 (0.3), 2-3 (0.02) and 3-4 (0.05) are below 0.5, so the threshold joins all four.
    # Costs log((1 - p) / p) (p squeezed into [0.001, 0.999]): 1-2 -1.73, 1-4 +0.85,
    # 2-3 +3.84, 2-4 -2.43, 3-4 +2.93. The multicut optimum is {1, 4} {2, 3} (cut 1-2, 2-4
    # and 3-4: -1.23); the mutex watershed joins 2-3 then 3-4, ignores 2-4 (inside), puts a
    # mutex on 1-2 and so cannot take 1-4: {1} {2, 3, 4} (cut 1-2 and 1-4: -0.88).
    u, v, total, count = _graph([(1, 2, 0.85), (1, 4, 0.3), (2, 3, 0.02), (2, 4, 0.92),
                                 (3, 4, 0.05)])
    first = np.array([7, 0, 3, 9])  # raster order of the first pixels: 2, 3, 1, 4
    got = {m: agglomerate(4, u, v, total, count, m, 0.5, first) for m in
           ("threshold", *LIBRARY)}
    assert got["threshold"][1] == 1
    np.testing.assert_array_equal(got["threshold"][0], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(got["multicut"][0], [0, 2, 1, 1, 2])
    np.testing.assert_array_equal(got["mutex"][0], [0, 2, 1, 1, 1])
    assert got["multicut"][1] == got["mutex"][1] == 2
    costs = edge_costs(total / (2 * QUANT * count), 0.5)
    np.testing.assert_allclose(costs, [-1.7291, 0.8454, 3.8441, -2.4310, 2.9256], atol=1e-4)
    energies = [_energy(got[m][0], u, v, costs) for m in ("threshold", *LIBRARY)]
    np.testing.assert_allclose(energies, [0.0, -1.2345, -0.8837], atol=1e-4)
    # the cost changes sign at the threshold: a higher one joins everything again
    for m in LIBRARY:
        assert agglomerate(4, u, v, total, count, m, 0.95, first)[1] == 1


def test_on_a_forest_every_method_cuts_the_pairs_at_or_above_the_threshold():
    pytest.importorskip("bioimage_cpp")
    rng = np.random.default_rng(3)
    n = 60
    parent = [rng.integers(1, i) for i in range(2, n + 1)]  # a random tree on 1..n
    keep = rng.random(n - 1) < 0.8  # less some edges: a forest
    p = np.where(rng.random(n - 1) < 0.5, rng.uniform(0.0, 0.49, n - 1),
                 rng.uniform(0.51, 1.0, n - 1))
    pairs = [(int(a), b, q) for a, b, q, k in zip(parent, range(2, n + 1), p, keep) if k]
    u, v, total, count = _graph(pairs, rng.integers(1, 30, len(pairs)))
    first = rng.permutation(n)
    uf = _UnionFind(n)
    for a, b, q in pairs:
        if q < 0.5:
            uf.parent[uf.find(b)] = uf.find(a)
    expected = np.array([uf.find(i) for i in range(1, n + 1)])
    results = [agglomerate(n, u, v, total, count, m, 0.5, first)[0]
               for m in ("threshold", *LIBRARY)]
    assert _same_partition(results[0], expected)
    assert 10 < results[0].max() < n
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("seed", range(20))
def test_mutex_equals_its_algorithm(seed):
    pytest.importorskip("bioimage_cpp")
    rng = np.random.default_rng(seed)
    n = 12
    u, v, total, count = _random_graph(rng, n, 30)
    lookup, n_obj = agglomerate(n, u, v, total, count, "mutex", 0.4, np.arange(n))
    costs = edge_costs(total / (2 * QUANT * count), 0.4)
    comp = _mutex_reference(n, u, v, costs)
    assert _same_partition(lookup, comp)
    assert n_obj == len(np.unique(comp))


def test_multicut_reaches_the_optimum_of_small_graphs():
    pytest.importorskip("bioimage_cpp")
    # GAEC + Kernighan-Lin is a heuristic: on 6-node graphs of 9-12 edges it missed the
    # optimum for 2-4 of 100 random graphs; on these 5-node ones it found all 100
    n = 5
    for seed in range(30):
        rng = np.random.default_rng(seed)
        u, v, total, count = _random_graph(rng, n, 7)
        lookup, _ = agglomerate(n, u, v, total, count, "multicut", 0.5, np.arange(n))
        costs = edge_costs(total / (2 * QUANT * count), 0.5)
        best = min(_energy(np.concatenate([[0], lab]), u, v, costs) for lab in _partitions(n))
        assert _energy(lookup, u, v, costs) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("method", ["threshold", *LIBRARY])
def test_result_depends_only_on_the_graph(method):
    if method != "threshold":
        pytest.importorskip("bioimage_cpp")
    rng = np.random.default_rng(7)
    n = 200
    u, v, total, count = _random_graph(rng, n, 600)
    first = rng.permutation(n) * 3
    want = agglomerate(n, u, v, total, count, method, 0.45, first)
    assert 1 < want[1] < n
    for _ in range(5):
        # some pairs split in two parts (a border shared by two chunks), all in any order
        split = rng.random(len(u)) < 0.5
        part_t, part_c = total[split] // 3, count[split] // 2
        t = total.copy()
        c = count.copy()
        t[split] -= part_t
        c[split] -= part_c
        order = rng.permutation(len(u) + int(split.sum()))
        uu, vv, tt, cc = (np.concatenate(x)[order] for x in (
            (u, u[split]), (v, v[split]), (t, part_t), (c, part_c)))
        got = agglomerate(n, uu, vv, tt, cc, method, 0.45, first)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]
    # and twice on the same input
    np.testing.assert_array_equal(agglomerate(n, u, v, total, count, method, 0.45, first)[0],
                                  want[0])


def test_region_graph_sums_repeats_and_sorts():
    u, v, total, count = region_graph(5, np.array([3, 1, 3, 2]), np.array([4, 2, 4, 5]),
                                      np.array([10, 20, 30, 40]), np.array([1, 2, 3, 4]))
    for got, want in zip((u, v, total, count), ([1, 2, 3], [2, 5, 4], [20, 40, 40],
                                                [2, 4, 4])):
        np.testing.assert_array_equal(got, want)


def test_threshold_joins_below_it_and_numbers_in_raster_order():
    # fragments 1..4; first pixels put fragment 4 first in the image
    first = np.array([10, 20, 30, 5])
    u, v, total, count = _graph([(1, 2, 0.1), (2, 3, 0.6), (3, 4, 0.2)], [4, 2, 1])
    lookup, n = agglomerate(4, u, v, total, count, "threshold", 0.5, first)
    # 1-2 (mean 0.1) and 3-4 (0.2) join, 2-3 (0.6) does not; {3, 4} starts first (pixel 5)
    assert n == 2 and list(lookup) == [0, 2, 2, 1, 1]
    lookup, n = agglomerate(4, u, v, total, count, "threshold", None, first)
    assert n == 4 and list(lookup) == [0, 2, 3, 4, 1]
    lookup, n = agglomerate(4, u, v, total, count, "threshold", 0.7, first)
    assert n == 1 and list(lookup) == [0, 1, 1, 1, 1]
    # any cluster ids: numbered by their first pixels
    np.testing.assert_array_equal(number_objects(np.array([7, 7, 3]), np.array([5, 1, 2]))[0],
                                  [0, 1, 1, 2])


@pytest.mark.parametrize("method", ["threshold", *LIBRARY])
def test_empty_graphs(method):
    if method != "threshold":
        pytest.importorskip("bioimage_cpp")
    none = np.zeros(0, np.int64)
    assert agglomerate(0, none, none, none, none, method, 0.5, none)[1] == 0
    lookup, n_obj = agglomerate(3, none, none, none, none, method, 0.5, np.array([2, 0, 1]))
    np.testing.assert_array_equal(lookup, [0, 3, 1, 2])
    assert n_obj == 3


def test_bad_arguments(monkeypatch):
    u, v, total, count = _graph([(1, 2, 0.1)])
    first = np.arange(2)
    cases = [(dict(method="gasp", threshold=0.5), InvalidValueError, "one of"),
             (dict(method=None, threshold=0.5), InvalidTypeError, "str"),
             (dict(method="multicut", threshold=None), InvalidValueError, r"\(0, 1\)"),
             (dict(method="mutex", threshold=0.0), InvalidValueError, r"\(0, 1\)"),
             (dict(method="mutex", threshold=1.0), InvalidValueError, "elf's default")]
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text):
            agglomerate(2, u, v, total, count, first=first, **kwargs)
    monkeypatch.setitem(sys.modules, "bioimage_cpp", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "bioimage_cpp.graph", None)
    for method in LIBRARY:
        with pytest.raises(MissingDependencyError, match=r"chunkseg\[agglomerate\]"):
            agglomerate(2, u, v, total, count, method, 0.5, first)
    assert agglomerate(2, u, v, total, count, "threshold", 0.5, first)[1] == 1
