"""The in-process limit: the service's work on the photos, without HTTP.

Runs what a route does for each request (decode the image, preprocess, run
the networks, pick the results) in tight loops, with the service's own
functions and models: ``service.imaging.decode_image`` and the
``Classifier`` or ``FaceAnalyzer`` of a ``ModelRegistry`` loaded from the
manifest with the service's session options. No HTTP, no Flask, no JSON.
What the service adds on top of this is its overhead.

Throughput uses every core two ways, and the better is "the limit":

- ``threads``: one process, one loop per core on its own thread, sessions
  with one intra-op thread (onnxruntime, Pillow's decoders and resizing
  and numpy's large operations release the GIL);
- ``processes``: one single-threaded loop per core, each in its own
  process with its own sessions, as gunicorn's workers run;
- ``intra`` (only when asked for with ``--modes``): one loop whose sessions
  use one intra-op thread per core.

Latency is one loop, one request at a time, with the intra-op threads one
service worker gets (``VISION_THREADS``, by default cores / workers): the
median milliseconds per request, to set beside the service's median at
concurrency 1. The split of that time into stages comes from the same
``Server-Timing`` recorder the service uses. Then::

    .venv/bin/python -m bench.inprocess ../shared/eval/imagenet \\
        --route classify --model efficientnet-lite0 --duration 10 \\
        --json /tmp/inprocess.json

Loops start together after a warm-up (``--warmup`` requests each) and run
for ``--duration`` seconds; images/s is every loop's completed requests'
images over the time from the common start to the last loop's end. Run it
on a quiet machine: with the service idle, not under load.

The per-request work here mirrors ``service/api/classify.py`` and
``service/api/faces.py`` (same calls, same defaults); a change to what a
route computes must be made here too.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Photo,
    Workload,
    add_workload_options,
    describe_machine,
    print_table,
    read_photos,
    workload_from,
    write_json,
)
from service.api.classify import TOP_K_DEFAULT
from service.api.faces import MAX_FACES
from service.imaging import decode_image
from service.registry import ModelRegistry
from service.settings import Settings
from service.timing import recording
from service.vision.faces import DEFAULT_MIN_FACE_SIZE

MODES = ("threads", "processes", "intra")
DEFAULT_MODES = "threads,processes"
DEFAULT_DURATION_S = 10.0
START_TIMEOUT_S = 300


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load_registry(threads: int, providers: str | None) -> ModelRegistry:
    """The service's registry with ``threads`` intra-op threads per session.

    Every other setting comes from the ``VISION_*`` environment, as the
    service would read it.
    """
    settings = Settings.from_env()
    changes: dict[str, Any] = {"workers": 1, "threads": threads}
    if providers:
        changes["providers"] = providers
    return ModelRegistry.load(dataclasses.replace(settings, **changes))


def service_threads() -> int:
    """The intra-op threads one service worker gets in this environment."""
    return Settings.from_env().threads


Work = Callable[[list[bytes]], int]


def make_work(registry: ModelRegistry, workload: Workload) -> Work:
    """One request's work, as the route does it; returns the images done."""
    max_pixels = Settings.from_env().max_pixels
    if workload.route == "classify":
        classifier = registry.classifier(workload.model)
        top_k = workload.top_k or TOP_K_DEFAULT

        def classify(images: list[bytes]) -> int:
            decoded = [
                decode_image(data, max_pixels=max_pixels, min_side=classifier.min_side)
                for data in images
            ]
            classifier.classify(decoded, top_k)
            return len(images)

        return classify

    analyzer = registry.face_analyzer()
    attributes = {a.strip() for a in (workload.attributes or "").split(",") if a}

    def find(images: list[bytes]) -> tuple[list[Any], list[Any]]:
        decoded = [decode_image(data, max_pixels=max_pixels) for data in images]
        faces = [
            analyzer.detect(image, DEFAULT_MIN_FACE_SIZE, MAX_FACES)
            for image in decoded
        ]
        # The route answers 422 for an image without a face and stops there.
        if not all(faces):
            return [], []
        return decoded, faces

    if workload.route == "detect":

        def detect(images: list[bytes]) -> int:
            decoded, faces = find(images)
            if decoded and "age" in attributes:
                analyzer.estimate_age(decoded, faces)
            if decoded and "gender" in attributes:
                analyzer.estimate_gender(decoded, faces)
            return len(images)

        return detect
    if workload.route == "embed":

        def embed(images: list[bytes]) -> int:
            decoded, faces = find(images)
            if decoded:
                analyzer.embed(decoded, faces)
            return len(images)

        return embed

    def verify(images: list[bytes]) -> int:
        # The largest face of each image, both embedded in one batch.
        decoded = [decode_image(data, max_pixels=max_pixels) for data in images]
        faces = [
            analyzer.detect(image, DEFAULT_MIN_FACE_SIZE, max_faces=1)
            for image in decoded
        ]
        if all(faces):
            first, second = analyzer.embed(decoded, [[f[0]] for f in faces])
            float(np.linalg.norm(first[0] - second[0]))
        return len(images)

    return verify


@dataclass
class LoopResult:
    requests: int
    images: int
    started: float
    finished: float
    latencies: list[float]


def run_loop(
    work: Work,
    groups: list[list[bytes]],
    offset: int,
    warmup: int,
    duration: float,
    wait_for_start: Callable[[], None],
) -> LoopResult:
    """Warm up, wait for the common start, then loop for ``duration`` s."""
    position = offset
    for _ in range(warmup):
        work(groups[position % len(groups)])
        position += 1
    wait_for_start()
    # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes.
    started = time.perf_counter()
    deadline = started + duration
    latencies: list[float] = []
    images = 0
    now = started
    while now < deadline:
        images += work(groups[position % len(groups)])
        position += 1
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    return LoopResult(len(latencies), images, started, now, latencies)


def summarise(mode: str, loops: int, results: list[LoopResult]) -> dict[str, Any]:
    started = min(r.started for r in results)
    elapsed = max(r.finished for r in results) - started
    latencies = [s for r in results for s in r.latencies]
    return {
        "mode": mode,
        "loops": loops,
        "requests": sum(r.requests for r in results),
        "elapsed_s": elapsed,
        "requests_per_s": sum(r.requests for r in results) / elapsed,
        "images_per_s": sum(r.images for r in results) / elapsed,
        "latency_p50_ms": statistics.median(latencies) * 1000,
    }


def run_threads(
    options: argparse.Namespace, workload: Workload, groups: list[list[bytes]]
) -> dict[str, Any]:
    loops = options.loops
    registry = load_registry(1, options.providers)
    work = make_work(registry, workload)
    barrier = threading.Barrier(loops)
    results: list[LoopResult | None] = [None] * loops

    def loop(index: int) -> None:
        try:
            results[index] = run_loop(
                work,
                groups,
                index * len(groups) // loops,
                options.warmup,
                options.duration,
                barrier.wait,
            )
        except BaseException:
            barrier.abort()
            raise

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [r for r in results if r is not None]
    if len(done) != loops:
        raise SystemExit("a loop thread failed; see the traceback above")
    return summarise("threads", loops, done)


def process_loop(
    options: dict[str, Any],
    workload: Workload,
    index: int,
    barrier: Any,
    results: Any,
) -> None:
    """One loop in a spawned process, with sessions of its own."""
    try:
        registry = load_registry(1, options["providers"])
        work = make_work(registry, workload)
        photos = read_photos(Path(options["folder"]), options["limit"])
        groups = [[p.data for p in group] for group in workload.groups(photos)]
        result = run_loop(
            work,
            groups,
            index * len(groups) // options["loops"],
            options["warmup"],
            options["duration"],
            lambda: barrier.wait(START_TIMEOUT_S),
        )
    except BaseException as error:
        barrier.abort()
        results.put((index, repr(error)))
        raise
    results.put((index, dataclasses.asdict(result)))


def run_processes(
    options: argparse.Namespace, workload: Workload, groups: list[list[bytes]]
) -> dict[str, Any]:
    loops = options.loops
    # spawn, not fork: a forked child would inherit onnxruntime thread pools
    # of this process that do not survive the fork.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(loops)
    results = context.Queue()
    shared = {
        "providers": options.providers,
        "folder": str(options.folder),
        "limit": options.limit,
        "loops": loops,
        "warmup": options.warmup,
        "duration": options.duration,
    }
    processes = [
        context.Process(
            target=process_loop, args=(shared, workload, index, barrier, results)
        )
        for index in range(loops)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=START_TIMEOUT_S + options.duration * 2)]
    collected += [results.get(timeout=60) for _ in range(loops - 1)]
    for process in processes:
        process.join()
    failures = [outcome for _, outcome in collected if isinstance(outcome, str)]
    if failures:
        raise SystemExit(f"a loop process failed: {failures[0]}")
    done = [LoopResult(**outcome) for _, outcome in collected]
    return summarise("processes", loops, done)


def run_intra(
    options: argparse.Namespace, workload: Workload, groups: list[list[bytes]]
) -> dict[str, Any]:
    registry = load_registry(options.loops, options.providers)
    work = make_work(registry, workload)
    result = run_loop(work, groups, 0, options.warmup, options.duration, lambda: None)
    return summarise("intra", 1, [result])


def measure_latency(
    options: argparse.Namespace, workload: Workload, groups: list[list[bytes]]
) -> dict[str, Any]:
    """One loop, one request at a time, with a service worker's threads;
    the median and the stage split of the service's recorder."""
    threads = options.latency_threads or service_threads()
    registry = load_registry(threads, options.providers)
    work = make_work(registry, workload)
    stages: dict[str, list[float]] = {}

    def timed_work(images: list[bytes]) -> int:
        with recording() as recorder:
            done = work(images)
        for name, seconds in recorder.durations.items():
            stages.setdefault(name, []).append(seconds)
        return done

    result = run_loop(
        timed_work, groups, 0, options.warmup, options.duration, lambda: None
    )
    return {
        "intra_op_threads": threads,
        "requests": result.requests,
        "p50_ms": statistics.median(result.latencies) * 1000,
        "mean_ms": statistics.fmean(result.latencies) * 1000,
        # Only what service.vision marks itself (nothing until it does).
        "stages_p50_ms": {
            name: statistics.median(values) * 1000 for name, values in stages.items()
        },
    }


RUNNERS = {"threads": run_threads, "processes": run_processes, "intra": run_intra}


def run(options: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """Throughput in each mode and the latency; the report as a dict."""
    photos: list[Photo] = read_photos(options.folder, options.limit)
    groups = [[p.data for p in group] for group in workload.groups(photos)]
    modes = [m.strip() for m in options.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"--modes may be {', '.join(MODES)}; got {unknown}")
    report: dict[str, Any] = {
        "benchmark": "inprocess",
        "workload": workload.describe(),
        "photos": len(photos),
        "folder": str(options.folder),
        "duration_per_mode_s": options.duration,
        "warmup_per_loop": options.warmup,
        "machine": describe_machine(),
        "throughput": [],
    }
    for mode in modes:
        print(f"{mode}: {options.loops} loops...", file=sys.stderr, flush=True)
        report["throughput"].append(RUNNERS[mode](options, workload, groups))
    best = max(report["throughput"], key=lambda m: m["images_per_s"])
    report["limit"] = {"mode": best["mode"], "images_per_s": best["images_per_s"]}
    print("latency: one loop...", file=sys.stderr, flush=True)
    report["latency"] = measure_latency(options, workload, groups)
    return report


def print_report(report: dict[str, Any]) -> None:
    workload = report["workload"]
    what = workload["route"] + (f" ({workload['model']})" if workload["model"] else "")
    print(
        f"\n{what} in process: {report['photos']} photos from {report['folder']}, "
        f"{workload['images_per_request']} image(s) per request"
    )
    rows = [
        [
            mode["mode"],
            mode["loops"],
            mode["requests"],
            f"{mode['requests_per_s']:.2f}",
            f"{mode['images_per_s']:.2f}",
            f"{mode['latency_p50_ms']:.1f}",
        ]
        for mode in report["throughput"]
    ]
    print_table(["mode", "loops", "requests", "req/s", "images/s", "p50 ms"], rows)
    limit, latency = report["limit"], report["latency"]
    print(f"limit: {limit['images_per_s']:.2f} images/s ({limit['mode']})")
    print(
        f"latency, one at a time with {latency['intra_op_threads']} intra-op "
        f"thread(s): median {latency['p50_ms']:.1f} ms over "
        f"{latency['requests']} requests"
    )
    if latency["stages_p50_ms"]:
        split = ", ".join(
            f"{name} {value:.1f}" for name, value in latency["stages_p50_ms"].items()
        )
        print(f"  stage medians, ms: {split}")


def add_inprocess_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help=f"of {', '.join(MODES)}, comma-separated (default {DEFAULT_MODES})",
    )
    parser.add_argument(
        "--loops",
        type=int,
        default=cores(),
        help=f"parallel loops, or intra-op threads for intra (default {cores()})",
    )
    parser.add_argument(
        "--latency-threads",
        type=int,
        help="intra-op threads for the latency loop (default: a service "
        "worker's, VISION_THREADS or cores / workers)",
    )
    parser.add_argument(
        "--providers", choices=("auto", "cpu", "cuda"), help="default VISION_PROVIDERS"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of photos")
    add_workload_options(parser)
    add_inprocess_options(parser)
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help=f"seconds per mode and for the latency (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed requests per loop (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args()

    report = run(options, workload_from(options))
    print_report(report)
    if options.json:
        write_json(options.json, report)


if __name__ == "__main__":
    main()
