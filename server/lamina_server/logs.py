"""The server's own log lines: text for people, or one JSON object per line for log
pipelines (``--log-format json``, as the operator's flag)."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(levelname)s %(asctime)s [lamina] %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}`` (and ``exception`` when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT, "%m-%d %H:%M:%S")


def log_to_stderr(logger: logging.Logger, log_format: LogFormat) -> None:
    """``logger``'s INFO lines (start, load, warm-up, refusals, drain) on stderr, beside
    vLLM's."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
