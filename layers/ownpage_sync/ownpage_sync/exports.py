"""Plan and suppression exports: every planned write, every suppressed address, addresses included.

They are personal data, so they only ever go to a file readable by its owner alone (mode 0600) or to
the stack's encrypted export bucket (EXPORT_BUCKET, under EXPORT_PREFIX, expired after a day), and
are never logged. Formats: CSV or JSON, by the file's suffix; anything else is refused, not guessed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ownpage_sync.errors import ConfigurationError
from ownpage_sync.values import json_utf8

log = logging.getLogger(__name__)

FORMATS = ("csv", "json")
# SyncFunction may only PutObject under this prefix (template.yaml, ExportBucket).
EXPORT_PREFIX = "exports/"
PLAN_COLUMNS = ("action", "email", "guid", "data", "unsubscribed_cause")
SUPPRESSION_COLUMNS = ("email", "cause", "unsubscribed_at")
PRIVATE = 0o600


class _Exportable(Protocol):
    def to_dict(self) -> Mapping[str, Any]: ...


class ExportablePlan(Protocol):
    """The part of planner.Plan an export reads (kept stable by the planner)."""

    @property
    def suppressed(self) -> Sequence[_Exportable]: ...

    def operations(self) -> Iterable[_Exportable]: ...

    def counts(self) -> Mapping[str, int]: ...


# -- documents -----------------------------------------------------------------------------------


def format_of(path: Path | str) -> str:
    """`csv` or `json` from the file name; ConfigurationError for any other suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        shown = f"suffix '.{suffix}'" if suffix else "no suffix"
        raise ConfigurationError(f"export file {str(path)!r} has {shown}: name it .csv or .json")
    return suffix


def _csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8", "backslashreplace")  # a lone surrogate as \\ud800


def plan_document(plan: ExportablePlan, fmt: str) -> bytes:
    """Every planned operation: CSV `action,email,guid,data,unsubscribed_cause` (data as JSON), or
    JSON `{"counts", "operations", "suppressed"}`."""
    operations = [dict(op.to_dict()) for op in plan.operations()]
    if _checked(fmt) == "csv":
        return _csv(
            PLAN_COLUMNS,
            (
                (
                    op["action"],
                    op["email"],
                    op["guid"] or "",
                    json.dumps(op["data"], ensure_ascii=False, sort_keys=True) if op["data"] else "",
                    op["unsubscribed_cause"] or "",
                )
                for op in operations
            ),
        )
    document = {
        "counts": dict(plan.counts()),
        "operations": operations,
        "suppressed": [dict(item.to_dict()) for item in plan.suppressed],
    }
    return json_utf8(document, indent=2)


def suppressions_document(plan: ExportablePlan, fmt: str) -> bytes:
    """The addresses Ownpage will not mail: CSV `email,cause,unsubscribed_at`, or JSON `{"suppressed": [...]}`."""
    rows = [dict(item.to_dict()) for item in plan.suppressed]
    if _checked(fmt) == "csv":
        return _csv(SUPPRESSION_COLUMNS, ((r["email"], r["cause"], r["unsubscribed_at"] or "") for r in rows))
    return json_utf8({"suppressed": rows}, indent=2)


def _checked(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown export format {fmt!r}: use csv or json")
    return fmt


# -- files -----------------------------------------------------------------------------------------


def check_writable(path: Path) -> None:
    """Raise ConfigurationError unless `path` can be written: called before a run writes to Ownpage,
    so a typo in a path never costs a run whose plan is then lost."""
    format_of(path)
    if path.is_dir():
        raise ConfigurationError(f"export file {str(path)!r} is a directory")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigurationError(f"export file {str(path)!r} is not writable")
        return
    parent = path.parent
    if not parent.is_dir():
        raise ConfigurationError(f"export file {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError(f"export file {str(path)!r}: directory {str(parent)!r} is not writable")


def write_private(path: Path, content: bytes) -> None:
    """Write `content` to `path`, readable and writable by its owner only (also when it existed)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    try:
        os.fchmod(descriptor, PRIVATE)
        with os.fdopen(descriptor, "wb") as handle:
            descriptor = -1
            handle.write(content)
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def write_plan(plan: ExportablePlan, path: Path) -> None:
    write_private(path, plan_document(plan, format_of(path)))


def write_suppressions(plan: ExportablePlan, path: Path) -> None:
    write_private(path, suppressions_document(plan, format_of(path)))


# -- the stack's export bucket ---------------------------------------------------------------------


@dataclass(frozen=True)
class BucketExport:
    """What an invocation asked to export (`{"export_plan": "csv", "export_suppressions": "csv"}`) and
    where to: EXPORT_BUCKET. Built before the run, so a bad request fails before any call."""

    plan_format: str | None = None
    suppressions_format: str | None = None
    bucket: str | None = None

    @property
    def wanted(self) -> bool:
        return self.plan_format is not None or self.suppressions_format is not None

    @classmethod
    def from_event(cls, event: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> BucketExport:
        event = event if isinstance(event, Mapping) else {}
        problems: list[str] = []
        formats: dict[str, str | None] = {}
        for key in ("export_plan", "export_suppressions"):
            value = event.get(key)
            if value is not None and value not in FORMATS:
                problems.append(f'event.{key}: expected "csv" or "json", got {json.dumps(value)[:40]}')
                value = None
            formats[key] = value
        if problems:
            raise ConfigurationError("invalid event: " + "; ".join(problems))
        request = cls(formats["export_plan"], formats["export_suppressions"])
        if not request.wanted:
            return request
        bucket = (os.environ if env is None else env).get("EXPORT_BUCKET", "").strip()
        if not bucket:
            raise ConfigurationError("EXPORT_BUCKET: is required to export (the stack's ExportBucketName)")
        return cls(request.plan_format, request.suppressions_format, bucket)

    def write(self, plan: ExportablePlan | None, run_id: str, client: Any = None) -> dict[str, Any]:
        """Put the requested documents under EXPORT_PREFIX/<run id>/; their keys, or why not.

        Never raises for a failed put: the run's report stands, and says the export failed."""
        if not self.wanted or self.bucket is None:
            return {}
        if plan is None:
            return {"bucket": self.bucket, "error": "the run stopped before a plan was made: nothing exported"}
        documents = {}
        if self.plan_format:
            documents["plan"] = (f"plan.{self.plan_format}", plan_document(plan, self.plan_format))
        if self.suppressions_format:
            name = f"suppressions.{self.suppressions_format}"
            documents["suppressions"] = (name, suppressions_document(plan, self.suppressions_format))
        result: dict[str, Any] = {"bucket": self.bucket}
        try:
            client = client or _s3()
            for what, (name, body) in documents.items():
                key = f"{EXPORT_PREFIX}{run_id}/{name}"
                client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="text/csv; charset=utf-8" if name.endswith(".csv") else "application/json",
                    ServerSideEncryption="AES256",
                )
                result[what] = key
        except Exception as exc:
            result["error"] = _describe(exc)
            log.error("export to the bucket failed", extra={"bucket": self.bucket, "error": result["error"]})
            return result
        log.info("exports written", extra={k: v for k, v in result.items() if k != "bucket"})
        return result


def _s3() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 4}))


def _describe(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "unknown")
        return f"S3 refused {exc.operation_name}: {code}"
    return f"S3 could not be reached: {type(exc).__name__}"
