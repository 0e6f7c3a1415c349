"""Which onnxruntime session options serve our models fastest on this CPU.

For each model in ``models/`` and each variant of the session options, one
session is made; then rounds of timed runs go through every variant in turn
(interleaved, so drift in the machine's speed hits all alike) and the median
per variant is reported as a ratio of the service's own choice
(``service.runtime.create_session``). Inputs are batches of one and of
eight, single-threaded, as one worker thread runs them.

    .venv/bin/python -m bench.session_options [--models DIR] [--rounds 30]
        [--json results.json]

Nothing here is part of the test suite; timings on a shared machine are
noisy, so compare the ratios, not the milliseconds, across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.manifest import ModelSpec, load_manifest
from service.runtime import create_session, session_options
from service.settings import REPOSITORY

Variant = Callable[[ort.SessionOptions], None]


def _level(level: ort.GraphOptimizationLevel) -> Variant:
    def apply(options: ort.SessionOptions) -> None:
        options.graph_optimization_level = level

    return apply


def _no_arena(options: ort.SessionOptions) -> None:
    options.enable_cpu_mem_arena = False


def _no_mem_pattern(options: ort.SessionOptions) -> None:
    options.enable_mem_pattern = False


def _no_spinning(options: ort.SessionOptions) -> None:
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def _parallel(options: ort.SessionOptions) -> None:
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL


VARIANTS: dict[str, Variant | None] = {
    "service": None,
    "basic": _level(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    "extended": _level(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    "no-arena": _no_arena,
    "no-mem-pattern": _no_mem_pattern,
    "no-spinning": _no_spinning,
    "parallel": _parallel,
}


def session_for(spec: ModelSpec, variant: Variant | None) -> ort.InferenceSession:
    session = create_session(spec, ["CPUExecutionProvider"], 1)
    if variant is None:
        return session
    # The service's options, changed in one respect.
    options = session_options(1)
    variant(options)
    return ort.InferenceSession(
        str(spec.path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def example(spec: ModelSpec, batch: int) -> np.ndarray:
    shape = [batch if i == 0 else d for i, d in enumerate(spec.inputs[0].shape)]
    # P-Net's height and width are free: a typical pyramid level.
    shape = [d if isinstance(d, int) else 240 for d in shape]
    rng = np.random.default_rng(0)
    return rng.normal(size=shape).astype(np.float32)


def measure(spec: ModelSpec, rounds: int, batch: int) -> dict[str, float]:
    sessions = {name: session_for(spec, v) for name, v in VARIANTS.items()}
    feed = {spec.inputs[0].name: example(spec, batch)}
    for session in sessions.values():
        session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPOSITORY / "models")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()

    results: dict[str, Any] = {}
    names = list(VARIANTS)
    print(
        f"{'model':<22}{'batch':>6}{'service ms':>12}  "
        + "".join(f"{name:>15}" for name in names[1:])
    )
    for spec in load_manifest(arguments.models).models:
        for batch in (int(b) for b in arguments.batches.split(",")):
            if spec.name.startswith("mtcnn-pnet") and batch > 1:
                continue
            medians = measure(spec, arguments.rounds, batch)
            base = medians["service"]
            results[f"{spec.name}@{batch}"] = {
                "service_ms": base * 1000,
                "ratio_to_service": {n: medians[n] / base for n in names[1:]},
            }
            print(
                f"{spec.name:<22}{batch:>6}{base * 1000:>12.2f}  "
                + "".join(f"{medians[n] / base:>15.3f}" for n in names[1:])
            )
    print("ratios are variant time / service time: below 1 is faster")
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
