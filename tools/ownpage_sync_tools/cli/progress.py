"""Progress bars on stderr for the long reads and writes (tqdm), only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ownpage_sync.ports import Progress


class TerminalProgress:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @contextmanager
    def stage(self, description: str, total: int | None) -> Iterator[Progress]:
        if not self.enabled:
            yield lambda _n: None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=description, unit=" rows", file=sys.stderr, leave=True) as bar:
            yield bar.update
