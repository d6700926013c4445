"""Idle cores take parts of each CPU batch (chunkseg.engine.threads): same bits, more cores."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from chunkseg.engine import threads

torch = pytest.importorskip("torch")


def _unet():
    from chunkseg.models.unet import UNet

    torch.manual_seed(0)
    return UNet(in_channels=1, classes=2, base_channels=4, depth=2).eval()


class _Recording:
    """A module that records each call's batch size, thread, torch threads and grad mode."""

    def __init__(self, module):
        self.module = module
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.calls.append((len(batch), threading.current_thread().name,
                               torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return self.module(batch)


def test_split_batch_is_bit_identical_and_uses_the_task_threads():
    net = _unet()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(7, 1, 64, 64)).astype(np.float32))
    torch.set_num_threads(1)
    with torch.inference_mode():
        whole = net(x)
        rec = _Recording(net)
        split = threads.SplitBatches(rec, 1, cores=3)
        assert split.parts(7) == 3 and split.parts(4) == 2 and split.parts(3) == 1
        out = split(x)
    assert torch.equal(out, whole)
    assert sorted(c[0] for c in rec.calls) == [2, 2, 3]  # never a part of one tile
    assert len({c[1] for c in rec.calls}) >= 2  # side by side
    assert all(c[2] == 1 and c[3] for c in rec.calls)  # task's threads, no autograd


def test_blocks_in_flight_share_the_cores():
    split = threads.SplitBatches(lambda b: b, 1, cores=4)
    assert split.parts(8) == 4
    with threads.in_flight():
        assert threads.blocks_in_flight() == 1 and split.parts(8) == 4
        with threads.in_flight():
            assert split.parts(8) == 2
            with threads.in_flight(), threads.in_flight():
                assert split.parts(8) == 1
    assert threads.blocks_in_flight() == 1
    assert threads.SplitBatches(lambda b: b, 2, cores=2).parts(8) == 1  # threads already cover them


def test_a_part_that_raises_raises_after_the_others_finish():
    done = []

    def model(batch):
        if float(batch[0, 0]) >= 4:
            raise RuntimeError("boom")
        done.append(len(batch))
        return batch

    split = threads.SplitBatches(model, 1, cores=2)
    with pytest.raises(RuntimeError, match="boom"):
        split(torch.arange(8, dtype=torch.float32).reshape(8, 1))
    assert done == [4]


def test_default_cores_follow_the_task_threads(monkeypatch):
    import dask

    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    with dask.config.set(num_workers=2):
        assert threads.task_slots() == 2
        assert threads.SplitBatches(lambda b: b, 1).cores == 2
        assert threads.SplitBatches(lambda b: b, 4).cores == 8
        assert threads.SplitBatches(lambda b: b, 8).cores == 8  # at most the CPUs


@pytest.mark.parametrize("tta", [None, "flips"])
def test_predict_is_bit_identical_with_split_batches(monkeypatch, tta):
    import chunkseg

    net = _unet()
    image = np.random.default_rng(1).integers(0, 255, (200, 230), dtype=np.uint8)
    sizes = []

    def run(parts):
        def fixed(self, n):
            sizes.append((parts, n))
            return max(1, min(n // 2, parts))

        monkeypatch.setattr(threads.SplitBatches, "parts", fixed)
        ds = chunkseg.predict(image, net, tile=64, overlap=16, batch_size=6, tta=tta, chunks=256,
                              outputs="logits")
        return ds, ds["logits"].values

    ds1, one = run(1)
    ds3, three = run(3)
    assert np.array_equal(one, three)
    assert ds1["logits"].chunks == ds3["logits"].chunks
    assert any(p == 3 and n >= 6 for p, n in sizes)  # batches were split
