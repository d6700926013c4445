"""Completion manifest and resume: an interrupted run finishes bit-identical to a clean one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import model_factories
import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import IncompleteOutputWarning

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
KW = dict(tile=48, overlap=16, chunks=64, outputs="logits,probabilities,labels")


def _image(shape=(300, 260)):
    return (np.random.default_rng(5).random(shape) * 255).astype(np.uint8)


def _input(path, image):
    z = zarr.create_array(str(path), shape=image.shape, dtype="u1", chunks=(100, 100),
                          dimension_names=("y", "x"))
    z[...] = image


class FailsLate:
    """The conv model; raises once ``limit`` batches have run (a fault late in the run)."""

    def __init__(self, limit):
        self.calls, self.tiles, self.limit, self.lock = 0, 0, limit, threading.Lock()
        self.model = numpy_conv3x3()

    def __call__(self, batch):
        with self.lock:
            self.calls += 1
            if self.calls > self.limit:
                raise RuntimeError("model failed on a late tile")
            self.tiles += len(batch)
        return self.model(batch)


def chunk_files(root) -> dict[str, tuple[int, int]]:
    """Every chunk (or shard) object of an output's variables and of its manifest
    (``chunkseg/done``): key -> (mtime_ns, inode); writing the object again changes them."""
    root = Path(root)
    out = {}
    for p in root.rglob("*"):
        parts = p.relative_to(root).parts
        if p.is_file() and "c" in parts and (parts[0] in chunkseg.OUTPUTS
                                             or parts[:2] == ("chunkseg", "done")):
            st = p.stat()
            out["/".join(parts)] = (st.st_mtime_ns, st.st_ino)
    return out


def finished_chunks(root) -> set[tuple[int, int]]:
    """The output chunks ``(jy, jx)`` its manifest marks as written."""
    done = zarr.open_group(str(root), mode="r")["chunkseg/done"][...]
    return {(int(jy), int(jx)) for jy, jx in np.argwhere(done == 1)}


def _chunk_of(key: str) -> tuple[int, int]:
    """The output chunk an object belongs to: its last two key parts (one object per output
    chunk, or per shard, which is the output chunk, when sharded)."""
    jy, jx = key.split("/")[-2:]
    return int(jy), int(jx)


def assert_resume_wrote_only_missing(root, before: dict, finished: set, plan) -> None:
    """After a resume of the output at ``root``: the objects of the chunks ``finished`` before it
    (``before`` = :func:`chunk_files` then) are the same files, untouched; every object of every
    other chunk was written by the resume; nothing else is there. Also checks that some block
    of ``plan`` feeds only finished chunks, so that a resume running it again would show in
    the tiles counted (the callers compare them with :func:`tiles_to_resume`)."""
    after = chunk_files(root)
    grid = {(jy, jx) for jy in range(plan.chunk_grid[0]) for jx in range(plan.chunk_grid[1])}
    assert finished and finished < grid  # the interruption left some, not all
    assert tiles_to_resume(plan, finished) < plan.n_tiles
    assert {_chunk_of(k) for k in after} == grid
    rewritten = sorted(k for k, stamp in after.items()
                       if _chunk_of(k) in finished and before.get(k) != stamp)
    assert not rewritten, f"finished before the resume, rewritten by it: {rewritten}"
    kept = sorted(k for k, stamp in after.items()
                  if _chunk_of(k) not in finished and before.get(k) == stamp)
    assert not kept, f"missing before the resume, not written by it: {kept}"
    for jy, jx in finished:  # each variable's object and the manifest's, all there before
        assert sum(_chunk_of(k) == (jy, jx) for k in before) == \
            sum(_chunk_of(k) == (jy, jx) for k in after)


def tiles_to_resume(plan, finished: set) -> int:
    """Tiles a resume must run: those of every block that feeds a chunk not ``finished``.

    Block ``(iy, ix)`` is the tiles chunk ``(iy, ix)`` owns (``plan.owned_tiles``); it feeds the
    chunks its extent (``plan.block_extents``), inside the image, overlaps. A block feeding
    only finished chunks must not run again."""
    owned, ext = plan.owned_tiles(), plan.block_extents()

    def feeds(axis, i, j):
        a, b = max(ext[axis][i][0], 0), min(ext[axis][i][1], plan.image_shape[axis])
        c = plan.chunks[axis]
        return a < min((j + 1) * c, plan.image_shape[axis]) and b > j * c

    ny, nx = plan.chunk_grid
    n = 0
    for iy in range(ny):
        for ix in range(nx):
            tiles = (owned[0][iy][1] - owned[0][iy][0]) * (owned[1][ix][1] - owned[1][ix][0])
            if tiles and any(feeds(0, iy, jy) and feeds(1, ix, jx) and (jy, jx) not in finished
                             for jy in range(ny) for jx in range(nx)):
                n += tiles
    return n


@contextlib.contextmanager
def counting_tiles(factory: str):
    """Within it, the model spec ``model_factories:<factory>`` loads in this process the same
    model counting the tiles it runs; yields the count, a one-element list. ``load_model``'s
    cache is cleared on entry and exit so that the spec loads the counting model, and only
    here."""
    original = getattr(model_factories, factory)
    count, lock = [0], threading.Lock()

    def counting():
        model = original()

        def run(batch):
            with lock:
                count[0] += len(batch)
            return model(batch)

        return run

    chunkseg.load_model.cache_clear()
    setattr(model_factories, factory, counting)
    try:
        yield count
    finally:
        setattr(model_factories, factory, original)
        chunkseg.load_model.cache_clear()


def test_interrupted_run_is_marked_and_resumes_bit_identical(tmp_path):
    image = _image()
    src = tmp_path / "in.zarr"
    _input(src, image)
    clean = chunkseg.predict_to_zarr(str(src), numpy_conv3x3(), str(tmp_path / "clean.zarr"),
                                     **KW)
    out = tmp_path / "out.zarr"
    failing = FailsLate(limit=12)
    with pytest.raises(RuntimeError, match="late tile"):
        chunkseg.predict_to_zarr(str(src), failing, str(out), scheduler="sync", **KW)
    done, total = chunkseg.output_progress(str(out))
    assert 0 < done < total
    with pytest.warns(IncompleteOutputWarning, match=f"{done} of {total} chunks"):
        chunkseg.open_output(str(out))
    finished, before = finished_chunks(out), chunk_files(out)
    assert len(finished) == done
    counting = FailsLate(limit=10**9)
    resumed = chunkseg.predict_to_zarr(str(src), counting, str(out), resume=True, **KW)
    assert resumed.attrs["complete"] is True
    for name in ("logits", "probabilities", "labels"):
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)
    assert zarr.open_group(str(out))["chunkseg/done"][...].all()
    # the chunks finished before were neither rewritten nor recomputed; only the others were
    plan = chunkseg.plan_tiles(image.shape, KW["tile"], KW["overlap"], KW["chunks"])
    assert_resume_wrote_only_missing(out, before, finished, plan)
    assert counting.tiles == tiles_to_resume(plan, finished) + 1  # + the probe of the 1st tile
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunkseg.open_output(str(out))  # complete: no warning


def test_resume_refuses_other_settings_and_other_stores(tmp_path):
    image = _image((120, 130))
    out = tmp_path / "out.zarr"
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), **KW)
    with pytest.raises(ValueError, match="tile .was \\[48, 48\\], now \\[64, 64\\]"):
        chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), resume=True,
                                 **dict(KW, tile=64))
    other = tmp_path / "other.zarr"
    zarr.create_array(str(other), shape=(3,), dtype="u1")
    with pytest.raises(Exception, match="chunkseg did not write|resume"):
        chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(other), resume=True, **KW)


def test_cli_killed_part_way_then_resumed(tmp_path, capsys):
    image = _image((400, 400))
    src, out, clean = tmp_path / "in.zarr", tmp_path / "out.zarr", tmp_path / "clean.zarr"
    _input(src, image)
    args = ["predict", str(src), "--model", "model_factories:slow_conv3x3", "--tile", "48",
            "--overlap", "16", "--chunk", "64", "--outputs", "logits,labels", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
    proc = subprocess.Popen([sys.executable, "-m", "chunkseg.cli"] + args[:2] + [str(out)]
                            + args[2:], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    plan = chunkseg.plan_tiles(image.shape, 48, 16, 64)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:  # killed once some block feeds only finished chunks (not to be run again)
                if tiles_to_resume(plan, finished_chunks(out)) < plan.n_tiles:
                    break
            except Exception:  # not created yet
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done, total = chunkseg.output_progress(str(out))
    assert 3 <= done < total
    assert main(["info", str(out)]) == 0
    assert f"complete   no: {done} of {total}" in capsys.readouterr().out
    sys.path.insert(0, str(TESTS))
    finished, before = finished_chunks(out), chunk_files(out)
    with counting_tiles("slow_conv3x3") as tiles:
        assert main(args[:2] + [str(out)] + args[2:] + ["--resume"]) == 0
    # the chunks finished before the kill were neither rewritten nor recomputed; only the
    # others were (a chunk whose objects were partly written when killed is written again)
    assert_resume_wrote_only_missing(out, before, finished, plan)
    assert tiles[0] == tiles_to_resume(plan, finished) + 1  # + the probe of the 1st tile
    assert main(args[:2] + [str(clean)] + args[2:]) == 0
    a, b = zarr.open_group(str(out)), zarr.open_group(str(clean))
    for name in ("logits", "labels"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    assert main(["info", str(out)]) == 0
    assert "complete   yes" in capsys.readouterr().out
