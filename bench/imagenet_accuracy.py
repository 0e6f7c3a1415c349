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
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def classify(url: str, path: Path, model: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"model": model, "top_k": 5})
    content_type = mimetypes.guess_type(path.name)[0] or "image/jpeg"
    request = urllib.request.Request(
        f"{url}/v1/classify?{query}",
        data=path.read_bytes(),
        headers={"Content-Type": content_type},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.load(response)
    return result


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
        except urllib.error.URLError as error:
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
