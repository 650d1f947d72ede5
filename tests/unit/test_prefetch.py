"""The source read ahead (sources/prefetch.py): every chunk replayed in order, whatever the timing;
the source's error where it happened; a full or missing spool costs only the overlap; close() ends it.

The source here is a plain generator of chunks (what a source adapter's RowChunks carries); the
spool is a real temporary file. PostgreSQL's own chunks (CopyRows) are checked to survive the spool."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync.sources.base import RowChunks, RowLayout
from ownpage_sync.sources.postgresql import CopyRows
from ownpage_sync.sources.prefetch import SourcePrefetch

pytestmark = pytest.mark.unit

MiB = 1 << 20


def chunks(count: int, rows: int = 50) -> list[list[tuple[str, int]]]:
    return [[(f"reader{c}-{r}@example.org", r) for r in range(rows)] for c in range(count)]


def read_of(generator: Iterator[Any]) -> RowChunks:
    return RowChunks(RowLayout(email=0), generator, lambda row, number: row)


class Source:
    """A source's chunks, optionally held back by a gate, failing after some, and noting its cleanup."""

    def __init__(self, data: list[Any], fail_after: int | None = None, gate: threading.Event | None = None):
        self.data, self.fail_after, self.gate = data, fail_after, gate
        self.read = 0
        self.cleaned = threading.Event()

    def chunks(self) -> Iterator[Any]:
        try:
            for number, chunk in enumerate(self.data):
                if self.gate is not None:
                    assert self.gate.wait(10)
                if number == self.fail_after:
                    raise ConnectionResetError("the database went away")
                self.read += 1
                yield chunk
        finally:
            self.cleaned.set()


def test_every_chunk_is_replayed_in_order_once_read_ahead() -> None:
    # Given a source read ahead to its end before the list is compared
    source = Source(chunks(20))
    ahead = SourcePrefetch.start(read_of(source.chunks()), 64 * MiB)
    ahead._thread.join(10)
    # When its rows are replayed
    replayed = list(ahead.rows().chunks)
    # Then they are the source's chunks, in order, each once, all from the spool
    assert [list(chunk) for chunk in replayed] == source.data
    assert (ahead.stats.chunks, ahead.stats.rows, ahead.stats.ended) == (20, 1000, "")
    assert ahead.stats.spooled_bytes > 0


def test_a_replay_that_catches_up_with_the_read_ahead_waits_for_it() -> None:
    # Given a source that sends its chunks only when let through
    gate = threading.Event()
    source = Source(chunks(5), gate=gate)
    ahead = SourcePrefetch.start(read_of(source.chunks()), 64 * MiB)
    replay = ahead.rows().chunks
    # When the replay starts before anything was read, and the source then sends
    threading.Timer(0.2, gate.set).start()
    replayed = list(replay)
    # Then every chunk still comes, in order
    assert [list(chunk) for chunk in replayed] == source.data


def test_a_failing_source_fails_the_replay_where_it_failed() -> None:
    # Given a source whose connection breaks after 3 chunks
    source = Source(chunks(6), fail_after=3)
    ahead = SourcePrefetch.start(read_of(source.chunks()), 64 * MiB)
    replay = ahead.rows().chunks
    # When it is replayed
    got = []
    with pytest.raises(ConnectionResetError, match="the database went away"):
        for chunk in replay:
            got.append(list(chunk))
    # Then the 3 chunks before the failure came, then its own error (the run fails as a source error)
    assert got == source.data[:3]


def test_a_full_spool_ends_the_read_ahead_and_the_rest_is_read_after(caplog: pytest.LogCaptureFixture) -> None:
    # Given a spool with room for about 2 of 10 chunks
    data = chunks(10)
    budget = len(pickle.dumps(data[0])) * 2 + 10
    source = Source(data)
    caplog.set_level(logging.WARNING, logger="ownpage_sync.sources.prefetch")
    ahead = SourcePrefetch.start(read_of(source.chunks()), budget)
    ahead._thread.join(10)
    # When the source is replayed
    replayed = [list(chunk) for chunk in ahead.rows().chunks]
    # Then nothing is lost: the spooled chunks, the one that did not fit, then the source read on
    assert replayed == data
    assert ahead.stats.chunks == 2 and "spool full" in ahead.stats.ended
    assert "source read ahead ended" in caplog.text
    # And the run's ReadAheadEnded metric says so
    assert ahead.stats.ended_early


def test_without_a_usable_spool_the_source_is_read_after_the_ownpage_read(tmp_path: Path) -> None:
    # Given a spool directory that does not exist
    source = Source(chunks(4))
    ahead = SourcePrefetch.start(read_of(source.chunks()), 64 * MiB, directory=str(tmp_path / "gone"))
    ahead._thread.join(10)
    # When the source is replayed
    replayed = [list(chunk) for chunk in ahead.rows().chunks]
    # Then every chunk came, read from the source itself
    assert replayed == source.data
    assert ahead.stats.ended.startswith("no spool in") and ahead.stats.chunks == 0
    assert ahead.stats.ended_early


def test_no_read_ahead_when_the_spool_is_set_to_zero() -> None:
    # Given SOURCE_SPOOL_MB=0
    gate = threading.Event()
    source = Source(chunks(3), gate=gate)
    ahead = SourcePrefetch.start(read_of(source.chunks()), 0)
    # Then nothing is read before the replay asks
    assert source.read == 0 and ahead.stats.ended == "off"
    assert not ahead.stats.ended_early  # turned off is not a spool that ended
    gate.set()
    assert [list(chunk) for chunk in ahead.rows().chunks] == source.data


def test_close_ends_a_read_ahead_that_will_not_be_replayed() -> None:
    # Given a source much longer than what is read before the Ownpage read fails
    gate = threading.Event()
    source = Source(chunks(1000), gate=gate)
    ahead = SourcePrefetch.start(read_of(source.chunks()), 64 * MiB)
    # When the read ahead is closed (the Ownpage read failed) and the source sends its next chunk
    threading.Timer(0.1, gate.set).start()
    ahead.close()
    # Then the source's cleanup ran (its connection closed) and it stopped long before its end
    assert source.cleaned.wait(10)
    assert source.read < 1000
    assert not ahead.stats.ended_early  # the run stopped it: not a spool that ended


def test_close_ends_the_source_of_a_read_ahead_that_had_already_ended_early() -> None:
    # Given a read ahead whose spool filled after 2 of 1000 chunks (the source left open, to be read on)
    data = chunks(1000)
    source = Source(data)
    ahead = SourcePrefetch.start(read_of(source.chunks()), len(pickle.dumps(data[0])) * 2 + 10)
    ahead._thread.join(10)
    assert "spool full" in ahead.stats.ended and not source.cleaned.is_set()
    # When it is closed without a replay (the Ownpage read failed)
    ahead.close()
    # Then the source's cleanup ran at once (a database connection is closed, not left to the GC)
    assert source.cleaned.is_set() and source.read < 1000


def test_copy_rows_survive_the_spool_as_their_bytes() -> None:
    # Given PostgreSQL COPY rows with a NULL and an escape
    rows = CopyRows(b"ann@example.org\tg1\t\\N\nbob@example.org\tg2\tParis\\tNord\n")
    # When one goes through the spool
    back = pickle.loads(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
    # Then it reads the same, field by field and column by column
    assert [back[0], back[1]] == [rows[0], rows[1]]
    assert back.column(2) == rows.column(2) == [None, "Paris\tNord"]
