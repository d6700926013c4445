"""label(method="watershed"): the same objects and ids for any chunking, equal to the
algorithm run in memory on the whole image; gaps that join objects are split."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import zarr
from reference import watershed_reference
from scipy import ndimage

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidTypeError, InvalidValueError, MissingDependencyError
from chunkseg.objects.watershed import WatershedSettings

MODEL = "model_factories:numpy_two_class_steep"  # class 0 where bright, p from 0.0025 to 0.9975


def _cells(shape=(150, 170), seed=0):
    """Bright cells with dark boundaries: a smooth random field."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.random(shape), 4)
    f = (f - f.min()) / (f.max() - f.min())
    return np.clip(f * 300 - 20, 0, 255).astype(np.uint8)


def _output(tmp_path, image, chunks, name="out.zarr"):
    out = tmp_path / name
    chunkseg.predict_to_zarr(image, MODEL, str(out), tile=32, overlap=8, chunks=chunks,
                             outputs="labels,probabilities")
    return out


@pytest.mark.parametrize("merge", [None, 0.3])
def test_same_ids_for_any_chunking_and_equal_to_the_whole_image(tmp_path, merge):
    image = _cells()
    settings = dict(seed_threshold=0.95, min_seed_size=5, boundary_weight=8.0, max_cost=20.0,
                    merge_threshold=merge)
    # whole image; chunks not multiples of the stride (24); smaller than the 20 px halo
    results = []
    for i, chunks in enumerate([1000, 47, (40, 64), 16]):
        out = _output(tmp_path, image, chunks, f"o{i}.zarr")
        got = chunkseg.label(str(out), cls=0, method="watershed", **settings)
        results.append(got.values)
        assert got.attrs["method"] == "watershed"
        assert got.attrs["watershed"]["merge_threshold"] == merge
        group = zarr.open_group(str(out), mode="r")
        assert not {"instances-seeds", "instances-boundary", "instances-fragments"} & set(group)  # scratch gone
    p = zarr.open_group(str(tmp_path / "o0.zarr"), mode="r")["probabilities"][0]
    ref, n = watershed_reference(p, 0.95, 5, 8.0, 20.0, merge)
    assert n > 10
    for got in results:
        np.testing.assert_array_equal(got, ref)
    assert (ref > 0).mean() > (p >= 0.95).mean() + 0.05  # the flooding grew the seeds


def test_sharded_scratch_arrays_give_the_same_ids(tmp_path):
    """Chunks over 256 px: the scratch arrays are sharded by chunk with inner chunks of at
    most 256 px (300 -> 150, 260 -> 130), and the windows read across inner chunks and shards."""
    image = _cells((640, 560), seed=3)
    settings = dict(seed_threshold=0.95, min_seed_size=5, boundary_weight=8.0, max_cost=20.0,
                    merge_threshold=0.3)
    results = []
    for i, chunks in enumerate([1000, (300, 260)]):
        out = _output(tmp_path, image, chunks, f"s{i}.zarr")
        results.append(chunkseg.label(str(out), cls=0, method="watershed", **settings).values)
    assert results[0].max() > 30
    np.testing.assert_array_equal(results[1], results[0])


@pytest.mark.parametrize("agglomeration", ["multicut", "mutex"])
def test_library_agglomeration_is_the_same_for_two_chunkings(tmp_path, agglomeration):
    pytest.importorskip("bioimage_cpp")
    image = _cells()
    # a low boundary weight: fragments meet inside cells too, so the graph has cycles
    settings = dict(seed_threshold=0.95, min_seed_size=3, boundary_weight=1.0, max_cost=60.0,
                    merge_threshold=0.3)
    results = []
    for i, chunks in enumerate([1000, (40, 64)]):  # the second smaller than the 60 px halo
        out = _output(tmp_path, image, chunks, f"o{i}.zarr")
        got = chunkseg.label(str(out), cls=0, method="watershed", agglomeration=agglomeration,
                             **settings)
        assert WatershedSettings.from_dict(got.attrs["watershed"]) == WatershedSettings(
            agglomeration=agglomeration, **settings)
        results.append(got.values)
    p = zarr.open_group(str(tmp_path / "o0.zarr"), mode="r")["probabilities"][0]
    ref, n = watershed_reference(p, 0.95, 3, 1.0, 60.0, 0.3, agglomeration)
    for got in results:
        np.testing.assert_array_equal(got, ref)
    # not the thresholded graph's answer here: a cycle decides differently
    threshold, n_threshold = watershed_reference(p, 0.95, 3, 1.0, 60.0, 0.3)
    assert n > n_threshold > 10
    assert (ref != threshold).any()


def test_watershed_splits_what_a_gap_joins(tmp_path):
    image = np.full((64, 96), 10, np.uint8)  # dark boundary everywhere
    yy, xx = np.indices(image.shape)
    image[(yy - 32) ** 2 + (xx - 25) ** 2 < 18 ** 2] = 250  # two bright cells
    image[(yy - 32) ** 2 + (xx - 70) ** 2 < 18 ** 2] = 250
    image[30:34, 40:56] = 150  # a gap in the membrane between them: p(cell) ~ 0.89
    out = _output(tmp_path, image, 32)
    components = chunkseg.label(str(out), cls=0).values
    assert components[32, 25] == components[32, 70] > 0  # one merged object
    cells = chunkseg.label(str(out), cls=0, method="watershed", name="cells").values
    assert cells[32, 25] > 0 and cells[32, 70] > 0 and cells[32, 25] != cells[32, 70]
    assert len(np.unique(cells)) == 3


def test_bad_watershed_settings(tmp_path):
    out = _output(tmp_path, _cells((40, 40)), 20)
    cases = [(dict(method="flood"), InvalidValueError, "`method`"),
             (dict(method="watershed", threshold=0.5), InvalidValueError, "seed_threshold"),
             (dict(method="watershed", seed_threshold=0.0), InvalidValueError, "(0, 1]"),
             (dict(method="watershed", seed_threshold="high"), InvalidTypeError, "number"),
             (dict(method="watershed", min_seed_size=0), InvalidValueError, ">= 1"),
             (dict(method="watershed", min_seed_size=2.5), InvalidTypeError, "int"),
             (dict(method="watershed", boundary_weight=-1), InvalidValueError, ">= 0"),
             (dict(method="watershed", max_cost=0.5), InvalidValueError, "halo"),
             (dict(method="watershed", merge_threshold=1.5), InvalidValueError, "[0, 1]"),
             (dict(method="watershed", agglomeration="gasp"), InvalidValueError,
              "`agglomeration` must be one of"),
             (dict(method="watershed", agglomeration="multicut"), InvalidValueError,
              "with agglomeration='multicut'")]
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text.replace("[", r"\[").replace("(", r"\(")):
            chunkseg.label(str(out), cls=0, **kwargs)
    assert sorted(zarr.open_group(str(out), mode="r").keys()) == ["chunkseg", "class", "labels",
                                                                   "probabilities"]


def test_library_agglomeration_missing(tmp_path, monkeypatch):
    out = _output(tmp_path, _cells((40, 40)), 20)
    monkeypatch.setitem(sys.modules, "bioimage_cpp", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "bioimage_cpp.graph", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'chunkseg\[agglomerate\]'"):
        chunkseg.label(str(out), cls=0, method="watershed", agglomeration="multicut",
                       merge_threshold=0.5)
    assert not {"instances-seeds", "instances-boundary", "instances-fragments"} & set(zarr.open_group(str(out), mode="r"))


def test_watershed_needs_probabilities(tmp_path):
    out = tmp_path / "l.zarr"
    chunkseg.predict_to_zarr(_cells((40, 40)), MODEL, str(out), tile=32, overlap=8, chunks=20,
                             outputs="labels")
    with pytest.raises(InvalidValueError, match="'watershed' needs the output variable "
                                                "'probabilities'"):
        chunkseg.label(str(out), cls=0, method="watershed")


@pytest.mark.parametrize("agglomeration", ["threshold", "mutex"])
def test_cli_label_watershed(tmp_path, capsys, agglomeration):
    if agglomeration != "threshold":
        pytest.importorskip("bioimage_cpp")
    image = _cells()
    out = _output(tmp_path, image, 50)
    assert main(["label", str(out), "--class", "0", "--method", "watershed",
                 "--seed-threshold", "0.95", "--min-seed-size", "5", "--boundary-weight", "8",
                 "--max-cost", "20", "--merge-threshold", "0.3", "--agglomeration",
                 agglomeration, "--no-progress"]) == 0
    assert "objects of class 0" in capsys.readouterr().out
    got = zarr.open_group(str(out), mode="r")["instances"][...]
    p = zarr.open_group(str(out), mode="r")["probabilities"][0]
    np.testing.assert_array_equal(got, watershed_reference(p, 0.95, 5, 8.0, 20.0, 0.3, agglomeration)[0])
    attrs = zarr.open_group(str(out), mode="r")["instances"].attrs["watershed"]
    assert attrs["agglomeration"] == agglomeration


def test_watershed_in_the_ome_layout_equals_the_plain_one(tmp_path):
    pytest.importorskip("ome_zarr")  # the [ome] extra (absent from the lowest-versions run)
    image = _cells((120, 130), seed=3)
    kw = dict(tile=32, overlap=8, chunks=48, outputs="labels,probabilities")
    ome, plain = str(tmp_path / "ome.zarr"), str(tmp_path / "plain.zarr")
    chunkseg.predict_to_zarr(image, MODEL, ome, ome=True, levels=2, **kw)
    chunkseg.predict_to_zarr(image, MODEL, plain, **kw)
    settings = dict(cls=0, method="watershed", seed_threshold=0.95, min_seed_size=5,
                    merge_threshold=0.3)
    a = chunkseg.label(ome, **settings)
    b = chunkseg.label(plain, **settings)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.attrs["objects"] == b.attrs["objects"] > 5
    g = zarr.open_group(ome, mode="r")
    assert g["labels"].attrs["ome"]["labels"] == ["classes", "instances"]
    assert not {"instances-seeds", "instances-boundary", "instances-fragments"} & set(g)
    assert g["labels/instances/1"].shape == (60, 65)
    chunkseg.label(ome, **settings, overwrite=True)  # replaced, listed once
    assert zarr.open_group(ome, mode="r")["labels"].attrs["ome"]["labels"] == [
        "classes", "instances"]


def test_a_foreign_array_with_a_scratch_name_is_refused_and_kept(tmp_path):
    """The scratch arrays are NAME-seeds and NAME-fragments: an array of that name that
    chunkseg did not write is never replaced."""
    from chunkseg.errors import OutputExistsError

    out = _output(tmp_path, _cells((60, 60)), 30)
    group = zarr.open_group(str(out), mode="r+")
    foreign = group.create_array("cells-seeds", shape=(3,), dtype="uint8")
    foreign[...] = [1, 2, 3]
    with pytest.raises(OutputExistsError, match="'cells-seeds'.*not written by chunkseg"):
        chunkseg.label(str(out), cls=0, method="watershed", name="cells", seed_threshold=0.95)
    group = zarr.open_group(str(out), mode="r", use_consolidated=False)
    assert group["cells-seeds"][...].tolist() == [1, 2, 3] and "cells" not in group


@pytest.mark.parametrize("mode", ["maxima", "both"])
def test_maxima_seeds_are_the_same_for_any_chunking_and_equal_the_reference(tmp_path, mode):
    """Distance-transform maxima seeds read with their halo (3 * radius): the whole image's
    seeds for chunks of 1000, 47, (40, 64) and 16 px, equal to a brute-force reference."""
    image = _cells()
    settings = dict(seed_threshold=0.95, min_seed_size=1, boundary_weight=8.0, max_cost=20.0,
                    merge_threshold=0.3, seeds=mode, maxima_radius=4)
    p = None
    results = []
    for i, chunks in enumerate([1000, 47, (40, 64), 16]):
        out = _output(tmp_path, image, chunks, f"m{i}.zarr")
        got = chunkseg.label(str(out), cls=0, method="watershed", **settings)
        assert got.attrs["watershed"]["seeds"] == mode
        results.append(got.values)
        if p is None:
            p = zarr.open_group(str(out), mode="r")["probabilities"][0]
    ref, n = watershed_reference(p, 0.95, 1, 8.0, 20.0, 0.3, seeds=mode, maxima_radius=4)
    assert n > 10
    for got in results:
        np.testing.assert_array_equal(got, ref)
    threshold_only, n_threshold = watershed_reference(p, 0.95, 1, 8.0, 20.0, 0.3)
    assert not np.array_equal(ref, threshold_only)  # the maxima changed the seeds


def test_seed_mask_kernel_against_the_reference_with_no_background_and_plateaus():
    from reference import maxima_seeds_reference

    from chunkseg.kernels.watershed import seed_mask

    rng = np.random.default_rng(5)
    for p in (np.ones((20, 30)), ndimage.gaussian_filter(rng.random((60, 50)), 3) * 4 - 1.5,
              np.pad(np.ones((25, 25)), 10)):  # no background; smooth; one square: a plateau
        for r in (1, 3, 6):
            np.testing.assert_array_equal(seed_mask(p, "maxima", 0.99, r),
                                          maxima_seeds_reference(p, r))
