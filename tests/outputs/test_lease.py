"""One writer per output: the lease (``chunkseg.outputs._lease``), with real processes.

Every contention test runs real Python processes (``sys.executable``) that import chunkseg from
this source tree; they talk to the test through their standard streams and through files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from chunkseg.errors import ChunksegError, InvalidTypeError, OutputLockedError
from chunkseg.outputs._lease import (
    LEASE_SUFFIX,
    Holder,
    acquire,
    break_lease,
    lease_location,
    read_holder,
)

ROOT = Path(__file__).resolve().parents[2]
REFUSED = 3  # a child's exit status when its acquire is refused

# A child process. argv: output, mode[, barrier file, done file].
#   hold:  acquire, print HELD, wait for a line on stdin, release, exit 0.
#   try:   acquire, print HELD, release, exit 0.
#   race:  print READY, wait for the barrier file, acquire; the winner prints WON, waits for
#          the done file, releases and exits 0.
# A refused acquire prints the message on stderr and exits REFUSED.
CHILD = r"""
import os, sys, time
from chunkseg.errors import OutputLockedError
from chunkseg.outputs._lease import acquire

out, mode = sys.argv[1], sys.argv[2]
endpoint = os.environ.get("CHUNKSEG_TEST_S3_ENDPOINT")
options = {"endpoint_url": endpoint} if endpoint else None
if mode == "race":
    print("READY", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.002)
try:
    lease = acquire(out, storage_options=options, command="child " + mode)
except OutputLockedError as exc:
    print(exc, file=sys.stderr, flush=True)
    sys.exit(3)
print("WON" if mode == "race" else "HELD", flush=True)
if mode == "hold":
    sys.stdin.readline()
elif mode == "race":
    open(os.path.join(os.path.dirname(sys.argv[4]), "won-%d" % os.getpid()), "w").close()
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.01)
assert lease.release()
"""


def _env(s3_options: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if s3_options:
        env["CHUNKSEG_TEST_S3_ENDPOINT"] = s3_options["endpoint_url"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _child(*args: str, s3_options: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(s3_options))


def _holding(out: str) -> subprocess.Popen:
    """A child that holds the lease on ``out`` until a line arrives on its stdin."""
    proc = _child(out, "hold")
    line = proc.stdout.readline()
    assert line == "HELD\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate("\n" if proc.poll() is None else None, timeout=timeout)
    return proc.returncode, stdout, stderr


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(done.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def _record(host: str, pid: int) -> bytes:
    return Holder(host=host, pid=pid, started="2020-01-01T00:00:00+00:00",
                  token="f" * 32, version="0.0", command="old run").to_bytes()


def _lease_file(out: Path) -> Path:
    return out.parent / f".{out.name}{LEASE_SUFFIX}"


def test_lease_is_a_holder_record_beside_the_output_and_release_deletes_it(tmp_path):
    out = tmp_path / "sub" / "seg.zarr"
    with acquire(out, command="chunkseg predict x y") as lease:
        path = _lease_file(out)
        assert lease.path == lease_location(out) == str(path)
        record = json.loads(path.read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["started"].endswith("+00:00") and len(record["token"]) == 32
        assert record["command"] == "chunkseg predict x y" and record["version"]
        assert read_holder(out) == lease.holder and lease.still_held() and lease.atomic
        assert not out.exists()  # the lease is beside the output, never inside it
    assert not path.exists() and read_holder(out) is None
    assert lease.release() is False  # a second release does nothing


def test_lease_is_released_when_the_run_raises(tmp_path):
    out = tmp_path / "seg.zarr"
    with pytest.raises(RuntimeError, match="model failed"), acquire(out):
        raise RuntimeError("model failed")
    assert not _lease_file(out).exists()
    acquire(out).release()


def test_second_acquire_in_the_same_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "seg.zarr"
    with acquire(out, command="first run") as lease:
        with pytest.raises(OutputLockedError) as info:
            acquire(out)
        message = str(info.value)
        for part in (str(out), socket.gethostname(), f"pid {os.getpid()}", lease.holder.started,
                     "'first run'", f"delete {_lease_file(out)} yourself", "Wait"):
            assert part in message, part
        assert isinstance(info.value, ChunksegError) and isinstance(info.value, FileExistsError)
        assert lease.still_held()  # the refusal left the holder's lease alone
    acquire(out).release()


def test_a_child_holds_the_lease_and_this_process_is_refused_until_it_exits(tmp_path):
    out = str(tmp_path / "seg.zarr")
    holder = _holding(out)
    try:
        with pytest.raises(OutputLockedError, match=rf"pid {holder.pid}, .*'child hold'"):
            acquire(out)
    finally:
        rc, _, stderr = _finish(holder)
    assert rc == 0, stderr
    assert not _lease_file(Path(out)).exists()  # the child released it on a normal exit
    acquire(out).release()


def test_this_process_holds_the_lease_and_a_child_is_refused(tmp_path):
    out = str(tmp_path / "seg.zarr")
    with acquire(out):
        rc, stdout, stderr = _finish(_child(out, "try"))
        assert rc == REFUSED and stdout == "", (rc, stdout, stderr)
        assert f"pid {os.getpid()}" in stderr and "is being written by another run" in stderr
    rc, stdout, stderr = _finish(_child(out, "try"))  # released: now the child takes it
    assert (rc, stdout) == (0, "HELD\n"), stderr


@pytest.mark.parametrize("first", [0, 1])
def test_of_two_child_processes_the_first_holds_and_the_second_is_refused(tmp_path, first):
    outs = [str(tmp_path / "seg.zarr")] * 2
    holder = _holding(outs[first])
    try:
        rc, stdout, stderr = _finish(_child(outs[1 - first], "try"))
        assert rc == REFUSED and stdout == "", (rc, stdout, stderr)
        assert f"pid {holder.pid}," in stderr and str(_lease_file(Path(outs[0]))) in stderr
    finally:
        assert _finish(holder)[0] == 0
    rc, stdout, stderr = _finish(_child(outs[1 - first], "try"))
    assert (rc, stdout) == (0, "HELD\n"), stderr


def test_the_lease_of_a_killed_holder_is_taken_over(tmp_path):
    out = str(tmp_path / "seg.zarr")
    holder = _holding(out)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    left = read_holder(out)
    assert left is not None and left.pid == holder.pid  # a killed run leaves its lease
    with acquire(out) as lease:
        assert read_holder(out) == lease.holder and lease.holder.pid == os.getpid()
        rc, _, stderr = _finish(_child(out, "try"))  # the new lease is held, not stale
        assert rc == REFUSED and f"pid {os.getpid()}," in stderr


def test_a_stale_lease_of_this_host_is_taken_over(tmp_path):
    out = tmp_path / "seg.zarr"
    _lease_file(out).write_bytes(_record(socket.gethostname(), _dead_pid()))
    with acquire(out) as lease:
        assert json.loads(_lease_file(out).read_text())["token"] == lease.holder.token
    assert not _lease_file(out).exists()


def test_a_lease_from_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "seg.zarr"
    other = "elsewhere.invalid"
    assert other != socket.gethostname()
    _lease_file(out).write_bytes(_record(other, _dead_pid()))  # a pid dead here means nothing
    with pytest.raises(OutputLockedError) as info:
        acquire(out)
    assert f"host {other}," in str(info.value) and "another host" in str(info.value)
    assert "2020-01-01T00:00:00+00:00" in str(info.value)
    assert Holder.from_bytes(_lease_file(out).read_bytes()).host == other  # left as it was
    holder = break_lease(out)  # the documented fix
    assert holder is not None and holder.host == other and not _lease_file(out).exists()
    acquire(out).release()


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"host": "h", "pid": 1}',
                                     b'{"host": "h", "pid": "12", "started": "s", "token": "t",'
                                     b' "version": "v"}', b"\xff\xfe"])
def test_an_unreadable_lease_is_refused_never_guessed(tmp_path, content):
    out = tmp_path / "seg.zarr"
    _lease_file(out).write_bytes(content)
    with pytest.raises(OutputLockedError, match="cannot identify") as info:
        acquire(out)
    assert f"delete {_lease_file(out)} yourself" in str(info.value)
    assert _lease_file(out).read_bytes() == content
    with pytest.raises(OutputLockedError, match="cannot identify"):
        read_holder(out)


def test_release_leaves_a_lease_another_run_took_since(tmp_path):
    out = tmp_path / "seg.zarr"
    first = acquire(out)
    break_lease(out)  # broken by hand while `first` still runs...
    second = acquire(out)  # ...and taken by a second run
    assert not first.still_held() and second.still_held()
    assert first.release() is False
    assert read_holder(out) == second.holder  # the second run's lease is intact
    assert second.release() is True and read_holder(out) is None


def _race(out: str, tmp_path: Path, n: int = 6, s3_options: dict | None = None) -> None:
    """``n`` child processes released at once by one barrier file: exactly one wins."""
    barrier, done = tmp_path / f"go-{uuid.uuid4().hex}", tmp_path / f"done-{uuid.uuid4().hex}"
    procs = [_child(out, "race", str(barrier), str(done), s3_options=s3_options)
             for _ in range(n)]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "READY\n", proc.stderr.read()
        barrier.touch()
        deadline = time.monotonic() + 60
        won = []
        while sum(proc.poll() is not None for proc in procs) + len(won) < n:
            assert time.monotonic() < deadline, "the racers neither won nor exited"
            time.sleep(0.05)
            won = [proc for proc in procs if (done.parent / f"won-{proc.pid}").exists()]
        winners = [proc for proc in procs if proc.poll() is None]
        assert len(won) == 1 and winners == won
        assert read_holder(out, storage_options=s3_options).pid == winners[0].pid
    finally:
        done.touch()
        results = [proc.communicate(timeout=60) for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0] + [REFUSED] * (n - 1), (codes, results)
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        if proc.returncode == REFUSED:
            assert stdout == "" and f"pid {winners[0].pid}," in stderr, stderr
        else:
            assert stdout == "WON\n"  # (READY was read above)
    assert read_holder(out, storage_options=s3_options) is None  # the winner released it


def test_six_processes_race_for_a_free_lease_and_exactly_one_wins(tmp_path):
    _race(str(tmp_path / "seg.zarr"), tmp_path)


def test_six_processes_race_for_a_stale_lease_and_exactly_one_takes_it_over(tmp_path):
    out = tmp_path / "seg.zarr"
    _lease_file(out).write_bytes(_record(socket.gethostname(), _dead_pid()))
    _race(str(out), tmp_path)


def test_memory_filesystem_lease(tmp_path):
    out = f"memory://lease-{uuid.uuid4().hex}/d/seg.zarr"
    fs = fsspec.filesystem("memory")
    path = out.removeprefix("memory://").replace("/seg.zarr", f"/.seg.zarr{LEASE_SUFFIX}")
    with acquire(out) as lease:
        assert lease.atomic and lease.path == f"memory://{path}" == lease_location(out)
        assert Holder.from_bytes(fs.cat_file(path)) == lease.holder
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()},"):
            acquire(out)
    assert not fs.exists(path)
    fs.pipe_file(path, _record(socket.gethostname(), _dead_pid()))  # stale: taken over
    with acquire(out) as lease:
        assert Holder.from_bytes(fs.cat_file(path)) == lease.holder
    fs.pipe_file(path, _record("elsewhere.invalid", 1))
    with pytest.raises(OutputLockedError, match="host elsewhere.invalid,"):
        acquire(out)


class _PlainMemoryFileSystem(MemoryFileSystem):
    """A filesystem chunkseg knows no exclusive create for (a real memory store underneath)."""

    protocol = "chunksegplainmem"


def test_a_filesystem_without_exclusive_create_gets_a_best_effort_lease():
    fsspec.register_implementation("chunksegplainmem", _PlainMemoryFileSystem, clobber=True)
    out = f"chunksegplainmem://lease-{uuid.uuid4().hex}/seg.zarr"
    with acquire(out) as lease:
        assert lease.atomic is False  # documented: check-then-put, not atomic
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()},"):
            acquire(out)
    assert read_holder(out) is None


def test_a_store_object_cannot_be_leased():
    with pytest.raises(InvalidTypeError, match="`location` must be a local path or an fsspec"):
        acquire({"zarr.json": b"{}"})


def test_a_url_lease_is_named_without_credentials():
    shown = lease_location("s3://user:secretpw@bucket/p/seg.zarr?token=abc",
                           storage_options={"anon": True})
    assert shown == "s3://bucket/p/.seg.zarr.chunkseg-lease"


# --- S3: the conditional put against a real S3 API (moto's server on loopback) ---------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_options():
    pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    import urllib.request

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "chunksegfakeaccesskey")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "chunksegfakesecretvalue")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                         "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "no moto server"
                try:
                    with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            yield {"endpoint_url": url}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        s3fs.S3FileSystem.clear_instance_cache()


def test_s3_lease_is_a_conditional_put(s3_options):
    import s3fs

    bucket = f"chunkseg-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir(bucket)
    out = f"s3://{bucket}/p/seg.zarr"
    with acquire(out, storage_options=s3_options) as lease:
        assert lease.atomic and lease.path == f"s3://{bucket}/p/.seg.zarr{LEASE_SUFFIX}"
        assert Holder.from_bytes(fs.cat_file(lease.path)) == lease.holder
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()},"):
            acquire(out, storage_options=s3_options)
        # The condition itself, below chunkseg: a second create of the object is refused.
        with pytest.raises(FileExistsError):
            fs.pipe_file(lease.path, b"x", mode="create")
        assert lease.still_held()
    assert not fs.exists(f"{bucket}/p/.seg.zarr{LEASE_SUFFIX}")
    fs.pipe_file(f"{bucket}/p/.seg.zarr{LEASE_SUFFIX}",
                 _record(socket.gethostname(), _dead_pid()))
    with acquire(out, storage_options=s3_options) as lease:  # stale: taken over
        assert Holder.from_bytes(fs.cat_file(lease.path)).token == lease.holder.token


def test_six_processes_race_for_an_s3_lease_and_exactly_one_wins(s3_options, tmp_path):
    import s3fs

    bucket = f"chunkseg-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_options).mkdir(bucket)
    _race(f"s3://{bucket}/seg.zarr", tmp_path, s3_options=s3_options)
