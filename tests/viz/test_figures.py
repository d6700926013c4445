"""The figures of a written output (chunkseg.viz.figures): files, and the arrays they draw."""

from __future__ import annotations

import re

import numpy as np
import pytest
from model_factories import _conv3x3

import chunkseg
from chunkseg import viz
from chunkseg.errors import InvalidValueError, NotFoundError, OutputExistsError

pytest.importorskip("matplotlib")

CONV = "model_factories:numpy_conv3x3"  # 1 channel -> 2 classes, 3x3 zero-padded conv
POINTWISE = "model_factories:numpy_two_class"  # 1 channel -> 2 classes, pointwise
TILE, OVERLAP, CHUNKS = 48, 16, 100
SHAPE = (300, 340)


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8)


def _predict(image, model, path, instances: bool):
    chunkseg.predict_to_zarr(image, model, str(path), tile=TILE, overlap=OVERLAP, chunks=CHUNKS,
                             outputs="labels,probabilities", progress=False)
    if instances:
        chunkseg.label(str(path), cls=1)
    return str(path)


@pytest.fixture(scope="module")
def conv_store(image, tmp_path_factory):
    return _predict(image, CONV, tmp_path_factory.mktemp("conv") / "out.zarr", True)


@pytest.fixture(scope="module")
def pointwise_store(image, tmp_path_factory):
    return _predict(image, POINTWISE, tmp_path_factory.mktemp("pw") / "out.zarr", False)


class Recording:
    """An array-like that records every selection asked of it."""

    def __init__(self, data, chunks=None, fill=None):
        self.data = data
        self.shape = data.shape if fill is None else fill[0]
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.chunks = chunks
        self.fill = fill
        self.keys = []

    def __getitem__(self, key):
        self.keys.append(key)
        if self.fill is None:
            return self.data[key]
        ys, xs = (np.arange(*k.indices(n)) for k, n in zip(key, self.shape))
        return self.fill[1](ys[:, None], xs[None, :])


def _check_png(path):
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 300, pixels.shape
    assert pixels[..., :3].std() > 0.05  # not one colour
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50


def _conv_reference(tile: np.ndarray) -> np.ndarray:
    return _conv3x3(tile[None, None].astype(np.float32))[0]


def test_figures_writes_five_pngs_and_refuses_to_overwrite(conv_store, image, tmp_path):
    out = tmp_path / "figs"
    paths = viz.figures(conv_store, out, image=image, model=CONV, dpi=72)
    assert list(paths) == list(viz.FIGURES)
    assert {p.name for p in paths.values()} == {f"{n}.png" for n in viz.FIGURES}
    for path in paths.values():
        assert path.parent == out and path.is_file()
        _check_png(path)
    mtimes = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    with pytest.raises(OutputExistsError, match=re.escape(str(out / "overview.png"))):
        viz.figures(conv_store, out, image=image, model=CONV)
    assert {n: p.stat().st_mtime_ns for n, p in paths.items()} == mtimes
    # the refusal comes before anything is written
    other = tmp_path / "other"
    other.mkdir()
    (other / "seams.png").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="seams.png"):
        viz.figures(conv_store, other, image=image, model=CONV)
    assert sorted(p.name for p in other.iterdir()) == ["seams.png"]
    # without a model: the three figures that need only the store (and the image)
    again = viz.figures(conv_store, out, image=image, overwrite=True, dpi=72)
    assert list(again) == ["overview", "tiles", "reconstruction"]
    assert again["tiles"].stat().st_mtime_ns > mtimes["tiles"]
    assert paths["seams"].stat().st_mtime_ns == mtimes["seams"]


def test_naive_patches_are_the_model_tile_by_tile(image):
    naive = viz.naive_patches(image, CONV, TILE)
    assert naive.shape == (2,) + SHAPE and naive.dtype == np.float32
    ny, nx = -(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)
    padded = np.pad(image, ((0, ny * TILE - SHAPE[0]), (0, nx * TILE - SHAPE[1])), "reflect")
    expected = np.empty((2, ny * TILE, nx * TILE), np.float32)
    for ky in range(ny):
        for kx in range(nx):
            cell = (slice(ky * TILE, (ky + 1) * TILE), slice(kx * TILE, (kx + 1) * TILE))
            expected[(slice(None),) + cell] = _conv_reference(padded[cell])
    np.testing.assert_array_equal(naive, expected[:, : SHAPE[0], : SHAPE[1]])
    crop = ((50, 170), (90, 333))
    np.testing.assert_array_equal(viz.naive_patches(image, CONV, TILE, crop),
                                  naive[:, 50:170, 90:333])


def test_seams_pointwise_model_no_difference(pointwise_store, image):
    whole = ((0, SHAPE[0]), (0, SHAPE[1]))
    a = viz.seam_arrays(pointwise_store, image, POINTWISE, crop=whole)
    assert a["difference"].shape == SHAPE
    assert a["difference"].max() < 1e-5  # a pointwise model: tiling does not matter
    sure = np.abs(a["probability"] - 0.5) > 1e-3
    np.testing.assert_array_equal(a["naive_labels"][sure], a["labels"][sure])


def test_seams_conv_model_differs_only_at_patch_borders(conv_store, image):
    whole = ((0, SHAPE[0]), (0, SHAPE[1]))
    a = viz.seam_arrays(conv_store, image, CONV, crop=whole)
    assert a["patch_edges"] == (tuple(range(48, 300, 48)), tuple(range(48, 340, 48)))
    diff = a["difference"]
    plan = viz.output_plan(conv_store)
    edge = []
    blended_edge = []
    for axis, n in enumerate(SHAPE):
        c = np.arange(n)
        edge.append((c % TILE == 0) | (c % TILE == TILE - 1))  # first/last of a naive patch
        o = plan.tile_origins()[axis]
        blended_edge.append(np.isin(c, np.concatenate([o, o + TILE - 1])))
    naive_edge = edge[0][:, None] | edge[1][None, :]
    tile_edge = blended_edge[0][:, None] | blended_edge[1][None, :]
    # the 3x3 conv sees its zero padding only on the first and last row/column of a tile
    assert diff[~naive_edge & ~tile_edge].max() < 1e-5
    seam = diff[naive_edge & ~tile_edge]
    assert seam.max() > 0.05 and (seam > 1e-3).mean() > 0.5
    # the figure draws these arrays
    fig = viz.seams(conv_store, image, CONV, crop=whole)
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), diff)
    # the store's blended output is what seam_arrays compares with
    ds = chunkseg.open_output(conv_store)
    np.testing.assert_array_equal(a["probability"], ds.probabilities[1].values)
    np.testing.assert_array_equal(a["labels"], ds.labels.values)


def test_tile_components_are_each_tile_alone(conv_store, image):
    from scipy import ndimage

    plan = viz.output_plan(conv_store)
    assert viz.default_crop(plan) == ((52, 172), (52, 172))  # 3 x 3 tiles about (100, 100)
    comps = viz.tile_components(conv_store, image, CONV)
    assert [c["tile"] for c in comps] == [(ky, kx) for ky in (2, 3, 4) for kx in (2, 3, 4)]
    # at the image corner: reflect padding, as the engine pads
    b = OVERLAP // 2
    padded = np.pad(image, b, mode="reflect")
    corner = viz.tile_components(conv_store, image, CONV, crop=((0, 60), (0, 60)))
    assert [c["tile"] for c in corner] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for c in comps + corner:
        y0, x0 = c["origin"]
        assert (y0, x0) == tuple(int(o[k]) for o, k in zip(plan.tile_origins(), c["tile"]))
        tile = padded[y0 + b : y0 + b + TILE, x0 + b : x0 + b + TILE]
        np.testing.assert_array_equal(c["pixels"][0], tile)
        logits = _conv_reference(tile)
        np.testing.assert_array_equal(c["logits"], logits)
        expected, n = ndimage.label(np.argmax(logits, axis=0) == 1)
        np.testing.assert_array_equal(c["components"], expected)
        assert c["objects"] == n > 0
    fig = viz.tile_predictions(conv_store, image, CONV)
    assert len(fig.axes) == 9


def test_overview_reads_only_strided_blocks(conv_store, image):
    rec = Recording(image, chunks=(100, 100))
    fig = viz.overview(conv_store, image=rec, max_side=64)
    step = viz.display_step(SHAPE, 64)
    assert step == 6
    assert len(rec.keys) == 4  # blocks of 258 px (256 rounded up to the step): 2 x 2 reads
    for ys, xs in rec.keys:
        assert ys.step == xs.step == step
        assert ys.stop - ys.start <= 258 and xs.stop - xs.start <= 258
    drawn = fig.axes[0].images[0].get_array()
    assert drawn.shape == (50, 57, 3)
    np.testing.assert_allclose(drawn[..., 0], image[::6, ::6] / 255.0, atol=1e-6)
    ids = chunkseg.open_output(conv_store).instances.values[::6, ::6]
    seg = fig.axes[1].images[0].get_array()
    assert seg.shape == (50, 57, 3)
    assert (seg[ids == 0] == 0).all() and (seg[ids > 0].max(axis=-1) > 0.1).all()


def test_read_overview_of_a_huge_array_reads_blocks():
    def pixel(y, x):
        return ((y * 7 + x * 3) % 251).astype(np.uint8)

    shape = (60_000, 90_000)  # 5.4 GB if it were ever read whole
    rec = Recording(None, chunks=(4096, 4096), fill=(shape, pixel))
    small, step = viz.read_overview(rec)
    assert step == 44 and small.shape == (1364, 2046) and max(small.shape) <= 2048
    ys, xs = np.arange(0, shape[0], step), np.arange(0, shape[1], step)
    np.testing.assert_array_equal(small, pixel(ys[:, None], xs[None, :]))
    assert len(rec.keys) == 15 * 22
    for ky, kx in rec.keys:
        assert ky.step == kx.step == step
        assert ky.stop - ky.start <= 4136 and kx.stop - kx.start <= 4136


def test_figures_alone_and_without_image(conv_store, pointwise_store):
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = viz.overview(conv_store)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    fig = viz.tile_decomposition(conv_store)
    rects = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(rects) == 2 * 5 * 5  # tiles 1..5 reach into (52, 172): outline + stride cell
    fig = viz.reconstruction(conv_store)
    ids = chunkseg.open_output(conv_store).instances.values[52:172, 52:172]
    alone = fig.axes[1].images[0].get_array()
    assert (alone[ids == 0] == 0).all() and (alone[ids > 0].max(axis=-1) > 0.1).all()
    a, b = np.argwhere(ids > 0)[[0, -1]]  # one id, one colour
    same = ids == ids[tuple(a)]
    assert (alone[same] == alone[tuple(a)]).all() and ids[tuple(a)] != ids[tuple(b)]
    fig = viz.reconstruction(pointwise_store)  # no instances: the labels
    assert "labels" in fig.get_suptitle()


def test_bad_arguments(conv_store, image, tmp_path):
    with pytest.raises(InvalidValueError, match=r"`crop` must lie inside the image.*Got"):
        viz.tile_decomposition(conv_store, crop=((0, 400), (0, 10)))
    with pytest.raises(InvalidValueError, match=r"`crop` must be \(\(y0, y1\)"):
        viz.reconstruction(conv_store, crop=(5, 6))
    with pytest.raises(InvalidValueError, match=r"`image` must be given with `model`"):
        viz.figures(conv_store, tmp_path / "f", model=CONV)
    with pytest.raises(InvalidValueError, match=r"`image` must be the image.*Got shape"):
        viz.overview(conv_store, image=image[:100])
    with pytest.raises(InvalidValueError, match=r"`cls` must be a class"):
        viz.figures(conv_store, tmp_path / "f", cls=7)
    with pytest.raises(InvalidValueError, match=r"`max_side` must be a positive int"):
        viz.overview(conv_store, max_side=0)
    with pytest.raises(NotFoundError):
        viz.figures(tmp_path / "missing.zarr", tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_figures_never_overwrite_their_input_image(conv_store, image, tmp_path):
    from PIL import Image

    from chunkseg.errors import OutputOverlapError

    out = tmp_path / "figs"
    out.mkdir()
    overview = out / "overview.png"
    Image.fromarray(image).save(overview)
    before = overview.read_bytes()
    for name in (str(overview), f"file://{overview}"):
        with pytest.raises(OutputOverlapError, match="must not be an input"):
            viz.figures(conv_store, out, image=name, overwrite=True, dpi=72)
    assert overview.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["overview.png"]
