"""Plan and suppression exports (ownpage_sync.exports): CSV or JSON by suffix, anything else refused,
files readable by their owner only, the bucket export asked for by an event."""

from __future__ import annotations

import csv
import io
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.exports import (
    EXPORT_PREFIX,
    BucketExport,
    check_writable,
    format_of,
    write_plan,
    write_suppressions,
)

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Item:
    """An operation or a suppression as the planner exposes it: only `to_dict()` is read."""

    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(frozen=True)
class FakePlan:
    """The three Plan APIs an export may use: operations(), suppressed, counts()."""

    ops: list[Item] = field(default_factory=list)
    suppressed: list[Item] = field(default_factory=list)

    def operations(self) -> list[Item]:
        return self.ops

    def counts(self) -> dict[str, int]:
        return {"to_subscribe": 1, "to_unsubscribe": 1, "suppressed": len(self.suppressed)}


PLAN = FakePlan(
    ops=[
        Item({"action": "unsubscribe", "email": "marc@example.org", "guid": None, "data": {}, "unsubscribed_cause": "PUBLISHER"}),
        Item({"action": "subscribe", "email": "chloé@example.org", "guid": "48213", "data": {"city": "Lyon", "firstname": "Chloé"}, "unsubscribed_cause": None}),
    ],
    suppressed=[
        Item({"email": "h.nguyen@example.net", "cause": "HARD_BOUNCE", "unsubscribed_at": "2025-02-01T10:00:00+00:00"}),
        Item({"email": "lea@example.net", "cause": "READER", "unsubscribed_at": None}),
    ],
)  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_plan_as_csv_has_one_row_per_operation_and_is_private(tmp_path: Path) -> None:
    # Given a plan with an unsubscribe and a subscribe with data
    path = tmp_path / "plan.CSV"
    # When it is exported to a .csv file
    write_plan(PLAN, path)
    # Then each operation is a row, data as JSON, and only the owner may read the file
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows == [
        ["action", "email", "guid", "data", "unsubscribed_cause"],
        ["unsubscribe", "marc@example.org", "", "", "PUBLISHER"],
        ["subscribe", "chloé@example.org", "48213", '{"city": "Lyon", "firstname": "Chloé"}', ""],
    ]
    assert mode(path) == 0o600


def test_the_plan_as_json_holds_counts_operations_and_suppressions(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write_plan(PLAN, path)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["counts"]["to_subscribe"] == 1
    assert [op["email"] for op in document["operations"]] == ["marc@example.org", "chloé@example.org"]
    assert [s["cause"] for s in document["suppressed"]] == ["HARD_BOUNCE", "READER"]


def test_an_address_with_a_lone_surrogate_is_exported_as_written_not_a_crash(tmp_path: Path) -> None:
    # Given a plan unsubscribing an address Ownpage's JSON held with a lone surrogate escape
    odd = "\ud800gone@example.org"
    plan = FakePlan(
        ops=[Item({"action": "unsubscribe", "email": odd, "guid": None, "data": {}, "unsubscribed_cause": "PUBLISHER"})]
    )

    # When it is exported as JSON and as CSV
    write_plan(plan, tmp_path / "plan.json")
    write_plan(plan, tmp_path / "plan.csv")

    # Then the JSON holds it as JSON's escape (read back: the same address), the CSV as the text \ud800
    assert json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))["operations"][0]["email"] == odd
    assert "\\ud800gone@example.org" in (tmp_path / "plan.csv").read_text(encoding="utf-8")


def test_suppressions_as_csv_and_json(tmp_path: Path) -> None:
    # When the suppressions are exported in both formats
    write_suppressions(PLAN, tmp_path / "s.csv")
    write_suppressions(PLAN, tmp_path / "s.json")
    # Then both hold every suppressed address with its cause and time
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines() == [
        "email,cause,unsubscribed_at",
        "h.nguyen@example.net,HARD_BOUNCE,2025-02-01T10:00:00+00:00",
        "lea@example.net,READER,",
    ]
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["suppressed"][1] == {
        "email": "lea@example.net",
        "cause": "READER",
        "unsubscribed_at": None,
    }


def test_an_existing_readable_file_becomes_private_when_overwritten(tmp_path: Path) -> None:
    # Given an earlier export left readable by everyone
    path = tmp_path / "plan.csv"
    path.write_text("old, longer content than the new one " * 100)
    path.chmod(0o644)
    # When the plan is exported over it
    write_plan(PLAN, path)
    # Then the file is private and holds only the new plan
    assert mode(path) == 0o600
    assert path.read_text(encoding="utf-8").startswith("action,email")
    assert "old" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["plan.xlsx", "plan", "plan.csv.gz", "plan.txt"])
def test_an_unknown_format_is_an_error_not_silent_json(tmp_path: Path, name: str) -> None:
    # When the file name says neither .csv nor .json
    with pytest.raises(ConfigurationError) as raised:
        write_plan(PLAN, tmp_path / name)
    # Then nothing is written, and the error says what to do
    assert "name it .csv or .json" in str(raised.value)
    assert not (tmp_path / name).exists()
    with pytest.raises(ConfigurationError):
        format_of(name)


def test_an_output_path_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    # Given a writable new file, a missing directory, a directory, and an unknown suffix
    check_writable(tmp_path / "plan.csv")
    (tmp_path / "exports").mkdir()
    cases = {
        tmp_path / "missing" / "plan.csv": "does not exist",
        tmp_path / "exports": "name it .csv or .json",
        tmp_path / "dir.csv": "is a directory",
    }
    (tmp_path / "dir.csv").mkdir()
    # Then each bad one is refused with its reason, and the check itself created nothing
    for path, reason in cases.items():
        with pytest.raises(ConfigurationError) as raised:
            check_writable(path)
        assert reason in str(raised.value), path
    assert not (tmp_path / "plan.csv").exists()


def test_a_bucket_export_is_validated_from_the_event_before_the_run() -> None:
    # No export asked: no bucket needed
    assert not BucketExport.from_event({"dry_run": True}, env={}).wanted
    # A format other than csv/json: refused, naming the key
    with pytest.raises(ConfigurationError) as bad_format:
        BucketExport.from_event({"export_plan": "xlsx"}, env={"EXPORT_BUCKET": "b"})
    assert 'event.export_plan: expected "csv" or "json", got "xlsx"' in str(bad_format.value)
    # An export without the stack's bucket: refused, naming the variable
    with pytest.raises(ConfigurationError) as no_bucket:
        BucketExport.from_event({"export_suppressions": "csv"}, env={})
    assert "EXPORT_BUCKET: is required" in str(no_bucket.value)


class RecordingS3:
    def __init__(self, refuse: bool = False):
        self.puts: list[dict[str, Any]] = []
        self.refuse = refuse

    def put_object(self, **request: Any) -> None:
        if self.refuse:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")
        self.puts.append(request)


def test_a_bucket_export_puts_encrypted_objects_under_the_prefix_and_returns_their_keys() -> None:
    # Given an event asking for both exports
    export = BucketExport.from_event(
        {"export_plan": "json", "export_suppressions": "csv"}, env={"EXPORT_BUCKET": "exports-bucket"}
    )
    s3 = RecordingS3()
    # When they are written for a run
    result = export.write(PLAN, "20250301T060000Z-3f9c2a71", client=s3)
    # Then both are under the run's prefix, encrypted, and the keys are returned (no address in them)
    assert result == {
        "bucket": "exports-bucket",
        "plan": f"{EXPORT_PREFIX}20250301T060000Z-3f9c2a71/plan.json",
        "suppressions": f"{EXPORT_PREFIX}20250301T060000Z-3f9c2a71/suppressions.csv",
    }
    assert all(put["ServerSideEncryption"] == "AES256" and put["Bucket"] == "exports-bucket" for put in s3.puts)
    assert json.loads(s3.puts[0]["Body"])["operations"][0]["email"] == "marc@example.org"


def test_a_refused_bucket_export_is_reported_not_raised() -> None:
    export = BucketExport.from_event({"export_plan": "csv"}, env={"EXPORT_BUCKET": "b"})
    assert export.write(PLAN, "r-1", client=RecordingS3(refuse=True)) == {
        "bucket": "b",
        "error": "S3 refused PutObject: AccessDenied",
    }
    assert "error" in export.write(None, "r-1", client=RecordingS3())
