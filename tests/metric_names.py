"""The metric names a module emits, read from its source: each literal name on an `add_metric` line
(names built at run time, like the per-cause `Suppressed<CAUSE>`, are not listed)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RETRY_HANDLER = "functions/retry/app.py"
OBSERVABILITY = "layers/ownpage_sync/ownpage_sync/observability.py"


def literal_metric_names(source: str) -> set[str]:
    names: set[str] = set()
    for line in (ROOT / source).read_text(encoding="utf-8").splitlines():
        if "add_metric(" in line:
            names.update(re.findall(r'"([A-Z][A-Za-z]+)"', line))
    return names
