"""Objects across chunks: global ids equal to scipy.ndimage.label of the whole image, for any
chunking; and the region table against scikit-image's regionprops_table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError, NotFoundError, OutputExistsError
from chunkseg.kernels import components as kern

MODEL = "model_factories:numpy_two_class"  # class 1 where the pixel is dark (x < 127.5)


def _blobs(shape=(150, 170), seed=0, fraction=0.08):
    from skimage.data import binary_blobs

    side = max(shape)
    blobs = binary_blobs(side, blob_size_fraction=fraction, volume_fraction=0.35, rng=seed)
    return np.where(blobs[: shape[0], : shape[1]], 40, 220).astype(np.uint8)  # dark = class 1


def _output(tmp_path, image, chunks, name="out.zarr", outputs="labels,probabilities"):
    out = tmp_path / name
    chunkseg.predict_to_zarr(image, MODEL, str(out), tile=32, overlap=8, chunks=chunks,
                             outputs=outputs)
    return out


def _same_up_to_renumbering(a, b):
    """One-to-one mapping between the ids of a and b (0 to 0)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("chunks", [32, 47, (40, 64), 1000])
def test_equals_whole_image_label_for_any_chunking(tmp_path, chunks, connectivity):
    image = _blobs()
    out = _output(tmp_path, image, chunks)
    ids = chunkseg.label(str(out), cls=1, connectivity=connectivity)
    labels = zarr.open_group(str(out))["labels"][...]
    ref, n = ndimage.label(labels == 1, structure=ndimage.generate_binary_structure(
        2, connectivity))
    got = ids.values
    assert got.dtype == np.uint32 and got.shape == image.shape
    np.testing.assert_array_equal(got, ref)  # the same numbering, not only the same objects
    assert ids.attrs["objects"] == n > 10
    assert ids.dims == ("y", "x")


def test_object_spanning_four_chunks_gets_one_id(tmp_path):
    image = np.full((96, 96), 220, np.uint8)
    yy, xx = np.indices(image.shape)
    image[(yy - 48) ** 2 + (xx - 48) ** 2 < 20 ** 2] = 30  # a disk over the corner of 4 chunks
    image[5:9, 5:9] = 30
    out = _output(tmp_path, image, 48)
    got = chunkseg.label(str(out), cls=1).values
    disk = got[48 - 13:48 + 13, 48 - 13:48 + 13]  # inside the disk
    assert len(np.unique(disk)) == 1 and disk[0, 0] > 0
    assert set(np.unique(got)) == {0, 1, 2}


def test_threshold_on_probabilities_and_independence_of_chunking(tmp_path):
    image = _blobs(seed=4)
    a = chunkseg.label(str(_output(tmp_path, image, 40, "a.zarr")), cls=1, threshold=0.55)
    b = chunkseg.label(str(_output(tmp_path, image, 1000, "b.zarr")), cls=1, threshold=0.55)
    np.testing.assert_array_equal(a.values, b.values)
    probs = zarr.open_group(str(tmp_path / "a.zarr"))["probabilities"][1]
    ref, _ = ndimage.label(probs >= 0.55)
    _same_up_to_renumbering(a.values, ref)


def test_merge_kernel_against_scipy_on_random_blocks():
    rng = np.random.default_rng(1)
    fg = rng.random((61, 77)) < 0.45
    for connectivity in (1, 2):
        ref, n = ndimage.label(fg, structure=kern.foreground_structure(connectivity))
        ys, xs = kern.block_grid(((13, 20, 28), (7, 30, 30, 10)))
        summaries, locals_ = {}, {}
        for iy, (y0, y1) in enumerate(ys):
            for ix, (x0, x1) in enumerate(xs):
                lab, k = kern.label_block(fg[y0:y1, x0:x1], connectivity)
                summaries[(iy, ix)] = kern.summarise_block(lab, k, (y0, x0), fg.shape[1])
                locals_[(iy, ix)] = lab
        lookups, m = kern.merge_summaries(summaries, (3, 4), connectivity)
        got = np.zeros(fg.shape, np.uint32)
        for (iy, ix), lab in locals_.items():
            (y0, y1), (x0, x1) = ys[iy], xs[ix]
            got[y0:y1, x0:x1] = kern.relabel_block(lab, lookups[(iy, ix)], np.dtype(np.uint32))
        assert m == n
        np.testing.assert_array_equal(got, ref)


def test_ids_dtype_grows_past_uint32():
    assert kern.ids_dtype(2**32 - 1) == np.uint32
    assert kern.ids_dtype(2**32) == np.uint64


def test_region_table_equals_regionprops(tmp_path):
    from skimage.measure import regionprops_table

    image = _blobs(seed=2)
    out = _output(tmp_path, image, 40)
    ids = chunkseg.label(str(out), cls=1).values
    table = tmp_path / "regions.parquet"
    got = chunkseg.regions(str(out), str(table), image=image, pixel_size=(0.5, 0.25))
    ref = pd.DataFrame(regionprops_table(ids, intensity_image=image.astype(float), properties=(
        "label", "area", "centroid", "bbox", "intensity_mean")))
    read = pd.read_parquet(table)
    pd.testing.assert_frame_equal(read, got)
    assert len(got) == ids.max() > 10
    np.testing.assert_array_equal(got["label"], ref["label"])
    np.testing.assert_array_equal(got["area"], ref["area"])
    np.testing.assert_allclose(got["centroid_y"], ref["centroid-0"])
    np.testing.assert_allclose(got["centroid_x"], ref["centroid-1"])
    for mine, theirs in zip(("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"), range(4)):
        np.testing.assert_array_equal(got[mine], ref[f"bbox-{theirs}"])
    np.testing.assert_allclose(got["mean_intensity"], ref["intensity_mean"])
    np.testing.assert_allclose(got["area_physical"], got["area"] * 0.125)
    probs = zarr.open_group(str(out))["probabilities"][1]
    ref_p = ndimage.mean(probs, ids, got["label"])
    np.testing.assert_allclose(got["mean_probability"], ref_p, rtol=1e-6)
    import dask.dataframe as dd

    assert len(dd.read_parquet(str(table)).compute()) == len(got)


def test_bad_input(tmp_path):
    image = _blobs()
    out = _output(tmp_path, image, 64, outputs="labels")
    with pytest.raises(InvalidValueError, match="`cls`"):
        chunkseg.label(str(out), cls=5)
    with pytest.raises(InvalidValueError, match="`connectivity`"):
        chunkseg.label(str(out), connectivity=3)
    with pytest.raises(InvalidValueError, match="probabilities"):
        chunkseg.label(str(out), threshold=0.5)
    with pytest.raises(InvalidValueError, match="`name`"):
        chunkseg.label(str(out), name="labels")
    with pytest.raises(NotFoundError, match="`store`"):
        chunkseg.label(str(tmp_path / "nope.zarr"))
    chunkseg.label(str(out))
    with pytest.raises(OutputExistsError, match="overwrite"):
        chunkseg.label(str(out))
    chunkseg.label(str(out), overwrite=True)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["complete"] = False
    with pytest.raises(InvalidValueError, match="incomplete"):
        chunkseg.label(str(out), overwrite=True)
    table = tmp_path / "t.parquet"
    table.write_text("mine")
    with pytest.raises(OutputExistsError, match="table"):
        chunkseg.regions(str(out), str(table))
    assert table.read_text() == "mine"
    from chunkseg.errors import OutputOverlapError

    meta = out / "zarr.json"
    before = meta.read_bytes()
    with pytest.raises(OutputOverlapError, match="`table`.*`store`"):
        chunkseg.regions(str(out), str(meta), overwrite=True)  # inside the store it measures
    assert meta.read_bytes() == before


def test_cli_label_and_regions(tmp_path, capsys):
    image = _blobs(seed=3)
    out = _output(tmp_path, image, 48)
    assert main(["label", str(out), "--class", "1", "--no-progress"]) == 0
    assert "objects" in capsys.readouterr().out
    ref, n = ndimage.label(zarr.open_group(str(out))["labels"][...] == 1)
    np.testing.assert_array_equal(zarr.open_group(str(out))["instances"][...], ref)
    table = tmp_path / "r.parquet"
    assert main(["regions", str(out), str(table), "--no-progress"]) == 0
    assert len(pd.read_parquet(table)) == n
    assert main(["label", str(out), "--class", "1", "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_cli_predict_instances_equals_label_of_the_whole_image(tmp_path, capsys):
    """The per-tile route through the CLI: small separated objects, each found once."""
    pytest.importorskip("ome_zarr")  # not in the lowest-versions environment
    image = np.full((200, 230), 220, np.uint8)
    yy, xx = np.indices(image.shape)
    for cy in range(12, 200, 25):
        for cx in range(10, 230, 27):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = 30
    src = tmp_path / "in.zarr"
    chunkseg.ingest(image, str(src), chunks=64)
    out = tmp_path / "inst.zarr"
    code = main(["predict-instances", str(src), str(out), "--model",
                 "model_factories:threshold_instances", "--tile", "48", "--overlap", "16",
                 "--chunk", "70", "--no-progress"])
    assert code == 0 and "objects" in capsys.readouterr().out
    ref, n = ndimage.label(image < 128)
    np.testing.assert_array_equal(zarr.open_group(str(out))["instances"][...], ref)


def test_cli_figures(tmp_path, capsys):
    pytest.importorskip("ome_zarr")  # not in the lowest-versions environment
    image = _blobs(seed=5)
    out = _output(tmp_path, image, 48)
    assert main(["label", str(out), "--no-progress"]) == 0
    src = tmp_path / "in.zarr"
    chunkseg.ingest(image, str(src), chunks=64)
    figs = tmp_path / "figs"
    code = main(["figures", str(out), str(figs), "--image", str(src), "--model", MODEL])
    assert code == 0
    assert sorted(p.name for p in figs.iterdir()) == [
        "overview.png", "reconstruction.png", "seams.png", "tile_predictions.png", "tiles.png"]
    capsys.readouterr()
    assert main(["figures", str(out), str(figs), "--model", MODEL]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["figures", str(out), str(figs)]) == 2  # the PNGs exist: not overwritten
    assert "overwrite" in capsys.readouterr().err
