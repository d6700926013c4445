"""One output lifecycle (chunkseg.outputs): identity, ownership at every depth, replace only on
success, and a resume that checks what it trusts.

The matrix below runs every Zarr writer against every way of naming its input again (an alias
must be seen as the input) and every foreign entry an output can hold (it must never be
deleted); each case hashes every file of the input, the output and the user's files before and
after, and asserts they are byte-identical and that the writer refused with the right error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3, threshold_instances
from test_resume import FailsLate

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError, OutputExistsError, OutputOverlapError
from chunkseg.outputs._identity import Location, overlaps, resolve
from chunkseg.outputs._lifecycle import staging_path
from chunkseg.outputs._ownership import (
    MARKER,
    foreign_folder_entries,
    foreign_zarr_entries,
    write_record,
)

KW = dict(tile=32, overlap=8, chunks=64)


def _image(shape=(100, 90), seed=3):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _hashes(*roots) -> dict:
    """sha256 of every file under (or at) each root, by path."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def chunkseg_input(tmp_path):
    """An input that chunkseg wrote (an ingest output): the case where an alias destroyed it."""
    src = tmp_path / "data" / "in.zarr"
    chunkseg.ingest(_image(), str(src), chunks=50)
    return src


# --- identity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [
    ("s3://b/in.zarr", "s3a://b/in.zarr"),
    ("s3://b/in.zarr", "s3n://b/in.zarr"),
    ("s3://b/in.zarr", "s3://b//in.zarr"),
    ("s3://b/in.zarr", "s3://b/in.zarr/"),
    ("s3://b/in.zarr", "s3://user:pw@b/in.zarr?token=x"),
    ("s3://b/in.zarr", "s3://b/in.zarr/seg.zarr"),
    ("s3://b/in.zarr/", "s3://b"),
    ("gcs://b/x", "gs://b/x"),
    ("memory://a/in.zarr", "memory:///a//in.zarr/"),
])
def test_object_store_aliases_are_one_location(a, b):
    assert overlaps(a, b) and overlaps(b, a)


@pytest.mark.parametrize("a, b", [
    ("s3://b/in.zarr", "s3://b/in.zarr2"),
    ("s3://b/in.zarr", "s3://c/in.zarr"),
    ("s3://b/in.zarr", "memory://b/in.zarr"),
    ("s3://b/in.zarr", "/b/in.zarr"),
])
def test_distinct_locations_do_not_overlap(a, b):
    assert not overlaps(a, b)


def test_local_names_resolve_to_one_identity(tmp_path, chunkseg_input, monkeypatch):
    src = chunkseg_input
    monkeypatch.chdir(src.parent)
    names = [str(src), f"file://{src}", "in.zarr", "./in.zarr/", f"{src.parent}//in.zarr",
             str(tmp_path / "data" / ".." / "data" / "in.zarr")]
    link = tmp_path / "alias"
    link.symlink_to(src.parent)
    names.append(str(link / "in.zarr"))
    ids = {resolve(n) for n in names}
    assert len({(i.protocol, i.path) for i in ids}) == 1
    assert all(overlaps(names[0], n) for n in names)
    assert overlaps(str(link), str(src)) and overlaps(str(src / "x.zarr"), f"file://{src}")
    assert resolve(object()) is None and not overlaps(np.zeros(3), str(src))


def test_hard_link_is_the_same_file(tmp_path):
    a = tmp_path / "a" / "in.png"
    a.parent.mkdir()
    a.write_bytes(b"x")
    b = tmp_path / "b.png"
    os.link(a, b)
    assert resolve(a).path != resolve(b).path
    assert overlaps(a, b)
    assert not overlaps(a, tmp_path / "c.png")


def _bind_mount(src: Path, dst: Path) -> bool:
    dst.mkdir()
    try:
        done = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_bind_mount_of_the_input_is_the_input(tmp_path, chunkseg_input):
    mnt = tmp_path / "mnt"
    if not _bind_mount(chunkseg_input.parent, mnt):
        pytest.skip("bind mounts need CAP_SYS_ADMIN, which this machine does not give")
    try:
        before = _hashes(chunkseg_input)
        assert overlaps(str(mnt / "in.zarr"), str(chunkseg_input))
        assert overlaps(str(mnt), str(chunkseg_input))  # the output around the input
        with pytest.raises(OutputOverlapError):
            chunkseg.predict_to_zarr(str(chunkseg_input), numpy_conv3x3(),
                                     str(mnt / "in.zarr"), overwrite=True, **KW)
        assert _hashes(chunkseg_input) == before
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20)


def test_location_is_frozen():
    loc = resolve("s3a://b//x/")
    assert loc == Location("s3", "b/x") and not loc.local
    with pytest.raises(AttributeError):
        loc.path = "y"


# --- the writer x alias matrix --------------------------------------------------------------


def _predict(src, out, overwrite):
    chunkseg.predict_to_zarr(src, numpy_conv3x3(), out, overwrite=overwrite, **KW)


def _ingest(src, out, overwrite):
    chunkseg.ingest(src, out, overwrite=overwrite)


def _instances(src, out, overwrite):
    chunkseg.predict_instances(src, threshold_instances(), out, overwrite=overwrite, **KW)


def _cli_predict(src, out, overwrite):
    from chunkseg.cli import main

    argv = ["predict", src, out, "--model", "model_factories:numpy_conv3x3", "--tile", "32",
            "--overlap", "8", "--chunk", "64", "--no-progress"] + (["--overwrite"] * overwrite)
    assert main(argv) == 2


WRITERS = {"predict_to_zarr": _predict, "ingest": _ingest, "predict_instances": _instances,
           "cli predict": _cli_predict}

ALIASES = {
    "file URL": lambda src: f"file://{src}",
    "relative": lambda src: os.path.relpath(src),
    "trailing slash": lambda src: f"{src}/",
    "double slash": lambda src: f"{src.parent}//{src.name}",
    "dot segments": lambda src: f"{src.parent}/../{src.parent.name}/{src.name}",
    "symlink": lambda src: "symlink",
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("direction", ["out is alias", "in is alias"])
def test_every_writer_refuses_its_input_under_another_name(tmp_path, chunkseg_input, monkeypatch,
                                                           writer, alias, direction):
    src = chunkseg_input
    monkeypatch.chdir(tmp_path)
    name = ALIASES[alias](src)
    if name == "symlink":
        (tmp_path / "link").symlink_to(src.parent)
        name = str(tmp_path / "link" / src.name)
    before = _hashes(src)
    inp, out = (str(src), name) if direction == "out is alias" else (name, str(src))
    if writer.startswith("cli"):
        WRITERS[writer](inp, out, True)
    else:
        with pytest.raises(OutputOverlapError, match="must not overlap"):
            WRITERS[writer](inp, out, True)
    assert _hashes(src) == before
    assert not any(p.name.startswith(".") for p in src.parent.iterdir() if p != src)


def test_regions_and_evaluate_refuse_an_aliased_input_file(tmp_path, monkeypatch):
    from PIL import Image

    png = tmp_path / "in.png"
    Image.fromarray(_image()).save(png)
    out = chunkseg.predict_to_zarr(str(png), numpy_conv3x3(), str(tmp_path / "seg.zarr"),
                                   outputs="labels", **KW)
    del out
    chunkseg.label(str(tmp_path / "seg.zarr"), cls=1)
    before = _hashes(png)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputOverlapError):
        chunkseg.regions(str(tmp_path / "seg.zarr"), f"file://{png}", image="in.png")
    assert main(["evaluate", str(tmp_path / "seg.zarr"), "in.png", "--json",
                 f"file://{png}", "--overwrite"]) == 2
    assert _hashes(png) == before


# --- ownership at every depth ---------------------------------------------------------------


def _output(tmp_path, **kw):
    out = tmp_path / "seg.zarr"
    chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), **KW, **kw)
    return out


def _user_array(out):
    zarr.create_array(str(out / "mine"), shape=(4,), dtype="u1", chunks=(4,))[...] = 7


def _put(path: Path, text="mine"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _chunk_dir(out: Path, name: str) -> Path:
    """The chunk folder of an output variable, in either layout."""
    group = zarr.open_group(str(out), mode="r")
    path = next(p for p in (name, f"0/{name}", "labels/classes/0") if p in group
                and (name != "labels" or p != "0/labels"))
    return out / path / "c"


FOREIGN = {
    "file in a subgroup": lambda out: _put(out / "chunkseg" / "notes.txt"),
    "file in a chunk folder": lambda out: _put(_chunk_dir(out, "labels") / "mine.txt"),
    "file deep in chunks": lambda out: _put(_chunk_dir(out, "logits") / "0" / "0" / "x.txt"),
    "user Zarr array": _user_array,
    "file at the root": lambda out: _put(out / "README.txt"),
}


@pytest.mark.parametrize("case", FOREIGN)
@pytest.mark.parametrize("ome", [False, True])
def test_overwrite_refuses_any_foreign_entry_at_any_depth(tmp_path, capsys, case, ome):
    if ome:
        pytest.importorskip("ome_zarr")
    out = _output(tmp_path, ome=ome, outputs="logits,labels")
    assert foreign_zarr_entries(str(out)) == []
    FOREIGN[case](out)
    assert foreign_zarr_entries(str(out)), case
    before = _hashes(out)
    with pytest.raises(OutputExistsError, match="did not write"):
        _output(tmp_path, ome=ome, outputs="logits,labels", overwrite=True)
    assert _hashes(out) == before
    from PIL import Image

    Image.fromarray(_image()).save(tmp_path / "in.png")
    assert main(["predict", str(tmp_path / "in.png"), str(out), "--model",
                 "model_factories:numpy_conv3x3", "--overwrite", "--no-progress"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert _hashes(out) == before


def test_an_empty_folder_is_nothing_to_lose(tmp_path):
    out = _output(tmp_path)
    (out / "chunkseg" / "empty").mkdir()
    assert foreign_zarr_entries(str(out)) == []


def test_a_chunk_write_interrupted_in_zarrs_store_is_the_arrays_own(tmp_path):
    """zarr's LocalStore writes KEY.<uuid hex>.partial and renames it to KEY: a run stopped
    between the two leaves it beside the chunks (seen in CI on an interrupted OME run)."""
    out = _output(tmp_path, outputs="logits,labels")
    chunks = _chunk_dir(out, "labels")
    _put(chunks / "0" / f"0.{'a1' * 16}.partial")
    _put(out / "chunkseg" / "done" / "c" / "0" / f"0.{'0f' * 16}.partial")
    assert foreign_zarr_entries(str(out)) == []
    # anything else stays foreign: not a chunk key, not zarr's uuid, not under an array
    for name in (chunks / "0" / "x.0123.partial", chunks / "0" / f"0.{'A1' * 16}.partial",
                 chunks / "0" / f"0.{'a1' * 15}.partial", out / f"zarr.{'a1' * 16}.partial"):
        _put(name)
        assert foreign_zarr_entries(str(out)), name
        name.unlink()
    assert foreign_zarr_entries(str(out)) == []


def test_every_node_chunkseg_writes_is_stamped(tmp_path):
    pytest.importorskip("ome_zarr")
    out = _output(tmp_path, ome=True, outputs="probabilities,labels")
    chunkseg.label(str(out), cls=1)
    nodes = [json.loads(p.read_text()) for p in out.rglob("zarr.json")]
    assert len(nodes) >= 8  # root, levels, labels, classes, instances, manifest, arrays
    assert all(MARKER in n.get("attributes", {}) for n in nodes)
    assert foreign_zarr_entries(str(out)) == []


def test_label_refuses_to_replace_a_user_array(tmp_path):
    out = _output(tmp_path, outputs="labels")
    zarr.create_array(str(out / "objects"), shape=(4,), dtype="u1", chunks=(4,))[...] = 7
    before = _hashes(out / "objects")
    with pytest.raises(OutputExistsError):
        chunkseg.label(str(out), cls=1, name="objects", overwrite=True)
    assert _hashes(out / "objects") == before


def test_folder_record_accounts_for_every_file(tmp_path):
    folder = tmp_path / "pkg"
    (folder / "sub").mkdir(parents=True)
    for name in ("rdf.yaml", "sub/weights.pt"):
        (folder / name).write_text(name)
    write_record(folder, ["rdf.yaml", folder / "sub" / "weights.pt"], "a package")
    assert foreign_folder_entries(folder, {"rdf.yaml", "sub/weights.pt"}) == []
    (folder / "sub" / "notes.txt").write_text("mine")
    (folder / "link").symlink_to(tmp_path)
    assert foreign_folder_entries(folder, {"rdf.yaml", "sub/weights.pt"}) == [
        "link", "sub/notes.txt"]


# --- replace only on success ----------------------------------------------------------------


def test_failed_overwrite_leaves_the_previous_output_byte_identical(tmp_path):
    image = _image((200, 190))
    out = tmp_path / "seg.zarr"
    first = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), **KW)
    expected = first.logits.values
    before = _hashes(out)
    with pytest.raises(RuntimeError, match="late tile"):
        chunkseg.predict_to_zarr(image, FailsLate(limit=3), str(out), overwrite=True,
                                 scheduler="sync", **KW)
    assert _hashes(out) == before
    staging = Path(staging_path(str(out)))
    assert staging.is_dir()  # the interrupted replacement, kept for resume
    # resume finishes the replacement and swaps it in
    done = chunkseg.predict_to_zarr(image, FailsLate(limit=10**9), str(out), resume=True, **KW)
    np.testing.assert_array_equal(done.logits.values, expected)
    assert done.attrs["complete"] is True and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]


def test_successful_overwrite_swaps_in_the_new_output(tmp_path):
    out = tmp_path / "seg.zarr"
    chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), **KW)
    second = chunkseg.predict_to_zarr(_image(seed=9), numpy_conv3x3(), str(out),
                                      overwrite=True, **KW)
    clean = chunkseg.predict_to_zarr(_image(seed=9), numpy_conv3x3(),
                                     str(tmp_path / "clean.zarr"), **KW)
    np.testing.assert_array_equal(second.logits.values, clean.logits.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.zarr", "seg.zarr"]


def test_a_new_overwrite_clears_a_dead_runs_staging_folder(tmp_path):
    image = _image((200, 190))
    out = tmp_path / "seg.zarr"
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), **KW)
    with pytest.raises(RuntimeError):
        chunkseg.predict_to_zarr(image, FailsLate(limit=3), str(out), overwrite=True,
                                 scheduler="sync", **KW)
    ds = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), overwrite=True, **KW)
    assert ds.attrs["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]


def test_a_foreign_staging_folder_is_never_deleted(tmp_path):
    out = tmp_path / "seg.zarr"
    chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), **KW)
    staging = Path(staging_path(str(out)))
    staging.mkdir()
    (staging / "mine.txt").write_text("mine")
    before = _hashes(out, staging)
    with pytest.raises(OutputExistsError, match="did not write"):
        chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), overwrite=True, **KW)
    assert _hashes(out, staging) == before


def test_failed_ingest_overwrite_keeps_the_previous_store(tmp_path):
    out = tmp_path / "img.zarr"
    chunkseg.ingest(_image(), str(out), chunks=50)
    before = _hashes(out)
    import dask.array as da

    def late_failure(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1):
            raise OSError("the source went away")
        return block

    source = da.from_array(_image(seed=8), chunks=50).map_blocks(late_failure, dtype=np.uint8)
    with pytest.raises(OSError, match="went away"):
        chunkseg.ingest(source, str(out), chunks=50, overwrite=True)
    assert _hashes(out) == before


# --- resume checks what it trusts -------------------------------------------------------------


def _interrupted(tmp_path, src):
    out = tmp_path / "seg.zarr"
    with pytest.raises(RuntimeError, match="late tile"):
        chunkseg.predict_to_zarr(str(src), FailsLate(limit=4), str(out), scheduler="sync", **KW)
    done, total = chunkseg.output_progress(str(out))
    assert 0 < done < total
    return out


def _zarr_input(path, image):
    z = zarr.create_array(str(path), shape=image.shape, dtype="u1", chunks=(64, 64),
                          dimension_names=("y", "x"))
    z[...] = image


def test_resume_refuses_a_changed_input(tmp_path):
    src = tmp_path / "in.zarr"
    image = _image((200, 190))
    _zarr_input(src, image)
    out = _interrupted(tmp_path, src)
    shutil.rmtree(src)
    changed = image.copy()
    changed[100:110, 90:100] += 1  # the centre sample
    _zarr_input(src, changed)
    before = _hashes(out)
    with pytest.raises(InvalidValueError, match="input"):
        chunkseg.predict_to_zarr(str(src), FailsLate(limit=10**9), str(out), resume=True,
                                 **KW)
    assert _hashes(out) == before


def test_resume_refuses_a_done_chunk_whose_data_is_missing(tmp_path):
    src = tmp_path / "in.zarr"
    _zarr_input(src, _image((200, 190)))
    out = _interrupted(tmp_path, src)
    done = zarr.open_array(str(out / "chunkseg" / "done"))[...]
    jy, jx = (int(v) for v in np.argwhere(done == 1)[0])
    (out / "labels" / "c" / str(jy) / str(jx)).unlink()
    with pytest.raises(InvalidValueError, match=rf"chunk \({jy}, {jx}\)"):
        chunkseg.predict_to_zarr(str(src), FailsLate(limit=10**9), str(out), resume=True,
                                 **KW)


def test_resume_refuses_an_unreadable_manifest(tmp_path):
    src = tmp_path / "in.zarr"
    _zarr_input(src, _image((200, 190)))
    out = _interrupted(tmp_path, src)
    for chunk in (out / "chunkseg" / "done" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"\x00garbage")
    with pytest.raises(InvalidValueError, match="manifest"):
        chunkseg.predict_to_zarr(str(src), FailsLate(limit=10**9), str(out), resume=True,
                                 **KW)


def test_resume_refuses_another_chunkseg_version(tmp_path):
    src = tmp_path / "in.zarr"
    _zarr_input(src, _image((200, 190)))
    out = _interrupted(tmp_path, src)
    group = zarr.open_group(str(out), mode="r+")
    fp = dict(group.attrs["fingerprint"])
    fp[MARKER] = "0.0.1"
    group.attrs["fingerprint"] = fp
    with pytest.raises(InvalidValueError, match="chunkseg_version"):
        chunkseg.predict_to_zarr(str(src), FailsLate(limit=10**9), str(out), resume=True,
                                 **KW)


@pytest.mark.parametrize("state", ["absent", "empty folder"])
def test_resume_on_a_missing_or_empty_output_starts_the_run(tmp_path, state):
    out = tmp_path / "seg.zarr"
    if state == "empty folder":
        out.mkdir()
    ds = chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), resume=True, **KW)
    clean = chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(tmp_path / "c.zarr"), **KW)
    np.testing.assert_array_equal(ds.logits.values, clean.logits.values)


def test_fingerprint_records_the_inputs_identity(tmp_path):
    out = _output(tmp_path)
    fp = zarr.open_group(str(out), mode="r").attrs["fingerprint"]
    assert set(fp["input"]) == {"shape", "dtype", "metadata", "sample"}
    assert fp["input"]["shape"][:2] == [100, 90] and fp[MARKER] == chunkseg.__version__



# --- one writer per output: two real processes ------------------------------------------------


def _start_writer(tmp_path, out, *extra):
    """A `chunkseg predict` process with a slow model; returns it once its lease is taken."""
    import sys
    import time

    src = tmp_path / "in.zarr"
    if not src.exists():
        chunkseg.ingest(_image((300, 280)), str(src), chunks=100)
    tests = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkseg.cli", "predict", str(src), str(out), "--model",
         "model_factories:slow_conv3x3", "--tile", "32", "--overlap", "8", "--chunk", "64",
         "--no-progress", *extra], env=env, stderr=subprocess.PIPE, text=True)
    lease = out.parent / f".{out.name}.chunkseg-lease"
    deadline = time.monotonic() + 60
    while not lease.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, src


@pytest.mark.parametrize("second", ["plain", "--overwrite", "--resume"])
def test_a_second_run_on_a_leased_output_is_refused_naming_the_holder(tmp_path, capsys, second):
    out = tmp_path / "seg.zarr"
    first, src = _start_writer(tmp_path, out)
    try:
        extra = [] if second == "plain" else [second]
        code = main(["predict", str(src), str(out), "--model", "model_factories:numpy_conv3x3",
                     "--tile", "32", "--overlap", "8", "--chunk", "64", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"pid {first.pid}" in err and "being written by another run" in err
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    # the first run's output is whole and its lease gone: now a replacement may start
    assert chunkseg.open_output(str(out)).attrs["complete"] is True
    assert not (tmp_path / ".seg.zarr.chunkseg-lease").exists()
    assert main(["predict", str(src), str(out), "--model", "model_factories:numpy_conv3x3",
                 "--tile", "32", "--overlap", "8", "--chunk", "64", "--no-progress",
                 "--overwrite"]) == 0


def test_label_waits_for_no_one_while_predict_holds_the_output(tmp_path):
    out = tmp_path / "seg.zarr"
    chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), **KW)
    first, _ = _start_writer(tmp_path, out, "--overwrite")
    try:
        with pytest.raises(chunkseg.errors.OutputLockedError, match=f"pid {first.pid}"):
            chunkseg.label(str(out), cls=1)
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()


# --- the CLI's --resume takes the recorded settings ---------------------------------------------


def _late_input(tmp_path):
    from bad_models import LATE, late_image

    src = tmp_path / "in.zarr"
    chunkseg.ingest(late_image((200, 190)), str(src), chunks=64)
    return src, LATE


SETTINGS = ["--tile", "32", "--overlap", "8", "--chunk", "64", "--window", "cosine",
            "--outputs", "logits,probabilities,labels", "--dtype", "float16",
            "--classes", "cell,membrane", "--batch-size", "3", "--no-progress"]


def test_resume_with_no_other_flag_takes_the_recorded_settings(tmp_path, monkeypatch, capsys):
    src, late = _late_input(tmp_path)
    out = tmp_path / "seg.zarr"
    monkeypatch.setenv("CHUNKSEG_TEST_FAIL_ON", str(late))
    model = ["--model", "model_factories:late_raising_conv3x3"]
    assert main(["predict", str(src), str(out), *model, *SETTINGS]) == 2
    done, total = chunkseg.output_progress(str(out))
    assert 0 < done < total
    monkeypatch.delenv("CHUNKSEG_TEST_FAIL_ON")
    # a given flag must match the record
    assert main(["predict", str(src), str(out), "--resume", "--tile", "48"]) == 2
    assert "tile (was [32, 32], now [48, 48])" in capsys.readouterr().err
    assert main(["predict", str(src), str(out), "--resume", "--no-progress"]) == 0
    clean = tmp_path / "clean.zarr"
    assert main(["predict", str(src), str(clean), *model, *SETTINGS]) == 0
    a, b = chunkseg.open_output(str(out)), chunkseg.open_output(str(clean))
    for name in ("logits", "probabilities", "labels"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert list(a["class"].values) == ["cell", "membrane"] and a.logits.dtype == np.float16


def test_resume_of_nothing_still_needs_a_model(tmp_path, capsys):
    src, _ = _late_input(tmp_path)
    assert main(["predict", str(src), str(tmp_path / "new.zarr"), "--resume"]) == 2
    assert "`--model` is required" in capsys.readouterr().err
    assert main(["predict", str(src), str(tmp_path / "new.zarr"), "--resume", "--model",
                 "model_factories:numpy_conv3x3", "--no-progress"]) == 0


def test_an_unfinished_ingest_is_marked_and_refused_as_an_input(tmp_path):
    import dask.array as da

    from chunkseg.errors import InputReadError

    def late_failure(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1):
            raise OSError("the source went away")
        return block

    out = tmp_path / "img.zarr"
    source = da.from_array(_image(), chunks=50).map_blocks(late_failure, dtype=np.uint8)
    with pytest.raises(OSError, match="went away"):
        chunkseg.ingest(source, str(out), chunks=50)
    assert zarr.open_array(str(out / "0"), mode="r").attrs["complete"] is False
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is False
    with pytest.raises(InputReadError, match="did not finish"):
        chunkseg.predict_to_zarr(str(out), numpy_conv3x3(), str(tmp_path / "seg.zarr"), **KW)
    assert not (tmp_path / "seg.zarr").exists()
    assert main(["predict", str(out), str(tmp_path / "seg.zarr"), "--model",
                 "model_factories:numpy_conv3x3", "--no-progress"]) == 2
    chunkseg.ingest(_image(), str(out), chunks=50, overwrite=True)
    assert zarr.open_array(str(out / "0"), mode="r").attrs["complete"] is True


def test_a_single_file_is_replaced_only_when_its_writer_succeeds(tmp_path):
    from chunkseg.outputs._lifecycle import replacing

    path = tmp_path / "report.json"
    path.write_text("earlier")
    with pytest.raises(RuntimeError, match="half"):
        with replacing(path) as part:
            part.write_text("half of a new")
            raise RuntimeError("half-way")
    assert path.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with replacing(path) as part:
        assert part.suffix == ".json" and part.parent == tmp_path
        part.write_text("new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_clear_error(tmp_path):
    from chunkseg.errors import OutputWriteError

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError, match="cannot be written here"):
            chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(folder / "seg.zarr"), **KW)
    finally:
        folder.chmod(0o755)


def test_a_file_where_the_folder_should_be_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(tmp_path / "seg.zarr"),
                                   outputs="labels", **KW)
    del out
    chunkseg.label(str(tmp_path / "seg.zarr"), cls=1)
    assert main(["regions", str(tmp_path / "seg.zarr"), str(tmp_path / "file" / "t.parquet")]) == 2
    assert "failed" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "seg.zarr" / "labels"), str(tmp_path / "file" / "o.zarr"),
                 "--model", "model_factories:numpy_conv3x3", "--no-progress"]) == 2


# --- every Zarr writer x every foreign entry --------------------------------------------------


def _make(writer, out, overwrite=False):
    if writer == "ingest":
        chunkseg.ingest(_image(), str(out), chunks=50, overwrite=overwrite)
    elif writer == "predict_instances":
        chunkseg.predict_instances(_image(), threshold_instances(), str(out),
                                   overwrite=overwrite, **KW)
    elif writer == "demo mosaic":
        from chunkseg.demo import build_mosaic

        build_mosaic(str(out), rows=1, cols=1, overwrite=overwrite)
    else:
        chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), overwrite=overwrite,
                                 ome=writer.endswith("ome"), **KW)


def _a_chunk_folder(out: Path) -> Path:
    return next(p for p in sorted(out.rglob("c")) if p.is_dir())


GENERIC_FOREIGN = {
    "file at the root": lambda out: _put(out / "notes.txt"),
    "file in a chunk folder": lambda out: _put(_a_chunk_folder(out) / "mine.txt"),
    "file deep in chunks": lambda out: _put(_a_chunk_folder(out) / "0" / "x" / "y.txt"),
    "file in a new subfolder": lambda out: _put(out / "mine" / "data.bin"),
    "user Zarr array": _user_array,
    "user Zarr group": lambda out: zarr.open_group(str(out / "theirs"), mode="w"),
    "symlink": lambda out: (out / "link").symlink_to(out.parent),
}


@pytest.mark.filterwarnings("ignore::chunkseg.errors.LargeObjectWarning")
@pytest.mark.parametrize("case", GENERIC_FOREIGN)
@pytest.mark.parametrize("writer", ["predict_to_zarr", "predict_to_zarr ome", "ingest",
                                    "predict_instances", "demo mosaic"])
def test_every_zarr_writer_keeps_every_foreign_entry(tmp_path, writer, case):
    if writer.endswith("ome"):
        pytest.importorskip("ome_zarr")
    out = tmp_path / "out.zarr"
    _make(writer, out)
    assert foreign_zarr_entries(str(out)) == []
    _make(writer, out, overwrite=True)  # its own output: replaced
    GENERIC_FOREIGN[case](out)
    assert foreign_zarr_entries(str(out)), case
    before = _hashes(out)
    with pytest.raises(OutputExistsError, match="did not write"):
        _make(writer, out, overwrite=True)
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
