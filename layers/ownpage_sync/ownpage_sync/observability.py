"""One place for Powertools' Logger, Metrics and Tracer, shared by both functions and the CLI.

Library modules log through stdlib `logging.getLogger(__name__)`; `route_library_logs()` gives those
records the same JSON formatter (and correlation id) as the handler's logger. Nothing logged or
emitted as a metric may carry a raw email address (see emails.mask_email).
"""

from __future__ import annotations

import logging
import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ownpage-sync")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OwnpageSync")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

LIBRARY_LOGGER = "ownpage_sync"


def route_library_logs() -> None:
    """Send the library's stdlib log records through the Powertools logger's handler and formatter."""
    logging.getLogger(LIBRARY_LOGGER)  # register the parent so children propagate to a configured logger
    copy_config_to_registered_loggers(source_logger=logger, include={LIBRARY_LOGGER})
