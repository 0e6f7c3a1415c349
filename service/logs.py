"""Logs: one format for the service and gunicorn, and a request id in each line.

Every request gets an id: the client's ``X-Request-ID`` when it sends a
usable one (so a proxy's or a caller's id follows the request through), or
a new random one. It is returned in ``X-Request-ID``, written in gunicorn's
access line, and added to every log record made while the request is served,
so an error in the log can be matched to the answer a user reports.

Lines are human-readable by default; ``VISION_LOG_FORMAT=json`` makes each a
JSON object (time, level, logger, message, request_id, process, and the
exception's traceback when there is one) for log collectors.

Level policy: DEBUG for what one request did (a problem answered, a batch
run); INFO for the life of a worker (models loaded and ready, settings);
WARNING for a setting that weakens the service (no API keys) or a fallback
(no CUDA); ERROR for a bug (a 500) or a model that cannot load.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
# Visible characters a proxy or tracing system would use, and not too many:
# anything else is replaced rather than written into the logs.
_USABLE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
NO_REQUEST = "-"
TEXT_FORMAT = (
    "%(asctime)s %(levelname)s [%(process)d] %(name)s [%(request_id)s]: %(message)s"
)

# How gunicorn's access log names the response header (see gunicorn.conf.py).
ACCESS_LOG_ID = "{x-request-id}o"

_request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)


def current_request_id() -> str:
    """The id of the request being served on this thread, or "-"."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Give every record the current request's id as ``request_id``.

    gunicorn writes its access line after the app is done with the request,
    so for that line the id comes from the answer's header, which gunicorn
    passes among the line's values.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "request_id"):
            return True
        request_id = _request_id.get()
        if request_id == NO_REQUEST and isinstance(record.args, dict):
            request_id = str(record.args.get(ACCESS_LOG_ID, NO_REQUEST))
        record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_REQUEST),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def use_format(logger: logging.Logger, log_format: str) -> None:
    """Make ``logger``'s handlers (gunicorn's own) write ``log_format`` lines
    with request ids."""
    for handler in logger.handlers:
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send the service's logs to stderr at ``level``, once per process.

    Under gunicorn the root logger has no handler, so one is added; a host
    application that configured logging itself keeps its handlers, which
    still get the ``request_id`` of each record.
    """
    logging.getLogger("service").setLevel(level)
    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler()
        stderr.setFormatter(formatter(log_format))
        root.addHandler(stderr)
    use_format(root, log_format)


def track_request_ids(app: Flask) -> None:
    """Give each request of ``app`` an id; call before other hooks are added,
    so that even a request turned away at the key check has one."""

    @app.before_request
    def take_request_id() -> None:
        offered = request.headers.get(HEADER, "")
        request_id = offered if _USABLE_ID.fullmatch(offered) else uuid.uuid4().hex
        g.request_id_token = _request_id.set(request_id)

    @app.after_request
    def return_request_id(response: Response) -> Response:
        response.headers[HEADER] = _request_id.get()
        return response

    @app.teardown_request
    def forget_request_id(_: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            _request_id.reset(token)
