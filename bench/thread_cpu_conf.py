"""gunicorn settings that add up each step's CPU time on the request's thread.

The service's own ``gunicorn.conf.py``, plus hooks that wrap the steps of
a request (Flask's request hooks and views, the classify route's reading,
decoding, model and JSON, gunicorn's response writing and access line)
with ``time.thread_time()``, and print, when each worker exits, the mean
CPU milliseconds per request of every step. The thread's CPU clock counts
only what that thread ran, so the figures hold at any concurrency and
leave out waits. Steps nest: "flask" holds the view, the view holds the
model. Run the service with it, load it, stop it::

    .venv/bin/gunicorn -c bench/thread_cpu_conf.py 'service:create_app()' &
    .venv/bin/python -m bench.load ../shared/eval/imagenet --concurrency 8 \\
        --duration 10
    kill %1     # each worker prints its table to stderr as it exits

Only for measuring: the wrappers add a little CPU time of their own.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The service's settings, hooks included, as if this file were it.
exec(  # noqa: S102
    compile(
        (Path(__file__).resolve().parents[1] / "gunicorn.conf.py").read_text(),
        "gunicorn.conf.py",
        "exec",
    )
)

_seconds: Counter[str] = Counter()
_requests = 0
_started = threading.local()


def _timed(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            _seconds[step] += time.thread_time() - began

    return timed


def pre_request(worker: Any, req: Any) -> None:
    _started.value = time.thread_time()


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    global _requests
    _requests += 1
    _seconds["request, headers parsed to answer sent"] += (
        time.thread_time() - _started.value
    )


def post_worker_init(worker: Any) -> None:
    from gunicorn.http import wsgi

    import service.api.classify as route
    from service.vision.classifier import Classifier

    app = worker.wsgi
    app.wsgi_app = _timed("flask", app.wsgi_app)
    for hooks in (
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
    ):
        for functions in hooks.values():
            for index, hook in enumerate(functions):
                name = hook.__qualname__.replace(".<locals>.", ": ")
                functions[index] = _timed(f"hook {name}", hook)
    for endpoint, view in app.view_functions.items():
        app.view_functions[endpoint] = _timed(f"view {endpoint}", view)
    route.read_image_request = _timed(
        "classify: read the body", route.read_image_request
    )
    route.decode_image = _timed("classify: decode", route.decode_image)
    route.json_response = _timed("classify: JSON", route.json_response)
    Classifier.classify = _timed("classify: model", Classifier.classify)
    wsgi.Response.write = _timed("gunicorn: write the answer", wsgi.Response.write)
    worker.log.access = _timed("gunicorn: access line", worker.log.access)


def worker_exit(server: Any, worker: Any) -> None:
    if not _requests:
        return
    lines = [f"CPU ms per request, {_requests} requests, worker {worker.pid}:"]
    for step, seconds in _seconds.most_common():
        lines.append(f"  {seconds / _requests * 1000:8.3f}  {step}")
    print("\n".join(lines), file=sys.stderr, flush=True)
