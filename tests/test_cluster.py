"""A real multi-process Dask cluster: ``dask scheduler`` and two ``dask worker`` processes on
loopback, started with distributed's own command-line programs. On it the CLI and the engine
write exactly what the local threaded scheduler writes, and each worker loads a named model once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from distributed import Client
from model_factories import LOAD_LOG_ENV, numpy_conv3x3

import chunkseg
from chunkseg.cli import main

pytestmark = pytest.mark.timeout(180)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
START_TIMEOUT = 30.0
"""Seconds the scheduler and the workers get to start."""
SHAPE = (300, 260)
TILE, OVERLAP, CHUNK = 40, 8, 64  # stride 32; chunk = 2 strides -> 5 x 5 computation chunks
OUTPUTS = "logits,probabilities,labels"
MODEL = "model_factories:numpy_conv3x3"
LOGGED_MODEL = "model_factories:logged_conv3x3"
GRID_ARGS = ["--tile", str(TILE), "--overlap", str(OVERLAP), "--chunk", str(CHUNK)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_command(program: str) -> list[str]:
    """``dask scheduler|worker`` of this interpreter's environment, or its module form."""
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script), program]
    return [sys.executable, "-m", f"distributed.cli.dask_{program}"]


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate all, wait, then kill those still running."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _log_tails(logs: Path, n: int = 15) -> str:
    return "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-n:])
                     for f in sorted(logs.glob("*.log")))


def _start_scheduler(env: dict, logs: Path) -> tuple[subprocess.Popen, str]:
    """A scheduler on a free loopback port; another port if it dies at start (port taken)."""
    for attempt in range(3):
        port = _free_port()
        with open(logs / f"scheduler-{attempt}.log", "w") as log:
            proc = subprocess.Popen(
                _dask_command("scheduler") + ["--host", "127.0.0.1", "--port", str(port),
                                              "--no-dashboard",
                                              "--dashboard-address", "127.0.0.1:0"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, f"tcp://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
        _stop([proc])
    raise RuntimeError(f"The dask scheduler did not start.\n{_log_tails(logs)}")


@pytest.fixture(scope="module")
def load_log(tmp_path_factory) -> Path:
    """The file ``model_factories.logged_conv3x3`` appends the pid of each load to."""
    return tmp_path_factory.mktemp("loads") / "loads.log"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, load_log):
    """Address of a scheduler with two single-threaded worker processes, all on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = dict(os.environ)
    # workers import model_factories (tests/) and chunkseg (the repository) for the specs
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env[LOAD_LOG_ENV] = str(load_log)
    workers: list[subprocess.Popen] = []
    scheduler = None
    try:
        scheduler, address = _start_scheduler(env, logs)
        for i in range(2):
            with open(logs / f"worker-{i}.log", "w") as log:
                workers.append(subprocess.Popen(
                    _dask_command("worker") + [address, "--nthreads", "1", "--nworkers", "1",
                                               "--no-dashboard", "--host", "127.0.0.1",
                                               "--dashboard-address", "127.0.0.1:0"],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                ))
        try:
            with Client(address, timeout=START_TIMEOUT, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=START_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise RuntimeError(f"The dask workers did not start: {e}\n{_log_tails(logs)}") from e
        yield address
    finally:
        # workers first: with the scheduler gone first they take ~8 s longer to exit
        _stop(workers)
        _stop([scheduler] if scheduler else [])


@pytest.fixture(scope="module")
def client(cluster):
    """A client of ``cluster`` that never becomes this process's default scheduler."""
    with Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def image_store(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A 300 x 260 uint8 image in a Zarr store of 64 px chunks."""
    img = np.random.default_rng(7).integers(0, 256, SHAPE).astype(np.uint8)
    path = tmp_path_factory.mktemp("input") / "img.zarr"
    chunkseg.ingest(img, str(path), chunks=64)
    return str(path), img


@pytest.fixture(scope="module")
def local_result(image_store, tmp_path_factory) -> xr.Dataset:
    """The same prediction with dask's threaded scheduler, in this process."""
    out = tmp_path_factory.mktemp("local") / "seg.zarr"
    return chunkseg.predict_to_zarr(image_store[0], MODEL, str(out), tile=TILE, overlap=OVERLAP,
                                    chunks=CHUNK, outputs=OUTPUTS, scheduler="threads")


def _n_tasks() -> int:
    """Accumulate tasks: one per computation chunk."""
    return chunkseg.plan_tiles(SHAPE, TILE, OVERLAP, CHUNK).n_chunks


def _assert_same(got: xr.Dataset, expected: xr.Dataset) -> None:
    assert set(got.data_vars) == set(expected.data_vars) == set(OUTPUTS.split(","))
    for name, b in expected.data_vars.items():
        a = got[name]
        assert (a.dims, a.shape, a.dtype) == (b.dims, b.shape, b.dtype), name
        assert a.chunks == b.chunks, name
        np.testing.assert_array_equal(a.values, b.values, err_msg=name)


def test_reference_spans_many_chunks_and_tiles_matter(image_store, local_result):
    assert _n_tasks() == 25
    # predict_to_zarr's rolling window and fused writer give exactly the lazy graph's result
    plain = chunkseg.predict(image_store[1], MODEL, tile=TILE, overlap=OVERLAP, chunks=CHUNK,
                             outputs=OUTPUTS)
    _assert_same(plain, local_result)
    # the 3x3 convolution sees the zero padding at every tile edge, so the output is a blend
    # of tiles that disagree near their borders, not the model applied to the whole image
    whole = numpy_conv3x3()(image_store[1][None, None].astype(np.float32))[0]
    diff = np.abs(local_result.logits.values - whole)
    assert diff.max() > 1e-3 and np.median(diff) < 1e-6


def test_cli_on_cluster_equals_local(cluster, image_store, local_result, tmp_path, capsys):
    out = tmp_path / "seg.zarr"
    code = main(["predict", image_store[0], str(out), "--model", MODEL, "--scheduler", cluster,
                 *GRID_ARGS, "--outputs", OUTPUTS, "--no-progress"])
    assert code == 0, capsys.readouterr().err
    _assert_same(xr.open_zarr(out), local_result)


def _model_cache_stats() -> tuple[int, int, int]:
    """(pid, loads, calls) of ``chunkseg.load_model`` in the process it runs in."""
    info = chunkseg.load_model.cache_info()
    return os.getpid(), info.misses, info.hits + info.misses


def test_model_loaded_once_per_worker(cluster, client, image_store, load_log, local_result,
                                      tmp_path, monkeypatch):
    monkeypatch.setenv(LOAD_LOG_ENV, str(load_log))
    load_log.unlink(missing_ok=True)
    # empty caches in every process, so the counts do not depend on the other tests
    chunkseg.load_model.cache_clear()
    client.run(chunkseg.load_model.cache_clear)
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids

    ds = chunkseg.predict_to_zarr(image_store[0], chunkseg.ModelSpec(LOGGED_MODEL),
                                  str(tmp_path / "seg.zarr"), tile=TILE, overlap=OVERLAP,
                                  chunks=CHUNK, outputs=OUTPUTS, scheduler=cluster)
    _assert_same(ds, local_result)

    loads = [int(pid) for pid in load_log.read_text().split()]
    stats = {pid: (n_loads, n_calls) for pid, n_loads, n_calls in
             client.run(_model_cache_stats).values()}
    ran = {pid for pid, (_, n_calls) in stats.items() if n_calls > 0}
    assert ran and ran <= worker_pids
    # this process loads it once for the first-tile probe, each worker that ran tiles once
    assert loads.count(os.getpid()) == 1
    assert sorted(pid for pid in loads if pid != os.getpid()) == sorted(ran)
    assert all(stats[pid][0] == 1 for pid in ran)
    assert len(loads) <= 1 + len(worker_pids) < _n_tasks()


def test_unreachable_scheduler_fails_fast(image_store, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    out = tmp_path / "seg.zarr"
    start = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["predict", image_store[0], str(out), "--model", MODEL,
                     "--scheduler", address, *GRID_ARGS, "--no-progress"])
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err
    assert code == 2 and "chunkseg predict: error:" in err and address in err
    assert not out.exists()  # nothing written before the cluster answered


@pytest.mark.slow
def test_local_cluster_workers_keep_glibcs_malloc_thresholds(monkeypatch):
    """``workers=N`` spawns workers without dask's MALLOC_TRIM_THRESHOLD_ (it disables glibc's
    adaptive mmap threshold), keeps dask's other variables, and restores this process's."""
    from chunkseg.scheduling import WORKER_ENVIRON_UNSET, local_cluster, open_client

    assert "MALLOC_TRIM_THRESHOLD_" in WORKER_ENVIRON_UNSET
    # a nanny copies its variables into the parent's environment: as an earlier cluster would
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with local_cluster(1, threads_per_worker=2) as client:
        env = client.run(lambda: {k: os.environ.get(k) for k in (
            "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")})
        assert list(env.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]
        assert sum(client.nthreads().values()) == 2
        assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"
    with open_client(workers=2) as client:  # the path of --workers N
        env = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        assert list(env.values()) == [None, None]
    # the default dask nanny does set it: the test would see the difference
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"]
