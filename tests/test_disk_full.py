"""A full disk while writing the output: one clear ``OutputWriteError``, the output marked
incomplete with the chunks finished before, nothing else touched; ``resume`` then finishes it
bit-identical to a clean run.

Three ways to fill the disk: a real small tmpfs (root only; skipped where it cannot be mounted),
a zarr store object whose chunk writes fail with ENOSPC after a few, and the same failure
patched into :class:`zarr.storage.LocalStore` for a plain path store (through the CLI).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3
from zarr.storage import LocalStore

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import OutputWriteError

pytestmark = pytest.mark.timeout(120)

KW = dict(tile=48, overlap=16, chunks=64, outputs="logits,labels")
CLI = ["--model", "model_factories:numpy_conv3x3", "--tile", "48", "--overlap", "16",
       "--chunk", "64", "--outputs", "logits,labels", "--no-progress"]
FIX = "free space (or fix the store) and finish the run with resume=True (CLI: --resume)"
CLI_FIX = "free space (or fix the store) and finish the run with --resume."  # chunkseg.cli's terms
NO_SPACE = f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"


def _input(path: Path, shape=(200, 180), seed=3) -> None:
    image = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)  # incompressible
    z = zarr.create_array(str(path), shape=shape, dtype="u1", chunks=(100, 100),
                          dimension_names=("y", "x"))
    z[...] = image


def _snapshot(folder: Path, skip: str) -> dict:
    """Every file under ``folder`` outside ``folder / skip``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] != skip}


def _same(a, b) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for name in ("logits", "labels"):
        np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=name)


def _chunk_named(message: str) -> tuple[int, int]:
    m = re.search(r"output chunk \((\d+), (\d+)\)", message)
    assert m, message
    return int(m[1]), int(m[2])


VARIABLES = ("logits/", "probabilities/", "labels/")  # not the manifest, not the coordinates


class FullDisk(LocalStore):
    """A local store whose output-variable chunk writes fail with ENOSPC after ``allow`` of
    them (metadata and the manifest still write); ``allow=None`` never fails."""

    def __init__(self, root, *, read_only: bool = False, allow: int | None = None):
        super().__init__(root, read_only=read_only)
        self.allow, self.writes, self.lock = allow, 0, threading.Lock()

    def with_read_only(self, read_only: bool = False):
        return LocalStore(self.root, read_only=read_only)  # reading never fails

    async def set(self, key, value):
        if self.allow is not None and "/c/" in key and key.startswith(VARIABLES):
            with self.lock:
                self.writes += 1
                full = self.writes > self.allow
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
        await super().set(key, value)


def test_store_object_full_raises_clearly_marks_incomplete_and_resumes(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _input(work / "in.zarr")
    (work / "notes.txt").write_text("a file beside the output\n")
    before = _snapshot(work, "out.zarr")
    out = work / "out.zarr"
    store = FullDisk(out, allow=7)  # 3 chunks (logits + labels each), then logits of a 4th
    with pytest.raises(OutputWriteError) as info:
        chunkseg.predict_to_zarr(str(work / "in.zarr"), numpy_conv3x3(), store,
                                 scheduler="sync", **KW)
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    message = str(err)
    jy, jx = _chunk_named(message)
    assert "of 'labels'" in message  # the write that failed: the 4th chunk's second variable
    assert "'FullDisk'" in message  # describe_location of a store object
    assert NO_SPACE in message and FIX in message
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["complete"] is False
    assert chunkseg.output_progress(str(out)) == (3, 12)
    assert group["chunkseg/done"][jy, jx] == 0
    assert not (out / "labels" / "c" / str(jy) / str(jx)).exists()
    assert not list(out.rglob("*.partial"))
    assert _snapshot(work, "out.zarr") == before  # the input and the file beside: unchanged
    assert sorted(p.name for p in work.iterdir()) == ["in.zarr", "notes.txt", "out.zarr"]

    # space freed: a store that no longer fails
    ds = chunkseg.predict_to_zarr(str(work / "in.zarr"), numpy_conv3x3(), LocalStore(out),
                                  resume=True, **KW)
    assert ds.attrs["complete"] is True
    assert chunkseg.output_progress(str(out)) == (12, 12)
    chunkseg.predict_to_zarr(str(work / "in.zarr"), numpy_conv3x3(), str(tmp_path / "ref.zarr"),
                             **KW)
    _same(str(out), str(tmp_path / "ref.zarr"))
    assert _snapshot(work, "out.zarr") == before


def test_path_store_full_cli_one_line_then_resume(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    _input(work / "in.zarr")
    (work / "notes.txt").write_text("a file beside the output\n")
    before = _snapshot(work, "out.zarr")
    out = work / "out.zarr"
    original = LocalStore.set
    writes = {"n": 0}
    lock = threading.Lock()

    async def full_after_5(self, key, value):
        if Path(self.root) == out and "/c/" in key and key.startswith(VARIABLES + ("chunkseg/",)):
            with lock:
                writes["n"] += 1
                full = writes["n"] > 5
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
        await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full_after_5)
    args = ["predict", str(work / "in.zarr"), str(out), *CLI]
    assert main(args) == 2  # dask's threads
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("chunkseg predict: error: writing output chunk ("), line
    assert f"to {str(out)!r}" in line and NO_SPACE in line and CLI_FIX in line
    assert re.search(r"of '(logits|labels|chunkseg/done)'", line), line
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is False
    done, total = chunkseg.output_progress(str(out))
    # 5 chunk writes succeeded, 3 per chunk (logits, labels, then its manifest element), at
    # most 2 chunks in flight (2 threads): exactly one chunk is whole and marked
    assert (done, total) == (1, 12)
    assert _snapshot(work, "out.zarr") == before

    monkeypatch.setattr(LocalStore, "set", original)  # space freed
    assert main(args + ["--resume"]) == 0
    assert main(["predict", str(work / "in.zarr"), str(tmp_path / "ref.zarr"), *CLI]) == 0
    _same(str(out), str(tmp_path / "ref.zarr"))
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert _snapshot(work, "out.zarr") == before


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs at ``tmp_path / "small"`` (skips where it cannot be mounted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755",
                          "chunkseg-test", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        for _ in range(50):  # a dask thread may still be finishing its task
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_filesystem_cli_one_line_then_resume(small_fs, tmp_path, capsys):
    src, out = small_fs / "in.zarr", small_fs / "out.zarr"
    _input(src, shape=(400, 400), seed=11)  # 160 kB of noise: fits
    (small_fs / "notes.txt").write_text("a file beside the output\n")
    free = shutil.disk_usage(small_fs).free
    assert 64 * 1024 < free < 2 * 49 * 64 * 64 * 4  # the float32 logits alone do not fit
    before = _snapshot(small_fs, "out.zarr")
    args = ["predict", str(src), str(out), *CLI]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("chunkseg predict: error: writing output chunk ("), line
    assert f"to {str(out)!r}" in line and NO_SPACE in line and CLI_FIX in line
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is False
    done, total = chunkseg.output_progress(str(out))
    assert 0 < done < total
    assert _snapshot(small_fs, "out.zarr") == before
    assert sorted(p.name for p in small_fs.iterdir()) == ["in.zarr", "notes.txt", "out.zarr"]

    # free space: grow the filesystem
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
    assert main(args + ["--resume"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is True
    assert main(["predict", str(src), str(tmp_path / "ref.zarr"), *CLI]) == 0
    _same(str(out), str(tmp_path / "ref.zarr"))
    assert _snapshot(small_fs, "out.zarr") == before
