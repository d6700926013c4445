"""The engine's invariants: equal to an in-memory reference, independent of the chunking,
exact for pointwise and constant models, every pixel covered, each tile once, whole-chunk writes."""

from __future__ import annotations

import operator
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.core import get_dependencies
from dask.delayed import Delayed
from reference import CountingStore, conv_model, max_rel_diff, reference_blend

import chunkseg
from chunkseg.engine.graph import _gpu_resources, _graph, blend_graph
from chunkseg.engine.runner import BlockReader, TileRunner, make_runner, reflect_index
from chunkseg.engine.settings import GPU_READ_AHEAD, RunSetup, _setup
from chunkseg.errors import InvalidValueError, ModelOutputError, OutputExistsError
from chunkseg.kernels.windows import get_window
from chunkseg.models.load import as_model
from chunkseg.plan import plan_tiles

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


def _folded(runner, lag=None):
    """The raw overlap-add (K + 1, H, W) of a runner's graph, computed."""
    def finish(runner, _ctx, jy, jx, dsts, *pieces):
        return runner.fold(jy, jx, list(zip(dsts, pieces)))

    dsk, name, keys = blend_graph(runner, finish, lag=lag)
    nr, nc = runner.plan.chunk_grid
    blocks = dask.get(dsk, keys)
    rows = [np.concatenate(blocks[i * nc:(i + 1) * nc], axis=2) for i in range(nr)]
    return np.concatenate(rows, axis=1), dsk


@pytest.mark.parametrize("chunks", [72, 50, (200, 64), 1000])
def test_every_pixel_covered_and_weights_match_reference(chunks):
    shape, tile, overlap = (177, 211), 50, 14
    image = _image(shape, 1)
    plan = plan_tiles(shape + (1,), tile, overlap, chunks)
    w = get_window("gaussian", tile, overlap)
    model = as_model(_conv(1, 2))
    runner = make_runner(da.from_array(image), model, plan, w, batch_size=4, classes=2)
    folded, _ = _folded(runner)
    weight_sum = folded[-1]
    assert (weight_sum > 0).all()
    _, expected_wsum = reference_blend(image, model, tile, overlap, w.astype(np.float64))
    assert max_rel_diff(weight_sum, expected_wsum) < 1e-6


def test_reflect_index_equals_numpy_pad():
    for length in (1, 2, 5, 17):
        for before, after in ((0, 0), (3, 4), (20, 41)):
            expected = np.pad(np.arange(length), (before, after), mode="reflect")
            got = reflect_index(-before, length + after, length)
            np.testing.assert_array_equal(got, expected)


def test_each_tile_runs_exactly_once():
    seen: list[bytes] = []
    lock = threading.Lock()
    image = _image((190, 170), 1)

    def recording(batch):
        with lock:
            seen.extend(t.tobytes() for t in batch)
        return np.repeat(batch, 2, axis=1)

    tile, overlap = 48, 16
    for chunks in (64, 100, 48):
        seen.clear()
        chunkseg.predict(image, recording, tile=tile, overlap=overlap, chunks=chunks,
                         outputs="logits").logits.compute()
        plan = plan_tiles(image.shape, tile, overlap, chunks)
        # the first tile is also run once on the client to learn the number of classes
        assert len(seen) == plan.n_tiles + 1
        assert len(set(seen[1:])) == plan.n_tiles  # all distinct (random image)


def test_tasks_read_only_their_block(monkeypatch):
    regions = []
    original = BlockReader.__call__

    def spy(self, ys, xs):
        out = original(self, ys, xs)
        regions.append((ys, xs, out.shape))
        return out

    monkeypatch.setattr(BlockReader, "__call__", spy)
    image = _image((300, 260), 2)
    tile, overlap, chunks = 40, 8, 70
    chunkseg.predict(image, _conv(2, 2), tile=tile, overlap=overlap, chunks=chunks,
                     outputs="logits").logits.compute()
    plan = plan_tiles(image.shape, tile, overlap, chunks)
    blocks = regions[1:]  # the first read is the probe tile
    ey, ex = plan.block_extents()
    expected = sorted((y, x) for y in ey for x in ex if y[1] > y[0] and x[1] > x[0])
    assert sorted((ys, xs) for ys, xs, _ in blocks) == expected  # each block read once
    for ys, xs, shp in blocks:
        assert shp == (2, ys[1] - ys[0], xs[1] - xs[0])
        # a block is the chunk's own tiles: at most the chunk plus less than a tile
        assert ys[1] - ys[0] < chunks + tile and xs[1] - xs[0] < chunks + tile


def test_fold_is_forward_only_and_moves_only_pieces():
    image = _image((200, 200), 1)
    ds = chunkseg.predict(image, _conv(1, 2), tile=40, overlap=10, chunks=60, outputs="logits")
    graph = dict(ds.logits.data.__dask_graph__())
    deps = {k: get_dependencies(graph, k) for k in graph}
    fold_keys = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("chunkseg-fold")]
    assert len(fold_keys) == 16
    n_tasks = sum(isinstance(k, tuple) for k in graph)
    assert n_tasks <= 7 * 16  # a handful of tasks per chunk
    for key in fold_keys:
        pieces = [d for d in deps[key] if str(d[0]).startswith("chunkseg-piece")]
        assert len(pieces) + 2 == len(deps[key])  # plus the runner and the context
        for p in pieces:
            (src,) = [d for d in deps[p] if str(d[0]).startswith("chunkseg-accumulate")]
            iy, ix = src[1:]
            assert p[3:] == key[2:]
            # the chunk itself or its upper / left / upper-left neighbour
            assert 0 <= key[2] - iy <= 1 and 0 <= key[3] - ix <= 1


def test_rolling_window_bounds_blocks_alive():
    image = _image((420, 400), 1)
    plan = plan_tiles(image.shape, 40, 10, 60)
    w = get_window("gaussian", 40, 10)
    runner = make_runner(da.from_array(image), as_model(_conv(1, 2)), plan, w,
                                batch_size=8, classes=2)
    alive, peak, lock = set(), [0], threading.Lock()

    class Watched(TileRunner):
        def accumulate(self, iy, ix):
            with lock:
                alive.add((iy, ix))
                peak[0] = max(peak[0], len(alive))
            return super().accumulate(iy, ix)

        def fold(self, jy, jx, pieces):
            with lock:
                alive.discard((jy, jx))
            return super().fold(jy, jx, pieces)

    runner.__class__ = Watched
    expected, _ = _folded(runner)
    peak[0] = 0
    with dask.config.set(num_workers=2):
        got, _ = _folded(runner, lag=3)
    np.testing.assert_array_equal(got, expected)
    assert peak[0] <= 3 + 1 < plan.n_chunks


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


def assert_float16_of(half, full) -> None:
    """``half``'s float16 ``logits`` and ``probabilities`` are ``full``'s float32 ones rounded to
    nearest: within half a float16 ulp, 2**-11 of the value (11 significant bits), or 2**-25
    among the subnormals; its ``labels`` (from the float32 logits in both runs) are equal."""
    for name in ("logits", "probabilities"):
        assert half[name].dtype == np.float16 and full[name].dtype == np.float32
        assert half[name].shape == full[name].shape
        f = full[name].values
        h = half[name].values.astype(np.float32)
        err = np.abs(h - f) - (2.0**-11 * np.abs(f) + 2.0**-25)
        assert err.max() <= 0, (name, float(np.abs(h - f).max()))
    np.testing.assert_array_equal(half.labels.values, full.labels.values)


@pytest.mark.parametrize("write", [False, True])  # predict's dataset; predict_to_zarr's writer
def test_float16_outputs(tmp_path, write):
    image = _image((80, 80), 1)
    model = _conv(1, 2)
    kw = dict(tile=32, overlap=8, chunks=48, outputs="logits,probabilities,labels")
    if write:
        half = chunkseg.predict_to_zarr(image, model, str(tmp_path / "h.zarr"), dtype="float16",
                                        **kw)
        full = chunkseg.predict_to_zarr(image, model, str(tmp_path / "f.zarr"), **kw)
    else:
        half = chunkseg.predict(image, model, dtype="float16", **kw)
        full = chunkseg.predict(image, model, **kw)
    assert 1 < np.abs(full.logits.values).max() < 100  # moderate logits, both signs
    assert full.logits.values.min() < 0 < full.logits.values.max()
    assert_float16_of(half, full)


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


@pytest.mark.parametrize("chunks", [60, 50, (47, 64)])  # multiples of the stride (30) or not
def test_every_output_chunk_written_once_whole(chunks):
    store = CountingStore(zarr.storage.MemoryStore())
    image = _image((230, 190), 1)
    model = _conv(1, 3)
    ds = chunkseg.predict_to_zarr(image, model, store, tile=40, overlap=10, chunks=chunks,
                                  outputs="logits,probabilities,labels")
    plan = plan_tiles(image.shape, 40, 10, chunks)
    chunk_writes = {k: v for k, v in store.writes.items()
                    if "/c/" in k and k.startswith(("logits/", "probabilities/", "labels/"))}
    assert len(chunk_writes) == 3 * plan.n_chunks
    # besides them: the class names (one chunk), the manifest, and nothing else
    others = {k.split("/")[0] for k in store.writes if "/c/" in k} - set(chunkseg.OUTPUTS)
    assert others == {"class", "chunkseg"}
    assert set(chunk_writes.values()) == {1}
    # the completion manifest: one element per chunk, each written once, after its chunk
    marks = {k: v for k, v in store.writes.items() if k.startswith("chunkseg/done/c/")}
    assert len(marks) == plan.n_chunks and set(marks.values()) == {1}
    assert ds.attrs["complete"] is True
    expected = chunkseg.predict(image, model, tile=40, overlap=10, chunks=chunks,
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
    assert "lz4" in str(group["logits"].compressors[0]).lower()  # floats: Blosc lz4, shuffled
    assert "zstd" in str(group["labels"].compressors[0]).lower()
    np.testing.assert_array_equal(ds.labels.values, reopened.labels.values)


def test_existing_output_refused_then_overwritten(tmp_path):
    image = _image((60, 60), 1)
    out = tmp_path / "out.zarr"
    zarr.create_array(out, shape=(4,), dtype="i4", fill_value=7)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="overwrite"):
        chunkseg.predict_to_zarr(image, _conv(1, 2), str(out), tile=32, overlap=8)
    assert sorted(p.name for p in out.rglob("*")) == before  # untouched
    # a Zarr store chunkseg did not write is not replaced, even with overwrite
    with pytest.raises(OutputExistsError, match="did not write"):
        chunkseg.predict_to_zarr(image, _conv(1, 2), str(out), tile=32, overlap=8,
                                 overwrite=True)
    assert sorted(p.name for p in out.rglob("*")) == before
    # a previous chunkseg output is
    out2 = tmp_path / "out2.zarr"
    chunkseg.predict_to_zarr(image, _conv(1, 2), str(out2), tile=32, overlap=8)
    with pytest.raises(OutputExistsError, match="overwrite"):
        chunkseg.predict_to_zarr(image, _conv(1, 2), str(out2), tile=32, overlap=8)
    ds = chunkseg.predict_to_zarr(image, _conv(1, 3), str(out2), tile=32, overlap=8,
                                  overwrite=True)
    assert ds.logits.shape == (3, 60, 60)


def test_output_equal_to_input_refused(tmp_path):
    src = tmp_path / "in.zarr"
    zarr.create_array(src, shape=(50, 50), dtype="u1", fill_value=3, dimension_names=("y", "x"))
    with pytest.raises(chunkseg.OutputOverlapError, match="overlap"):
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


def test_nan_input_on_a_later_tile_is_reported():
    image = _image((100, 100), 1)
    image[90, 90] = np.nan  # only a tile far from the first one sees it
    # the input's fault, not the model's (whose NaN output would follow)
    with pytest.raises(InvalidValueError, match="`image` must hold finite values") as info:
        chunkseg.predict(image, _conv(1, 2), tile=32, overlap=8, chunks=48,
                         outputs="logits").logits.compute()
    # the error names the chunk and its pixels (pixel 90 lies in chunk 1 of 3)
    assert "in chunk (1, 1)" in str(info.value) and "y 90, x 90" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"overlap": 32}, ValueError, "overlap"),
        ({"overlap": -1}, ValueError, "overlap"),
        ({"tile": 0}, ValueError, "tile"),
        ({"tile": (32, 32, 32)}, TypeError, "tile"),
        ({"chunks": 0}, ValueError, r"chunks.*positive"),
        ({"kernel": "cuda"}, ValueError, "kernel"),
        ({"kernel": "torch"}, TypeError, "torch model"),
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


@pytest.mark.slow  # a LocalCluster: left out of the fast tier
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


@pytest.mark.parametrize("layout", ["yxc", "cyx", "yx"])
def test_zarr_blocks_read_straight_from_the_store(tmp_path, layout):
    image = _image((150, 170), 1 if layout == "yx" else 3)
    data = {"yxc": image, "cyx": image.transpose(2, 0, 1), "yx": image[..., 0]}[layout]
    names = {"yxc": ("y", "x", "c"), "cyx": ("c", "y", "x"), "yx": ("y", "x")}[layout]
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, dtype=data.dtype,
                          chunks=(40,) * data.ndim, dimension_names=names)
    z[...] = data
    opened = chunkseg.open_image(str(tmp_path / "in.zarr"))
    reader = opened.encoding["chunkseg_reader"]
    np.testing.assert_array_equal(reader(10, 60, 20, 90), image[10:60, 20:90])
    model = _conv(image.shape[2], 2)
    kw = dict(tile=48, overlap=16, chunks=64, outputs="logits")
    got = chunkseg.predict(str(tmp_path / "in.zarr"), model, **kw).logits.values
    np.testing.assert_array_equal(got, chunkseg.predict(image, model, **kw).logits.values)


def test_gpu_tasks_ask_for_a_share_of_a_gpu_worker():
    class FakeClient:
        def __init__(self, resources):
            self.resources = resources

        def scheduler_info(self):
            return {"workers": {"tcp://a": {"resources": self.resources}}}

    share = {"GPU": 1 / GPU_READ_AHEAD}
    assert _gpu_resources(FakeClient({"GPU": 1}), "cuda:0") == share
    assert _gpu_resources(FakeClient({}), "cuda") is None  # no GPU workers: no ask
    assert _gpu_resources(FakeClient({"GPU": 1}), "cpu") is None
    assert _gpu_resources(None, "cuda") is None
    acc, piece, fold = ("chunkseg-accumulate-t", 0, 0), ("chunkseg-piece-t", 0, 0, 0, 0), \
        ("chunkseg-fold-t", 0, 0, 0)
    dsk = {"runner": 5, acc: (operator.add, "runner", 1), piece: (operator.mul, acc, 2),
           fold: (operator.add, piece, "runner"), "done": (sum, [fold])}
    heavy = {acc, fold}
    graph = _graph("done", dsk, share)
    (layer,) = graph.layers.values()  # one layer: its dependencies are the tasks' own
    ask = layer.annotations["resources"]
    assert {k for k in dsk if ask(k) is not None} == heavy
    assert all(ask(k) == share for k in heavy)
    assert not dask.get_annotations()  # dask.annotate's context is left
    assert _graph("done", dsk, None).layers["done"].annotations is None
    assert dask.compute(Delayed("done", graph), scheduler="sync")[0] == (5 + 1) * 2 + 5
    # what distributed's Client.compute sends the scheduler, after dask's optimisation (its
    # scheduler skips None): every task kept, the block and chunk tasks annotated (dask
    # issue 7036: a hand-built layer per kind of task lost tasks when culled)
    collections_to_expr = getattr(dask.base, "collections_to_expr", None)
    if collections_to_expr is None:  # dask before expressions (the lowest-versions CI run)
        pytest.skip("this dask has no collections_to_expr (what Client.compute sends)")
    sent = collections_to_expr([Delayed("done", graph)], optimize_graph=True)
    assert set(sent.__dask_graph__()) == set(dsk)
    got = {k: v for k, v in sent.__dask_annotations__()["resources"].items() if v is not None}
    assert got == {k: share for k in heavy}


@pytest.mark.slow  # a LocalCluster
def test_gpu_tasks_run_on_gpu_workers_of_a_cluster():
    from distributed import Client, Scheduler, SpecCluster, Worker, get_worker

    def where(*before):
        return [*before, get_worker().name]

    acc, piece, fold = ("chunkseg-accumulate-t", 0, 0), ("chunkseg-piece-t", 0, 0, 0, 0), \
        ("chunkseg-fold-t", 0, 0, 0)
    # as blend_graph's: the runner, a block, its piece, the chunk's fold, the count
    dsk = {"runner": 0, acc: (where, "runner"), piece: (operator.getitem, acc, 1),
           fold: (where, piece), "done": (list, fold)}
    graph = _graph("done", dsk, {"GPU": 1 / GPU_READ_AHEAD})
    spec = {name: {"cls": Worker, "options": {"nthreads": 2, "resources": res}}
            for name, res in (("cpu", {}), ("gpu", {"GPU": 1}))}
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": None}}) as cluster, Client(cluster) as client:
        for _ in range(3):  # the CPU worker is free, yet every block and chunk task goes to the GPU
            assert client.compute(Delayed("done", graph)).result() == ["gpu", "gpu"]


def _documented(func) -> dict[str, str]:
    """``name -> 'type, default ...'`` of each parameter in ``func``'s numpydoc Parameters."""
    import re

    doc = func.__doc__.split("Parameters\n    ----------\n", 1)[1].split("\n\n    Returns", 1)[0]
    return {m["name"]: m["spec"] for m in re.finditer(r"^    (?P<name>\w+) : (?P<spec>.+)$", doc,
                                                      flags=re.MULTILINE)}


@pytest.mark.parametrize("func", [chunkseg.predict, chunkseg.predict_to_zarr])
def test_signature_explicit_typed_and_documented(func):
    import inspect

    params = inspect.signature(func).parameters
    kinds = {p.kind for p in params.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert inspect.Parameter.VAR_POSITIONAL not in kinds
    docs = _documented(func)
    assert set(docs) == set(params)  # each parameter documented, nothing else
    for name, p in params.items():
        assert p.annotation is not inspect.Parameter.empty, name
        if p.default is inspect.Parameter.empty:
            continue
        spec = docs[name].replace("'", '"')
        if p.default is None:
            assert spec.endswith(", optional") or spec.endswith(", default None"), (name, spec)
        else:
            default = repr(p.default).replace("'", '"')
            assert spec.endswith(f", default {default}"), (name, spec)


def test_predict_to_zarr_takes_every_keyword_of_predict_with_its_default():
    import inspect

    to_zarr = inspect.signature(chunkseg.predict_to_zarr).parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in to_zarr.values())
    keywords = [p for p in inspect.signature(chunkseg.predict).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert len(keywords) == 16
    for p in keywords:
        assert to_zarr[p.name].kind is inspect.Parameter.KEYWORD_ONLY, p.name
        assert to_zarr[p.name].default == p.default, p.name
        assert to_zarr[p.name].annotation == p.annotation, p.name


def test_unknown_keyword_refused_before_writing(tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(TypeError, match="unexpected keyword argument 'tiles'"):
        chunkseg.predict_to_zarr(_image((40, 40), 1), _conv(1, 2), str(out), tiles=32)
    assert not out.exists()


@pytest.mark.parametrize("write", [False, True])  # predict; predict_to_zarr
def test_batch_size_true_refused(tmp_path, write):
    from chunkseg.errors import InvalidTypeError

    out = tmp_path / "out.zarr"
    args = (_image((40, 40), 1), _conv(1, 2)) + ((str(out),) if write else ())
    with pytest.raises(InvalidTypeError, match=r"`batch_size` must be a positive int\. Got True"):
        (chunkseg.predict_to_zarr if write else chunkseg.predict)(*args, tile=32, overlap=8,
                                                                  batch_size=True)
    assert not out.exists()


def test_setup_is_a_frozen_typed_record():
    import dataclasses

    image = _image((40, 50), 1)
    setup = _setup(image, _conv(1, 2), tile=32, overlap=8, window="linear", chunks=None,
                          batch_size=3, outputs="labels,logits", dtype="float16", device="cpu",
                          normalization=None, storage_options=None, array_name=None, mask=None,
                          kernel="numpy", classes=("a", "b"), tta=None, torch_threads=None)
    assert isinstance(setup, RunSetup)
    assert setup.image.shape == (40, 50, 1)
    assert setup.outputs == ("labels", "logits")
    assert setup.dtype == np.float16
    assert setup.class_names == ("a", "b")
    assert setup.runner.classes == 2 and setup.runner.plan.tile == (32, 32)
    assert setup.attrs["batch_size"] == 3 and setup.attrs["window"] == "linear"
    assert not hasattr(setup, "__dict__")  # slotted
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.dtype = np.dtype("float32")
    assert {f.name for f in dataclasses.fields(setup)} == {
        "image", "runner", "outputs", "dtype", "attrs", "class_names", "coords", "input_attrs",
        "lead", "planes"}
    assert setup.lead == () and setup.planes == (setup.runner,)  # one image: one plane


@pytest.mark.parametrize("spec, kernel", [("model_factories:torch_conv1x1", "torch"),
                                          ("model_factories:numpy_conv1x1", "numpy")])
def test_model_resolved_once_per_run(monkeypatch, tmp_path, spec, kernel):
    """The model's defaults, adapter and description are asked once per run, on the client,
    however many blocks; a spec loads once per process."""
    pytest.importorskip("torch") if kernel == "torch" else None
    from chunkseg.models import resolve
    from chunkseg.models.load import load_model

    calls: dict[str, int] = {}

    def counting(name, real):
        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        return counted

    for name in ("model_defaults", "as_model", "describe_model"):
        monkeypatch.setattr(resolve, name, counting(name, getattr(resolve, name)))
    load_model.cache_clear()
    image = _image((150, 130), 3)
    ds = chunkseg.predict_to_zarr(image, spec, str(tmp_path / "o.zarr"), tile=32, overlap=8,
                                  chunks=40, outputs="logits")
    assert ds.attrs["kernel"] == kernel and ds.attrs["model"]["kind"] == "spec"
    assert calls == {"model_defaults": 1, "as_model": 1, "describe_model": 1}
    assert load_model.cache_info().misses == 1  # threads of one process: one load
