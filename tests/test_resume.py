"""Completion manifest and resume: an interrupted run finishes bit-identical to a clean one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import IncompleteOutputWarning

TESTS = Path(__file__).resolve().parent
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
        self.calls, self.limit, self.lock = 0, limit, threading.Lock()
        self.model = numpy_conv3x3()

    def __call__(self, batch):
        with self.lock:
            self.calls += 1
            if self.calls > self.limit:
                raise RuntimeError("model failed on a late tile")
        return self.model(batch)


def _files(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*")
            if p.is_file() and "c" in p.relative_to(root).parts
            and p.relative_to(root).parts[0] != "chunkseg"}


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
    before = _files(out)
    counting = FailsLate(limit=10**9)
    resumed = chunkseg.predict_to_zarr(str(src), counting, str(out), resume=True, **KW)
    assert resumed.attrs["complete"] is True
    for name in ("logits", "probabilities", "labels"):
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)
    after = _files(out)
    # the chunks finished before were neither recomputed nor rewritten
    manifest = zarr.open_group(str(out))["chunkseg/done"][...]
    assert manifest.all()
    kept = [k for k, t in before.items() if after.get(k) == t]
    assert len(kept) >= 3 * done
    full = FailsLate(limit=10**9)
    chunkseg.predict(image, full, **KW).logits.compute()
    assert counting.calls < full.calls
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
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if chunkseg.output_progress(str(out))[0] >= 3:
                    break
            except Exception:  # not created yet
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done, total = chunkseg.output_progress(str(out))
    assert 3 <= done < total
    assert main(["info", str(out)]) == 0
    assert f"complete   no: {done} of {total}" in capsys.readouterr().out
    sys.path.insert(0, str(TESTS))
    assert main(args[:2] + [str(out)] + args[2:] + ["--resume"]) == 0
    assert main(args[:2] + [str(clean)] + args[2:]) == 0
    a, b = zarr.open_group(str(out)), zarr.open_group(str(clean))
    for name in ("logits", "labels"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    assert main(["info", str(out)]) == 0
    assert "complete   yes" in capsys.readouterr().out
