"""``Server-Timing``: where a request's milliseconds went inside the app.

Each request to an inference route gets a ``Recorder`` when it passes the
API key check, held in a context variable for the request's thread. Code
on the request's path wraps each phase in ``with stage(DECODE):``; a stage
entered again (one decode per image) adds to its total. The answer then
carries the W3C ``Server-Timing`` header, stages in pipeline order and
``total`` last, in milliseconds::

    Server-Timing: queue;dur=0.011, receive;dur=0.212, decode;dur=3.871,
        inference;dur=14.020, postprocess;dur=0.046, serialise;dur=0.090,
        total;dur=18.405

``total`` runs from the first request hook after the key check to the
moment the header is written; what it holds beyond the stages is Flask's
own work (routing, hooks, option parsing). The time before (gunicorn
reading the request line and headers, the network) is the client's to
measure: its wall time minus ``total`` is "HTTP + gunicorn".

Stages nest, and an inner stage's time is taken out of the outer one, so
the stages never count a millisecond twice and always add up to at most
``total``. That lets a route wrap a whole model call in ``INFERENCE``
while the model code marks its own ``PREPROCESS`` and ``POSTPROCESS``
inside: ``inference`` is then what is left, the onnxruntime runs.

Outside a timed request (the warm-up thread, a micro-batcher's thread,
code that calls the model classes directly) ``stage`` is a no-op that costs
one context variable lookup; ``recording()`` times a block of such code the
same way. Only the request hooks at the end of this module know Flask, so
``service.vision`` can mark its stages without knowing about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, cast

from flask import Flask, Response, current_app, request

HEADER = "Server-Timing"

QUEUE = "queue"  # waiting for one of the worker's inference slots
RECEIVE = "receive"  # reading the body and parsing form, JSON or base64
DECODE = "decode"  # image bytes to RGB pixels (service.imaging)
PREPROCESS = "preprocess"  # resize, crop, normalise, cut face chips
BATCHING = "batching"  # waiting for a micro-batch (VISION_BATCH_WINDOW_MS)
INFERENCE = "inference"  # the networks (onnxruntime)
POSTPROCESS = "postprocess"  # scores, boxes, top classes into plain results
SERIALISE = "serialise"  # the JSON body
TOTAL = "total"
STAGES = (
    QUEUE,
    RECEIVE,
    DECODE,
    PREPROCESS,
    BATCHING,
    INFERENCE,
    POSTPROCESS,
    SERIALISE,
)

# The recorder of the request the current thread serves. gunicorn's threads
# each serve one request at a time, and every hook of a request runs on its
# thread, so a context variable needs no Flask context to be found.
_current: ContextVar[Recorder | None] = ContextVar("server_timing", default=None)
_NO_STAGE: AbstractContextManager[None] = nullcontext()


class Recorder:
    """The stage times of one request, in seconds, and when it started."""

    __slots__ = ("started", "durations", "_inner")

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.durations: dict[str, float] = {}
        # For each stage now open, innermost last: the time its nested
        # stages took, which is not its own.
        self._inner: list[float] = []

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name``, outside every open stage."""
        self.durations[name] = self.durations.get(name, 0.0) + seconds

    def add_nested(self, name: str, seconds: float) -> None:
        """Count ``seconds`` as stage ``name`` nested in the innermost open
        stage, as if a ``with`` block of that length had run there: for a
        span measured apart, such as a wait on another thread."""
        self.add(name, seconds)
        if self._inner:
            self._inner[-1] += seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._inner.append(0.0)
        begun = time.perf_counter()
        try:
            yield
        finally:
            # Recorded on errors too: a 422 no-face still did its decoding
            # and detection, and its header should say so.
            elapsed = time.perf_counter() - begun
            self.add(name, elapsed - self._inner.pop())
            if self._inner:
                self._inner[-1] += elapsed

    def header_value(self, now: float | None = None) -> str:
        """The ``Server-Timing`` value: known stages in order, others, total."""
        now = time.perf_counter() if now is None else now
        names = [name for name in STAGES if name in self.durations]
        names += [name for name in self.durations if name not in STAGES]
        metrics = [_metric(name, self.durations[name]) for name in names]
        metrics.append(_metric(TOTAL, now - self.started))
        return ", ".join(metrics)


def _metric(name: str, seconds: float) -> str:
    # A stage can come out a hair below zero only through clock rounding.
    return f"{name};dur={max(seconds, 0.0) * 1000:.3f}"


def current() -> Recorder | None:
    """The recorder of the request being served, if it is timed."""
    return _current.get()


def stage(name: str) -> AbstractContextManager[None]:
    """Time the ``with`` block as stage ``name`` of the current request."""
    recorder = _current.get()
    return _NO_STAGE if recorder is None else recorder.stage(name)


def record(name: str, seconds: float) -> None:
    """Count ``seconds``, measured by the caller, as stage ``name`` nested
    where the caller is (see ``Recorder.add_nested``); no-op untimed."""
    recorder = _current.get()
    if recorder is not None:
        recorder.add_nested(name, seconds)


@contextmanager
def recording() -> Iterator[Recorder]:
    """Time the stages of the ``with`` block, as a request's are timed."""
    token = _current.set(Recorder())
    try:
        recorder = _current.get()
        assert recorder is not None
        yield recorder
    finally:
        _current.reset(token)


def json_response(body: Any) -> Response:
    """``body`` as the JSON response Flask would make of it, timed as
    ``serialise``; a route that returned the dict would leave that to Flask,
    after the route and out of any stage."""
    with stage(SERIALISE):
        # Flask's JSON provider is typed as making werkzeug's base class;
        # it makes the app's response_class, flask's Response.
        return cast(Response, current_app.json.response(body))


def time_requests(app: Flask, blueprints: Collection[str]) -> None:
    """Time the requests to the routes of ``blueprints`` and answer them
    with ``Server-Timing``, errors included.

    Call it after the API key check is installed, so that a caller without
    a key gets no timing, and before the admission limit, so that
    ``time_queue`` can tell the wait for a slot.
    """

    @app.before_request
    def start_timing() -> None:
        if request.blueprint in blueprints:
            _current.set(Recorder())

    @app.after_request
    def add_server_timing(response: Response) -> Response:
        recorder = _current.get()
        if recorder is not None:
            response.headers[HEADER] = recorder.header_value()
        return response

    @app.teardown_request
    def stop_timing(error: BaseException | None) -> None:
        # The thread's next request must not find this one's recorder.
        _current.set(None)


def time_queue(app: Flask) -> None:
    """Record the time since ``start_timing`` as ``queue``; install it right
    after the admission limit's hook, whose wait for a slot it then is."""

    @app.before_request
    def stop_queue_clock() -> None:
        recorder = _current.get()
        if recorder is not None:
            recorder.add(QUEUE, time.perf_counter() - recorder.started)
