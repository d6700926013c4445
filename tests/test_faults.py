"""Faults on a real cluster (``dask scheduler`` + ``dask worker`` processes on loopback): a worker
killed mid-run, the scheduler killed mid-run, a model failing late in the run (NaN or an
exception); and resuming afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client
from model_factories import FAIL_ON_ENV
from test_cluster import START_TIMEOUT, _dask_command, _log_tails, _start_scheduler, _stop
from test_resume import (
    assert_resume_wrote_only_missing,
    chunk_files,
    counting_tiles,
    finished_chunks,
    tiles_to_resume,
)

import chunkseg
from chunkseg.cli import main

pytestmark = pytest.mark.timeout(240)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ARGS = ["--model", "model_factories:slow_conv3x3", "--tile", "48", "--overlap", "16",
        "--chunk", "64", "--outputs", "logits,labels", "--no-progress"]
PLAN = chunkseg.plan_tiles((400, 400), 48, 16, 64)  # _input's image, ARGS' tile and chunk


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _cluster(logs: Path, n: int = 2):
    """A scheduler and ``n`` single-threaded workers without nannies (a killed worker stays
    dead)."""
    env = _env()
    scheduler, address = _start_scheduler(env, logs)
    workers = []
    for i in range(n):
        with open(logs / f"worker-{i}.log", "w") as log:
            workers.append(subprocess.Popen(
                _dask_command("worker") + [address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--host", "127.0.0.1",
                                           "--dashboard-address", "127.0.0.1:0"],
                env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        with Client(address, timeout=START_TIMEOUT, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=START_TIMEOUT)
    except (OSError, TimeoutError) as e:
        _stop(workers + [scheduler])
        raise RuntimeError(f"The dask workers did not start: {e}\n{_log_tails(logs)}") from e
    return scheduler, workers, address


def _input(path: Path) -> np.ndarray:
    image = (np.random.default_rng(11).random((400, 400)) * 255).astype(np.uint8)
    z = zarr.create_array(str(path), shape=image.shape, dtype="u1", chunks=(100, 100),
                          dimension_names=("y", "x"))
    z[...] = image
    return image


def _wait_for_chunks(out: Path, n: int, timeout: float = 120, plan=None) -> None:
    """Until ``n`` chunks are written and, with ``plan``, some block feeds only finished
    chunks (one a resume must not run again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if chunkseg.output_progress(str(out))[0] >= n and (
                    plan is None or tiles_to_resume(plan, finished_chunks(out)) < plan.n_tiles):
                return
        except Exception:  # the output is not created yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} chunks written in {timeout} s")


def _predict(src: Path, out: Path, *extra: str, args: list[str] = ARGS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chunkseg.cli", "predict", str(src),
                             str(out), *args, *extra], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _same(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a)), zarr.open_group(str(b))
    for name in ("logits", "labels"):
        np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=name)


def _run_and_kill(tmp_path: Path, victim: str) -> tuple[subprocess.Popen, str, Path, Path]:
    """Run the CLI on a fresh cluster and SIGKILL ``victim`` ("worker" or "scheduler") once
    3 chunks are written; returns the finished process, its stderr, the input and the output."""
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _input(src)
    (logs := tmp_path / "logs").mkdir()
    scheduler, workers, address = _cluster(logs)
    try:
        proc = _predict(src, out, "--scheduler", address)
        # the scheduler late enough for the resume to have a block it must not run again
        _wait_for_chunks(out, 3, plan=PLAN if victim == "scheduler" else None)
        (workers[0] if victim == "worker" else scheduler).send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=180)
    finally:
        _stop(workers + [scheduler])
    return proc, stderr, src, out


def _clean_run(src: Path, ref: Path, args: list[str] = ARGS) -> None:
    sys.path.insert(0, str(TESTS))
    assert main(["predict", str(src), str(ref), *args]) == 0


def _resume_only_missing(src: Path, out: Path, args: list[str] = ARGS) -> None:
    """``--resume`` (locally, in this process) finishes the output; the chunks finished before
    it are neither rewritten nor recomputed, and only the others are written."""
    sys.path.insert(0, str(TESTS))
    finished, before = finished_chunks(out), chunk_files(out)
    with counting_tiles(args[args.index("--model") + 1].split(":")[1]) as tiles:
        assert main(["predict", str(src), str(out), *args, "--resume"]) == 0
    assert_resume_wrote_only_missing(out, before, finished, PLAN)
    assert tiles[0] == tiles_to_resume(PLAN, finished) + 1  # + the probe of the 1st tile


def test_worker_killed_mid_run_completes_equal_to_local(tmp_path):
    proc, stderr, src, out = _run_and_kill(tmp_path, "worker")  # a worker lost part-way
    assert proc.returncode == 0, stderr[-2000:]
    _clean_run(src, tmp_path / "ref.zarr")
    _same(out, tmp_path / "ref.zarr")
    assert zarr.open_group(str(out)).attrs["complete"] is True


def test_scheduler_killed_mid_run_fails_clearly_then_resumes(tmp_path):
    proc, stderr, src, out = _run_and_kill(tmp_path, "scheduler")
    assert proc.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("chunkseg predict: error: the run was interrupted"), stderr[-2000:]
    assert "--resume" in last  # one line (distributed logs its own reconnection attempts)
    done, total = chunkseg.output_progress(str(out))
    assert 3 <= done < total
    _resume_only_missing(src, out)  # locally
    _clean_run(src, tmp_path / "ref.zarr")
    _same(out, tmp_path / "ref.zarr")


MARK = (300, 300)
"""The one input pixel of value 255 (``_input``'s noise stays below), which the late models
fail on: only the block owning the tiles over it, late in row-major order, fails; the ones
before succeed on both workers."""


def _late_failure(tmp_path: Path, monkeypatch, model: str):
    """Run the CLI on a fresh cluster whose workers run ``model``, failing on the tiles over
    :data:`MARK`; returns the finished process, its stderr, the input, the output and the CLI
    arguments."""
    args = [*ARGS[:ARGS.index("--model")], "--model", f"model_factories:{model}",
            *ARGS[ARGS.index("--model") + 2:]]
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    assert _input(src).max() < 255
    zarr.open_array(str(src), mode="r+")[MARK] = 255
    (logs := tmp_path / "logs").mkdir()
    monkeypatch.setenv(FAIL_ON_ENV, "255")  # inherited by the workers and the CLI
    scheduler, workers, address = _cluster(logs)
    try:
        proc = _predict(src, out, "--scheduler", address, args=args)
        _, stderr = proc.communicate(timeout=180)
    finally:
        _stop(workers + [scheduler])
    monkeypatch.delenv(FAIL_ON_ENV)  # the model is fixed: the same spec no longer fails
    return proc, stderr, src, out, args


def _late_progress(out: Path) -> int:
    """Chunks written; checks that many are (the failure came late) but not all."""
    done, total = chunkseg.output_progress(str(out))
    assert total // 3 <= done < total, (done, total)
    return done


def _resume_equals_clean(tmp_path: Path, src: Path, out: Path, args: list[str], capsys) -> None:
    """``chunkseg info`` says incomplete; ``--resume`` (locally) finishes it equal to a clean
    local run, writing only the chunks missing (:func:`_resume_only_missing`)."""
    done, total = chunkseg.output_progress(str(out))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert f"complete   no: {done} of {total} chunks written" in capsys.readouterr().out
    _resume_only_missing(src, out, args)
    assert zarr.open_group(str(out)).attrs["complete"] is True
    _clean_run(src, tmp_path / "ref.zarr", args)
    _same(out, tmp_path / "ref.zarr")


def test_model_nan_late_on_cluster_fails_in_one_line_then_resumes(tmp_path, monkeypatch, capsys):
    proc, stderr, src, out, args = _late_failure(tmp_path, monkeypatch, "late_nan_conv3x3")
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    m = re.match(r"chunkseg predict: error: in chunk \((\d+), (\d+)\) \(y, x of the chunk "
                 r"grid\), tiles \d+\.\.\d+ \(y\) x \d+\.\.\d+ \(x\) of the tile grid, image "
                 r"pixels y (\d+)\.\.(\d+), x (\d+)\.\.(\d+): .*non-finite", last)
    assert m, stderr[-2000:]
    iy, ix, y0, y1, x0, x1 = map(int, m.groups())
    assert y0 <= MARK[0] < y1 and x0 <= MARK[1] < x1  # the block over the marked pixel
    assert zarr.open_group(str(out)).attrs["complete"] is False
    _late_progress(out)
    assert zarr.open_group(str(out))["chunkseg/done"][iy, ix] == 0
    _resume_equals_clean(tmp_path, src, out, args, capsys)


def test_model_raising_late_on_cluster_fails_in_one_line_then_resumes(tmp_path, monkeypatch,
                                                                       capsys):
    proc, stderr, src, out, args = _late_failure(tmp_path, monkeypatch, "late_raising_conv3x3")
    # the model's exception becomes a ModelRunError naming the chunk (pickled from the worker)
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    m = re.match(r"chunkseg predict: error: in chunk \((\d+), (\d+)\) \(y, x of the chunk "
                 r"grid\), .*`--model` raised RuntimeError on a batch of shape .*: model failed on "
                 r"a late tile .*--resume", last)
    assert m, stderr[-2000:]
    assert zarr.open_group(str(out)).attrs["complete"] is False
    _late_progress(out)
    assert zarr.open_group(str(out))["chunkseg/done"][int(m[1]), int(m[2])] == 0
    _resume_equals_clean(tmp_path, src, out, args, capsys)
