"""The one-writer-process-per-store file lock (fcntl.flock on <store>/writer.lock).

flock is released by the kernel when the holder dies (even by SIGKILL), so a crashed
writer never leaves the store locked. The lock is re-entrant within one Store object
(several views may be written by the same process), and refused to everybody else,
including a second Store object in the same process.
"""

from __future__ import annotations

import fcntl
import os
import threading

from featurestore.errors import StoreError

LOCK_NAME = "writer.lock"


class WriterLock:
    """A counted, non-blocking exclusive lock on `<path>/writer.lock`."""

    def __init__(self, path: str) -> None:
        self.path = os.path.join(path, LOCK_NAME)
        self._fd: int | None = None
        self._count = 0
        self._pid = os.getpid()
        self._mutex = threading.Lock()

    def acquire(self) -> None:
        with self._mutex:
            if self._pid != os.getpid():
                raise StoreError("this Store was opened in another process (before fork); "
                                 "open the store again in this process to write")
            if self._count:
                self._count += 1
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreError(
                    f"store {os.path.dirname(self.path)} already has a writer ({holder}); one writer process "
                    "per store: send results to that process (featurestore.ray_writer) or wait for it"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}\n".encode())
            self._fd = fd
            self._count = 1

    def release(self) -> None:
        with self._mutex:
            if self._count == 0 or self._pid != os.getpid():
                return
            self._count -= 1
            if self._count == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._count > 0 and self._pid == os.getpid()


def _read_holder(fd: int) -> str:
    try:
        txt = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return txt or "another process"
    except OSError:
        return "another process"
