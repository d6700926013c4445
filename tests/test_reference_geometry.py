"""The blend's geometry against a reference that derives it on its own (tests/reference.py):
odd overlaps and tiles, non-square tiles and overlaps, chunk sizes that divide nothing, a single
chunk, images smaller than a tile, with the numpy and the torch kernel, through ``predict`` and
``predict_to_zarr``.

The models here add a fixed map of the tile's own pixel coordinates to a 3x3 convolution, so
their logits depend on where each tile starts: a tile grid shifted by one pixel (a different
halo rule, tile count, ownership or fold) changes the blend everywhere, not only next to the
tiles' edges where a translation-equivariant model would show it.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from reference import (
    conv_model,
    max_rel_diff,
    reference_blend,
    reference_window,
    reflect_coord,
    tile_origins_1d,
)

import chunkseg
from chunkseg.kernels.windows import get_window

RNG = np.random.default_rng(2027)

# shape (H, W), channels, classes, tile, overlap, window, chunkings
GEOMETRIES = {
    "odd-overlap-9": ((150, 170), 1, 2, 33, 9, "gaussian",
                      [50, 77, 100, (50, 77), 24, 13, 1000]),
    "odd-tile-45-overlap-15": ((131, 157), 3, 2, 45, 15, "cosine", [45, 64, (100, 31), 1000]),
    "overlap-7": ((101, 119), 1, 3, 32, 7, "linear", [25, 40, 77, 1000]),
    "overlap-15-stride-18": ((100, 113), 1, 2, 33, 15, "uniform", [18, 50, 71, 1000]),
    "non-square": ((123, 149), 2, 2, (33, 40), (7, 12), "gaussian",
                   [(50, 77), (77, 50), 60, 1000]),
    "non-square-cosine": ((123, 149), 1, 2, (33, 40), (7, 12), "cosine", [(50, 77), 1000]),
    "image-smaller-than-tile": ((20, 29), 1, 2, 33, 9, "gaussian", [7, 1000]),
}


def _cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _case(name):
    shape, channels, classes, tile, overlap, window, chunkings = GEOMETRIES[name]
    g = np.random.default_rng(list(GEOMETRIES).index(name))
    image = g.random(shape + (channels,)).astype(np.float32)
    weights = g.normal(size=(classes, channels, 3, 3)).astype(np.float32)
    bias = g.normal(size=classes).astype(np.float32)
    position = g.normal(size=(classes,) + _pair(tile)).astype(np.float32)
    return image, weights, bias, position, tile, overlap, window, chunkings


def _numpy_model(weights, bias, position):
    """3x3 'same' convolution plus ``position[k, i, j]`` at tile pixel (i, j)."""
    conv = conv_model(weights, bias)

    def model(batch):
        return conv(batch) + position[None]

    return model


def _torch_model(weights, bias, position, device="cpu"):
    torch = pytest.importorskip("torch")

    class PositionConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            k, c = weights.shape[:2]
            self.conv = torch.nn.Conv2d(c, k, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(weights))
                self.conv.bias.copy_(torch.from_numpy(bias))
            self.register_buffer("position", torch.from_numpy(position))

        def forward(self, x):
            return self.conv(x) + self.position

    return PositionConv().to(device)


def _expected(image, weights, bias, position, tile, overlap, window):
    w = reference_window(window, tile, overlap)
    return reference_blend(image, _numpy_model(weights, bias, position), tile, overlap, w)[0]


# -- the reference itself ----------------------------------------------------------------------

def test_reference_reflect_equals_numpy_pad():
    for length in (1, 2, 3, 7):
        for before, after in ((0, 0), (4, 1), (9, 20)):
            expected = np.pad(np.arange(length), (before, after), mode="reflect")
            got = [reflect_coord(i, length) for i in range(-before, length + after)]
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["uniform", "linear", "gaussian", "cosine"])
@pytest.mark.parametrize("tile, overlap", [(33, 9), ((33, 40), (7, 12)), ((45, 8), (15, 5))])
def test_engine_window_equals_reference_window(name, tile, overlap):
    np.testing.assert_allclose(get_window(name, tile, overlap), reference_window(name, tile,
                                                                               overlap),
                               rtol=1e-6, atol=0)


def test_reference_window_by_hand():
    # cosine ramps of min(overlap, size // 2) px: 2 px along y (overlap 2), 1 px along x
    # (overlap 3, but size // 2 = 1); sin^2(pi/8) at the outer pixel of a 2 px ramp
    s1, s3 = np.sin(np.pi / 8) ** 2, np.sin(3 * np.pi / 8) ** 2
    y = [s1, s3, 1, s3, s1]
    np.testing.assert_allclose(reference_window("cosine", (5, 3), (2, 3)),
                               np.outer(y, [0.5, 1, 0.5]), rtol=1e-12)
    np.testing.assert_allclose(reference_window("linear", (1, 4), 0)[0], [1 / 3, 1, 1, 1 / 3])


def test_reference_tile_origins_by_hand():
    # stride 2, O // 2 = 1 before each stride cell, one tile per cell starting in the image
    assert tile_origins_1d(10, 5, 3) == [-1, 1, 3, 5, 7]
    assert tile_origins_1d(7, 5, 3) == [-1, 1, 3, 5]
    # stride 24, 9 // 2 = 4 before; 20 < 24: one tile for an image smaller than a tile
    assert tile_origins_1d(150, 33, 9) == [-4, 20, 44, 68, 92, 116, 140]
    assert tile_origins_1d(20, 33, 9) == [-4]
    assert tile_origins_1d(48, 32, 16) == [-8, 8, 24]  # even overlap, the plain case


def test_reference_uniform_weight_sum_counts_tiles_by_hand():
    # tile 5, overlap 3 on 10 px: tiles [-1, 4), [1, 6), [3, 8), [5, 10), [7, 12)
    image = np.zeros((1, 10, 1), np.float32)

    def zero(batch):
        return np.zeros((batch.shape[0], 1) + batch.shape[2:], np.float32)

    _, wsum = reference_blend(image, zero, (1, 5), (0, 3), np.ones((1, 5)))
    np.testing.assert_array_equal(wsum[0], [1, 2, 2, 3, 2, 3, 2, 3, 2, 2])


def test_reference_pointwise_model_gives_model_of_image():
    image = RNG.random((37, 52, 2)).astype(np.float32)
    model = conv_model(RNG.normal(size=(3, 2, 1, 1)), RNG.normal(size=3))
    got, _ = reference_blend(image, model, (15, 11), (5, 4), get_window("gaussian", (15, 11),
                                                                       (5, 4)))
    expected = model(image.transpose(2, 0, 1)[None])[0]
    assert max_rel_diff(got, expected) < 1e-6


# -- a blend computed by hand: the tile-grid origins through the engine --------------------------

def _ramp_numpy(batch):
    """Logits (tile row, tile column) of each pixel: the blend is the mean over the tiles
    covering a pixel of its position in them (uniform window)."""
    n, _, ty, tx = batch.shape
    out = np.empty((n, 2, ty, tx), np.float32)
    out[:, 0] = np.arange(ty, dtype=np.float32)[:, None]
    out[:, 1] = np.arange(tx, dtype=np.float32)[None, :]
    return out


# tile 5, overlap 3 (stride 2, 1 px before each cell): along 7 px tiles start at -1, 1, 3, 5;
# along 10 px at -1, 1, 3, 5, 7. E.g. pixel 3 lies in the tiles starting at -1, 1, 3, at
# positions 4, 2, 0: mean 2; pixel 9 in those at 5 and 7, positions 4 and 2: mean 3.
BY_HAND_ROWS = [1, 1, 2, 2, 2, 2, 2]
BY_HAND_COLS = [1, 1, 2, 2, 2, 2, 2, 2, 2, 3]


@pytest.mark.parametrize("kernel", ["numpy", "torch"])
@pytest.mark.parametrize("chunks", [3, 4, (2, 7), 1000])
def test_blend_of_tile_positions_by_hand(kernel, chunks):
    image = RNG.random((7, 10)).astype(np.float32)
    if kernel == "torch":
        torch = pytest.importorskip("torch")

        class Ramp(torch.nn.Module):
            def forward(self, x):
                n, _, ty, tx = x.shape
                rows = torch.arange(ty, dtype=x.dtype, device=x.device)[:, None].expand(ty, tx)
                cols = torch.arange(tx, dtype=x.dtype, device=x.device)[None, :].expand(ty, tx)
                return torch.stack([rows, cols])[None].expand(n, 2, ty, tx) + 0 * x[:, :1]

        model = Ramp()
    else:
        model = _ramp_numpy
    ds = chunkseg.predict(image, model, tile=5, overlap=3, window="uniform", chunks=chunks,
                          batch_size=3, outputs="logits", kernel=kernel)
    assert ds.attrs["kernel"] == kernel
    logits = ds.logits.values
    np.testing.assert_allclose(logits[0], np.broadcast_to(np.array(BY_HAND_ROWS)[:, None],
                                                          (7, 10)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits[1], np.broadcast_to(np.array(BY_HAND_COLS)[None, :],
                                                          (7, 10)), rtol=0, atol=1e-5)


# -- the engine against the reference ------------------------------------------------------------

@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_numpy_kernel_equals_reference(name):
    image, weights, bias, position, tile, overlap, window, chunkings = _case(name)
    expected = _expected(image, weights, bias, position, tile, overlap, window)
    model = _numpy_model(weights, bias, position)
    for chunks in chunkings:
        ds = chunkseg.predict(image, model, tile=tile, overlap=overlap, window=window,
                              chunks=chunks, batch_size=4, outputs="logits", kernel="numpy")
        got = ds.logits.values
        assert got.shape == expected.shape
        assert max_rel_diff(got, expected) < 1e-6, f"chunks={chunks}"


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_torch_kernel_equals_reference(name):
    image, weights, bias, position, tile, overlap, window, chunkings = _case(name)
    expected = _expected(image, weights, bias, position, tile, overlap, window)
    module = _torch_model(weights, bias, position)
    for chunks in chunkings[:2] + chunkings[-1:]:
        ds = chunkseg.predict(image, module, tile=tile, overlap=overlap, window=window,
                              chunks=chunks, batch_size=4, outputs="logits", kernel="torch")
        assert ds.attrs["kernel"] == "torch"
        assert max_rel_diff(ds.logits.values, expected) < 1e-5, f"chunks={chunks}"


@pytest.mark.parametrize("kernel", ["numpy", "torch"])
@pytest.mark.parametrize("name, chunks", [("odd-overlap-9", 77), ("non-square", (50, 77)),
                                          ("odd-tile-45-overlap-15", 1000)])
def test_predict_to_zarr_equals_reference(tmp_path, kernel, name, chunks):
    image, weights, bias, position, tile, overlap, window, _ = _case(name)
    expected = _expected(image, weights, bias, position, tile, overlap, window)
    model = (_torch_model(weights, bias, position) if kernel == "torch"
             else _numpy_model(weights, bias, position))
    out = tmp_path / "out.zarr"
    chunkseg.predict_to_zarr(image, model, str(out), tile=tile, overlap=overlap, window=window,
                             chunks=chunks, batch_size=4, kernel=kernel,
                             outputs="logits,labels")
    back = xr.open_zarr(out)
    assert back.attrs["kernel"] == kernel
    assert max_rel_diff(back.logits.values, expected) < (1e-5 if kernel == "torch" else 1e-6)
    # labels: the argmax of the reference wherever it is not a near tie
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4
    np.testing.assert_array_equal(back.labels.values[clear], expected.argmax(0)[clear])


@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["odd-overlap-9", "non-square", "image-smaller-than-tile"])
def test_cuda_kernel_equals_reference(name):
    image, weights, bias, position, tile, overlap, window, chunkings = _case(name)
    expected = _expected(image, weights, bias, position, tile, overlap, window)
    module = _torch_model(weights, bias, position, "cuda")
    for chunks in chunkings:
        ds = chunkseg.predict(image, module, tile=tile, overlap=overlap, window=window,
                              chunks=chunks, batch_size=4, outputs="logits", kernel="torch",
                              device="cuda")
        assert max_rel_diff(ds.logits.values, expected) < 1e-5, f"chunks={chunks}"
