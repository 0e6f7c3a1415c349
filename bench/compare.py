"""The service against its in-process limit, on the same photos and work.

Runs ``bench.inprocess`` (the service's own decode, preprocessing and
networks in tight loops on every core, no HTTP) and then ``bench.load``
against a running service at concurrency 1 and at ``--concurrency``
(default 8), and reports:

- throughput: the service's images/s at that concurrency as a share of
  the in-process limit (target: at least 95 %);
- latency: the service's median at concurrency 1, as its client measures
  it, minus the in-process median of one request at a time with a service
  worker's intra-op threads (target: at most 2 ms), with the service's own
  ``Server-Timing`` total beside it to tell the app from HTTP and gunicorn.

The in-process part runs first, while the service is idle, so that the two
never compete for the CPUs. With ``--rounds N`` the two parts alternate N
times and the figures are the medians of the rounds' own comparisons, so
that a slow spell of a shared machine does not land on one side only.
Start the service, then::

    .venv/bin/python -m bench.compare ../shared/eval/imagenet \\
        --url http://127.0.0.1:8000 --route classify --model efficientnet-lite0 \\
        --duration 20 --json /tmp/compare.json

The targets are reported, not enforced: the exit status is 0 whatever the
figures, unless ``--strict`` asks for 1 when a target is missed. Timings are
only meaningful on a machine doing nothing else.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import inprocess, load
from bench.common import (
    add_server_options,
    add_workload_options,
    describe_machine,
    print_table,
    workload_from,
    write_json,
)

TARGET_SHARE = 0.95
TARGET_LATENCY_MS = 2.0
DEFAULT_DURATION_S = 10.0


def compare(
    limit: dict[str, Any], service: dict[str, Any], concurrency: int
) -> dict[str, Any]:
    single = next(level for level in service["levels"] if level["concurrency"] == 1)
    busy = next(
        level for level in service["levels"] if level["concurrency"] == concurrency
    )
    share = busy["images_per_s"] / limit["limit"]["images_per_s"]
    service_ms = single["latency_ms"]["p50"]
    limit_ms = limit["latency"]["p50_ms"]
    return {
        "concurrency": concurrency,
        "limit_images_per_s": limit["limit"]["images_per_s"],
        "limit_mode": limit["limit"]["mode"],
        "service_images_per_s": busy["images_per_s"],
        "throughput_share": share,
        "throughput_target": TARGET_SHARE,
        "throughput_met": share >= TARGET_SHARE,
        "service_errors": busy["errors"],
        "limit_latency_p50_ms": limit_ms,
        "service_latency_p50_ms": service_ms,
        "service_app_total_p50_ms": single["server_total_p50_ms"],
        "latency_difference_ms": service_ms - limit_ms,
        "latency_target_ms": TARGET_LATENCY_MS,
        "latency_met": service_ms - limit_ms <= TARGET_LATENCY_MS,
    }


def median_comparison(comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' comparison with each figure the median over the rounds."""
    if len(comparisons) == 1:
        return comparisons[0]
    merged = dict(comparisons[-1])
    for key, value in merged.items():
        if isinstance(value, float):
            merged[key] = statistics.median(c[key] for c in comparisons)
    merged["throughput_met"] = merged["throughput_share"] >= TARGET_SHARE
    merged["latency_met"] = merged["latency_difference_ms"] <= TARGET_LATENCY_MS
    merged["rounds"] = len(comparisons)
    merged["throughput_share_per_round"] = [c["throughput_share"] for c in comparisons]
    merged["latency_difference_ms_per_round"] = [
        c["latency_difference_ms"] for c in comparisons
    ]
    return merged


def print_comparison(report: dict[str, Any]) -> None:
    result = report["comparison"]
    workload = report["workload"]
    what = workload["route"] + (f" ({workload['model']})" if workload["model"] else "")
    concurrency = result["concurrency"]

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    rounds = result.get("rounds", 1)
    print(
        f"\n{what}: service against the in-process limit"
        + (f" (medians of {rounds} alternating rounds)" if rounds > 1 else "")
    )
    print_table(
        ["", "in process", "service", "service / limit", "target", ""],
        [
            [
                f"images/s, service at concurrency {concurrency}",
                f"{result['limit_images_per_s']:.2f} ({result['limit_mode']})",
                f"{result['service_images_per_s']:.2f}",
                f"{result['throughput_share']:.1%}",
                f">= {TARGET_SHARE:.0%}",
                verdict(result["throughput_met"]),
            ],
            [
                "median ms at concurrency 1",
                f"{result['limit_latency_p50_ms']:.1f}",
                f"{result['service_latency_p50_ms']:.1f}",
                f"{result['latency_difference_ms']:+.1f} ms",
                f"<= {TARGET_LATENCY_MS:g} ms",
                verdict(result["latency_met"]),
            ],
        ],
    )
    app_ms = result["service_app_total_p50_ms"]
    if app_ms == app_ms:  # not NaN: the service sent Server-Timing
        print(
            f"  at concurrency 1 the app's own median (Server-Timing total) was "
            f"{app_ms:.1f} ms; the rest of the client's "
            f"{result['service_latency_p50_ms']:.1f} ms is HTTP and gunicorn"
        )
    if result["service_errors"]:
        print(f"  errors at concurrency {concurrency}: {result['service_errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of photos")
    add_server_options(parser)
    add_workload_options(parser)
    inprocess.add_inprocess_options(parser)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="the service's concurrency for the throughput (default 8)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help="seconds for each in-process mode and each service level "
        f"(default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed requests per loop or thread"
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate the two parts this often"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed"
    )
    options = parser.parse_args()
    options.requests = None
    workload = workload_from(options)

    # Fail before the long in-process part when the service is not there.
    load.describe_server(options)
    levels = sorted({1, options.concurrency})
    rounds = []
    for _ in range(options.rounds):
        limit = inprocess.run(options, workload)
        inprocess.print_report(limit)
        service = load.run(options, workload, levels)
        load.print_report(service)
        rounds.append(
            {
                "comparison": compare(limit, service, options.concurrency),
                "inprocess": limit,
                "service": service,
            }
        )

    report = {
        "benchmark": "compare",
        "workload": workload.describe(),
        "machine": describe_machine(),
        "comparison": median_comparison([r["comparison"] for r in rounds]),
        "rounds": rounds,
    }
    print_comparison(report)
    if options.json:
        write_json(options.json, report)
    result = report["comparison"]
    if options.strict and not (result["throughput_met"] and result["latency_met"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
