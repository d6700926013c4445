"""The torch per-chunk kernel (device-resident pipeline) against the numpy reference.

On the CPU these run everywhere; the CUDA test runs the same comparison on a GPU and is skipped
without one.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from reference import CountingStore, conv_model, max_rel_diff, reference_blend
from test_engine import assert_float16_of

import chunkseg
from chunkseg.errors import ModelOutputError
from chunkseg.kernels import blend, blend_torch
from chunkseg.kernels.windows import get_window
from chunkseg.models.spec import Normalization

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(99)


def _torch_conv(channels, classes, device="cpu", seed=0):
    """A 3x3 'same' convolution in torch and the same one in numpy (the reference's model)."""
    g = np.random.default_rng(seed)
    w = g.normal(size=(classes, channels, 3, 3)).astype(np.float32)
    b = g.normal(size=classes).astype(np.float32)
    conv = torch.nn.Conv2d(channels, classes, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        conv.bias.copy_(torch.from_numpy(b))
    return conv.to(device), conv_model(w, b)


def _check_against_reference(device):
    image = (RNG.random((203, 171, 3)) * 255).astype(np.uint8)
    module, numpy_model = _torch_conv(3, 4, device)
    norm = Normalization(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    tile, overlap = 64, 16
    w = get_window("gaussian", tile, overlap)

    def normalised(batch):
        return numpy_model(norm(batch))

    expected, _ = reference_blend(image, normalised, tile, overlap, w.astype(np.float64))
    for chunks in (64, 100, (48, 130), 1000):
        ds = chunkseg.predict(image, module, tile=tile, overlap=overlap, chunks=chunks,
                              device=device, normalization=norm, batch_size=5,
                              outputs="logits", kernel="torch")
        assert ds.attrs["kernel"] == "torch"
        assert max_rel_diff(ds.logits.values, expected) < 1e-5


def test_torch_kernel_equals_reference_on_cpu():
    _check_against_reference("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernel_equals_reference():
    _check_against_reference("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_predict_to_zarr_equals_numpy_kernel(tmp_path):
    image = (RNG.random((700, 650)) * 255).astype(np.uint8)
    module, _ = _torch_conv(1, 3, "cuda", seed=3)
    kw = dict(tile=128, overlap=32, chunks=256, outputs="logits,probabilities,labels",
              normalization=Normalization(scale=1 / 255))
    got = chunkseg.predict_to_zarr(image, module, str(tmp_path / "gpu.zarr"), device="cuda",
                                   **kw)
    ref = chunkseg.predict_to_zarr(image, module.cpu(), str(tmp_path / "cpu.zarr"),
                                   kernel="numpy", **kw)
    assert max_rel_diff(got.logits.values, ref.logits.values) < 1e-5
    assert np.abs(got.probabilities.values - ref.probabilities.values).max() < 1e-5
    assert (got.labels.values == ref.labels.values).mean() > 0.9999


def test_torch_and_numpy_kernels_agree_on_every_output(tmp_path):
    image = (RNG.random((300, 260)) * 255).astype(np.uint8)
    module, _ = _torch_conv(1, 3, seed=5)
    kw = dict(tile=64, overlap=16, chunks=(100, 128), outputs="logits,probabilities,labels",
              normalization=Normalization(scale=1 / 255))
    got = chunkseg.predict_to_zarr(image, module, str(tmp_path / "t.zarr"), kernel="torch",
                                   dtype="float16", **kw)
    ref = chunkseg.predict_to_zarr(image, module, str(tmp_path / "n.zarr"), kernel="numpy",
                                   dtype="float16", **kw)
    assert got.attrs["kernel"] == "torch" and ref.attrs["kernel"] == "numpy"
    assert got.logits.dtype == np.float16 and got.labels.dtype == np.uint8
    # each kernel's float16 outputs: its float32 ones rounded to nearest
    for kernel, half in (("torch", got), ("numpy", ref)):
        full = chunkseg.predict_to_zarr(image, module, str(tmp_path / f"{kernel}32.zarr"),
                                        kernel=kernel, **kw)
        assert_float16_of(half, full)
    lg, lr = got.logits.values.astype(np.float32), ref.logits.values.astype(np.float32)
    assert np.abs(lg - lr).max() <= 2e-3 * np.abs(lr).max()  # float16 rounding
    assert np.abs(got.probabilities.values.astype(np.float32)
                  - ref.probabilities.values.astype(np.float32)).max() < 2e-3
    # labels from float32 logits on both sides: equal except at near-ties
    assert (got.labels.values == ref.labels.values).mean() > 0.999


def test_torch_kernel_single_class_and_mask():
    image = np.zeros((256, 256), np.float32)
    image[:80, :80] = RNG.random((80, 80))
    module, _ = _torch_conv(1, 1, seed=7)
    kw = dict(tile=48, overlap=16, chunks=64, outputs="logits,probabilities,labels",
              mask=lambda block: bool(block.max() > 0))
    got = chunkseg.predict(image, module, kernel="torch", **kw)
    ref = chunkseg.predict(image, module, kernel="numpy", **kw)
    a, b = got.logits.values, ref.logits.values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(a).any() and np.isfinite(a).any()
    assert max_rel_diff(np.nan_to_num(a), np.nan_to_num(b)) < 1e-5
    np.testing.assert_array_equal(got.labels.values, ref.labels.values)


def test_accumulate_block_torch_equals_numpy_kernel_with_run_mask():
    block = RNG.random((2, 3 * 24 + 8, 4 * 24 + 8)).astype(np.float32)
    module, numpy_model = _torch_conv(2, 2, seed=11)
    window = get_window("linear", 32, 8)
    run = RNG.random((3, 4)) > 0.4
    expected = blend.accumulate_block(block, numpy_model, window, (8, 8), batch_size=3, run=run)
    got = blend_torch.accumulate_block_torch(block, module, window, (8, 8), device="cpu",
                                             batch_size=3, classes=2, run=run)
    assert max_rel_diff(got.numpy(), expected) < 1e-5


def test_torch_kernel_reports_nan_and_wrong_shape():
    image = RNG.random((100, 100)).astype(np.float32)

    class Bad(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            if self.out == "nan":
                y = torch.cat([x, x], 1)
                y[:, :, 5, 5] = float("nan")
                return y
            return x[:, :, :10, :10]

    for model, match in ((Bad("nan"), "non-finite"), (Bad("shape"), "shape")):
        with pytest.raises(ModelOutputError, match=match):
            chunkseg.predict(image, model, tile=32, overlap=8, kernel="torch",
                             outputs="logits").logits.compute()


def test_zarr_input_read_straight_from_store(tmp_path):
    image = (RNG.random((333, 290)) * 255).astype(np.uint8)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(100, 100),
                          dtype=np.uint8)
    z[...] = image
    module, _ = _torch_conv(1, 2, seed=13)
    a = chunkseg.predict(str(tmp_path / "in.zarr"), module, tile=64, overlap=16, chunks=128,
                         outputs="logits").logits.values
    b = chunkseg.predict(image, module, tile=64, overlap=16, chunks=200,
                         outputs="logits").logits.values
    assert max_rel_diff(a, b) < 1e-6


@pytest.mark.parametrize("kernel", ["torch", "numpy"])
def test_torch_kernel_runs_each_tile_once_and_writes_each_chunk_once(kernel):
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, _ = _torch_conv(1, 2, seed=17)

        def forward(self, x):
            seen.extend(t.numpy().tobytes() for t in x)
            return self.conv(x)

    image = RNG.random((190, 170)).astype(np.float32)
    tile, overlap, chunks = 48, 16, (70, 100)  # chunks not multiples of the stride (32)
    store = CountingStore(zarr.storage.MemoryStore())  # counts every write, per key
    ds = chunkseg.predict_to_zarr(image, Recording(), store, tile=tile, overlap=overlap,
                                  chunks=chunks, kernel=kernel, outputs="logits,labels")
    assert ds.attrs["kernel"] == kernel
    plan = chunkseg.plan_tiles(image.shape, tile, overlap, chunks)
    assert len(seen) == plan.n_tiles + 1  # + the probe of the first tile on the client
    assert len(set(seen[1:])) == plan.n_tiles
    # every chunk of each variable written exactly once, and its manifest element once: the
    # writes counted, not the objects left in the store (a chunk written twice leaves one)
    grid = {f"{jy}/{jx}" for jy in range(plan.chunk_grid[0])
            for jx in range(plan.chunk_grid[1])}
    expected = {f"labels/c/{c}": 1 for c in grid}  # labels (y, x); logits (class, y, x)
    expected.update({f"logits/c/0/{c}": 1 for c in grid})  # both classes in one chunk
    expected.update({f"chunkseg/done/c/{c}": 1 for c in grid})
    written = {k: n for k, n in store.writes.items()
               if k.startswith(("labels/c/", "logits/c/", "chunkseg/done/c/"))}
    assert written == expected
    ref = chunkseg.predict(image, Recording().conv, tile=tile, overlap=overlap, chunks=64,
                           kernel="numpy", outputs="logits").logits.values
    assert max_rel_diff(ds.logits.values, ref) < 1e-5
