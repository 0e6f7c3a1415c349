"""Baseline of the face_recognition library (dlib) on the evaluation photos.

Measures what the service's face models are compared against: pair
verification accuracy at face_recognition's default tolerance, the detection
rate of its default HOG detector on FairFace photos, and the CPU time per
image of detection, encoding and verification. It imports nothing from this
project and runs in its own virtualenv, because dlib must not become a
dependency of the service:

    python3 -m venv .venv-baseline
    .venv-baseline/bin/pip install 'setuptools<81' dlib-bin \\
        face_recognition_models numpy pillow
    .venv-baseline/bin/pip install --no-deps face_recognition==1.3.0
    .venv-baseline/bin/python bench/face_recognition_baseline.py \\
        ../shared/eval --json /tmp/face_recognition_baseline.json

setuptools below 81 is needed because face_recognition_models loads its
weights through ``pkg_resources``. The eval folder holds ``faces/NAME/``,
``faces-misc/`` and ``fairface/``; the photos are read in place and nothing
is written next to them.

Verification. Every image of ``faces/`` and ``faces-misc/`` is embedded
once, at its original size, from its largest detected face (HOG, upsample
1; ``small`` landmark model; one jitter). The identity is the folder name in
``faces/``; in ``faces-misc/`` ``obama*.jpg`` (the two partial faces
included) are "obama", ``biden.jpg`` is "biden" and ``32bit.png`` is also
"obama": it is an opaque RGBA re-encoding of ``obama2.jpg``, so its identity
is clear and it tests the loader's alpha handling (its pair with
``obama2.jpg`` is near-identical and easy). Files whose bytes are
identical to an earlier file (``faces-misc/biden.jpg``, ``obama.jpg`` and
``obama2.jpg`` repeat files of ``faces/``) are left out, since a pair of
identical files is decided at distance zero and measures nothing;
``--keep-duplicates`` puts them back. All same-person and different-person
pairs of the remaining images are formed, identities merged by name across
the two folders. A pair is "same" when the Euclidean distance of its
encodings is at most 0.6. A pair with an image where no face was found is
counted as a wrong decision: in accuracy, and as a false reject for a
same-person pair; it cannot be a false accept, so the false accept rate is
accepted different-person pairs over all different-person pairs.

Detection. The share of ``fairface/*.jpg`` photos (448x448, with
background) where ``face_locations`` finds at least one face.

Timing. On the verification images, decoded once and resized so that the
longest side is exactly 800 px (Lanczos; smaller images are enlarged), in
one process: one untimed warm-up pass, then three timed passes, each
image's median over the three passes, and the median over images is
reported. "detect" is ``face_locations``; "encode" is ``face_encodings`` of
the largest face given its location; "verify" is detect and encode of both
images of a pair plus their distance, divided by two, with the median
taken over every pair. Decoding is not timed. ``time.perf_counter`` is the
clock; the process CPU time over wall time of each phase is reported as
"cpu share", and a share well below 1.0 says that other processes were
competing for the cores and the times are too high.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dlib
import face_recognition
import numpy as np
from PIL import Image

TOLERANCE = 0.6
TIMING_LONGEST_SIDE = 800
TIMING_PASSES = 3
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
PACKAGES = [
    "face_recognition",
    "face_recognition_models",
    "dlib-bin",
    "numpy",
    "pillow",
    "setuptools",
]

Box = tuple[int, int, int, int]


@dataclass
class LabelledImage:
    path: Path
    identity: str
    name: str


def misc_identity(path: Path) -> str | None:
    """Identity of a ``faces-misc/`` file, or None when it has none."""
    if path.name.startswith("obama") or path.name == "32bit.png":
        return "obama"
    if path.name.startswith("biden"):
        return "biden"
    return None


def collect_identity_images(
    eval_dir: Path, keep_duplicates: bool
) -> tuple[list[LabelledImage], list[str]]:
    """Labelled images of ``faces/`` then ``faces-misc/``, and skipped names."""
    candidates = []
    for folder in sorted((eval_dir / "faces").iterdir()):
        for path in sorted(folder.iterdir()):
            candidates.append((path, folder.name))
    for path in sorted((eval_dir / "faces-misc").iterdir()):
        identity = misc_identity(path)
        if identity is not None:
            candidates.append((path, identity))

    images, skipped, seen = [], [], set()
    for path, identity in candidates:
        name = str(path.relative_to(eval_dir))
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(name)
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen and not keep_duplicates:
            skipped.append(name)
            continue
        seen.add(digest)
        images.append(LabelledImage(path, identity, name))
    return images, skipped


def largest_face(locations: list[Box]) -> Box | None:
    def area(box: Box) -> int:
        top, right, bottom, left = box
        return (bottom - top) * (right - left)

    return max(locations, key=area, default=None)


def embed_largest_face(image: np.ndarray) -> np.ndarray | None:
    box = largest_face(face_recognition.face_locations(image))
    if box is None:
        return None
    encoding: np.ndarray = face_recognition.face_encodings(image, [box])[0]
    return encoding


def report_progress(label: str, done: int, total: int) -> None:
    end = "\n" if done == total else ""
    print(f"\r{label} {done}/{total}", end=end, file=sys.stderr, flush=True)


def with_progress(label: str, items: Sequence[Any]) -> Iterable[Any]:
    for done, item in enumerate(items, 1):
        yield item
        report_progress(label, done, len(items))


def evaluate_verification(images: list[LabelledImage]) -> dict[str, Any]:
    encodings = []
    for image in with_progress("embed", images):
        pixels = face_recognition.load_image_file(image.path)
        encodings.append(embed_largest_face(pixels))

    counts: Counter[str] = Counter()
    pairs: list[dict[str, Any]] = []
    for (a, enc_a), (b, enc_b) in itertools.combinations(
        zip(images, encodings, strict=True), 2
    ):
        same = a.identity == b.identity
        counts["same" if same else "different"] += 1
        if enc_a is None or enc_b is None:
            counts["failed"] += 1
            counts["false_rejects"] += same
            pairs.append({"a": a.name, "b": b.name, "same": same, "distance": None})
            continue
        distance = float(np.linalg.norm(enc_a - enc_b))
        accepted = distance <= TOLERANCE
        counts["correct"] += accepted == same
        counts["false_accepts"] += accepted and not same
        counts["false_rejects"] += same and not accepted
        pairs.append({"a": a.name, "b": b.name, "same": same, "distance": distance})

    def distances(same: bool) -> list[float]:
        return [
            p["distance"]
            for p in pairs
            if p["same"] == same and p["distance"] is not None
        ]

    total = counts["same"] + counts["different"]
    return {
        "images": len(images),
        "identities": len({image.identity for image in images}),
        "images_without_face": [
            image.name
            for image, encoding in zip(images, encodings, strict=True)
            if encoding is None
        ],
        "pairs": total,
        "same_pairs": counts["same"],
        "different_pairs": counts["different"],
        "failed_pairs": counts["failed"],
        "tolerance": TOLERANCE,
        "accuracy": counts["correct"] / total,
        "false_accept_rate": counts["false_accepts"] / counts["different"],
        "false_reject_rate": counts["false_rejects"] / counts["same"],
        "false_accepts": counts["false_accepts"],
        "false_rejects": counts["false_rejects"],
        "max_same_distance": max(distances(True), default=None),
        "min_different_distance": min(distances(False), default=None),
        "pair_distances": pairs,
    }


def evaluate_detection(folder: Path) -> dict[str, Any]:
    photos = sorted(folder.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no .jpg photos in {folder}")
    missed = []
    for path in with_progress("detect fairface", photos):
        image = face_recognition.load_image_file(path)
        if not face_recognition.face_locations(image):
            missed.append(path.name)
    return {
        "photos": len(photos),
        "detected": len(photos) - len(missed),
        "detection_rate": (len(photos) - len(missed)) / len(photos),
        "missed": missed,
    }


def resized_pixels(path: Path, longest_side: int) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    scale = longest_side / max(rgb.size)
    size = (round(rgb.width * scale), round(rgb.height * scale))
    return np.asarray(rgb.resize(size, Image.Resampling.LANCZOS))


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_of_passes(
    label: str, actions: Sequence[Callable[[], object]]
) -> tuple[float, float]:
    """Median over actions of each action's median wall time over the passes.

    Also returns process CPU time over wall time for the timed passes: well
    below 1.0 means other processes competed for the cores, and the times
    are inflated.
    """
    for action in with_progress(f"{label} warm-up", actions):
        action()
    walls: list[list[float]] = [[] for _ in actions]
    cpu_total = 0.0
    for number in range(1, TIMING_PASSES + 1):
        for index, action in enumerate(
            with_progress(f"{label} pass {number}", actions)
        ):
            wall, cpu = timed(action)
            walls[index].append(wall)
            cpu_total += cpu
    wall_total = sum(map(sum, walls))
    median = statistics.median(statistics.median(w) for w in walls)
    return median, cpu_total / wall_total


def measure_timing(images: list[LabelledImage]) -> dict[str, Any]:
    pixels = [resized_pixels(image.path, TIMING_LONGEST_SIDE) for image in images]
    boxes = [largest_face(face_recognition.face_locations(p)) for p in pixels]
    with_face = [
        (p, box) for p, box in zip(pixels, boxes, strict=True) if box is not None
    ]

    def verify(a: np.ndarray, b: np.ndarray) -> None:
        enc_a, enc_b = embed_largest_face(a), embed_largest_face(b)
        if enc_a is not None and enc_b is not None:
            face_recognition.face_distance([enc_a], enc_b)

    detect = [partial(face_recognition.face_locations, p) for p in pixels]
    encode = [
        partial(face_recognition.face_encodings, p, [box]) for p, box in with_face
    ]
    pairs = list(itertools.combinations(pixels, 2))
    verify_pairs = [partial(verify, a, b) for a, b in pairs]
    detect_s, detect_share = median_of_passes("time detect", detect)
    encode_s, encode_share = median_of_passes("time encode", encode)
    verify_pair_s, verify_share = median_of_passes("time verify", verify_pairs)
    return {
        "longest_side_px": TIMING_LONGEST_SIDE,
        "images": len(pixels),
        "images_with_face": len(with_face),
        "pairs": len(pairs),
        "passes": TIMING_PASSES,
        "detect_s": detect_s,
        "encode_s": encode_s,
        "verify_per_image_s": verify_pair_s / 2,
        "cpu_share": {
            "detect": detect_share,
            "encode": encode_share,
            "verify": verify_share,
        },
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe_environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "packages": versions,
        "dlib_version": dlib.__version__,
        "dlib_use_cuda": bool(dlib.DLIB_USE_CUDA),
    }


def format_distance(distance: float | None) -> str:
    return "-" if distance is None else f"{distance:.3f}"


def print_table(report: dict[str, Any]) -> None:
    verification = report["verification"]
    detection = report["detection"]
    timing = report["timing"]
    size = f"@{TIMING_LONGEST_SIDE}px"
    same, different = verification["same_pairs"], verification["different_pairs"]
    extremes = (
        format_distance(verification["max_same_distance"]),
        format_distance(verification["min_different_distance"]),
    )
    rows = [
        ("images", verification["images"]),
        ("identities", verification["identities"]),
        ("images without face", len(verification["images_without_face"])),
        ("pairs same / different", f"{same} / {different}"),
        ("failed pairs (no face)", verification["failed_pairs"]),
        (f"accuracy @ {TOLERANCE}", f"{verification['accuracy']:.1%}"),
        (
            "false accept rate",
            f"{verification['false_accept_rate']:.1%}"
            f" ({verification['false_accepts']}/{different})",
        ),
        (
            "false reject rate",
            f"{verification['false_reject_rate']:.1%}"
            f" ({verification['false_rejects']}/{same})",
        ),
        ("max same / min different dist.", " / ".join(extremes)),
        (
            "fairface detection rate",
            f"{detection['detection_rate']:.1%}"
            f" ({detection['detected']}/{detection['photos']})",
        ),
        (f"detect s/image {size}", f"{timing['detect_s']:.4f}"),
        (f"encode s/image {size}", f"{timing['encode_s']:.4f}"),
        (f"verify s/image {size}", f"{timing['verify_per_image_s']:.4f}"),
        (
            "cpu share detect/encode/verify",
            " / ".join(f"{share:.2f}" for share in timing["cpu_share"].values()),
        ),
        ("cpu count", report["environment"]["cpu_count"]),
        ("total seconds", f"{report['total_seconds']:.1f}"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path, help="folder with faces/ etc.")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep files byte-identical to an earlier one",
    )
    options = parser.parse_args()

    started = time.perf_counter()
    images, skipped = collect_identity_images(options.eval_dir, options.keep_duplicates)
    report: dict[str, Any] = {"environment": describe_environment()}
    report["skipped_images"] = skipped
    report["verification"] = evaluate_verification(images)
    report["detection"] = evaluate_detection(options.eval_dir / "fairface")
    report["timing"] = measure_timing(images)
    report["total_seconds"] = time.perf_counter() - started

    print_table(report)
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
