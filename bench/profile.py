"""Where one request's time goes, from the service's ``Server-Timing``.

Sends ``--requests`` requests of one route, one at a time over one
kept-alive connection (after ``--warmup`` untimed ones), each with the next
photo of the folder, and puts together, per stage of the service's
``Server-Timing`` header (queue, receive, decode, preprocess, inference,
postprocess, serialise), the median and the mean milliseconds, with:

- "app, outside stages": the app's ``total`` minus its stages (Flask's
  routing and hooks, option parsing);
- "HTTP + gunicorn": the client's wall time minus the app's ``total``
  (sending the request and reading the answer, gunicorn parsing the
  request line and headers, the network and the kernel);
- "client total": the wall time the client measured.

Means add up to the client total; medians need not. Start the service::

    .venv/bin/python -m bench.profile ../shared/eval/imagenet \\
        --url http://127.0.0.1:8000 --route classify --requests 200 \\
        --json /tmp/profile.json

The table and, with ``--json``, a file report the figures; only answers
with status 200 are counted, others are listed by status.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.common import (
    add_server_options,
    add_workload_options,
    describe_machine,
    print_table,
    read_photos,
    workload_from,
    write_json,
)
from service.client import VisionClient
from service.timing import STAGES, TOTAL

OUTSIDE_STAGES = "app, outside stages"
HTTP = "HTTP + gunicorn"
CLIENT_TOTAL = "client total"
ROWS_AFTER = (OUTSIDE_STAGES, HTTP, CLIENT_TOTAL)
DEFAULT_REQUESTS = 100


def profile(options: argparse.Namespace) -> dict[str, Any]:
    workload = workload_from(options)
    photos = read_photos(options.folder, options.limit)
    calls = workload.calls(photos)
    samples: list[dict[str, float]] = []
    errors: Counter[str] = Counter()
    with VisionClient(
        options.url, api_key=options.api_key, timeout=options.timeout
    ) as client:
        try:
            client.wait_until_ready(timeout=options.ready_timeout)
            for number in range(options.warmup):
                client.send(calls[number % len(calls)])
        except (OSError, TimeoutError, http.client.HTTPException) as error:
            raise SystemExit(f"{options.url}: {error}") from None
        for number in tqdm(
            range(options.requests),
            desc=workload.route,
            unit="req",
            disable=options.quiet,
            leave=False,
            file=sys.stderr,
        ):
            response = client.send(calls[number % len(calls)])
            if response.status != 200:
                errors[str(response.status)] += 1
                continue
            timing = response.server_timing
            if TOTAL not in timing:
                raise SystemExit(
                    f"{options.url} sends no Server-Timing total; is it an older "
                    "version of the service?"
                )
            sample = {name: ms for name, ms in timing.items() if name != TOTAL}
            sample[OUTSIDE_STAGES] = timing[TOTAL] - sum(sample.values())
            sample[HTTP] = response.elapsed * 1000 - timing[TOTAL]
            sample[CLIENT_TOTAL] = response.elapsed * 1000
            samples.append(sample)
    if not samples:
        raise SystemExit(f"no request succeeded: {dict(errors)}")

    # A stage a request did not report (an image without faces skips some)
    # counts as 0 ms for it.
    names = [name for name in STAGES if any(name in s for s in samples)]
    names += sorted({n for s in samples for n in s} - set(names) - set(ROWS_AFTER))
    names += list(ROWS_AFTER)
    mean_total = statistics.fmean(s[CLIENT_TOTAL] for s in samples)
    rows = {}
    for name in names:
        values = [s.get(name, 0.0) for s in samples]
        mean = statistics.fmean(values)
        rows[name] = {
            "median_ms": statistics.median(values),
            "mean_ms": mean,
            "share_of_mean": mean / mean_total,
        }
    return {
        "benchmark": "profile",
        "url": options.url,
        "workload": workload.describe(),
        "photos": len(photos),
        "folder": str(options.folder),
        "requests": len(samples),
        "errors": dict(errors),
        "machine": describe_machine(),
        "stages": rows,
    }


def print_report(report: dict[str, Any]) -> None:
    workload = report["workload"]
    what = workload["route"] + (f" ({workload['model']})" if workload["model"] else "")
    print(
        f"\n{what}: {report['requests']} requests one at a time, "
        f"{workload['images_per_request']} image(s) each, {report['url']}"
    )
    print_table(
        ["", "median ms", "mean ms", "share"],
        [
            [
                name,
                f"{row['median_ms']:.2f}",
                f"{row['mean_ms']:.2f}",
                f"{row['share_of_mean']:.1%}",
            ]
            for name, row in report["stages"].items()
        ],
    )
    if report["errors"]:
        print(f"not counted, by status: {report['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of photos to send")
    add_server_options(parser)
    add_workload_options(parser)
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"timed requests (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed requests first (default 5)"
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args()
    if options.requests < 1:
        raise SystemExit("--requests must be at least 1")

    report = profile(options)
    print_report(report)
    if options.json:
        write_json(options.json, report)


if __name__ == "__main__":
    main()
