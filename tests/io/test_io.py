"""Tests of chunkseg.io: open_image on every accepted form, ingest, store_has_data."""

from __future__ import annotations

import os
import pickle
import re
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import MemoryStore

from chunkseg import _ingest
from chunkseg._ingest import ingest
from chunkseg.errors import ChunkAlignmentError, OutputExistsError
from chunkseg.io import (
    _axes,
    _files,
    _locations,
    is_zarr_url_or_path,
    open_image,
    store_has_data,
)

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")

RNG = np.random.default_rng(0)


def _rand(shape, dtype="uint8"):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        return RNG.random(shape).astype(dtype)
    # 1.. so that no chunk equals the fill value 0 (zarr skips storing those).
    return RNG.integers(1, info.max, size=shape, endpoint=True).astype(dtype)


def _memory_url(name="img.zarr"):
    return f"memory://chunkseg-test-{uuid.uuid4().hex}/{name}"


def _chunk_files(path: Path) -> list[Path]:
    return [p for p in (path / "c").rglob("*") if p.is_file()]


def _check(out, expected, *, source=None):
    """`out` is the open_image DataArray of the (y, x, c) array `expected`."""
    assert isinstance(out, xr.DataArray)
    assert out.dims == ("y", "x", "c")
    assert isinstance(out.data, da.Array)
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out.values, expected)
    if source is not None:
        assert out.attrs["source"] == source


# --------------------------------------------------------------------------------------------------
# In-memory inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "bool"])
def test_numpy_2d_gets_one_channel(dtype):
    a = _rand((7, 5), "uint8").astype(dtype)
    _check(open_image(a), a[:, :, None], source="numpy.ndarray")


def test_numpy_3d_is_channel_last():
    a = _rand((7, 5, 3), "uint16")
    out = open_image(a)
    _check(out, a)
    assert out.data.chunks[2] == (3,)


def test_numpy_leading_singletons_are_squeezed():
    a = _rand((1, 1, 6, 4, 2))
    _check(open_image(a), a[0, 0])


def test_big_endian_becomes_native():
    a = _rand((4, 3), "uint16").astype(">u2")
    out = open_image(a)
    assert out.dtype == np.dtype("uint16") and out.dtype.isnative
    np.testing.assert_array_equal(out.values[..., 0], a)


def test_dask_keeps_chunks():
    a = _rand((10, 9, 2))
    d = da.from_array(a, chunks=(4, 5, 2))
    out = open_image(d)
    _check(out, a, source="dask.array.Array")
    assert out.data.chunks == d.chunks


def test_dask_2d():
    a = _rand((10, 9))
    out = open_image(da.from_array(a, chunks=3))
    _check(out, a[..., None])
    assert out.data.chunks[:2] == ((3, 3, 3, 1), (3, 3, 3))


@pytest.mark.parametrize(
    ("dims", "to_yxc"),
    [
        (("y", "x"), lambda a: a[..., None]),
        (("y", "x", "c"), lambda a: a),
        (("c", "y", "x"), lambda a: np.moveaxis(a, 0, -1)),
        (("x", "c", "y"), lambda a: np.transpose(a, (2, 0, 1))),
        (("band", "y", "x"), lambda a: np.moveaxis(a, 0, -1)),
        (("Channel", "Y", "X"), lambda a: np.moveaxis(a, 0, -1)),
    ],
)
def test_xarray_dims(dims, to_yxc):
    shape = {"y": 6, "x": 5, "c": 3}
    a = _rand(tuple(shape.get(_axes._canonical_dim(d), 3) for d in dims))
    out = open_image(xr.DataArray(a, dims=dims))
    _check(out, to_yxc(a), source="xarray.DataArray")


def test_xarray_keeps_coords_attrs_and_dask_chunks():
    a = _rand((3, 6, 5))
    arr = xr.DataArray(
        a,
        dims=("c", "y", "x"),
        coords={"y": np.arange(6) * 0.5, "x": np.arange(5) * 2.0, "c": ["r", "g", "b"]},
        attrs={"units": "counts"},
        name="raw",
    ).chunk({"y": 4, "x": 2})
    out = open_image(arr)
    _check(out, np.moveaxis(a, 0, -1))
    assert out.name == "raw"
    assert out.attrs["units"] == "counts"
    np.testing.assert_array_equal(out["y"].values, np.arange(6) * 0.5)
    assert list(out["c"].values) == ["r", "g", "b"]
    assert out.data.chunks[:2] == ((4, 2), (2, 2, 1))


def test_xarray_singleton_extra_dims_are_squeezed():
    a = _rand((1, 2, 1, 6, 5))
    out = open_image(xr.DataArray(a, dims=("t", "c", "z", "y", "x")))
    _check(out, np.moveaxis(a[0, :, 0], 0, -1))


def test_xarray_lazy_backend_stays_lazy(tmp_path):
    a = _rand((6, 5, 2))
    xr.DataArray(a, dims=("y", "x", "c"), name="image").to_dataset().to_zarr(
        tmp_path / "ds.zarr", consolidated=False
    )
    ds = xr.open_dataset(tmp_path / "ds.zarr", engine="zarr", chunks=None, consolidated=False)
    assert ds["image"].chunks is None
    out = open_image(ds["image"])
    _check(out, a)


def test_xarray_wrong_dim_names():
    with pytest.raises(ValueError, match=r"`image` must have dims named 'y' and 'x'.*row"):
        open_image(xr.DataArray(np.zeros((3, 4)), dims=("row", "col")))


def test_xarray_non_singleton_extra_dim():
    with pytest.raises(ValueError, match=r"`image`.*\('t', 4\)"):
        open_image(xr.DataArray(np.zeros((4, 3, 5)), dims=("t", "y", "x")))


def test_xarray_dataset_is_refused_with_hint():
    ds = xr.Dataset({"image": (("y", "x"), np.zeros((3, 4)))})
    with pytest.raises(TypeError, match=r"`image` must be .*ds\['image'\]"):
        open_image(ds)


# --------------------------------------------------------------------------------------------------
# Zarr arrays, groups and stores
# --------------------------------------------------------------------------------------------------


def test_zarr_array_with_dimension_names(tmp_path):
    a = _rand((3, 20, 30), "uint16")
    z = zarr.create_array(
        tmp_path / "a.zarr",
        shape=a.shape,
        dtype=a.dtype,
        chunks=(3, 8, 16),
        dimension_names=("c", "y", "x"),
    )
    z[:] = a
    out = open_image(z)
    _check(out, np.moveaxis(a, 0, -1), source=str(tmp_path / "a.zarr"))
    assert out.data.chunks[0] == (8, 8, 4)
    assert out.data.chunks[1] == (16, 14)


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 2)])
def test_zarr_array_without_dimension_names(shape):
    a = _rand(shape)
    z = zarr.create_array(MemoryStore(), shape=a.shape, dtype=a.dtype, chunks=(8, 8) + shape[2:])
    z[:] = a
    out = open_image(z)
    _check(out, a if a.ndim == 3 else a[..., None])
    assert out.data.chunks[0] == (8, 8, 4)


def test_zarr_v2_array_dimensions_attr(tmp_path):
    a = _rand((2, 10, 12))
    z = zarr.create_array(
        tmp_path / "v2.zarr",
        shape=a.shape,
        dtype=a.dtype,
        chunks=(1, 5, 5),
        zarr_format=2,
        attributes={"_ARRAY_DIMENSIONS": ["c", "y", "x"]},
    )
    z[:] = a
    _check(open_image(str(tmp_path / "v2.zarr")), np.moveaxis(a, 0, -1))


def test_zarr_sharded_array_uses_shards(tmp_path):
    a = _rand((32, 32, 1))
    z = zarr.create_array(
        tmp_path / "s.zarr", shape=a.shape, dtype=a.dtype, chunks=(4, 4, 1), shards=(16, 16, 1)
    )
    z[:] = a
    out = open_image(z)
    _check(out, a)
    assert out.data.chunks[:2] == ((16, 16), (16, 16))


def test_zarr_group_with_image_array(tmp_path):
    a = _rand((10, 12, 3))
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("labels", shape=(10, 12), dtype="uint8")
    g.create_array("image", shape=a.shape, dtype=a.dtype, chunks=(5, 5, 3))[:] = a
    _check(open_image(g), a, source=f"{tmp_path / 'g.zarr'}/image")
    _check(open_image(tmp_path / "g.zarr"), a, source=f"{tmp_path / 'g.zarr'}/image")
    lab = open_image(tmp_path / "g.zarr", array_name="labels")
    assert lab.shape == (10, 12, 1)


def test_zarr_group_only_array(tmp_path):
    a = _rand((10, 12))
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("raw", shape=a.shape, dtype=a.dtype)[:] = a
    _check(open_image(str(tmp_path / "g.zarr")), a[..., None])


def test_ngff_v04_group_5d(tmp_path):
    """OME-NGFF 0.4 (attrs at top level, arrays without dimension names): t, z squeezed."""
    a = _rand((1, 2, 1, 40, 30), "uint16")
    g = zarr.open_group(tmp_path / "ngff.zarr", mode="w")
    axes = [
        {"name": "t", "type": "time"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    g.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"path": "s0"}, {"path": "s1"}]}
    ]
    g.create_array("s0", shape=a.shape, dtype=a.dtype, chunks=(1, 1, 1, 16, 16))[:] = a
    g.create_array("s1", shape=(1, 2, 1, 20, 15), dtype=a.dtype)
    out = open_image(tmp_path / "ngff.zarr")
    _check(out, np.moveaxis(a[0, :, 0], 0, -1), source=f"{tmp_path / 'ngff.zarr'}/s0")
    assert out.data.chunks[0] == (16, 16, 8)


def test_ngff_v05_group_in_memory_url():
    """OME-NGFF 0.5 (attrs under "ome", zarr v3 dimension_names), opened by fsspec URL."""
    url = _memory_url("ngff.zarr")
    a = _rand((3, 25, 20))
    g = zarr.open_group(url, mode="w")
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}],
    }
    g.create_array("0", shape=a.shape, dtype=a.dtype, dimension_names=("c", "y", "x"))[:] = a
    g.create_array("1", shape=(3, 12, 10), dtype=a.dtype)
    out = open_image(url)
    _check(out, np.moveaxis(a, 0, -1), source=url + "/0")
    # storage_options are passed through to fsspec, and never recorded.
    out = open_image(url, storage_options={"skip_instance_cache": False})
    assert "skip_instance_cache" not in str(out.attrs)


def test_bioformats2raw_layout(tmp_path):
    a = _rand((12, 10))
    root = zarr.open_group(tmp_path / "b2r.zarr", mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    series = root.create_group("0")
    series.attrs["multiscales"] = [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]
    series.create_array("0", shape=a.shape, dtype=a.dtype)[:] = a
    root.create_group("OME")
    _check(open_image(tmp_path / "b2r.zarr"), a[..., None])


def test_ambiguous_group_lists_arrays(tmp_path):
    g = zarr.open_group(tmp_path / "amb.zarr", mode="w")
    g.create_array("a", shape=(3, 3), dtype="uint8")
    g.create_array("b", shape=(3, 3), dtype="uint8")
    with pytest.raises(ValueError, match=r"`image`.*\['a', 'b'\].*`array_name=`"):
        open_image(tmp_path / "amb.zarr")
    with pytest.raises(ValueError, match=r"`array_name` must name an array.*'nope'.*\['a', 'b'\]"):
        open_image(g, array_name="nope")
    assert open_image(g, array_name="b").attrs["source"].endswith("/b")


def test_zarr_url_local_and_memory_equal():
    url = _memory_url()
    a = _rand((9, 11, 2))
    zarr.create_array(url, shape=a.shape, dtype=a.dtype, chunks=(4, 4, 2))[:] = a
    out = open_image(url)
    _check(out, a, source=url)
    assert out.data.numblocks == (3, 3, 1)


def test_url_credentials_are_not_recorded():
    assert _locations._redact("s3://key:secret@bucket/x.zarr?token=abc") == "s3://bucket/x.zarr"
    assert _locations._redact("zip::s3://u:p@b/x.zip") == "zip::s3://b/x.zip"
    assert _locations._redact("/local/x.zarr") == "/local/x.zarr"


def test_zarr_graph_pickles(tmp_path):
    a = _rand((20, 20))
    zarr.create_array(tmp_path / "p.zarr", shape=a.shape, dtype=a.dtype, chunks=(8, 8))[:] = a
    d = pickle.loads(pickle.dumps(open_image(tmp_path / "p.zarr").data))
    np.testing.assert_array_equal(d.compute()[..., 0], a)


# --------------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "shape", "dtype"),
    [
        ("L", (30, 40), "uint8"),
        ("RGB", (30, 40, 3), "uint8"),
        ("RGBA", (30, 40, 4), "uint8"),
        ("I;16", (30, 40), "uint16"),
    ],
)
def test_png(tmp_path, mode, shape, dtype):
    a = _rand(shape, dtype)
    path = tmp_path / "im.png"
    img = Image.fromarray(a)
    assert img.mode == mode
    img.save(path)
    expected = a if a.ndim == 3 else a[..., None]
    _check(open_image(path), expected, source=str(path))


def test_png_palette_becomes_rgb(tmp_path):
    a = _rand((20, 10, 3))
    path = tmp_path / "p.PNG"
    img = Image.fromarray(a).quantize(colors=8)
    img.save(path)
    out = open_image(str(path))
    _check(out, np.asarray(img.convert("RGB")))


def test_jpeg(tmp_path):
    a = _rand((32, 48, 3))
    path = tmp_path / "im.jpeg"
    Image.fromarray(a).save(path, quality=95)
    with Image.open(path) as img:
        decoded = np.asarray(img)
    _check(open_image(path), decoded, source=str(path))


def test_png_from_memory_url(tmp_path):
    import fsspec

    a = _rand((12, 9, 3))
    Image.fromarray(a).save(tmp_path / "im.png")
    url = _memory_url("im.png")
    fsspec.open(url, "wb").open().write((tmp_path / "im.png").read_bytes())
    _check(open_image(url), a, source=url)


def test_tiled_tiff_is_chunked_by_tile(tmp_path):
    a = _rand((2000, 1500, 3), "uint16")
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, a, tile=(256, 256), photometric="rgb", compression="zlib")
    out = open_image(path)
    assert out.data.numblocks == (8, 6, 1)
    assert out.data.chunks[0][:2] == (256, 256) and out.data.chunks[1][-1] == 1500 - 5 * 256
    _check(out, a, source=str(path))
    # A window reads only its tiles and is right at tile edges.
    np.testing.assert_array_equal(out[250:270, 1020:1030].values, a[250:270, 1020:1030])


def test_tiff_graph_pickles_and_tokenizes(tmp_path):
    """The TIFF reader can be shipped to distributed workers, and has a stable Dask name."""
    a = _rand((300, 200), "uint8")
    path = tmp_path / "t.tiff"
    tifffile.imwrite(path, a, tile=(64, 64))
    d = open_image(path).data
    assert d.name == open_image(path).data.name
    d2 = pickle.loads(pickle.dumps(d))
    np.testing.assert_array_equal(d2.compute()[..., 0], a)


def test_tiff_planar_channels_last(tmp_path):
    a = _rand((3, 64, 48), "uint8")
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, a, photometric="rgb", planarconfig="separate")
    _check(open_image(path), np.moveaxis(a, 0, -1))


def test_tiff_single_uncompressed_strip_is_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "_MEMMAP_MIN_BYTES", 4096)
    a = _rand((300, 200, 3), "uint8")
    path = tmp_path / "contig.tif"
    tifffile.imwrite(path, a, photometric="rgb")  # uncompressed, one strip
    out = open_image(path)
    assert out.data.npartitions > 1
    _check(out, a)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(out.data)).compute(), a)


def test_tiff_pyramid_reads_full_resolution(tmp_path):
    a = _rand((512, 512), "uint8")
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(a, tile=(128, 128), subifds=1)
        tw.write(a[::2, ::2], tile=(128, 128), subfiletype=1)
    _check(open_image(path), a[..., None])


def test_tiff_stack_of_pages_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"`image`.*cannot be squeezed"):
        open_image(path)


def test_tiff_from_memory_url(tmp_path):
    import fsspec

    a = _rand((100, 80), "uint16")
    tifffile.imwrite(tmp_path / "t.tif", a, tile=(32, 32))
    url = _memory_url("t.tif")
    fsspec.open(url, "wb").open().write((tmp_path / "t.tif").read_bytes())
    out = open_image(url)
    assert out.data.numblocks == (4, 3, 1)
    _check(out, a[..., None], source=url)


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_bad_dimensionality(shape):
    with pytest.raises(
        ValueError, match=r"`image` must be 2-D \(y, x\) or 3-D \(y, x, c\).*Got shape"
    ):
        open_image(np.zeros(shape))


@pytest.mark.parametrize("image", [[[1, 2], [3, 4]], 3, None, b"x.zarr"])
def test_bad_type(image):
    with pytest.raises(TypeError, match="`image` must be"):
        open_image(image)


def test_bad_dtype():
    with pytest.raises(TypeError, match="`image` must have a boolean, integer or floating-point"):
        open_image(np.array([["a", "b"]]))


def test_empty_image():
    with pytest.raises(ValueError, match="`image` must have at least one pixel"):
        open_image(np.zeros((0, 4)))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`image` must be an existing path.*nope\.tif"):
        open_image(tmp_path / "nope.tif")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "im.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match=r"`image` must be .*unsupported suffix '\.bmp'"):
        open_image(tmp_path / "im.bmp")


def test_directory_without_zarr(tmp_path):
    with pytest.raises(FileNotFoundError, match="`image` must be .*no Zarr array or group"):
        open_image(tmp_path)


def test_missing_memory_url():
    with pytest.raises(FileNotFoundError, match="`image` must be"):
        open_image(_memory_url())


def test_storage_options_with_local_path_or_array(tmp_path):
    with pytest.raises(ValueError, match="`storage_options` is only used"):
        open_image(tmp_path, storage_options={"anon": True})
    with pytest.raises(ValueError, match="`storage_options` is only used"):
        open_image(np.zeros((2, 2)), storage_options={"anon": True})
    with pytest.raises(TypeError, match="`storage_options` must be a mapping"):
        open_image(np.zeros((2, 2)), storage_options="anon")


def test_array_name_only_for_groups():
    with pytest.raises(ValueError, match="`array_name` must be None unless"):
        open_image(np.zeros((2, 2)), array_name="image")
    with pytest.raises(TypeError, match="`array_name` must be a str"):
        open_image(np.zeros((2, 2)), array_name=0)


# --------------------------------------------------------------------------------------------------
# Private helpers
# --------------------------------------------------------------------------------------------------


def test_to_yxc_reports_source_dims():
    data, dims = _axes._to_yxc(np.zeros((1, 3, 4, 5)), ("t", "C", "y", "x"))
    assert data.shape == (4, 5, 3)
    assert dims == {"y": "y", "x": "x", "c": "C"}
    data, dims = _axes._to_yxc(np.zeros((4, 5)), ("y", "x"))
    assert data.shape == (4, 5, 1) and dims["c"] is None


def test_to_yxc_repeated_dims():
    with pytest.raises(ValueError, match="once each"):
        _axes._to_yxc(np.zeros((3, 4, 5)), ("y", "x", "X"))


@pytest.mark.parametrize(
    ("chunks", "expected"), [(512, (512, 512)), ((256, 128), (256, 128)), ([7, 9], (7, 9))]
)
def test_normalise_chunks(chunks, expected):
    assert _ingest._normalise_chunks(chunks) == expected


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        (0, ValueError),
        ((4, -1), ValueError),
        ((4, 4, 3), ValueError),
        (True, TypeError),
        (2.5, TypeError),
        ((4, 2.0), TypeError),
        ("64", TypeError),
    ],
)
def test_normalise_chunks_errors(chunks, error):
    with pytest.raises(error, match="`chunks` must"):
        _ingest._normalise_chunks(chunks)


def test_check_aligned():
    from chunkseg.outputs._arrays import check_aligned

    check_aligned("a", ((4, 4, 2), (3, 3), (2,)), (4, 3, 2))
    check_aligned("a", ((8, 2),), (4,))  # a block may own several whole chunks
    with pytest.raises(ChunkAlignmentError, match="`a`.*axis 0.*multiples of 4"):
        check_aligned("a", ((3, 5),), (4,))
    with pytest.raises(ChunkAlignmentError, match="axis 1"):
        check_aligned("a", ((4,), (2, 2)), (4, 4))  # a task sharing a chunk with the next


def test_is_zarr_url_or_path(tmp_path):
    assert is_zarr_url_or_path("s3://bucket/a.zarr")
    assert is_zarr_url_or_path("memory://x")
    assert is_zarr_url_or_path(tmp_path / "new.zarr")
    assert is_zarr_url_or_path(tmp_path)
    assert not is_zarr_url_or_path("s3://bucket/a.TIF")
    assert not is_zarr_url_or_path(tmp_path / "a.png")
    assert not is_zarr_url_or_path(tmp_path / "missing_dir")
    assert not is_zarr_url_or_path(np.zeros(2))


# --------------------------------------------------------------------------------------------------
# store_has_data
# --------------------------------------------------------------------------------------------------


def test_store_has_data_local(tmp_path):
    assert not store_has_data(tmp_path / "absent.zarr")
    (tmp_path / "empty").mkdir()
    assert not store_has_data(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    assert store_has_data(str(tmp_path / "full"))
    assert store_has_data(tmp_path / "full" / "notes.txt")
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    assert store_has_data(tmp_path / "g.zarr")


def test_store_has_data_url_and_store_object():
    url = _memory_url()
    assert not store_has_data(url)
    zarr.create_array(url, shape=(2, 2), dtype="uint8")
    assert store_has_data(url)
    store = MemoryStore()
    assert not store_has_data(store)
    zarr.create_array(store, shape=(2, 2), dtype="uint8")
    assert store_has_data(store)
    with pytest.raises(ValueError, match="`storage_options` must be None"):
        store_has_data(store, storage_options={})
    with pytest.raises(TypeError, match="`store` must be"):
        store_has_data(3)


# --------------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "zarr_chunks"),
    [
        (64, (3, 64, 64)),  # divides neither 150 nor 100
        ((50, 100), (3, 50, 100)),  # divides exactly
        (1024, (3, 150, 100)),  # one chunk, clipped to the image
        ((7, 33), (3, 7, 33)),
    ],
)
def test_ingest_numpy_round_trip(tmp_path, chunks, zarr_chunks):
    a = _rand((150, 100, 3), "uint16")
    out = tmp_path / "out.zarr"
    g = ingest(a, out, chunks=chunks, levels=1)
    assert isinstance(g, zarr.Group) and list(g.array_keys()) == ["0"]
    z = g["0"]
    assert z.metadata.zarr_format == 3
    assert z.shape == (3, 150, 100) and z.dtype == a.dtype
    assert z.chunks == zarr_chunks
    assert z.metadata.dimension_names == ("c", "y", "x")
    assert [type(c).__name__ for c in z.compressors] == ["ZstdCodec"]
    assert z.attrs["source"] == g.attrs["source"] == "numpy.ndarray"
    grid = [-(-s // c) for s, c in zip(z.shape, zarr_chunks, strict=True)]
    assert len(_chunk_files(out / "0")) == int(np.prod(grid))
    back = open_image(out)
    _check(back, a, source=f"{out}/0")
    assert back.data.chunks == da.empty(a.shape, chunks=zarr_chunks[1:] + (3,)).chunks


def test_ingest_tiled_tiff(tmp_path):
    a = _rand((2000, 1500, 3), "uint8")
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, a, tile=(256, 256), photometric="rgb", compression="zlib")
    out = tmp_path / "big.zarr"
    z = ingest(src, out, chunks=(512, 1024), compressor_level=1, levels=1)["0"]
    assert z.chunks == (3, 512, 1024)
    assert z.compressors[0].level == 1
    assert z.attrs["source"] == str(src)
    assert len(_chunk_files(out / "0")) == 4 * 2
    _check(open_image(out), a)


def test_ingest_png_and_2d(tmp_path):
    a = _rand((40, 30))
    Image.fromarray(a).save(tmp_path / "g.png")
    z = ingest(tmp_path / "g.png", tmp_path / "g.zarr", chunks=16)["0"]
    assert z.shape == (1, 40, 30) and z.chunks == (1, 16, 16)
    np.testing.assert_array_equal(z[0], a)


def test_ingest_from_zarr_group_with_array_name(tmp_path):
    a = _rand((20, 20))
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("a", shape=a.shape, dtype=a.dtype)[:] = a
    g.create_array("b", shape=a.shape, dtype=a.dtype)
    z = ingest(tmp_path / "g.zarr", tmp_path / "o.zarr", array_name="a", chunks=8)["0"]
    np.testing.assert_array_equal(z[0], a)
    assert z.attrs["source"] == f"{tmp_path / 'g.zarr'}/a"


def test_ingest_refuses_existing_store(tmp_path):
    out = tmp_path / "out.zarr"
    first = _rand((20, 20, 1))
    ingest(first, out, chunks=8)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match=r"`overwrite=True` \(CLI: `--overwrite`\)"):
        ingest(np.zeros((5, 5), np.uint8), out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    np.testing.assert_array_equal(open_image(out).values, first)
    # OutputExistsError is a FileExistsError for callers that catch the built-in.
    with pytest.raises(FileExistsError):
        ingest(np.zeros((5, 5), np.uint8), out)


def test_ingest_overwrite_replaces_everything(tmp_path):
    out = tmp_path / "out.zarr"
    ingest(_rand((64, 64, 2)), out, chunks=8, levels=2)
    assert len(_chunk_files(out / "0")) == 64 and len(_chunk_files(out / "1")) == 16
    a = _rand((10, 12, 1), "float32")
    z = ingest(a, out, chunks=5, overwrite=True)["0"]
    assert z.shape == (1, 10, 12) and z.dtype == np.float32
    assert len(_chunk_files(out / "0")) == 2 * 3  # no chunk of the old array is left
    assert not (out / "1").exists()
    np.testing.assert_array_equal(open_image(out).values, a)


def test_ingest_refuses_non_empty_non_zarr_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="`store` must be empty"):
        ingest(np.zeros((4, 4), np.uint8), tmp_path)
    with pytest.raises(OutputExistsError, match="not a Zarr array or group"):
        ingest(np.zeros((4, 4), np.uint8), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_ingest_into_empty_directory(tmp_path):
    (tmp_path / "out.zarr").mkdir()
    z = ingest(np.ones((4, 4), np.uint8), tmp_path / "out.zarr")["0"]
    assert z.shape == (1, 4, 4)


def test_ingest_memory_url_and_store_object():
    a = _rand((30, 20, 2))
    url = _memory_url()
    ingest(a, url, chunks=16)
    _check(open_image(url), a)
    with pytest.raises(OutputExistsError):
        ingest(a, url)
    store = MemoryStore()
    ingest(a, store, chunks=16)
    _check(open_image(zarr.open_group(store, mode="r")), a)
    with pytest.raises(OutputExistsError):
        ingest(a, store)


def test_ingest_progress_bar(tmp_path, capsys):
    ingest(np.ones((8, 8), np.uint8), tmp_path / "p.zarr", chunks=4, progress=True)
    out, err = capsys.readouterr()
    assert out == ""  # progress goes to stderr (chunkseg.progress), never stdout
    lines = err.splitlines()
    assert lines[0] == "chunkseg: ingesting: started"
    assert re.fullmatch(r"chunkseg: ingesting: (\d+)/\1 \(100%\) \d+:\d\d:\d\d, done", lines[-1])
    ingest(np.ones((8, 8), np.uint8), tmp_path / "q.zarr", chunks=4)
    assert capsys.readouterr() == ("", "")


def test_ingest_refuses_overlapping_source(tmp_path):
    src = tmp_path / "src.zarr"
    ingest(np.ones((8, 8), np.uint8), src)
    with pytest.raises(ValueError, match="`store` must not overlap the `source`"):
        ingest(src, src, overwrite=True)
    with pytest.raises(ValueError, match="`store` must not overlap the `source`"):
        ingest(src, src / "inner.zarr")
    assert zarr.open_array(src / "0", mode="r")[0, 0, 0] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"compressor_level": 23}, ValueError, "`compressor_level` must be an int from 0 to 22"),
        ({"compressor_level": 2.0}, TypeError, "`compressor_level` must be an int"),
        ({"chunks": 0}, ValueError, "`chunks` must be positive"),
        ({"storage_options": {"anon": True}}, ValueError, "`storage_options` is only used"),
    ],
)
def test_ingest_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        ingest(np.zeros((4, 4), np.uint8), tmp_path / "o.zarr", **kwargs)
    assert not (tmp_path / "o.zarr").exists()


def test_ingest_bad_source_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="`image` must be 2-D"):
        ingest(np.zeros(5), tmp_path / "o.zarr")
    with pytest.raises(TypeError, match="`store` must be"):
        ingest(np.zeros((4, 4)), 3)
    assert not (tmp_path / "o.zarr").exists()


def test_ingest_cwd_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ingest(np.ones((4, 4), np.uint8), "rel.zarr")
    assert os.path.isdir(tmp_path / "rel.zarr")
    assert open_image("rel.zarr").attrs["source"] == "rel.zarr/0"
