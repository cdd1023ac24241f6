"""The store's writer lock: at most one ingest (or repair) writes a store at a time (spec: docs/reliability.md).

    with lock_store(target, "ingest"):     # StoreLockedError naming the holder if another process has it
        ...                                # lock.check() between steps: raises if the lock was lost

The lock is the file `<store>/.cellio-lock` holding a JSON record of its holder (host, pid, started_at, purpose,
token). Two implementations, chosen by the target:

- **Local file systems** (`LocalLock`): the file is created with `O_CREAT | O_EXCL` and held with
  `fcntl.flock(LOCK_EX | LOCK_NB)` for the whole job. The kernel drops a flock when its holder dies (SIGKILL,
  power loss of a client on NFS v4 after its lease), so a lock file left behind is *stale* exactly when nobody
  holds its flock: the next writer takes the flock, rewrites the record in place and goes on, logging whom it
  took over from. A flock taken on a file that was unlinked meanwhile is detected by comparing inodes and
  retried, so two processes never both believe they hold it. Where flock is unavailable (rare network file
  systems) the record's pid decides: same host and a dead pid = stale; anything else refuses.
- **fsspec targets** (`ObjectLock`, e.g. S3): the record is created with a conditional create (`open(..., "xb")`,
  which fsspec maps to If-None-Match on object stores that support it); it carries `expires`, which a heartbeat
  thread pushes forward every `ttl / 3`. A record whose `expires` has passed, or whose pid is dead on this host,
  is stale and may be taken over (delete, then conditional create, so of two takers only one wins). Without a
  conditional create the lock falls back to write + read-back after a settle delay: best effort, documented as
  such. The heartbeat re-reads the record and marks the lock lost if someone else's token is there; `check()`
  then raises and the job stops before its commit point.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

from ..errors import StoreLockedError
from ..processes import pid_alive
from ..records import to_dict
from .files import FileTarget
from .format import LOCK_NAME

__all__ = ["LockHolder", "LocalLock", "ObjectLock", "lock_store"]

log = logging.getLogger(__name__)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's lock: the JSON record inside the lock file."""

    host: str
    pid: int
    started_at: str                 # ISO 8601 UTC
    purpose: str                    # "ingest", "repair", "verify"
    token: str                      # unique per acquisition
    expires: float | None = None    # Unix time after which an object-store lock is stale (heartbeat refreshes it)

    @classmethod
    def mine(cls, purpose: str, ttl: float | None = None) -> "LockHolder":
        return cls(host=socket.gethostname(), pid=os.getpid(), started_at=_now().isoformat(timespec="seconds"),
                   purpose=purpose, token=uuid.uuid4().hex, expires=time.time() + ttl if ttl else None)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LockHolder":
        # lenient on purpose (not cellio.records.from_dict): a lock file is read to name its holder, whatever
        # wrote it; a field it lacks is shown as "?", never an error that hides who holds the store
        return cls(host=str(d.get("host", "?")), pid=int(d.get("pid", -1)), started_at=str(d.get("started_at", "?")),
                   purpose=str(d.get("purpose", "?")), token=str(d.get("token", "")),
                   expires=float(d["expires"]) if d.get("expires") is not None else None)

    def describe(self) -> str:
        return f"`cellio {self.purpose}` (pid {self.pid} on host {self.host}, started {self.started_at})"

    def dead_here(self) -> bool:
        """Same host and the process is gone: certainly stale."""
        return self.host == socket.gethostname() and not pid_alive(self.pid)


def _parse(data: bytes) -> LockHolder | None:
    try:
        return LockHolder.from_dict(json.loads(data))
    except (ValueError, TypeError, AttributeError):
        return None


def _locked(path: str, holder: LockHolder | None, store: str) -> StoreLockedError:
    who = holder.describe() if holder else "another process (its record is not readable yet)"
    return StoreLockedError(
        f"{store} is being written by {who}; wait for it to finish (or stop it), then rerun. If that process is "
        f"gone and this message persists, delete {path}", holder=holder.to_dict() if holder else None, lock=path)


# ----------------------------------------------------------------------------------------------- local
class LocalLock:
    """O_EXCL lock file + flock on a local (or NFS) file system. See the module docstring for the protocol."""

    def __init__(self, path: str, store: str, purpose: str):
        self.path, self.store, self.purpose = path, store, purpose
        self.holder: LockHolder | None = None
        self.took_over: LockHolder | None = None
        self._fd: int | None = None

    def acquire(self) -> "LocalLock":
        import fcntl

        for _ in range(50):
            self.took_over = None
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR)
                except FileNotFoundError:  # released between our two calls: try again
                    continue
                created = False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _locked(self.path, self._read_settled(fd), self.store) from None
                except OSError as exc:  # no flock here (some network file systems)
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    if not created:
                        previous = _parse(os.pread(fd, 65536, 0))
                        if previous is None or not previous.dead_here():
                            raise _locked(self.path, previous, self.store) from None
                        self.took_over = previous
                # we hold the flock of fd's inode: is it still the file the path names? (the holder unlinks it
                # on release; a flock on the unlinked inode protects nothing)
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    fd = -1
                    continue
                if not created and self.took_over is None:
                    self.took_over = _parse(os.pread(fd, 65536, 0))
                holder = LockHolder.mine(self.purpose)
                data = json.dumps(holder.to_dict()).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
            self._fd, self.holder = fd, holder
            if self.took_over is not None:
                log.warning("%s: took over the stale lock of %s (that process no longer holds it)", self.store,
                            self.took_over.describe())
            return self
        raise StoreLockedError(f"{self.store}: could not take the lock {self.path} after 50 attempts (other "
                               f"processes keep taking and releasing it)", lock=self.path)

    @staticmethod
    def _read_settled(fd: int) -> LockHolder | None:
        """The holder's record; a creator writes it right after O_EXCL + flock, so wait a moment for it."""
        for _ in range(20):
            holder = _parse(os.pread(fd, 65536, 0))
            if holder is not None:
                return holder
            time.sleep(0.01)
        return None

    def check(self) -> None:
        """Raise StoreLockedError if the lock file is no longer ours (deleted or replaced by hand)."""
        if self._fd is None:
            raise StoreLockedError(f"{self.store}: the lock {self.path} is not held", lock=self.path)
        try:
            same = os.path.samestat(os.fstat(self._fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreLockedError(f"{self.store}: the lock file {self.path} was deleted or replaced while this "
                                   f"process held it; stopping before anything else is written", lock=self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)  # while still holding the flock: nobody can take it in between
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------- object stores
class ObjectLock:
    """A lock object with a TTL and a heartbeat on an fsspec file system (S3, GCS, memory://).

    `ttl`: seconds a record stays valid without a heartbeat; `settle`: the read-back delay of the fallback for
    file systems without a conditional create. See the module docstring for what is guaranteed.
    """

    def __init__(self, fs: Any, key: str, store: str, purpose: str, *, ttl: float = 120.0, settle: float = 0.5):
        self.fs, self.key, self.store, self.purpose = fs, key, store, purpose
        self.ttl, self.settle = float(ttl), float(settle)
        self.holder: LockHolder | None = None
        self.took_over: LockHolder | None = None
        self.lost: LockHolder | None = None
        self.conditional: bool | None = None  # whether the file system honoured the conditional create
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _read(self) -> LockHolder | None:
        from .remote import with_retries

        try:  # transient failures retried, then RemoteStoreError naming the lock object
            return _parse(with_retries(lambda: self.fs.cat_file(self.key), self.fs.unstrip_protocol(self.key),
                                       what="reading the lock"))
        except FileNotFoundError:
            return None

    def _create(self, holder: LockHolder) -> bool:
        """Conditional create; False if the object exists. Falls back to write + read-back without "xb"."""
        data = json.dumps(holder.to_dict()).encode()
        try:
            with self.fs.open(self.key, "xb") as f:
                f.write(data)
            self.conditional = True
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # this file system has no exclusive create
            self.conditional = False
        if self.fs.exists(self.key):
            return False
        self.fs.pipe_file(self.key, data)
        time.sleep(self.settle)  # let a concurrent writer's put land, then see whose record won
        current = self._read()
        return current is not None and current.token == holder.token

    def acquire(self) -> "ObjectLock":
        for _ in range(5):
            holder = LockHolder.mine(self.purpose, self.ttl)
            if self._create(holder):
                self.holder = holder
                break
            current = self._read()
            if current is None:
                continue  # released meanwhile
            expired = current.expires is not None and current.expires < time.time()
            if not (expired or current.dead_here()):
                raise _locked(self.key, current, self.store)
            log.warning("%s: taking over the stale lock of %s (%s)", self.store, current.describe(),
                        "its heartbeat expired" if expired else "that process is gone")
            self.took_over = current
            try:
                self.fs.rm(self.key)
            except FileNotFoundError:
                pass
        else:
            raise StoreLockedError(f"{self.store}: could not take the lock {self.key} after 5 attempts",
                                   lock=self.key)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="cellio-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self._read()
                if current is None or self.holder is None or current.token != self.holder.token:
                    self.lost = current
                    log.error("%s: lost the lock %s to %s", self.store, self.key,
                              current.describe() if current else "nobody (the record was deleted)")
                    return
                self.holder = replace(self.holder, expires=time.time() + self.ttl)
                self.fs.pipe_file(self.key, json.dumps(self.holder.to_dict()).encode())
            except Exception as exc:  # a failed beat is retried; the TTL covers a few of them
                log.warning("%s: lock heartbeat failed: %s", self.store, exc)

    def check(self) -> None:
        if self.holder is None:
            raise StoreLockedError(f"{self.store}: the lock {self.key} is not held", lock=self.key)
        if self.lost is not None or self._read() is None:
            who = self.lost.describe() if self.lost else "nobody (the record was deleted)"
            raise StoreLockedError(f"{self.store}: lost the lock {self.key} to {who}; stopping before anything else "
                                   f"is written", holder=self.lost.to_dict() if self.lost else None, lock=self.key)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if self.holder is None:
            return
        holder, self.holder = self.holder, None
        try:
            current = self._read()
            if current is not None and current.token == holder.token:
                try:
                    self.fs.rm(self.key)
                except FileNotFoundError:
                    pass
        except Exception as exc:  # the store is unreachable (the error that stopped the job, most likely)
            log.warning("%s: could not release the lock %s (%s: %s); it goes stale when this process exits or its "
                        "heartbeat expires", self.store, self.key, type(exc).__name__, exc)


@contextmanager
def lock_store(target: FileTarget, purpose: str, *, ttl: float = 120.0) -> Iterator[LocalLock | ObjectLock]:
    """Hold the store's writer lock for the `with` block (the root directory must exist on local disks)."""
    lock: LocalLock | ObjectLock
    if target.local:
        lock = LocalLock(target.key(LOCK_NAME), target.path, purpose)
    else:
        lock = ObjectLock(target.fs, target.key(LOCK_NAME), target.path, purpose, ttl=ttl)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
