"""One output-target check for every writer: never the input, never data chunkseg did not write."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from reference import conv_model

import chunkseg
from chunkseg.demo import build_mosaic
from chunkseg.errors import OutputExistsError, OutputOverlapError
from chunkseg.outputs._identity import overlaps
from chunkseg.outputs._target import check_output_target

MODEL = conv_model(np.ones((2, 1, 3, 3)) / 9)
KW = dict(tile=32, overlap=8)


def _input(path):
    image = (np.arange(60 * 70) % 251).astype(np.uint8).reshape(60, 70)
    z = zarr.create_array(str(path), shape=image.shape, dtype="u1", chunks=(32, 32),
                          dimension_names=("y", "x"))
    z[...] = image
    return image


def _tree(path):
    return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getsize(os.path.join(r, f)))
                  for r, _, fs in os.walk(path) for f in fs)


def test_parent_folder_of_the_input_is_refused_and_the_input_kept(tmp_path):
    # the data loss of issue 7: the output is the input's parent folder, with overwrite
    data = tmp_path / "data"
    data.mkdir()
    image = _input(data / "in.zarr")
    before = _tree(data)
    with pytest.raises(OutputOverlapError, match="must not overlap"):
        chunkseg.predict_to_zarr(str(data / "in.zarr"), MODEL, str(data), overwrite=True, **KW)
    assert _tree(data) == before
    np.testing.assert_array_equal(zarr.open_array(str(data / "in.zarr"))[...], image)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_that_is_or_lies_inside_the_input_is_refused(tmp_path, where):
    src = tmp_path / "in.zarr"
    _input(src)
    out = src if where == "same" else src / "seg.zarr"
    with pytest.raises(OutputOverlapError):
        chunkseg.predict_to_zarr(str(src), MODEL, str(out), overwrite=True, **KW)


def test_symlinks_are_resolved(tmp_path):
    src = tmp_path / "in.zarr"
    _input(src)
    link = tmp_path / "alias"
    link.symlink_to(tmp_path)
    assert overlaps(str(src), str(link))
    with pytest.raises(OutputOverlapError):
        chunkseg.predict_to_zarr(str(src), MODEL, str(link), overwrite=True, **KW)


def test_url_prefixes_overlap():
    assert overlaps("s3://bucket/data/in.zarr", "s3://bucket/data")
    assert overlaps("s3://bucket/data", "s3://bucket/data/in.zarr/x")
    assert not overlaps("s3://bucket/data/in.zarr", "s3://bucket/data/in.zarr2")
    assert not overlaps("s3://bucket/a.zarr", "/tmp/a.zarr")
    assert not overlaps(np.zeros(3), "out.zarr")


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a Zarr array or group"):
        chunkseg.predict_to_zarr(np.zeros((40, 40), np.float32), MODEL, str(folder),
                                 overwrite=True, **KW)
    assert (folder / "notes.txt").read_text() == "mine"


def test_overwrite_never_deletes_other_files_beside_a_chunkseg_store(tmp_path):
    out = tmp_path / "seg.zarr"
    chunkseg.predict_to_zarr(np.zeros((40, 40), np.float32), MODEL, str(out), **KW)
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="my_notes.txt"):
        chunkseg.predict_to_zarr(np.zeros((40, 40), np.float32), MODEL, str(out),
                                 overwrite=True, **KW)
    assert (out / "my_notes.txt").read_text() == "mine"


def test_non_empty_target_refused_without_overwrite_and_empty_folder_accepted(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="overwrite"):
        check_output_target(str(tmp_path / "file.bin"))
    (tmp_path / "empty").mkdir()
    check_output_target(str(tmp_path / "empty"))  # nothing to lose
    check_output_target(str(tmp_path / "absent"))


def test_every_writer_uses_the_check(tmp_path):
    src = tmp_path / "in.zarr"
    _input(src)
    # ingest: into the input's folder, and over a Zarr store chunkseg did not write
    with pytest.raises(OutputOverlapError):
        chunkseg.ingest(str(src), str(tmp_path), overwrite=True)
    with pytest.raises(OutputExistsError, match="did not write"):
        chunkseg.ingest(np.zeros((10, 10), np.uint8), str(src), overwrite=True)
    # its own output is replaced with overwrite
    out = tmp_path / "ingested.zarr"
    chunkseg.ingest(np.zeros((10, 10), np.uint8), str(out))
    group = chunkseg.ingest(np.ones((12, 10), np.uint8), str(out), overwrite=True)
    assert group["0"].shape == (1, 12, 10) and group["0"].attrs["chunkseg_version"]
    assert group.attrs["chunkseg_version"]
    # the demo's mosaic writer
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        build_mosaic(folder, rows=1, cols=1, overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"


def test_output_folder_check(tmp_path):
    from chunkseg.outputs._target import check_output_folder

    kw = {"markers": ("run.json",), "what": "a run", "owned": ("run.json", "a.bin")}
    assert check_output_folder(tmp_path / "new", **kw) == []
    out = tmp_path / "out"
    out.mkdir()
    assert check_output_folder(out, **kw) == []  # empty
    (out / "a.bin").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="not a run"):
        check_output_folder(out, overwrite=True, **kw)  # no marker: never replaced
    (out / "run.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="must be empty"):
        check_output_folder(out, **kw)
    assert sorted(p.name for p in check_output_folder(out, overwrite=True, **kw)) == [
        "a.bin", "run.json"]
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match=r"did not write there \(\['mine.txt'\]\)"):
        check_output_folder(out, overwrite=True, **kw)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="must be a folder"):
        check_output_folder(tmp_path / "file", **kw)
    assert (out / "mine.txt").read_text() == "keep"


def test_output_files_check(tmp_path):
    from chunkseg.outputs._target import check_output_files

    check_output_files([tmp_path / "a.png"])
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="earlier a.png"):
        check_output_files([tmp_path / "a.png"])
    check_output_files([tmp_path / "a.png"], overwrite=True)
    with pytest.raises(OutputExistsError, match="must be a file path"):
        check_output_files([tmp_path], overwrite=True)


def test_output_files_never_an_input(tmp_path):
    from chunkseg.outputs._target import check_output_files

    image = tmp_path / "in.png"
    image.write_bytes(b"x")
    with pytest.raises(OutputOverlapError, match="must not be an input"):
        check_output_files([image], overwrite=True, sources=[str(image), None])
    check_output_files([tmp_path / "out.json"], sources=[str(image)])


def test_cli_json_outputs_refuse_inputs_and_earlier_files(tmp_path, capsys):
    from chunkseg.cli import main

    labels = np.random.default_rng(0).integers(0, 2, (32, 32)).astype(np.uint8)
    pred, gt = tmp_path / "pred.npy", tmp_path / "gt.npy"
    np.save(pred, labels)
    np.save(gt, labels)
    before = pred.read_bytes()
    assert main(["evaluate", str(pred), str(gt), "--json", str(pred), "--overwrite",
                 "--no-progress"]) == 2
    assert pred.read_bytes() == before and "must not be an input" in capsys.readouterr().err
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(pred), str(gt), "--json", str(out), "--no-progress"]) == 0
    assert main(["evaluate", str(pred), str(gt), "--json", str(out), "--no-progress"]) == 2
    assert main(["evaluate", str(pred), str(gt), "--json", str(out), "--no-progress",
                 "--overwrite"]) == 0
