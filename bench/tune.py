"""Workers, intra-op threads, inference slots and micro-batching, by measurement.

Starts gunicorn once per configuration (``VISION_*`` variables) on a free
loopback port, waits until every worker is warm, runs ``bench.load`` at the
given concurrencies, stops it, and prints one table: throughput and p50/p99
latency per configuration and level, and each worker's resident memory
after the run. Configurations are ``NAME:VAR=VALUE,VAR=VALUE`` (variables
without the ``VISION_`` prefix); the defaults compare the ways to split
this machine's cores::

    .venv/bin/python -m bench.tune ../shared/eval/imagenet \\
        --concurrency 1,8 --duration 15 --json /tmp/tune.json
    .venv/bin/python -m bench.tune ../shared/eval/imagenet \\
        --config "window0:BATCH_WINDOW_MS=0" --config "window2:BATCH_WINDOW_MS=2"

The configurations run one after the other, never side by side, so each
has the machine to itself (but for the load generator).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import describe_machine, print_table, write_json
from service.settings import REPOSITORY

READY_TIMEOUT = 120


def default_configs(cores: int) -> dict[str, dict[str, str]]:
    """Every way to split the cores between workers and intra-op threads,
    with one or two inference slots per worker."""
    configs = {}
    for workers in range(1, cores + 1):
        if cores % workers:
            continue
        threads = cores // workers
        for slots in (1, 2):
            configs[f"{workers}w x {threads}t, {slots} slots"] = {
                "WORKERS": str(workers),
                "THREADS": str(threads),
                "MAX_CONCURRENCY": str(slots),
            }
    return configs


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    variables = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        variables[key.strip().upper()] = value.strip()
    return name, variables


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(
    variables: dict[str, str], log: Path, app: str = "service:create_app()"
) -> tuple[subprocess.Popen[bytes], str]:
    """gunicorn with the service's configuration, ``VISION_*`` set from
    ``variables``, serving ``app``, on a free port; once every worker is
    ready, the process and its URL."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VISION_")}
    environment.update({f"VISION_{k}": v for k, v in variables.items()})
    environment["VISION_BIND"] = f"127.0.0.1:{port}"
    environment["VISION_LOG_LEVEL"] = "WARNING"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                app,
            ],
            cwd=REPOSITORY,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT
    workers = int(variables.get("WORKERS", os.cpu_count() or 1))
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log.read_text()}")
        try:
            # /readyz from every worker: ask until as many distinct answers
            # as workers came, or simply until enough 200s in a row.
            ready = sum(_ready(url) for _ in range(4 * workers))
            if ready == 4 * workers:
                return process, url
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("gunicorn did not get ready")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def worker_memory_kib(master: int) -> list[int]:
    sizes = []
    for children in Path(f"/proc/{master}/task").glob("*/children"):
        for pid in children.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--route", default="classify")
    parser.add_argument("--model", default="")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument(
        "--config", action="append", default=[], help="NAME:VAR=VALUE,..."
    )
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    configs = dict(parse_config(text) for text in options.config) or default_configs(
        os.cpu_count() or 1
    )
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, variables in configs.items():
            process, url = start(variables, Path(scratch) / "gunicorn.log")
            report_path = Path(scratch) / "load.json"
            try:
                command = [
                    sys.executable,
                    "-m",
                    "bench.load",
                    str(options.folder),
                    "--url",
                    url,
                    "--route",
                    options.route,
                    "--concurrency",
                    options.concurrency,
                    "--duration",
                    str(options.duration),
                    "--quiet",
                    "--json",
                    str(report_path),
                ]
                if options.model:
                    command += ["--model", options.model]
                subprocess.run(
                    command, check=True, cwd=REPOSITORY, stdout=subprocess.DEVNULL
                )
                memory = worker_memory_kib(process.pid)
            finally:
                process.terminate()
                process.wait(timeout=60)
            report = json.loads(report_path.read_text())
            results[name] = {
                "variables": variables,
                "load": report,
                "worker_rss_kib": memory,
            }
            for level in report["levels"]:
                rows.append(
                    [
                        name,
                        level["concurrency"],
                        f"{level['requests_per_s']:.1f}",
                        f"{level['latency_ms']['p50']:.1f}",
                        f"{level['latency_ms']['p99']:.1f}",
                        sum(level["errors"].values()),
                        " ".join(f"{kib // 1024}" for kib in memory),
                    ]
                )
    print_table(
        ["config", "clients", "req/s", "p50 ms", "p99 ms", "errors", "RSS MiB"],
        rows,
    )
    if options.json:
        write_json(options.json, {"machine": describe_machine(), "configs": results})


if __name__ == "__main__":
    main()
