"""gunicorn settings for the vision service, driven by ``VISION_*`` variables.

Run with ``gunicorn -c gunicorn.conf.py 'service:create_app()'``. Settings
are validated here, in the master, so a bad value stops the start before
any worker forks. Each worker builds its own app and onnxruntime sessions
(no ``preload_app``): sessions own thread pools that do not survive a fork.

The master also prepares the folder in which the workers keep their
Prometheus metrics (``service.metrics``), so that one scrape adds up all
of them: ``PROMETHEUS_MULTIPROC_DIR`` if it is set, emptied of an earlier
run's files, or else a private temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from service.logs import use_format
from service.settings import Settings

_settings = Settings.from_env()

METRICS_FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

bind = _settings.bind
workers = _settings.workers
# gthread workers keep idle keep-alive connections from blocking a worker;
# VisionWorker adds a deadline for receiving each request (slow clients) and
# refuses connections once stopping.
worker_class = "service.worker.VisionWorker"
# A thread per connection being served, most of them waiting on the network:
# a request's upload, a probe, a client reading its answer. Only
# VISION_MAX_CONCURRENCY of them run inference at once (the app admits no
# more and turns the excess away with 503), so the CPU is not oversubscribed
# however many there are; the rest keep the probes answered while slow
# clients upload, until VISION_CLIENT_TIMEOUT cuts the slowest off.
threads = _settings.max_concurrency + 16
timeout = _settings.timeout
# On SIGTERM a worker stops accepting and gives the requests in flight this
# long to finish before the master kills it.
graceful_timeout = _settings.graceful_timeout
keepalive = 5
# Runtime management over a socket in $HOME is not used; without this,
# gunicorn would create ~/.gunicorn/ for it in every container.
control_socket_disable = True
# /dev/shm keeps worker heartbeats off a possibly slow container disk.
worker_tmp_dir = "/dev/shm"

# A line per request on stdout, unless VISION_ACCESS_LOG=off: a proxy in
# front that logs every request makes it a repeat, and writing it costs
# about 0.15 ms of the request thread's CPU (bench/thread_cpu_conf.py).
accesslog = "-" if _settings.access_log else None
# gunicorn's combined format, then the request id (service.logs) and the
# time taken in microseconds.
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
    "%({x-request-id}o)s %(D)s"
)
errorlog = "-"
loglevel = _settings.log_level.lower()


class _HealthProbeFilter(logging.Filter):
    """Keep orchestrators' probes, several a minute, out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        arguments = record.args
        if isinstance(arguments, dict):
            return arguments.get("U") not in ("/healthz", "/readyz")
        return True


class _VisionLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing VISION_LOG_FORMAT lines with request ids
    from its very first line on (and again after a SIGHUP reload)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            use_format(log, _settings.log_format)


logger_class = _VisionLogger


def on_starting(server: Any) -> None:
    logging.getLogger("gunicorn.access").addFilter(_HealthProbeFilter())
    _prepare_metrics_folder()


def child_exit(server: Any, worker: Any) -> None:
    # Imported here, after on_starting has set the folder: prometheus-client
    # chooses between in-process and file-backed values when first imported,
    # and the workers inherit the master's choice.
    from prometheus_client import multiprocess

    # Drops the dead worker's gauges; its counters keep counting in the sum.
    multiprocess.mark_process_dead(worker.pid)


def _prepare_metrics_folder() -> None:
    """Give the workers an empty PROMETHEUS_MULTIPROC_DIR before they fork.

    Files left by an earlier run would be added to this one's numbers, and
    the pids in their names could be reused by new workers.
    """
    configured = os.environ.get(METRICS_FOLDER_VARIABLE)
    if configured:
        folder = Path(configured)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return
    private = tempfile.mkdtemp(prefix="vision-metrics-")
    os.environ[METRICS_FOLDER_VARIABLE] = private
    # An exit handler rather than the on_exit hook: a SIGHUP reload reads
    # this file afresh, and its new hooks would not know the folder.
    atexit.register(_remove_private_folder, private, os.getpid())


def _remove_private_folder(folder: str, master_pid: int) -> None:
    # Workers inherit the master's exit handlers when they fork.
    if os.getpid() == master_pid:
        shutil.rmtree(folder, ignore_errors=True)
