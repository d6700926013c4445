"""One writer per output: the lease a run takes on its output before its first write.

A lease is a small JSON object stored *beside* the output, never inside it (a run may replace
the output folder by a rename when it succeeds): for ``/d/seg.zarr`` it is
``/d/.seg.zarr.chunkseg-lease``, for ``s3://b/p/seg.zarr`` it is
``s3://b/p/.seg.zarr.chunkseg-lease``. It records its holder: host, pid, start time (ISO 8601,
UTC), a random token, the chunkseg version and, optionally, the command.

:func:`acquire` creates it with an exclusive create; a second run (a second ``overwrite`` or
``resume`` included) finds it and is refused with :class:`~chunkseg.errors.OutputLockedError`
naming the holder and how to break the lease. A lease whose holder is gone (same host, dead
pid) is taken over. :meth:`Lease.release` (or leaving the ``with`` block) deletes the lease,
only if it still holds this run's token.

What the exclusive create guarantees depends on where the output is:

- **Local filesystem** (a path or ``file://``): atomic, ``os.open(O_CREAT | O_EXCL)``. On NFS,
  ``O_EXCL`` is atomic from NFSv3 on (Linux >= 2.6 clients).
- **S3** (``s3fs``): atomic, a conditional put (``If-None-Match: *``), which AWS S3 honours
  since 2024 and which needs botocore > 1.35.20; on an S3-compatible server that ignores the
  condition it is the best-effort check-then-put below.
- **memory://**: atomic within the process that owns the memory filesystem.
- **Any other fsspec filesystem** (GCS, Azure, HTTP...): best effort, not atomic: chunkseg
  checks that no lease exists, writes its own and reads it back. Two runs starting within the
  same moment can both pass; :attr:`Lease.atomic` is ``False`` there.

A stale lease (its host is this host and its pid is not alive) is taken over under a lock
local to this host (``fcntl.flock`` on a file in the temporary directory), so that of several
processes that find the same stale lease exactly one replaces it. A lease from another host is
never taken over: chunkseg cannot tell whether that process is alive ("this host" means the
same ``socket.gethostname()``: containers that share a host name must not share an output
folder without sharing a pid namespace too). Nor is a lease that
cannot be read as one (never guess). The refusal says to delete the lease file by hand (or call
:func:`break_lease`) when its run is known to be gone. On Windows (no ``os.kill(pid, 0)`` probe,
no ``fcntl``) no lease is ever taken over automatically.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .._redact import is_url, redact_location
from .._version import __version__
from ..errors import InvalidTypeError, InvalidValueError, OutputLockedError, OutputWriteError

__all__ = ["LEASE_SUFFIX", "Holder", "Lease", "acquire", "break_lease", "lease_location",
           "read_holder"]

LEASE_SUFFIX = ".chunkseg-lease"
"""Suffix of the lease file, stored beside the output as ``.<output name><suffix>``."""

_ATTEMPTS = 10  # creates tried before giving up (each lost one re-reads the holder)
_SETTLE_S = 0.5  # how long an unreadable lease is re-read: its creator may be writing it


@dataclass(frozen=True)
class Holder:
    """The run that holds a lease, as recorded in the lease file.

    Attributes
    ----------
    host : str
        ``socket.gethostname()`` of the holder's machine.
    pid : int
        The holder's process id on that host.
    started : str
        When the lease was taken, ISO 8601 in UTC.
    token : str
        A random token that tells this lease from any other (a release deletes only its own).
    version : str
        The holder's chunkseg version.
    command : str or None
        What the holder runs, for the humans reading a refusal.
    """

    host: str
    pid: int
    started: str
    token: str
    version: str
    command: str | None = None

    def describe(self) -> str:
        """``host H, pid P, started T`` (and the command when recorded), for messages."""
        text = f"host {self.host}, pid {self.pid}, started {self.started}"
        return text + (f", running {self.command!r}" if self.command else "")

    def to_bytes(self) -> bytes:
        """The lease file's content: this record as JSON."""
        return (json.dumps(asdict(self), indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Holder | None:
        """The record in a lease file's content, or ``None`` when it is not one."""
        try:
            data = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        fields = ("host", "pid", "started", "token", "version")
        if not all(isinstance(data.get(name), str) for name in fields if name != "pid"):
            return None
        pid, command = data.get("pid"), data.get("command")
        if type(pid) is not int or pid <= 0 or not (command is None or isinstance(command, str)):
            return None
        return cls(**{name: data[name] for name in fields}, command=command)


class _Place:
    """Where a lease lives: a local path (``fs is None``) or a path on an fsspec filesystem."""

    def __init__(self, output: str, path: str, shown: str, fs: Any = None) -> None:
        self.output = output  # the output, redacted, for messages
        self.path = path  # the lease: a local path or the filesystem's path
        self.shown = shown  # the lease, redacted, for messages
        self.fs = fs
        self.atomic = fs is None or _exclusive_create(fs)

    def create(self, data: bytes) -> bool:
        """Create the lease with ``data`` unless it exists; whether this call created it."""
        if self.fs is None:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise
            _fsync_dir(os.path.dirname(self.path))
            return True
        if self.read() is not None:  # also what a server ignoring the condition leaves
            return False
        try:
            if self.atomic:
                self.fs.pipe_file(self.path, data, mode="create")
            else:
                self.fs.pipe_file(self.path, data)
        except FileExistsError:
            return False
        except OSError as exc:
            # AWS S3 answers 409 ConditionalRequestConflict to a conditional put racing another
            # one on the same key: that other run is taking the lease.
            if "ConditionalRequestConflict" in str(exc):
                return False
            raise
        # Read back: a store that ignored the condition (or a check-then-put racing another)
        # may have let another run's lease replace this one.
        return self.read() == data

    def read(self) -> bytes | None:
        """The lease file's bytes, or ``None`` when there is none."""
        try:
            if self.fs is None:
                with open(self.path, "rb") as f:
                    return f.read()
            self.fs.invalidate_cache(self.path)
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None

    def remove(self) -> None:
        """Delete the lease file (nothing when it is already gone)."""
        try:
            if self.fs is None:
                os.unlink(self.path)
            else:
                self.fs.rm_file(self.path)
                self.fs.invalidate_cache(self.path)
        except FileNotFoundError:
            pass

    @contextlib.contextmanager
    def host_lock(self) -> Iterator[None]:
        """Hold a lock, local to this host, on this lease's takeovers.

        Only processes on the holder's own host ever take a stale lease over, so a lock that
        serialises them on this host suffices (a flock on a file in the temporary directory,
        named after the lease, left in place: deleting a flock file races). Without ``fcntl``
        (Windows) it locks nothing.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows never takes a lease over
            yield
            return
        name = os.path.realpath(self.path) if self.fs is None else self.path
        key = hashlib.sha256(f"{type(self.fs).__name__}:{name}".encode()).hexdigest()[:24]
        lock = os.path.join(tempfile.gettempdir(), f"chunkseg-lease-{key}.lock")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        except PermissionError:  # made by another user: a read-only descriptor locks as well
            fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def holder(self) -> tuple[bytes | None, Holder | None]:
        """The lease's bytes and its record; an unreadable one is re-read for a moment, in
        case its creator is still writing it."""
        deadline = time.monotonic() + _SETTLE_S
        while True:
            raw = self.read()
            record = None if raw is None else Holder.from_bytes(raw)
            if raw is None or record is not None or time.monotonic() >= deadline:
                return raw, record
            time.sleep(0.05)


def _exclusive_create(fs: Any) -> bool:
    """Whether ``fs.pipe_file(..., mode="create")`` is an atomic exclusive create."""
    from fsspec.implementations.memory import MemoryFileSystem

    if type(fs) is MemoryFileSystem:  # a subclass may store elsewhere: not assumed atomic
        return True
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return False
    return isinstance(fs, S3FileSystem)


def _fsync_dir(path: str) -> None:
    """Make a new directory entry durable where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _split_last(path: str, sep: str) -> tuple[str, str]:
    head, _, name = path.rstrip(sep).rpartition(sep)
    return head, name


def _place(location: Any, storage_options: Mapping[str, Any] | None) -> _Place:
    if not isinstance(location, str | os.PathLike):
        raise InvalidTypeError(
            f"`location` must be a local path or an fsspec URL (the output's lease is a file "
            f"beside it). Got a {type(location).__name__}. Pass the output's path or URL; a "
            f"store object cannot be leased."
        )
    location = os.fspath(location)
    if not isinstance(location, str):
        raise InvalidTypeError(f"`location` must be a str path. Got bytes {location!r}. "
                               f"Decode it first.")
    output = redact_location(location)
    fs = None
    if is_url(location):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
        if isinstance(fs, LocalFileSystem):
            fs, location = None, path
    if fs is None:
        full = os.path.abspath(os.path.expanduser(location))
        head, name = os.path.split(full.rstrip(os.sep) or os.sep)
        if not name:
            raise InvalidValueError(f"`location` must name an output below a folder (its lease "
                                    f"is a file beside it). Got {output!r}. Write into a "
                                    f"subfolder.")
        lease = os.path.join(head, f".{name}{LEASE_SUFFIX}")
        return _Place(output, lease, lease)
    head, name = _split_last(path, "/")
    if not head or not name:
        raise InvalidValueError(f"`location` must name an output below a bucket or folder (its "
                                f"lease is an object beside it). Got {output!r}. Write into a "
                                f"prefix such as {output.rstrip('/')}/out.zarr.")
    shown_head, shown_name = _split_last(output, "/")
    return _Place(output, f"{head}/.{name}{LEASE_SUFFIX}",
                  f"{shown_head}/.{shown_name}{LEASE_SUFFIX}", fs)


def lease_location(location: str | os.PathLike, *,
                   storage_options: Mapping[str, Any] | None = None) -> str:
    """Where the lease of an output lives, redacted.

    Parameters
    ----------
    location : str or os.PathLike
        The output: a local path or an fsspec URL.
    storage_options : mapping, optional
        fsspec options for a URL ``location``.

    Returns
    -------
    str
        The lease file beside the output: ``/d/.seg.zarr.chunkseg-lease`` for ``/d/seg.zarr``
        (an absolute path), ``s3://b/.seg.zarr.chunkseg-lease`` for ``s3://b/seg.zarr``.
    """
    return _place(location, storage_options).shown


def read_holder(location: str | os.PathLike, *,
                storage_options: Mapping[str, Any] | None = None) -> Holder | None:
    """The holder of an output's lease, if any.

    Parameters
    ----------
    location : str or os.PathLike
        The output: a local path or an fsspec URL.
    storage_options : mapping, optional
        fsspec options for a URL ``location``.

    Returns
    -------
    Holder or None
        The recorded holder; ``None`` when there is no lease.

    Raises
    ------
    OutputLockedError
        The lease exists but cannot be read as one.
    """
    place = _place(location, storage_options)
    raw, record = place.holder()
    if raw is not None and record is None:
        raise _locked(place, None)
    return record


def _alive(host: str, pid: int) -> bool:
    """Whether the process ``pid`` may be running; ``True`` unless it is known not to be
    (it ran on this host and no such process exists)."""
    if host != socket.gethostname() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _locked(place: _Place, record: Holder | None) -> OutputLockedError:
    if record is None:
        return OutputLockedError(
            f"Output {place.output} is leased by a run chunkseg cannot identify: its lease "
            f"{place.shown} is not a chunkseg lease record, and chunkseg does not guess whether "
            f"its writer is alive. If no other run is writing this output, delete "
            f"{place.shown} yourself and run again."
        )
    here = socket.gethostname()
    gone = ("(it ran on another host, so chunkseg cannot check it)" if record.host != here
            else "(its pid may have been reused by another process)")
    return OutputLockedError(
        f"Output {place.output} is being written by another run: its lease {place.shown} is "
        f"held by {record.describe()}. Wait for that run to finish; if that process is gone "
        f"{gone}, delete {place.shown} yourself and run again."
    )


class Lease:
    """A held lease on one output; a context manager that releases it on exit.

    Made by :func:`acquire`. Leaving the ``with`` block releases the lease, whether the block
    finished or raised (a failed run can then be resumed at once).

    Attributes
    ----------
    output : str
        The output, redacted.
    path : str
        The lease file beside it, redacted.
    holder : Holder
        This run's record, as written into the lease.
    atomic : bool
        Whether the exclusive create was atomic (see the module docstring); ``False`` on
        fsspec filesystems without a conditional put, where the lease is best effort.
    """

    def __init__(self, place: _Place, holder: Holder) -> None:
        self._place = place
        self.output = place.output
        self.path = place.shown
        self.holder = holder
        self.atomic = place.atomic
        self._released = False

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Lease({self.output!r}, {state}, {self.holder.describe()})"

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def still_held(self) -> bool:
        """Whether the lease file still holds this run's token (it may have been broken by
        hand, or taken over after this process was wrongly judged gone).

        Returns
        -------
        bool
            ``True`` while the lease is this run's.
        """
        raw, record = self._place.holder()
        return record is not None and record.token == self.holder.token

    def release(self) -> bool:
        """Delete the lease, if it is still this run's; a second call does nothing.

        Returns
        -------
        bool
            Whether this call deleted the lease: ``False`` when it was released before, or
            when the lease file is gone or holds another run's token (it was broken and taken
            since), which is then left alone.
        """
        if self._released:
            return False
        self._released = True
        # No lock needed: only a takeover replaces a lease, and a takeover needs a dead holder.
        if not self.still_held():
            return False
        self._place.remove()
        return True


def acquire(location: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
            command: str | None = None) -> Lease:
    """Take the exclusive lease on an output before writing it.

    Parameters
    ----------
    location : str or os.PathLike
        The output: a local path or an fsspec URL. The lease is the file
        ``.<name>.chunkseg-lease`` beside it (the parent folder of a local output is created
        when missing).
    storage_options : mapping, optional
        fsspec options for a URL ``location``.
    command : str, optional
        What this run does, recorded in the lease and shown to a run that is refused. It is
        stored as given: it must not hold credentials.

    Returns
    -------
    Lease
        The held lease; use it as a context manager (``with acquire(out) as lease: ...``) or
        call :meth:`Lease.release` when done.

    Raises
    ------
    OutputLockedError
        Another live run holds the lease (another process on this host whose pid is alive,
        or any process on another host), or the lease file cannot be read as one. The message
        names the holder's host, pid and start time and how to break a stale lease.
    InvalidTypeError
        ``location`` is not a path or URL.

    Notes
    -----
    The create is atomic on a local filesystem, on S3 (a conditional put) and on
    ``memory://``; on other fsspec filesystems it is a best-effort check-then-put (the module
    docstring has the details). A lease found on this host whose pid no longer runs is taken
    over: exactly one of the processes that find it replaces it.
    """
    if command is not None and not isinstance(command, str):
        raise InvalidTypeError(f"`command` must be a str or None. Got a "
                               f"{type(command).__name__}. Pass the command line as one string.")
    place = _place(location, storage_options)
    holder = Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        token=secrets.token_hex(16),
        version=__version__,
        command=command,
    )
    data = holder.to_bytes()
    for _ in range(_ATTEMPTS):
        try:
            if place.fs is None:
                os.makedirs(os.path.dirname(place.path), exist_ok=True)
            created = place.create(data)
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as err:
            raise OutputWriteError(
                f"Output {place.output} cannot be written here: its lease {place.shown} could "
                f"not be created ({type(err).__name__}: {err.strerror or err}). Choose a "
                "folder you can write to; nothing was written.") from None
        if created:
            return Lease(place, holder)
        raw, record = place.holder()
        if raw is None:
            continue  # released in the meantime: try again
        if record is None or _alive(record.host, record.pid):
            raise _locked(place, record)
        with place.host_lock():  # a stale lease: exactly one contender on this host replaces it
            raw, now = place.holder()
            if raw is not None and now == record:
                place.remove()
    raw, record = place.holder()
    if raw is None:
        raise OutputLockedError(f"Output {place.output}: its lease {place.shown} changed hands "
                                f"{_ATTEMPTS} times while this run tried to take it. Check "
                                f"which runs write this output, then run again.")
    raise _locked(place, record)


def break_lease(location: str | os.PathLike, *,
                storage_options: Mapping[str, Any] | None = None) -> Holder | None:
    """Delete an output's lease, whoever holds it: for a run known to be gone.

    Parameters
    ----------
    location : str or os.PathLike
        The output: a local path or an fsspec URL.
    storage_options : mapping, optional
        fsspec options for a URL ``location``.

    Returns
    -------
    Holder or None
        The holder whose lease was deleted; ``None`` when there was no lease, or when the
        lease file could not be read as one (it is deleted all the same).

    Notes
    -----
    Breaking the lease of a run that is still writing lets a second run write the same output
    at the same time: check that the holder named in the refusal is really gone first.
    """
    place = _place(location, storage_options)
    with place.host_lock():
        raw = place.read()
        place.remove()
    return None if raw is None else Holder.from_bytes(raw)
