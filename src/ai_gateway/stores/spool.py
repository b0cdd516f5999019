"""A local append-only spool of JSON lines: where ledger rows wait while the database is slow or down.

Three files side by side:
    <path>               the active spool; rows are appended as whole lines, fsync'd per batch
    <path>.replaying     the active spool renamed for replay; new rows go to a fresh active file, so a
                         replay never races an append. Deleted only once all of its rows are confirmed
                         written; a crash mid-replay replays it again (the sink is idempotent).
    <path>.rejected      lines the database refused as data, or that do not parse; kept for an operator,
                         never replayed automatically, never silently dropped

A crash can tear the last line. Appending first ends a torn tail with a newline, so the next row starts
clean; a reader reports an unterminated last line as torn instead of parsing it.

Methods are blocking file I/O: the ledger calls them through `asyncio.to_thread`, except the rare
overflow append from `record`, which skips the fsync. A lock keeps whole lines whole across threads.

One process per spool: replays rename the active file, which would pull it from under another
process's appends. An exclusive `flock` on `<path>.lock`, held from construction to `close()`, makes a
second process fail at start-up with a ConfigError that says how to fix it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ai_gateway.settings import ConfigError, ConfigProblem

__all__ = ["Chunk", "Spool"]

log = logging.getLogger("ai_gateway.ledger")


@dataclass(slots=True)
class Chunk:
    lines: list[bytes] = field(default_factory=list)  # complete lines, newline included
    next_offset: int = 0
    eof: bool = False
    torn: bytes | None = None  # an unterminated last line: what a crash mid-append leaves


class Spool:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.replay_path = self.path.with_name(self.path.name + ".replaying")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner: int | None = None  # the fd holding the flock
        try:
            self._own()
        except BlockingIOError:
            raise ConfigError(
                [
                    ConfigProblem(
                        "ledger spool",
                        f"{self.path} is in use by another gateway process",
                        "give each replica (or worker) its own spool path",
                    )
                ]
            ) from None
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._unsynced = False
        self._active_rows = _count_lines(self.path)
        self._replay_rows = _count_lines(self.replay_path)

    @property
    def depth(self) -> int:
        """Rows waiting in the spool (active + being replayed)."""
        return self._active_rows + self._replay_rows

    @property
    def unsynced(self) -> bool:
        return self._unsynced

    def append(self, lines: Sequence[bytes], *, fsync: bool = True) -> None:
        if not lines:
            return
        with self._lock:
            f = self._open()
            f.write(b"".join(lines))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            self._unsynced = not fsync
            self._active_rows += len(lines)

    def sync(self) -> None:
        """fsync what `append(fsync=False)` wrote."""
        with self._lock:
            if self._unsynced and self._file is not None:
                os.fsync(self._file.fileno())
            self._unsynced = False

    def begin_replay(self) -> Path | None:
        """The file to replay: a leftover `.replaying`, else the active spool renamed; None if empty."""
        with self._lock:
            self._own()
            if self.replay_path.exists():
                return self.replay_path
            if not self.path.exists() or self.path.stat().st_size == 0:
                return None
            self._close()
            os.replace(self.path, self.replay_path)
            _fsync_dir(self.path.parent)
            self._replay_rows, self._active_rows = self._active_rows, 0
            return self.replay_path

    def read(self, path: Path, offset: int, max_lines: int) -> Chunk:
        chunk = Chunk(next_offset=offset)
        with path.open("rb") as f:
            f.seek(offset)
            for _ in range(max_lines):
                line = f.readline()
                if not line:
                    chunk.eof = True
                    break
                if not line.endswith(b"\n"):
                    chunk.torn, chunk.eof = line, True
                    break
                chunk.lines.append(line)
            else:
                chunk.eof = not f.read(1)
            chunk.next_offset = offset + sum(map(len, chunk.lines)) + len(chunk.torn or b"")
        return chunk

    def consumed(self, rows: int) -> None:
        """`rows` of the replay file are confirmed written (or rejected)."""
        self._replay_rows = max(0, self._replay_rows - rows)

    def finish_replay(self, path: Path) -> None:
        with self._lock:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
            self._replay_rows = 0

    def reject(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        with self._lock, self.rejected_path.open("ab") as f:
            f.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        """fsync, close and let another process have the spool; a later append takes it back."""
        with self._lock:
            if self._unsynced and self._file is not None:
                os.fsync(self._file.fileno())
            self._close()
            if self._owner is not None:
                os.close(self._owner)  # closing the fd releases the flock
                self._owner = None

    def _own(self) -> None:
        if self._owner is None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._owner = fd

    def _open(self) -> BinaryIO:
        self._own()
        if self._file is None or self._file.closed:
            f = self.path.open("ab")
            if f.tell() > 0 and not _ends_with_newline(self.path):
                f.write(b"\n")  # end a line torn by a crash, so the next row is not glued to it
            self._file = f
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._unsynced = False


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink durable; best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
