"""The runner and writer keys are held by every worker before the blocks are scheduled."""

from __future__ import annotations

import time

import pytest

from chunkseg.engine.placement import on_every_worker

distributed = pytest.importorskip("distributed")


def test_local_scheduler_needs_nothing():
    with on_every_worker(None, {"chunkseg-runner-x": 1}) as futures:
        assert futures == []


def test_shared_keys_on_every_worker_then_released():
    with distributed.LocalCluster(n_workers=3, threads_per_worker=1, processes=False,
                                  dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as client:
        dsk = {"chunkseg-runner-t": {"a": 1}, "chunkseg-context-t": [2],
               ("chunkseg-accumulate-t", 0, 0): (len, "chunkseg-runner-t"), "other": 3}
        with on_every_worker(client, dsk) as futures:
            assert sorted(f.key for f in futures) == ["chunkseg-context-t", "chunkseg-runner-t"]
            who = client.who_has(futures)
            assert all(len(who[k]) == 3 for k in who)
            # the graph's own tasks find them in memory, with their values
            out = client.get(dsk, [("chunkseg-accumulate-t", 0, 0), "chunkseg-context-t"])
            assert list(out) == [1, [2]]
        deadline = time.monotonic() + 10
        while client.who_has() and time.monotonic() < deadline:  # released on exit
            time.sleep(0.05)
        assert not client.who_has()
