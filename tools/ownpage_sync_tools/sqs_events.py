"""The SQS event Lambda would deliver, built from messages received with boto3, so the real retry
handler can run in-process (the CLI's `retry`, the tests): moto's SQS trigger ignores partial responses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def queue_arn(queue_url: str, region: str, account: str = "123456789012") -> str:
    """A queue ARN derived from its URL (`.../ACCOUNT/NAME`), for the event's eventSourceARN."""
    parts = queue_url.rstrip("/").split("/")
    name = parts[-1]
    owner = parts[-2] if len(parts) >= 2 and parts[-2].isdigit() else account
    return f"arn:aws:sqs:{region}:{owner}:{name}"


def _attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """boto3's MessageAttributeValue (StringValue, DataType) → Lambda's shape (stringValue, dataType)."""
    converted: dict[str, Any] = {
        "dataType": value.get("DataType", "String"),
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": list(value.get("BinaryListValues", [])),
    }
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = value["BinaryValue"]
    return converted


def sqs_event(messages: Sequence[Mapping[str, Any]], source_arn: str, region: str) -> dict[str, Any]:
    """`{"Records": [...]}` from `receive_message(AttributeNames=["All"], MessageAttributeNames=["All"])`."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": dict(message.get("Attributes", {})),
                "messageAttributes": {
                    name: _attribute(value) for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": source_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }


def failed_ids(response: Mapping[str, Any] | None) -> set[str]:
    """Message ids a partial batch response reports as failed."""
    return {item["itemIdentifier"] for item in (response or {}).get("batchItemFailures", [])}
