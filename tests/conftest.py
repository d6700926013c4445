"""The test tiers: ``pytest -m "not slow"`` runs the fast tier, plain ``pytest`` (CI) runs all.

The fast tier is the engine's core, what a change of geometry, kernels or graph can break: the
plan, windows, numpy and torch kernels, the engine against the in-memory reference, test-time
augmentation, the seam report, sharding, the instance kernels and merges (components and the
watershed), the metrics and the
pyramid (:data:`FAST_MODULES`). Every other module (the
cluster, S3, SIGKILL, demo, training, outputs and lease process tests, models and I/O) is marked
``slow`` here, in one place, as is any test of a fast module marked ``slow`` itself (a local
cluster).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The tests mirror the packages (tests/engine, tests/outputs, ...), and some share fixtures and
# helpers across folders (``from test_resume import FailsLate``): every folder is importable,
# whichever file pytest is asked to run.
_TESTS = Path(__file__).resolve().parent
for _folder in sorted(p for p in _TESTS.iterdir() if p.is_dir() and p.name.isidentifier()):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

FAST_MODULES = frozenset({
    "test_plan", "test_windows", "test_blend", "test_engine", "test_torch_kernel",
    "test_reference_geometry", "test_tta", "test_seams", "test_shards", "test_mask",
    "test_instances", "test_tile_instances", "test_metrics", "test_ome", "test_flood_kernel",
    "test_watershed", "test_lazy_slices", "test_stacks",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is None or item.module.__name__.rpartition(".")[2] not in FAST_MODULES:
            item.add_marker(pytest.mark.slow)
