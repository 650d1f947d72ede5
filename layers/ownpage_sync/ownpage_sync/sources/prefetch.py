"""The source read ahead: streamed while Ownpage's list is read, spooled, replayed after it.

Matching a source row needs Ownpage's index settled, so the source cannot be compared while the list
is read; it can be *streamed*: the query runs, the database sends its rows and the driver parses them
while the list's pages are in flight. Each chunk is pickled to an unnamed temporary file (the rows do
not stay in memory, and the file is gone once closed, or when the process ends); once the index is
settled, `rows()` replays the chunks in order, then reads on from the source itself.

The spool has a budget: `max_bytes`, and never more than the free space of its directory less
SPOOL_MARGIN. A chunk that would exceed it ends the read ahead: that chunk is kept in memory and the
rest of the source is read after the Ownpage read, as with no spool. A spool that cannot be created
or written does the same, logged. A source that fails, fails where it would have: `rows()` raises its
error after the chunks read before it. `close()` ends a read ahead that will not be replayed (the
Ownpage read failed) at the source's next chunk, and the source's own cleanup closes its connection.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from types import GeneratorType
from typing import IO, Any

from ownpage_sync.sources.base import RowChunks

log = logging.getLogger(__name__)

SPOOL_MARGIN = 64 * 1024 * 1024  # bytes left free in the spool's directory
# close(): how long to wait for a read ahead blocked in the source (a query before its first row); past
# it, the thread ends the source itself when the source answers, and the run goes on to its end.
JOIN_SECONDS = 1.0

Chunk = Sequence[Sequence[Any]]


@dataclass
class PrefetchStats:
    """What the read ahead did (the run's "source read" log line)."""

    chunks: int = 0  # chunks spooled
    rows: int = 0
    spooled_bytes: int = 0
    ended: str = ""  # why it ended before the source's end ("" when it reached it)

    @property
    def ended_early(self) -> bool:
        """Whether a spool that was wanted ended before the source did (full, or not writable): the
        run then reads the rest of the source after the list. Not when off, or stopped by the run."""
        return self.ended not in ("", "off", "stopped")

    def to_dict(self) -> dict[str, Any]:
        return {"rows_read_ahead": self.rows, "spooled_bytes": self.spooled_bytes, "read_ahead_ended": self.ended}


class SourcePrefetch:
    """One full source read, started ahead in a thread (`start`), replayed once (`rows`)."""

    def __init__(self, read: RowChunks, max_bytes: int, directory: str | None = None):
        self._read = read
        self._chunks = read.chunks
        self._max_bytes = max_bytes
        self._directory = directory or tempfile.gettempdir()
        self._changed = threading.Condition()
        self._spooled: list[tuple[int, int]] = []  # (offset, length) of each chunk in the file
        self._running = True
        self._error: BaseException | None = None
        self._held: Chunk | None = None  # the chunk that did not fit
        self._stop = threading.Event()
        self._file: IO[bytes] | None = None
        self.stats = PrefetchStats()
        self._thread = threading.Thread(target=self._run, name="source-prefetch", daemon=True)

    @classmethod
    def start(cls, read: RowChunks, max_bytes: int, directory: str | None = None) -> SourcePrefetch:
        """Read ahead into a spool of at most `max_bytes`; with 0, not at all (`rows()` reads the source)."""
        prefetch = cls(read, max_bytes, directory)
        if max_bytes > 0:
            prefetch._thread.start()
        else:
            prefetch._running, prefetch.stats.ended = False, "off"
        return prefetch

    # -- the thread reading ahead ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._spool()
        except BaseException as exc:  # the source's own error: rows() raises it, after the chunks before it
            self._error = exc
        finally:
            with self._changed:
                self._running = False
                self._changed.notify_all()
            if self._stop.is_set():  # nothing more will be replayed
                self._release()

    def _spool(self) -> None:
        try:
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 (rows() or close() closes it)
            budget = min(self._max_bytes, shutil.disk_usage(self._directory).free - SPOOL_MARGIN)
        except OSError as exc:
            self._ended(f"no spool in {self._directory}: {exc.strerror or type(exc).__name__}")
            return
        fd = self._file.fileno()
        written = 0
        for chunk in self._chunks:
            if self._stop.is_set():
                self.stats.ended = "stopped"
                return
            data = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
            if written + len(data) > budget:
                self._held = chunk
                self._ended(f"spool full ({written >> 20} MiB, at most {max(budget, 0) >> 20} MiB)")
                return
            try:
                _write_all(fd, data)
            except OSError as exc:
                self._held = chunk
                self._ended(f"spool not writable: {exc.strerror or type(exc).__name__}")
                return
            with self._changed:
                self._spooled.append((written, len(data)))
                self._changed.notify_all()
            written += len(data)
            self.stats.chunks += 1
            self.stats.rows += len(chunk)
            self.stats.spooled_bytes = written

    def _ended(self, why: str) -> None:
        self.stats.ended = why
        log.warning(
            "source read ahead ended: the rest of the source is read after the Ownpage read",
            extra={"reason": why, "rows_read_ahead": self.stats.rows},
        )

    # -- the reader ----------------------------------------------------------------------------------

    def rows(self) -> RowChunks:
        """The whole read, as the source gives it: the spooled chunks, then the rest."""
        return replace(self._read, chunks=self._replay())

    def _replay(self) -> Iterator[Chunk]:
        try:
            done = 0
            while True:
                with self._changed:
                    while done == len(self._spooled) and self._running:
                        self._changed.wait()
                    entries = self._spooled[done:]
                if not entries:
                    break
                assert self._file is not None
                for offset, length in entries:
                    yield pickle.loads(os.pread(self._file.fileno(), length, offset))
                done += len(entries)
            self._join()
            if self._error is not None:
                raise self._error
            if self._held is not None:
                held, self._held = self._held, None
                yield held
            if self.stats.ended:
                yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        """End the read ahead (nothing more will be replayed), at the source's next chunk."""
        self._stop.set()
        self._join(JOIN_SECONDS)
        if not self._thread.is_alive():
            self._release()

    def _join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    def _release(self) -> None:
        """Close the spool and the source (its cleanup closes its connection): by the thread once
        stopped, or by close() once the thread is done, whichever comes last; never under a write."""
        with self._changed:
            file, self._file = self._file, None
        if file is not None:
            file.close()
        if isinstance(self._chunks, GeneratorType) and not self._chunks.gi_running:
            self._chunks.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
