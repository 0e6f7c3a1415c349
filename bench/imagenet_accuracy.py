"""Top-1 and top-5 accuracy of the service's classifiers over HTTP.

Sends every image of a folder whose file names start with the ImageNet wnid
of their class (``n01440764_tench.JPEG``) to ``POST /v1/classify`` of a
running service and counts how often the true class is first, or among the
first five. The class index of a wnid is taken from the service's own
answers, so nothing here depends on the label file.

    python -m bench.imagenet_accuracy ../shared/eval/imagenet \
        --url http://127.0.0.1:8000 --model efficientnet-lite0 --model mobilenet-v2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.client import Classification, ProblemError, VisionClient

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
# The client side of VISION_API_KEYS, for a service that requires a key.
API_KEY = os.environ.get("VISION_API_KEY")
# One kept-alive client per pool thread: a client is not thread-safe.
_local = threading.local()


def classify(url: str, path: Path, model: str) -> Classification:
    client: VisionClient | None = getattr(_local, "client", None)
    if client is None or client.url != url.rstrip("/"):
        client = _local.client = VisionClient(url, api_key=API_KEY, timeout=60)
    return client.classify(path, top_k=5, model=model)


def evaluate(url: str, folder: Path, model: str, concurrency: int) -> dict[str, Any]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no images in {folder}")
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda p: classify(url, p, model), images))
    elapsed = time.monotonic() - started

    top1 = top5 = 0
    for path, answer in zip(images, answers, strict=True):
        wnid = path.name.split("_")[0]
        predicted = [p["wnid"] for p in answer["results"][0]["predictions"]]
        top1 += predicted[0] == wnid
        top5 += wnid in predicted
    return {
        "model": model,
        "images": len(images),
        "top1": top1 / len(images),
        "top5": top5 / len(images),
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="wnid-named images")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--model", action="append", help="model to evaluate (repeatable)"
    )
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    options = parser.parse_args()

    models = options.model or ["efficientnet-lite0", "mobilenet-v2"]
    rows = []
    for model in models:
        try:
            rows.append(
                evaluate(options.url, options.folder, model, options.concurrency)
            )
        except (OSError, ProblemError) as error:
            raise SystemExit(f"{options.url}: {error}") from None
    if options.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    print(f"{'model':<20} {'images':>6} {'top-1':>7} {'top-5':>7} {'seconds':>8}")
    for row in rows:
        print(
            f"{row['model']:<20} {row['images']:>6} {row['top1']:>7.1%} "
            f"{row['top5']:>7.1%} {row['seconds']:>8}"
        )


if __name__ == "__main__":
    main()
