"""Speed of each int8 variant beside its float32 model, on one CPU core.

For every manifest entry with a ``quantization`` section, the int8 file and
the float32 file it was derived from are opened with the service's session
options, except for one intra-op thread (``intra_op_num_threads=1``,
sequential execution), so that the ratio measures the kernels and not how
well each graph spreads over cores. Each round times one batch-1 run and
one batch-8 run of every model, alternating which goes first, so that
other load on the machine falls on both alike; the report gives the median
over rounds of batch-1 latency and batch-8 throughput, and the median of
the per-round ratios. Inputs are fixed pseudo-random tensors of the
model's input shape: integer kernels take the same time whatever the
pixels.

    .venv/bin/python -m bench.quantized_speed            # models/, 30 rounds
    .venv/bin/python -m bench.quantized_speed --rounds 50 --json /tmp/speed.json

Building the variants that are not offered (``python -m export --out
/tmp/all-models --all-int8``) and passing ``--models-dir /tmp/all-models``
measures those too. Only onnxruntime and numpy are used.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.runtime import session_options

REPOSITORY = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 8)


@dataclass
class Contender:
    name: str
    session: ort.InferenceSession
    feeds: dict[int, dict[str, np.ndarray]]
    seconds: dict[int, list[float]]


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )


def contender(models_dir: Path, entry: dict[str, Any], threads: int) -> Contender:
    session = open_session(models_dir / entry["file"], threads)
    tensor = entry["inputs"][0]
    random = np.random.default_rng(0)
    feeds = {
        batch: {
            tensor["name"]: random.standard_normal(
                (batch, *tensor["shape"][1:]), dtype=np.float32
            )
        }
        for batch in BATCH_SIZES
    }
    return Contender(entry["name"], session, feeds, {b: [] for b in BATCH_SIZES})


def timed_run(model: Contender, batch: int) -> None:
    started = time.perf_counter()
    model.session.run(None, model.feeds[batch])
    model.seconds[batch].append(time.perf_counter() - started)


def compare(float_model: Contender, int8_model: Contender, rounds: int) -> None:
    pair = (float_model, int8_model)
    for model in pair:  # untimed: first runs allocate and pack weights
        for batch in BATCH_SIZES:
            model.session.run(None, model.feeds[batch])
    for number in range(rounds):
        order = pair if number % 2 == 0 else pair[::-1]
        for batch in BATCH_SIZES:
            for model in order:
                timed_run(model, batch)


def summarise(float_model: Contender, int8_model: Contender) -> dict[str, Any]:
    row: dict[str, Any] = {"float32": float_model.name, "int8": int8_model.name}
    for batch in BATCH_SIZES:
        float_times = float_model.seconds[batch]
        int8_times = int8_model.seconds[batch]
        ratios = [f / i for f, i in zip(float_times, int8_times, strict=True)]
        row[f"batch{batch}"] = {
            "float32_ms": 1000 * statistics.median(float_times),
            "int8_ms": 1000 * statistics.median(int8_times),
            "float32_images_per_s": batch / statistics.median(float_times),
            "int8_images_per_s": batch / statistics.median(int8_times),
            "speedup": statistics.median(ratios),
        }
    return row


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and whether it has the int8 dot-product
    instructions (VNNI) onnxruntime's int8 kernels use when present."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPOSITORY / "models")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args()

    manifest = json.loads((options.models_dir / "manifest.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["models"]}
    pairs = [
        (entries[entry["quantization"]["from"]["name"]], entry)
        for entry in manifest["models"]
        if "quantization" in entry
    ]
    if not pairs:
        raise SystemExit(f"{options.models_dir}: the manifest has no int8 variant")

    rows = []
    for float_entry, int8_entry in pairs:
        float_model = contender(options.models_dir, float_entry, options.threads)
        int8_model = contender(options.models_dir, int8_entry, options.threads)
        print(f"timing {int8_entry['name']} ...", file=sys.stderr, flush=True)
        compare(float_model, int8_model, options.rounds)
        rows.append(summarise(float_model, int8_model))

    report = {
        "cpu": cpu_description(),
        "onnxruntime": ort.__version__,
        "threads": options.threads,
        "rounds": options.rounds,
        "models": rows,
    }
    cpu = report["cpu"]
    print(
        f"{cpu['model']}; AVX-512 VNNI: {'yes' if cpu['avx512_vnni'] else 'no'}, "
        f"AVX-VNNI: {'yes' if cpu['avx_vnni'] else 'no'}; onnxruntime "
        f"{report['onnxruntime']}, {options.threads} thread(s), "
        f"{options.rounds} rounds"
    )
    print(
        f"{'model':<24} {'b1 float ms':>11} {'b1 int8 ms':>10} {'b1 x':>5} "
        f"{'b8 float img/s':>14} {'b8 int8 img/s':>13} {'b8 x':>5}"
    )
    for row in rows:
        one, eight = row["batch1"], row["batch8"]
        print(
            f"{row['int8']:<24} {one['float32_ms']:>11.1f} {one['int8_ms']:>10.1f} "
            f"{one['speedup']:>5.2f} {eight['float32_images_per_s']:>14.1f} "
            f"{eight['int8_images_per_s']:>13.1f} {eight['speedup']:>5.2f}"
        )
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
