"""One plane of a stack for the commands that take one 2-D image: ``ingest`` and ``seams``
take ``isel`` / ``--planes``; ``regions --image`` and the figures read the image at the planes
the output was predicted from (its ``planes`` attribute)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from model_factories import numpy_conv3x3

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError

RNG = np.random.default_rng(5)


def _zyx(path):
    """A (z=3, y, x) uint8 stack as a Zarr array with dimension names, planes distinct."""
    a = (RNG.random((3, 80, 96)) * 200).astype(np.uint8) + np.arange(3, dtype=np.uint8)[:, None,
                                                                                         None] * 20
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=(1, 40, 48),
                          dimension_names=("z", "y", "x"))
    z[...] = a
    return str(path), a


def test_ingest_one_plane_of_a_stack(tmp_path, capsys):
    pytest.importorskip("ome_zarr")
    src, a = _zyx(tmp_path / "stack.zarr")
    with pytest.raises(InvalidValueError, match="isel"):  # a stack needs a plane
        chunkseg.ingest(src, str(tmp_path / "all.zarr"))
    assert not (tmp_path / "all.zarr").exists()
    group = chunkseg.ingest(src, str(tmp_path / "z1.zarr"), isel={"z": 1}, chunks=32)
    np.testing.assert_array_equal(group["0"][0], a[1])
    assert main(["ingest", src, str(tmp_path / "z2.zarr"), "--planes", "z=2",
                 "--no-progress"]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "z2.zarr"), mode="r")["0"][0],
                                  a[2])


def test_seams_of_one_plane_equal_the_plane(tmp_path):
    src, a = _zyx(tmp_path / "stack.zarr")
    kw = dict(tile=32, overlap=8, windows=("gaussian",), maps=())
    got = chunkseg.evaluation.seams.seam_report(src, numpy_conv3x3(), isel={"z": 2}, **kw)
    ref = chunkseg.evaluation.seams.seam_report(a[2], numpy_conv3x3(), **kw)
    def numbers(report):  # everything but the timings
        d = report.to_dict()
        return {m: {k: v for k, v in r.items() if k != "seconds"}
                for m, r in d["methods"].items()}, d["image_shape"]

    assert numbers(got) == numbers(ref)
    assert got.image_shape == (80, 96) and got.methods["gaussian"]["mean_abs_logit_diff"] > 0


def test_regions_read_the_image_at_the_outputs_planes(tmp_path):
    src, a = _zyx(tmp_path / "stack.zarr")
    out = str(tmp_path / "seg.zarr")
    chunkseg.predict_to_zarr(src, numpy_conv3x3(), out, tile=32, overlap=8, chunks=40,
                             isel={"z": 1}, outputs="labels,probabilities")
    chunkseg.label(out, cls=1)
    got = chunkseg.regions(out, str(tmp_path / "r.parquet"), image=src)
    ids = zarr.open_group(out, mode="r")["instances"][...]
    plane = a[1].astype(np.float64)
    expected = pd.Series(plane.ravel()).groupby(ids.ravel()).mean().drop(0, errors="ignore")
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got.set_index("label")["mean_intensity"].sort_index().values,
                               expected.sort_index().values, rtol=1e-12)
