"""Load generator: throughput and latency of a running service by concurrency.

Sends real photos from a folder to one route of a running service, over
HTTP, from 1, 2, 4, 8 and 16 client threads in turn (``--concurrency``).
Each thread has its own kept-alive connection (``service.client``). At each
level every thread first sends ``--warmup`` untimed requests, then all
start together and send requests back to back, each taking the next
photo, until ``--requests`` requests were sent in all or ``--duration``
seconds have passed. Start the service, wait for ``/readyz``, then::

    .venv/bin/python -m bench.load ../shared/eval/imagenet \\
        --url http://127.0.0.1:8000 --route classify --model efficientnet-lite0 \\
        --concurrency 1,2,4,8,16 --requests 200 --json /tmp/load.json
    .venv/bin/python -m bench.load ../shared/eval/faces --route verify \\
        --duration 20

Per level it reports throughput (answered requests and images per second,
over the time from the common start to the last answer), latency
percentiles of the successful requests as the client measured them (send
to last byte), the median of the service's own ``Server-Timing`` total,
and errors by HTTP status (or exception name for a failed connection),
as a table and, with ``--json``, as a file. Errors are left out of the
throughput and latency figures: ``503`` means the worker's inference
slots stayed busy past ``VISION_QUEUE_TIMEOUT``.

The generator is kept light, since it usually shares the CPUs with the
service: requests are built once, in memory, before the clock starts;
threads spend their time blocked on sockets; the progress bar is redrawn
by the main thread a few times a second. Its own CPU use is reported
("client cpu"), so that a run can be judged: the more of a core the
client took, the more the service was slowed by it.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.common import (
    Workload,
    add_server_options,
    add_workload_options,
    describe_machine,
    ms,
    percentile,
    print_table,
    read_photos,
    workload_from,
    write_json,
)
from service.client import Call, VisionClient, parse_server_timing

DEFAULT_CONCURRENCY = "1,2,4,8,16"
DEFAULT_REQUESTS = 200
PROGRESS_INTERVAL_S = 0.25


@dataclass
class Tally:
    """What one client thread saw during the timed part of a level."""

    latencies: list[float] = field(default_factory=list)
    server_totals: list[float] = field(default_factory=list)
    images: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    done: int = 0
    finished: float = 0.0


@dataclass
class Level:
    """One concurrency level: how its threads share the work and the clock."""

    concurrency: int
    requests: int | None
    duration: float | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    started: float = 0.0
    cpu_started: float = 0.0

    def start_clock(self) -> None:
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def may_send(self) -> bool:
        if self.requests is None:
            assert self.duration is not None
            return time.perf_counter() - self.started < self.duration
        with self.lock:
            if self.issued >= self.requests:
                return False
            self.issued += 1
            return True


def client_thread(
    index: int,
    options: argparse.Namespace,
    calls: list[Call],
    level: Level,
    barrier: threading.Barrier,
    tally: Tally,
) -> None:
    try:
        send_requests(index, options, calls, level, barrier, tally)
    except BaseException:
        # Without this thread the others would wait at the barrier forever.
        barrier.abort()
        raise
    finally:
        tally.finished = time.perf_counter()


def send_requests(
    index: int,
    options: argparse.Namespace,
    calls: list[Call],
    level: Level,
    barrier: threading.Barrier,
    tally: Tally,
) -> None:
    # Spread the threads over the photos so they do not all send the same.
    position = index * max(1, len(calls) // level.concurrency)
    with VisionClient(
        options.url, api_key=options.api_key, timeout=options.timeout
    ) as client:
        try:
            for _ in range(options.warmup):
                client.send(calls[position % len(calls)])
                position += 1
        except (OSError, http.client.HTTPException):
            pass  # counted below, when the same failure happens timed
        barrier.wait()
        while level.may_send():
            call = calls[position % len(calls)]
            position += 1
            began = time.perf_counter()
            try:
                response = client.send(call)
            except (OSError, http.client.HTTPException) as error:
                tally.errors[type(error).__name__] += 1
            else:
                if response.ok:
                    tally.latencies.append(time.perf_counter() - began)
                    tally.images += call.images
                    total = parse_server_timing(
                        response.headers.get("Server-Timing", "")
                    ).get("total")
                    if total is not None:
                        tally.server_totals.append(total / 1000)
                else:
                    tally.errors[str(response.status)] += 1
            tally.done += 1


def run_level(
    options: argparse.Namespace, calls: list[Call], concurrency: int
) -> dict[str, Any]:
    level = Level(concurrency, options.requests, options.duration)
    tallies = [Tally() for _ in range(concurrency)]
    # The main thread passes the barrier too: the clock starts once every
    # connection is open and warm.
    barrier = threading.Barrier(concurrency + 1, action=level.start_clock)
    threads = [
        threading.Thread(
            target=client_thread,
            args=(index, options, calls, level, barrier, tallies[index]),
            name=f"client-{index}",
            daemon=True,
        )
        for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        raise SystemExit("a client thread failed during the warm-up") from None
    follow_progress(options, level, tallies, threads)
    cpu = time.process_time() - level.cpu_started

    elapsed = max(t.finished for t in tallies) - level.started
    latencies = [s for t in tallies for s in t.latencies]
    server_totals = [s for t in tallies for s in t.server_totals]
    errors: Counter[str] = sum((t.errors for t in tallies), Counter())
    ok = len(latencies)
    return {
        "concurrency": concurrency,
        "requests": sum(t.done for t in tallies),
        "ok": ok,
        "errors": dict(sorted(errors.items())),
        "elapsed_s": elapsed,
        "requests_per_s": ok / elapsed if elapsed > 0 else 0.0,
        "images_per_s": sum(t.images for t in tallies) / elapsed if elapsed else 0.0,
        "latency_ms": {
            name: percentile(latencies, share) * 1000
            for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        }
        | {
            "mean": sum(latencies) / ok * 1000 if ok else float("nan"),
            "max": max(latencies, default=float("nan")) * 1000,
        },
        "server_total_p50_ms": percentile(server_totals, 0.5) * 1000,
        # The generator's CPU time over the timed part's wall time, in cores.
        "client_cpu_cores": cpu / elapsed if elapsed > 0 else 0.0,
    }


def follow_progress(
    options: argparse.Namespace,
    level: Level,
    tallies: list[Tally],
    threads: list[threading.Thread],
) -> None:
    """Wait for the threads, redrawing the progress bar now and then."""
    total = level.requests if level.requests is not None else None
    with tqdm(
        total=total,
        desc=f"concurrency {level.concurrency:>2}",
        unit="req",
        disable=options.quiet,
        leave=False,
        file=sys.stderr,
    ) as bar:
        while any(thread.is_alive() for thread in threads):
            threads[0].join(PROGRESS_INTERVAL_S)
            done = sum(t.done for t in tallies)
            bar.update(done - bar.n)
        bar.update(sum(t.done for t in tallies) - bar.n)
        for thread in threads:
            thread.join()


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(
            f"--concurrency takes numbers like 1,2,4; got {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise SystemExit("--concurrency levels must be at least 1")
    return levels


def describe_server(options: argparse.Namespace) -> dict[str, Any]:
    """Check the service is ready and note what it runs on."""
    with VisionClient(
        options.url, api_key=options.api_key, timeout=options.timeout
    ) as client:
        try:
            client.wait_until_ready(timeout=options.ready_timeout)
            models = client.models()
        except (OSError, TimeoutError) as error:
            raise SystemExit(f"{options.url}: {error}") from None
    return {
        "url": options.url,
        "models": {model["name"]: model["providers"] for model in models},
    }


def run(
    options: argparse.Namespace, workload: Workload, levels: list[int]
) -> dict[str, Any]:
    """Every level in turn against the service; the report as a dict."""
    photos = read_photos(options.folder, options.limit)
    calls = workload.calls(photos)
    report: dict[str, Any] = {
        "benchmark": "load",
        "server": describe_server(options),
        "workload": workload.describe(),
        "photos": len(photos),
        "folder": str(options.folder),
        "requests_per_level": options.requests,
        "duration_per_level_s": options.duration,
        "warmup_per_thread": options.warmup,
        "machine": describe_machine(),
        "levels": [],
    }
    for concurrency in levels:
        level = run_level(options, calls, concurrency)
        report["levels"].append(level)
        if not options.quiet:
            tqdm.write(
                f"concurrency {concurrency:>2}: {level['requests_per_s']:.2f} req/s, "
                f"p50 {level['latency_ms']['p50']:.1f} ms, "
                f"{sum(level['errors'].values())} errors",
                file=sys.stderr,
            )
    return report


def print_report(report: dict[str, Any]) -> None:
    workload = report["workload"]
    what = workload["route"] + (f" ({workload['model']})" if workload["model"] else "")
    print(
        f"\n{what}: {report['photos']} photos from {report['folder']}, "
        f"{workload['images_per_request']} image(s) per request, "
        f"{report['server']['url']}"
    )
    rows = []
    for level in report["levels"]:
        latency = level["latency_ms"]
        errors = ", ".join(f"{k}: {v}" for k, v in level["errors"].items()) or "-"
        rows.append(
            [
                level["concurrency"],
                level["requests"],
                f"{level['requests_per_s']:.2f}",
                f"{level['images_per_s']:.2f}",
                *(ms(latency[p] / 1000) for p in ("p50", "p95", "p99")),
                ms(level["server_total_p50_ms"] / 1000),
                f"{level['client_cpu_cores']:.2f}",
                errors,
            ]
        )
    print_table(
        [
            "concurrency",
            "requests",
            "req/s",
            "images/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "app p50 ms",
            "client cpu",
            "errors",
        ],
        rows,
    )
    machine = report["machine"]
    print(
        f"cpu: {machine['cpu']} x{machine['cpus_usable']}, "
        f"load average at start {machine['load_average_1m']:.2f}"
    )


def add_load_options(parser: argparse.ArgumentParser) -> None:
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--requests",
        type=int,
        help=f"requests per level, all threads together (default {DEFAULT_REQUESTS})",
    )
    amount.add_argument("--duration", type=float, help="seconds per level instead")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed requests per thread before each level (default 2)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for /readyz before giving up",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def settle_amount(options: argparse.Namespace) -> None:
    if options.requests is None and options.duration is None:
        options.requests = DEFAULT_REQUESTS
    if options.requests is not None and options.requests < 1:
        raise SystemExit("--requests must be at least 1")
    if options.duration is not None and options.duration <= 0:
        raise SystemExit("--duration must be positive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of photos to send")
    add_server_options(parser)
    add_workload_options(parser)
    parser.add_argument(
        "--concurrency",
        default=DEFAULT_CONCURRENCY,
        help="client threads per level, comma-separated "
        f"(default {DEFAULT_CONCURRENCY})",
    )
    add_load_options(parser)
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args()
    settle_amount(options)

    report = run(options, workload_from(options), parse_levels(options.concurrency))
    print_report(report)
    if options.json:
        write_json(options.json, report)


if __name__ == "__main__":
    main()
