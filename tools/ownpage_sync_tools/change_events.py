"""The events the ChangeFunction receives, built here so its real handler can run in-process (the demo,
`ownpage-sync touch --local`, the tests): moto keeps a table's DynamoDB Stream but cannot run an
event source mapping (Lambda needs Docker), so the stream's records are read with boto3 and handed
over in the shape Lambda gives them; EventBridge events are built in the shape a rule delivers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.fast_lane import DETAIL_TYPE

DEFAULT_EVENT_SOURCE = "ownpage-sync"  # the template's ChangeEventSource default
DEFAULT_EVENT_BUS = "default"


def change_event(
    email: str,
    source: str = DEFAULT_EVENT_SOURCE,
    region: str = "eu-west-1",
    account: str = "123456789012",
    time: datetime | None = None,
) -> dict[str, Any]:
    """A SubscriberChanged event as an EventBridge rule delivers it to a Lambda target."""
    moment = (time or datetime.now(UTC)).astimezone(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPE,
        "source": source,
        "account": account,
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [],
        "detail": {"email": email},
    }


def _epoch(value: Any) -> Any:
    """boto3 parses ApproximateCreationDateTime into a datetime; Lambda passes epoch seconds."""
    return value.timestamp() if isinstance(value, datetime) else value


def stream_event(records: Sequence[Mapping[str, Any]], stream_arn: str, region: str) -> dict[str, Any]:
    """`{"Records": [...]}` as Lambda's DynamoDB event source mapping delivers them, from records read
    with `dynamodbstreams.get_records`."""
    delivered = []
    for record in records:
        data = dict(record["dynamodb"])
        data["ApproximateCreationDateTime"] = _epoch(data.get("ApproximateCreationDateTime"))
        delivered.append({**record, "dynamodb": data, "awsRegion": region, "eventSourceARN": stream_arn})
    return {"Records": delivered}


class StreamReader:
    """Every record a table's stream gets after the reader's last read, over all of its shards."""

    def __init__(self, client: Any, stream_arn: str):
        self.client = client
        self.stream_arn = stream_arn
        self._last: dict[str, str] = {}  # shard id -> last sequence number read

    def read(self) -> list[dict[str, Any]]:
        """The records since the last read (all of them, the first time), in each shard's order."""
        records: list[dict[str, Any]] = []
        shards = self.client.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            position: dict[str, str] = (
                {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": self._last[shard_id]}
                if shard_id in self._last
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            iterator = self.client.get_shard_iterator(StreamArn=self.stream_arn, ShardId=shard_id, **position)
            cursor = iterator["ShardIterator"]
            while cursor:
                page = self.client.get_records(ShardIterator=cursor, Limit=1000)
                if not page["Records"]:
                    break
                records.extend(page["Records"])
                self._last[shard_id] = page["Records"][-1]["dynamodb"]["SequenceNumber"]
                cursor = page.get("NextShardIterator")
        return records

    def event(self, region: str) -> dict[str, Any]:
        """The records since the last read, as the ChangeFunction's event."""
        return stream_event(self.read(), self.stream_arn, region)
