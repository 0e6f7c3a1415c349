"""Where a request's CPU goes: the models, the HTTP stack, and the service.

On a machine whose cores are all busy, throughput is set by CPU time per
request, so the service can reach a share ``s`` of the in-process limit
only if everything it adds to the models' work costs at most ``1/s - 1``
of that work: 5.3 % of it for the 95 % target. This script measures each
part, in CPU milliseconds per request, by the kernel's accounting of the
processes (``/proc/PID/stat``), not by wall time:

- **in process**: the service's own decode, preprocessing and network on
  one photo, in a loop in this process, with a worker's intra-op threads
  (the work of ``bench.inprocess``);
- **WSGI floor**: gunicorn with the service's configuration (its worker
  class, threads and access log) serving a bare WSGI function that reads
  the body and answers a small fixed JSON document;
- **Flask floor**: the same with a one-route Flask app doing the same;
- **service**: the real service, ``service:create_app()``.

The three servers get the same photos from ``bench.load`` at one
concurrency (default 8); each row reports the workers' CPU per request,
the load generator's (it shares the machine's cores), and the
throughput. ``--config NAME:VAR=VALUE,...`` adds the service again with
those ``VISION_*`` variables (prefix left out), as one more row. Servers
start one at a time, on a free loopback port, and with ``--rounds N`` the
parts alternate N times and the medians are reported. Nothing needs to be
running::

    .venv/bin/python -m bench.cpu_budget ../shared/eval/imagenet \\
        --model efficientnet-lite0 --requests 1500 --rounds 3 \\
        --config "no access log:ACCESS_LOG=off" --json /tmp/cpu_budget.json

Only classify is measured: the other routes do several times more work
per request, so their HTTP share is smaller.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, request

from bench import inprocess, load
from bench.common import (
    add_workload_options,
    describe_machine,
    print_table,
    read_photos,
    workload_from,
    write_json,
)
from bench.tune import parse_config, start

# Roughly the size and shape of a classify answer with five classes.
FLOOR_BODY = (
    b'{"model":{"name":"floor","version":"1"},"results":[{"predictions":['
    + b",".join(
        b'{"label":"tabby, tabby cat","wnid":"n02123045","index":281,'
        b'"probability":0.123456}'
        for _ in range(5)
    )
    + b"]}]}"
)
FLOOR_HEADERS = [
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(FLOOR_BODY))),
]

IN_PROCESS = "in process"
SERVICE = "service:create_app()"
# Each part served: its app and its VISION_* variables (prefix left out).
SERVERS: dict[str, tuple[str, dict[str, str]]] = {
    "WSGI floor": ("bench.cpu_budget:floor_wsgi", {}),
    "Flask floor": ("bench.cpu_budget:floor_flask()", {}),
    "service": (SERVICE, {}),
}
TARGET_SHARE = 0.95


def floor_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """Read the body, answer a fixed classify-sized JSON: no app at all."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", FLOOR_HEADERS)
    return [FLOOR_BODY]


def floor_flask() -> Flask:
    """A one-route Flask app doing what ``floor_wsgi`` does, and /readyz."""
    app = Flask(__name__)

    @app.post("/v1/classify")
    def classify() -> tuple[bytes, int, dict[str, str]]:
        request.get_data()
        return FLOOR_BODY, 200, dict(FLOOR_HEADERS)

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def children(master: int) -> list[int]:
    found: list[int] = []
    for listing in Path(f"/proc/{master}/task").glob("*/children"):
        found += [int(pid) for pid in listing.read_text().split()]
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of the processes, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        # Fields after the command name, which may hold spaces: utime is
        # the 14th field of the line, stime the 15th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def measure_in_process(
    work: inprocess.Work, groups: list[list[bytes]], requests: int
) -> dict[str, Any]:
    for group in groups[:10]:
        work(group)
    began_cpu, began = time.process_time(), time.perf_counter()
    for index in range(requests):
        work(groups[index % len(groups)])
    cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
    return {
        "worker_cpu_ms": cpu / requests * 1000,
        "client_cpu_ms": 0.0,
        "requests_per_s": requests / wall,
    }


def measure_server(
    options: argparse.Namespace,
    calls: list[Any],
    served: tuple[str, dict[str, str]],
    scratch: Path,
) -> dict[str, Any]:
    app, variables = served
    process, url = start(variables, scratch / "gunicorn.log", app)
    try:
        workers = children(process.pid)
        options.url = url
        before = cpu_seconds(workers)
        level = load.run_level(options, calls, options.concurrency)
        used = cpu_seconds(workers) - before
    finally:
        process.terminate()
        process.wait(timeout=60)
    if level["errors"]:
        raise SystemExit(f"{app} answered errors: {level['errors']}")
    # The warm-up requests ran on the workers too, outside the clock.
    answered = level["requests"] + options.warmup * options.concurrency
    return {
        "worker_cpu_ms": used / answered * 1000,
        "client_cpu_ms": level["client_cpu_cores"] / level["requests_per_s"] * 1000,
        "requests_per_s": level["requests_per_s"],
        "workers": len(workers),
    }


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    parts = rounds[0].keys()
    return {
        part: {
            figure: statistics.median(r[part][figure] for r in rounds)
            for figure in ("worker_cpu_ms", "client_cpu_ms", "requests_per_s")
        }
        for part in parts
    }


def print_report(report: dict[str, Any]) -> None:
    medians = report["medians"]
    services = {"service", *report["configs"]}
    work = medians[IN_PROCESS]["worker_cpu_ms"]
    rows = []
    for part, figures in medians.items():
        added = figures["worker_cpu_ms"] - work if part in services else None
        rows.append(
            [
                part,
                f"{figures['worker_cpu_ms']:.2f}",
                "" if added is None else f"+{added:.2f}",
                f"{figures['client_cpu_ms']:.2f}" if part != IN_PROCESS else "",
                f"{figures['requests_per_s']:.1f}",
            ]
        )
    print(
        f"{report['machine']['cpu']}, {report['machine']['cpus_usable']} cores; "
        f"classify, {report['requests']} requests at concurrency "
        f"{report['concurrency']}; medians of {report['rounds']} rounds"
    )
    print_table(
        ["", "CPU ms/request", "added to models", "client CPU ms", "req/s"],
        rows,
    )
    budget = report["budget_ms"]
    print(
        f"\nfor {TARGET_SHARE:.0%} of the in-process limit, all the service adds "
        f"must cost at most {budget:.2f} ms of CPU per request; the HTTP stack "
        f"alone costs {medians['WSGI floor']['worker_cpu_ms']:.2f} (WSGI) and "
        f"{medians['Flask floor']['worker_cpu_ms']:.2f} (Flask), the service "
        f"adds {report['service_added_ms']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of photos to send")
    add_workload_options(parser)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="NAME:VAR=VALUE,...: the service again with these VISION_* variables",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args()
    workload = workload_from(options)
    if workload.route != "classify":
        raise SystemExit("only --route classify is measured")
    # What bench.load's run_level reads from its options.
    options.duration, options.warmup, options.quiet = None, 2, True
    options.api_key, options.timeout = None, 120.0

    photos = read_photos(options.folder, options.limit)
    calls = workload.calls(photos)
    groups = [[photo.data for photo in group] for group in workload.groups(photos)]
    registry = inprocess.load_registry(inprocess.service_threads(), None)
    work = inprocess.make_work(registry, workload)
    configs = dict(parse_config(text) for text in options.config)
    servers = SERVERS | {
        name: (SERVICE, variables) for name, variables in configs.items()
    }

    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(1, options.rounds + 1):
            measured = {IN_PROCESS: measure_in_process(work, groups, options.requests)}
            for part, served in servers.items():
                measured[part] = measure_server(options, calls, served, Path(scratch))
            rounds.append(measured)
            print(
                f"round {number}: "
                + ", ".join(
                    f"{part} {figures['worker_cpu_ms']:.2f} ms"
                    for part, figures in measured.items()
                ),
                flush=True,
            )
    medians = summarise(rounds)
    work_ms = medians[IN_PROCESS]["worker_cpu_ms"]
    report = {
        "benchmark": "cpu_budget",
        "workload": workload.describe(),
        "machine": describe_machine(),
        "concurrency": options.concurrency,
        "requests": options.requests,
        "rounds": options.rounds,
        "configs": configs,
        "per_round": rounds,
        "medians": medians,
        "budget_ms": work_ms * (1 / TARGET_SHARE - 1),
        "service_added_ms": medians["service"]["worker_cpu_ms"] - work_ms,
    }
    print_report(report)
    if options.json:
        write_json(options.json, report)


if __name__ == "__main__":
    main()
