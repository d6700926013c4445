"""The region table's shape columns (perimeter, eccentricity, solidity), measured on each
object's whole bounding box by the chunk its box starts in, against scikit-image's
regionprops_table on the whole image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table

import chunkseg
from chunkseg.objects.regions import REGION_COLUMNS, SHAPE_COLUMNS

MODEL = "model_factories:numpy_two_class"  # class 1 where the pixel is dark (x < 127.5)


def _image(shape=(150, 170), seed=2):
    from skimage.data import binary_blobs

    blobs = binary_blobs(max(shape), blob_size_fraction=0.08, volume_fraction=0.35, rng=seed)
    image = np.where(blobs[: shape[0], : shape[1]], 40, 220).astype(np.uint8)
    image[5:9, 3:160] = 40  # a long thin object: its box reaches past 2 x 2 chunks
    image[20:140, 150:153] = 40
    return image


def _ids(tmp_path, image, chunks):
    out = tmp_path / f"out{chunks}.zarr"
    chunkseg.predict_to_zarr(image, MODEL, str(out), tile=32, overlap=8, chunks=chunks,
                             outputs="labels")
    return out, chunkseg.label(str(out), cls=1).values


@pytest.mark.parametrize("chunks", [24, 40, (32, 56), 1000])
def test_shape_columns_equal_regionprops_on_the_whole_image(tmp_path, chunks):
    image = _image()
    out, ids = _ids(tmp_path, image, chunks)
    got = chunkseg.regions(str(out), str(tmp_path / "r.parquet"))
    ref = pd.DataFrame(regionprops_table(ids, properties=("label",) + SHAPE_COLUMNS))
    assert list(got.columns) == list(REGION_COLUMNS) + list(SHAPE_COLUMNS)
    np.testing.assert_array_equal(got["label"], ref["label"])
    for c in SHAPE_COLUMNS:
        np.testing.assert_allclose(got[c], ref[c], rtol=1e-12, atol=1e-12, err_msg=c)
    assert len(got) > 10 and got["perimeter"].gt(0).all()
    # the test means something: objects cut by chunk borders, some beyond 2 x 2 chunks
    size = chunks if isinstance(chunks, tuple) else (chunks, chunks)
    cut = ((got.bbox_y0 // size[0] != (got.bbox_y1 - 1) // size[0])
           | (got.bbox_x0 // size[1] != (got.bbox_x1 - 1) // size[1]))
    if chunks != 1000:
        assert cut.sum() >= 5
        assert ((got.bbox_x1 - got.bbox_x0 > 2 * size[1])
                | (got.bbox_y1 - got.bbox_y0 > 2 * size[0])).any()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r.parquet"), got)


def test_objects_over_the_limit_are_nan_with_a_warning(tmp_path):
    image = _image()
    out, ids = _ids(tmp_path, image, 40)
    ref = pd.DataFrame(regionprops_table(ids, properties=("label", "bbox") + SHAPE_COLUMNS))
    box = (ref["bbox-2"] - ref["bbox-0"]) * (ref["bbox-3"] - ref["bbox-1"])
    limit = int(np.sort(box)[-3])  # the two largest boxes are over it
    with pytest.warns(UserWarning, match=r"2 object\(s\) have a bounding box over "
                                         r"`max_object_pixels`"):
        got = chunkseg.regions(str(out), str(tmp_path / "r.parquet"), max_object_pixels=limit)
    over = (box > limit).to_numpy()
    assert over.sum() == 2
    for c in SHAPE_COLUMNS:
        assert got[c][over].isna().all()
        np.testing.assert_allclose(got[c][~over], ref[c][~over], rtol=1e-12, err_msg=c)
    plain = chunkseg.regions(str(out), str(tmp_path / "p.parquet"), shape=False)
    assert list(plain.columns) == list(REGION_COLUMNS)
    with pytest.raises(chunkseg.InvalidValueError, match="`max_object_pixels`"):
        chunkseg.regions(str(out), str(tmp_path / "x.parquet"), max_object_pixels=0)


def test_no_objects(tmp_path):
    out, ids = _ids(tmp_path, np.full((64, 64), 220, np.uint8), 32)
    assert ids.max() == 0
    got = chunkseg.regions(str(out), str(tmp_path / "r.parquet"))
    assert len(got) == 0 and list(got.columns) == list(REGION_COLUMNS) + list(SHAPE_COLUMNS)


def test_cli_regions_shape_flags(tmp_path, capsys):
    from chunkseg.cli import main

    out, ids = _ids(tmp_path, _image(), 40)
    table = tmp_path / "r.parquet"
    assert main(["regions", str(out), str(table), "--no-progress", "--no-shape"]) == 0
    assert list(pd.read_parquet(table).columns) == list(REGION_COLUMNS)
    assert main(["regions", str(out), str(table), "--no-progress", "--overwrite"]) == 0
    got = pd.read_parquet(table)
    ref = pd.DataFrame(regionprops_table(ids, properties=("label",) + SHAPE_COLUMNS))
    np.testing.assert_allclose(got["solidity"], ref["solidity"], rtol=1e-12)
    capsys.readouterr()
    assert main(["regions", str(out), str(table), "--overwrite", "--max-object-pixels",
                 "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chunkseg regions: error: `--max-object-pixels` must be")
