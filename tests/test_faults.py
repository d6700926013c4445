"""Faults on a real cluster (``dask scheduler`` + ``dask worker`` processes on loopback): a worker
killed mid-run, the scheduler killed mid-run; and resuming afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client
from test_cluster import START_TIMEOUT, _dask_command, _log_tails, _start_scheduler, _stop

import chunkseg
from chunkseg.cli import main

pytestmark = pytest.mark.timeout(240)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ARGS = ["--model", "model_factories:slow_conv3x3", "--tile", "48", "--overlap", "16",
        "--chunk", "64", "--outputs", "logits,labels", "--no-progress"]


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


def _wait_for_chunks(out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if chunkseg.output_progress(str(out))[0] >= n:
                return
        except Exception:  # the output is not created yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} chunks written in {timeout} s")


def _predict(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chunkseg.cli", "predict", str(src),
                             str(out), *ARGS, *extra], env=_env(), stdout=subprocess.PIPE,
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
        _wait_for_chunks(out, 3)
        (workers[0] if victim == "worker" else scheduler).send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=180)
    finally:
        _stop(workers + [scheduler])
    return proc, stderr, src, out


def _clean_run(src: Path, ref: Path) -> None:
    sys.path.insert(0, str(TESTS))
    assert main(["predict", str(src), str(ref), *ARGS]) == 0


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
    sys.path.insert(0, str(TESTS))
    assert main(["predict", str(src), str(out), *ARGS, "--resume"]) == 0  # locally
    _clean_run(src, tmp_path / "ref.zarr")
    _same(out, tmp_path / "ref.zarr")
