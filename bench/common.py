"""What the speed benchmarks share: photos, the requests each route gets,
percentiles, tables and a description of the machine.

``load``, ``profile`` and ``compare`` send the requests built here with
``service.client``; ``inprocess`` does the same work without HTTP. All of
them read the photos of a folder into memory first, so that reading files
is never part of what they measure.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.client import Call, classify_call, detect_call, embed_call, verify_call

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
ROUTES = ("classify", "detect", "embed", "verify")
DEFAULT_URL = "http://127.0.0.1:8000"
# The client side of VISION_API_KEYS: the key the benchmarks send, if any.
API_KEY_VARIABLE = "VISION_API_KEY"


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes


def read_photos(folder: Path, limit: int | None = None) -> list[Photo]:
    """The image files under ``folder`` (subfolders too), sorted by path."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder")
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if limit:
        paths = paths[:limit]
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [Photo(str(path.relative_to(folder)), path.read_bytes()) for path in paths]


@dataclass(frozen=True)
class Workload:
    """What each request asks: the route, its options, images per request."""

    route: str
    model: str | None = None
    top_k: int | None = None
    batch: int = 1
    attributes: str | None = None

    def images_per_request(self) -> int:
        return 2 if self.route == "verify" else self.batch

    def groups(self, photos: Sequence[Photo]) -> list[list[Photo]]:
        """The photos of each request: consecutive runs of ``batch``
        (verify: pairs), wrapping around, one request per photo."""
        size = self.images_per_request()
        return [
            [photos[(start + k) % len(photos)] for k in range(size)]
            for start in range(0, len(photos), 1 if self.route == "verify" else size)
        ]

    def calls(self, photos: Sequence[Photo]) -> list[Call]:
        """The prepared request of every group of photos."""
        calls = []
        for group in self.groups(photos):
            data = [photo.data for photo in group]
            single = data[0] if len(data) == 1 else data
            if self.route == "classify":
                call = classify_call(single, top_k=self.top_k, model=self.model)
            elif self.route == "detect":
                call = detect_call(single, attributes=self.attributes)
            elif self.route == "embed":
                call = embed_call(single)
            elif self.route == "verify":
                call = verify_call(data[0], data[1])
            else:
                raise ValueError(f"unknown route {self.route!r}")
            calls.append(call)
        return calls

    def describe(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "model": self.model,
            "top_k": self.top_k,
            "images_per_request": self.images_per_request(),
            "attributes": self.attributes,
        }


def add_workload_options(parser: Any) -> None:
    """The options that choose a ``Workload``, shared by every script."""
    parser.add_argument("--route", choices=ROUTES, default="classify")
    parser.add_argument("--model", help="classifier (classify only)")
    parser.add_argument("--top-k", type=int, help="classes per image (classify)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="images per request (classify, detect, embed); default 1",
    )
    parser.add_argument("--attributes", help="detect only: age, gender or age,gender")
    parser.add_argument(
        "--limit", type=int, help="use only the first LIMIT photos of the folder"
    )


def workload_from(options: Any) -> Workload:
    if options.batch < 1:
        raise SystemExit("--batch must be at least 1")
    if options.route == "verify" and options.batch != 1:
        raise SystemExit("verify sends two images per request; leave --batch out")
    return Workload(
        options.route, options.model, options.top_k, options.batch, options.attributes
    )


def add_server_options(parser: Any) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"sent as X-API-Key; default ${API_KEY_VARIABLE}",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request"
    )


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0 to 1) of ``values``, interpolated linearly
    between the two nearest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows under a header, the first column left-aligned, others right."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        first = f"{row[0]:<{widths[0]}}"
        pairs = zip(row[1:], widths[1:], strict=True)
        rest = (f"{cell:>{width}}" for cell, width in pairs)
        print("  ".join([first, *rest]).rstrip())


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe_machine() -> dict[str, Any]:
    """The machine and its load: a busy machine makes every figure worse."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_1m": load[0],
    }


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, which JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    print(f"report written to {path}")
