"""Structured logs: one line per event, `time level logger event key=value ...`.

Call sites name the event and pass facts as keywords (`log.info("listening", service="http",
address="127.0.0.1:8080")`). Values under keys that look secret (key, password, token, secret,
signature, jwt) are replaced by `***` here, whatever the call site does, so a secret cannot reach
a log line by accident.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

_SECRET_KEY = re.compile(r"(key|password|passwd|token|secret|signature|jwt|authorization)", re.I)
_BARE = re.compile(r"^[A-Za-z0-9_./:@+\-]+$")


def _render(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if text and _BARE.match(text) else json.dumps(text)


class EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname, record.name, _render(record.getMessage())]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={'***' if _SECRET_KEY.search(key) else _render(value)}")
        if record.exc_info:
            # one line per event: the exception type and message, never a multi-line traceback
            exc = record.exc_info[1]
            parts.append(f"exc={_render(f'{type(exc).__name__}: {exc}')}")
        return " ".join(parts)


class EventLogger(logging.LoggerAdapter):
    """`log.info("event", k=v)`; `exc_info=True` is honoured."""

    def process(self, msg, kwargs):
        exc_info = kwargs.pop("exc_info", None)
        stack_info = kwargs.pop("stack_info", False)
        return msg, {"extra": {"fields": kwargs}, "exc_info": exc_info, "stack_info": stack_info}


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name), {})


def setup(level: str, stream=None) -> None:
    """Configure the root logger once (the entry point calls this; no module does it alone)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(NOTICE if level == "NOTICE" else getattr(logging, level))
    # hypercorn logs its own "Running on" lines; ours say it with the bound address
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
