"""The engine's invariants: equal to an in-memory reference, independent of the chunking,
exact for pointwise and constant models, every pixel covered, each tile once, whole-chunk writes."""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.core import get_dependencies
from reference import conv_model, max_rel_diff, reference_blend

import chunkseg
from chunkseg import blend, engine
from chunkseg.errors import ModelOutputError, OutputExistsError
from chunkseg.models import as_model
from chunkseg.plan import plan_tiles
from chunkseg.windows import get_window

RNG = np.random.default_rng(1234)


def _image(shape, channels, dtype=np.float32):
    img = RNG.random(shape + (channels,))
    return img.astype(dtype) if dtype != np.uint8 else (img * 255).astype(np.uint8)


def _conv(channels, classes, k=3):
    return conv_model(RNG.normal(size=(classes, channels, k, k)), RNG.normal(size=classes))


@pytest.mark.parametrize(
    "shape, channels, classes, window",
    [
        ((203, 171), 1, 2, "gaussian"),
        ((160, 250), 3, 5, "linear"),
        ((97, 301), 4, 2, "cosine"),
        ((250, 190), 3, 2, "uniform"),
    ],
)
def test_equals_reference_for_every_chunking(shape, channels, classes, window):
    image = _image(shape, channels)
    model = _conv(channels, classes)
    tile, overlap = 64, 16
    w = get_window(window, tile, overlap)
    expected, _ = reference_blend(image, model, tile, overlap, w.astype(np.float64))
    stride = tile - overlap
    results = []
    # one stride per chunk, uneven multiples, and a single chunk covering everything
    for chunks in (stride, 2 * stride, (3 * stride, stride), 7 * stride):
        ds = chunkseg.predict(image, model, tile=tile, overlap=overlap, window=window,
                              chunks=chunks, batch_size=5, outputs="logits")
        got = ds.logits.values
        assert got.shape == (classes,) + shape and got.dtype == np.float32
        assert max_rel_diff(got, expected) < 1e-6
        results.append(got)
    for other in results[1:]:
        assert max_rel_diff(other, results[0]) < 1e-6


def test_input_chunks_do_not_matter():
    image = _image((230, 260), 2)
    model = _conv(2, 3)
    outs = []
    for in_chunks in ((230, 260, 2), (50, 70, 2), (111, 33, 1)):
        arr = da.from_array(image, chunks=in_chunks)
        outs.append(chunkseg.predict(arr, model, tile=48, overlap=12, chunks=72,
                                     outputs="logits").logits.values)
    assert max_rel_diff(outs[1], outs[0]) < 1e-6 and max_rel_diff(outs[2], outs[0]) < 1e-6


def test_pointwise_model_gives_model_of_image():
    image = _image((150, 137), 3)
    weights = RNG.normal(size=(4, 3, 1, 1))
    model = conv_model(weights, np.arange(4))
    ds = chunkseg.predict(image, model, tile=40, overlap=10, chunks=60, window="gaussian",
                          outputs="logits")
    expected = model(image.transpose(2, 0, 1)[None])[0]
    assert max_rel_diff(ds.logits.values, expected) < 1e-6


@pytest.mark.parametrize("window", ["uniform", "linear", "gaussian", "cosine"])
def test_constant_model_gives_constant_output(window):
    image = _image((130, 90), 1)

    def const(batch):
        out = np.empty((batch.shape[0], 2) + batch.shape[2:], np.float32)
        out[:, 0], out[:, 1] = -1.5, 2.25
        return out

    ds = chunkseg.predict(image, const, tile=32, overlap=8, chunks=48, window=window,
                          outputs=("logits", "probabilities", "labels"))
    logits = ds.logits.values
    np.testing.assert_allclose(logits[0], -1.5, rtol=1e-6)
    np.testing.assert_allclose(logits[1], 2.25, rtol=1e-6)
    assert (ds.labels.values == 1).all()
    p1 = 1 / (1 + np.exp(-3.75))
    np.testing.assert_allclose(ds.probabilities.values[1], p1, rtol=1e-6)


def test_every_pixel_covered_and_weights_match_reference():
    shape, tile, overlap = (177, 211), 50, 14
    image = _image(shape, 1)
    plan = plan_tiles(shape + (1,), tile, overlap, 2 * (tile - overlap))
    w = get_window("gaussian", tile, overlap)
    model = as_model(_conv(1, 2))
    runner = engine.TileRunner(model, w, plan.overlap, 4, 2)
    folded = engine.fold(engine.accumulate(engine.pad_image(da.from_array(image), plan),
                                           runner, plan), plan).compute()
    weight_sum = folded[-1]
    assert (weight_sum > 0).all()
    _, expected_wsum = reference_blend(image, model, tile, overlap, w.astype(np.float64))
    assert max_rel_diff(weight_sum, expected_wsum) < 1e-6


def test_each_tile_runs_exactly_once():
    seen: list[bytes] = []
    lock = threading.Lock()
    image = _image((190, 170), 1)

    def recording(batch):
        with lock:
            seen.extend(t.tobytes() for t in batch)
        return np.repeat(batch, 2, axis=1)

    tile, overlap = 48, 16
    chunkseg.predict(image, recording, tile=tile, overlap=overlap, chunks=64,
                     outputs="logits").logits.compute()
    plan = plan_tiles(image.shape, tile, overlap, 64)
    # the first tile is also run once on the client to learn the number of classes
    assert len(seen) == plan.n_tiles + 1
    assert len(set(seen[1:])) == plan.n_tiles  # all distinct (random image)


def test_tasks_hold_only_chunk_plus_halo(monkeypatch):
    shapes = []
    original = blend.accumulate_block

    def spy(block, *args, **kwargs):
        shapes.append(block.shape)
        return original(block, *args, **kwargs)

    monkeypatch.setattr(blend, "accumulate_block", spy)
    image = _image((300, 260), 2)
    tile, overlap, chunks = 40, 8, 64
    chunkseg.predict(image, _conv(2, 2), tile=tile, overlap=overlap, chunks=chunks,
                     outputs="logits").logits.compute()
    plan = plan_tiles(image.shape, tile, overlap, chunks)
    assert len(shapes) == plan.n_chunks
    expected = sorted((2, by, bx) for by in [a for a in (b - a for a, b in plan.block_extents()[0])]
                      for bx in (b - a for a, b in plan.block_extents()[1]))
    assert sorted(shapes) == expected
    # every block is at most a chunk plus its halo, except the last one, which carries the padding
    for _, by, bx in shapes[:-1]:
        assert by <= chunks + overlap + plan.stride[0] and bx <= chunks + overlap + plan.stride[1]
    full = [s for s in shapes if s[1] == chunks + overlap and s[2] == chunks + overlap]
    assert full  # interior blocks are exactly chunk + overlap


def test_fold_moves_only_strips():
    image = _image((200, 200), 1)
    ds = chunkseg.predict(image, _conv(1, 2), tile=40, overlap=10, chunks=60, outputs="logits")
    graph = dict(ds.logits.data.__dask_graph__())
    deps = {k: get_dependencies(graph, k) for k in graph}
    fold_keys = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("chunkseg-fold")]
    assert len(fold_keys) == 16
    for key in fold_keys:
        acc_deps = [d for d in deps[key] if str(d[0]).startswith("chunkseg-accumulate")]
        strip_deps = [d for d in deps[key] if str(d[0]).startswith("chunkseg-strip")]
        assert acc_deps == [(acc_deps[0][0], 0) + key[2:]]  # its own block only
        assert len(strip_deps) + 1 == len(deps[key])
        for s in strip_deps:  # strips are cut from one neighbouring block each
            (src,) = deps[s]
            assert max(abs(src[2] - key[2]), abs(src[3] - key[3])) == 1


def test_labels_and_probabilities_follow_logits():
    image = _image((120, 100), 3)
    ds = chunkseg.predict(image, _conv(3, 5), tile=32, overlap=8, chunks=48,
                          outputs="logits,probabilities,labels")
    logits = ds.logits.values
    probs = ds.probabilities.values
    np.testing.assert_allclose(probs.sum(axis=0), 1, rtol=1e-5)
    e = np.exp(logits - logits.max(0))
    np.testing.assert_allclose(probs, e / e.sum(0), rtol=1e-5, atol=1e-7)
    assert ds.labels.dtype == np.uint8 and ds.labels.dims == ("y", "x")
    np.testing.assert_array_equal(ds.labels.values, logits.argmax(0))
    assert ds.logits.dims == ("class", "y", "x")


def test_float16_outputs():
    image = _image((80, 80), 1)
    ds = chunkseg.predict(image, _conv(1, 2), tile=32, overlap=8, outputs="logits,probabilities",
                          dtype="float16")
    assert ds.logits.dtype == np.float16 and ds.probabilities.dtype == np.float16
    full = chunkseg.predict(image, _conv(1, 2), tile=32, overlap=8, outputs="logits")
    assert ds.logits.shape == full.logits.shape


def test_tile_larger_than_image_is_padded():
    image = _image((20, 33), 1)
    model = _conv(1, 2)
    ds = chunkseg.predict(image, model, tile=64, overlap=16, outputs="logits")
    expected, _ = reference_blend(image, model, 64, 16, get_window("gaussian", 64, 16))
    assert ds.logits.shape == (2, 20, 33)
    assert max_rel_diff(ds.logits.values, expected) < 1e-6


def test_uint8_input_and_sigmoid_single_class():
    image = _image((70, 90), 1, np.uint8)
    ds = chunkseg.predict(image, conv_model(np.full((1, 1, 1, 1), 0.01), [-1.0]), tile=32,
                          overlap=8, outputs="logits,probabilities,labels")
    logit = image[..., 0] * 0.01 - 1.0
    np.testing.assert_allclose(ds.logits.values[0], logit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.probabilities.values[0], 1 / (1 + np.exp(-logit)), rtol=1e-5)
    np.testing.assert_array_equal(ds.labels.values, (logit > 0).astype(np.uint8))


# -- writing ----------------------------------------------------------------------------------


class CountingStore(zarr.storage.WrapperStore):
    """Counts writes per key (every set of a chunk)."""

    def __init__(self, store):
        super().__init__(store)
        self.writes: dict[str, int] = {}

    async def set(self, key, value):
        self.writes[key] = self.writes.get(key, 0) + 1
        await super().set(key, value)

    def _with_store(self, store):  # keep the counter when zarr rewraps the store
        return self


def test_every_output_chunk_written_once_whole():
    store = CountingStore(zarr.storage.MemoryStore())
    image = _image((230, 190), 1)
    model = _conv(1, 3)
    ds = chunkseg.predict_to_zarr(image, model, store, tile=40, overlap=10, chunks=60,
                                  outputs="logits,probabilities,labels")
    plan = plan_tiles(image.shape, 40, 10, 60)
    chunk_writes = {k: v for k, v in store.writes.items() if "/c/" in k}
    assert len(chunk_writes) == 3 * plan.n_chunks
    assert set(chunk_writes.values()) == {1}
    expected = chunkseg.predict(image, model, tile=40, overlap=10, chunks=60,
                                outputs="logits").logits.values
    np.testing.assert_array_equal(ds.logits.values, expected)


def test_written_group_opens_as_named_dataset(tmp_path):
    image = _image((100, 130), 3)
    out = tmp_path / "out.zarr"
    model = _conv(3, 2)
    ds = chunkseg.predict_to_zarr(image, model, str(out), tile=32, overlap=8, chunks=48,
                                  outputs="logits,labels", dtype="float16")
    reopened = xr.open_zarr(out)
    assert reopened.logits.dims == ("class", "y", "x") and reopened.labels.dims == ("y", "x")
    assert reopened.logits.dtype == np.float16 and reopened.labels.dtype == np.uint8
    assert reopened.attrs["tile"] == [32, 32] and reopened.attrs["window"] == "gaussian"
    assert reopened.attrs["overlap"] == [8, 8] and "chunkseg_version" in reopened.attrs
    assert reopened.attrs["model"]["kind"] == "callable"
    group = zarr.open_group(out, mode="r")
    assert group["logits"].chunks == (2, 48, 48) and group["labels"].chunks == (48, 48)
    assert "zstd" in str(group["logits"].compressors[0]).lower()
    np.testing.assert_array_equal(ds.labels.values, reopened.labels.values)


def test_existing_output_refused_then_overwritten(tmp_path):
    image = _image((60, 60), 1)
    out = tmp_path / "out.zarr"
    zarr.create_array(out, shape=(4,), dtype="i4", fill_value=7)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="overwrite"):
        chunkseg.predict_to_zarr(image, _conv(1, 2), str(out), tile=32, overlap=8)
    assert sorted(p.name for p in out.rglob("*")) == before  # untouched
    ds = chunkseg.predict_to_zarr(image, _conv(1, 2), str(out), tile=32, overlap=8,
                                  overwrite=True)
    assert ds.logits.shape == (2, 60, 60)


def test_output_equal_to_input_refused(tmp_path):
    src = tmp_path / "in.zarr"
    zarr.create_array(src, shape=(50, 50), dtype="u1", fill_value=3, dimension_names=("y", "x"))
    with pytest.raises(OutputExistsError, match="input"):
        chunkseg.predict_to_zarr(str(src), _conv(1, 2), str(src), tile=32, overlap=8,
                                 overwrite=True)


def test_bad_model_refused_before_writing(tmp_path):
    image = _image((60, 60), 1)
    out = tmp_path / "out.zarr"

    def wrong_shape(batch):
        return batch[:, :, :-1]

    def nan_model(batch):
        return np.full((batch.shape[0], 2) + batch.shape[2:], np.nan, np.float32)

    for bad, msg in ((wrong_shape, "shape"), (nan_model, "non-finite")):
        with pytest.raises(ModelOutputError, match=msg):
            chunkseg.predict_to_zarr(image, bad, str(out), tile=32, overlap=8)
        assert not out.exists()


def test_nan_on_a_later_tile_is_reported():
    image = _image((100, 100), 1)
    image[90, 90] = np.nan  # only a tile far from the first one sees it
    with pytest.raises(ModelOutputError, match="non-finite"):
        chunkseg.predict(image, _conv(1, 2), tile=32, overlap=8, outputs="logits").logits.compute()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"overlap": 32}, ValueError, "overlap"),
        ({"overlap": -1}, ValueError, "overlap"),
        ({"tile": 0}, ValueError, "tile"),
        ({"tile": (32, 32, 32)}, TypeError, "tile"),
        ({"chunks": 50}, ValueError, r"chunks.*Nearest valid values: 48 or 72"),
        ({"window": "hann"}, ValueError, "window"),
        ({"window": np.ones((3, 3))}, ValueError, "shape"),
        ({"outputs": "logit"}, ValueError, "outputs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"dtype": "int8"}, ValueError, "dtype"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"tile": 32, "overlap": 8} | kwargs
    with pytest.raises(exc, match=match):
        chunkseg.predict(_image((60, 60), 1), _conv(1, 2), **args)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5)])
def test_bad_dimensionality(shape):
    with pytest.raises(ValueError, match="image"):
        chunkseg.predict(np.zeros(shape, np.float32), _conv(1, 2), tile=32, overlap=8)


def test_distributed_local_cluster_equals_threads():
    image = _image((150, 140), 1)
    model = _conv(1, 2)
    local = chunkseg.predict(image, model, tile=40, overlap=10, chunks=60, outputs="logits")
    expected = local.logits.values
    with dask.config.set({"distributed.worker.daemon": False}):
        (got,) = chunkseg.scheduling.compute(local.logits.data, workers=2)
    np.testing.assert_array_equal(got, expected)


def test_xarray_to_zarr_of_lazy_dataset(tmp_path):
    image = _image((130, 110), 1)
    ds = chunkseg.predict(image, _conv(1, 2), tile=32, overlap=8, chunks=48,
                          outputs="logits,labels")
    ds.to_zarr(tmp_path / "x.zarr", zarr_format=3, consolidated=False)
    back = xr.open_zarr(tmp_path / "x.zarr", consolidated=False)
    np.testing.assert_array_equal(back.logits.values, ds.logits.values)
    assert back.labels.dims == ("y", "x") and back.attrs["window"] == "gaussian"


def test_rolling_window_equals_plain_graph_and_bounds_alive_blocks():
    from dask.core import get_deps
    from dask.order import order

    image = _image((420, 400), 1)
    model = _conv(1, 2)
    kwargs = dict(tile=40, overlap=10, chunks=60, outputs="logits")
    plain = chunkseg.predict(image, model, **kwargs).logits
    rolled = chunkseg.predict(image, model, rolling=True, **kwargs).logits
    np.testing.assert_array_equal(rolled.values, plain.values)
    plan = plan_tiles(image.shape, 40, 10, 60)

    def peak_alive_blocks(arr):
        dsk = dict(arr.data.__dask_graph__())
        prio = order(dsk)
        deps, dependents = get_deps(dsk)
        left = {k: len(v) for k, v in dependents.items()}
        alive, peak = set(), 0
        for k in sorted(dsk, key=prio.get):
            alive.add(k)
            for d in deps[k]:
                left[d] -= 1
                if left[d] == 0:
                    alive.discard(d)
            peak = max(peak, sum(str(a[0]).startswith("chunkseg-accumulate") for a in alive
                                 if isinstance(a, tuple)))
        return peak

    assert peak_alive_blocks(rolled) <= plan.chunk_grid[1] + 3
    assert peak_alive_blocks(rolled) < peak_alive_blocks(plain)

