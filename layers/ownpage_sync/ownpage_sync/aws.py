"""boto3 clients with the region resolved the way AWS's own tools do, and a clear error without one."""

from __future__ import annotations

import os
from typing import Any

from ownpage_sync.errors import ConfigurationError


def region() -> str:
    """AWS_DEFAULT_REGION, else AWS_REGION (what Lambda sets and the AWS CLI v2 reads)."""
    value = os.environ.get("AWS_DEFAULT_REGION", "").strip() or os.environ.get("AWS_REGION", "").strip()
    if not value:
        raise ConfigurationError("AWS_DEFAULT_REGION: no AWS region is set (set it, or AWS_REGION)")
    return value


def client(service: str, **config: Any) -> Any:
    """A boto3 client for `service`; `config` are botocore Config options (timeouts, retries, pools)."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, region_name=region(), config=Config(**config) if config else None)
