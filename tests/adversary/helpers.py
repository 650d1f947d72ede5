"""What the adversarial tests share: a run over the in-memory fakes. (An Ownpage matching with full
Unicode case folding is the emulator's `matching="casefold"`: tests/integration/test_casefold_ownpage.py.)"""

from __future__ import annotations

from collections.abc import Sequence

from ownpage_sync.deadline import Deadline
from ownpage_sync.report import RunReport
from ownpage_sync.settings import OwnpageSettings, Settings, SourceSettings
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sync import RunRequest, SyncServices, run_sync

from tests.fakes import FakeOwnpage, InMemorySource

SETTINGS = Settings(
    ownpage=OwnpageSettings(api_url="http://127.0.0.1:9", list_id=1, secret_id="unused"),
    source=SourceSettings(kind="dynamodb", table="unused"),
)


def run_over_fakes(source: Sequence[RawSubscriber], ownpage: FakeOwnpage) -> RunReport:
    """One scheduled run of these source rows against this fake Ownpage."""
    return run_sync(SETTINGS, SyncServices(InMemorySource(source), ownpage), RunRequest(), Deadline.unlimited())
