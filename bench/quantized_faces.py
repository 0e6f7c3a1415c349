"""Face verification with FaceNet int8 beside float32, in one process.

The service embeds faces with one embedder (the manifest's default), so
this compares the two in-process instead of over HTTP: every verification
photo of ``bench/faces_eval.py`` (same images, identities, duplicate rule
and pairs, imported from it) is decoded as the service decodes it, its
largest face is found once with the service's MTCNN, and that one face is
embedded by both networks through the service's own ``FaceAnalyzer``. The
report gives, for each embedder, false accepts and false rejects at the
service's default threshold (``service.api.faces.DEFAULT_THRESHOLD``),
the largest same-person and smallest different-person distance, and how
far each int8 embedding is from the float32 one.

    .venv/bin/python -m bench.quantized_faces ../shared/eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.faces_eval import collect_identity_images, form_pairs, score_pairs
from service.api.faces import DEFAULT_THRESHOLD
from service.imaging import decode_image
from service.registry import ModelRegistry
from service.settings import Settings
from service.vision.faces import FaceAnalyzer
from service.vision.mtcnn import Face

REPOSITORY = Path(__file__).resolve().parents[1]


def analyzers(registry: ModelRegistry, int8_name: str) -> dict[str, FaceAnalyzer]:
    """The service's face pipeline, and the same one with ``int8_name`` as
    its embedder."""
    served = registry.face_analyzer()
    int8 = registry.models[int8_name]
    variant = FaceAnalyzer(
        served.pnet,
        served.rnet,
        served.onet,
        int8,
        served.age.model,
        served.gender.model,
    )
    return {served.embedder.model.spec.name: served, int8_name: variant}


def verification(
    embeddings: list[list[float] | None], images: list[Any], threshold: float
) -> dict[str, Any]:
    pairs = form_pairs(images, embeddings)
    same = [p.distance for p in pairs if p.same and p.distance is not None]
    different = [p.distance for p in pairs if not p.same and p.distance is not None]
    return {
        **score_pairs(pairs, threshold),
        "pairs": len(pairs),
        "same_pairs": sum(p.same for p in pairs),
        "different_pairs": sum(not p.same for p in pairs),
        "max_same_distance": max(same, default=None),
        "min_different_distance": min(different, default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path, help="folder with faces/, faces-misc/")
    parser.add_argument("--models-dir", type=Path, default=REPOSITORY / "models")
    parser.add_argument("--int8", default="facenet-int8", help="int8 embedder")
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args()

    settings = Settings(models_dir=options.models_dir, providers="cpu", workers=1)
    registry = ModelRegistry.load(settings)
    if options.int8 not in registry.models:
        raise SystemExit(f"{options.models_dir}: no model {options.int8!r}")
    pipelines = analyzers(registry, options.int8)
    detector = next(iter(pipelines.values()))

    images, skipped = collect_identity_images(options.eval_dir, False)
    pictures, faces = [], []
    for image in images:
        picture = decode_image(image.path.read_bytes(), max_pixels=settings.max_pixels)
        found: list[Face] = detector.detect(picture, max_faces=1)
        pictures.append(picture)
        faces.append(found)

    embeddings: dict[str, list[list[float] | None]] = {}
    for name, pipeline in pipelines.items():
        vectors = pipeline.embed(pictures, faces)
        embeddings[name] = [
            [float(x) for x in v[0]] if len(v) else None for v in vectors
        ]

    float_name, int8_name = list(embeddings)
    cosines = [
        float(np.dot(a, b))
        for a, b in zip(embeddings[float_name], embeddings[int8_name], strict=True)
        if a is not None and b is not None
    ]
    report = {
        "images": len(images),
        "skipped_images": skipped,
        "images_without_face": [
            image.name for image, found in zip(images, faces, strict=True) if not found
        ],
        "threshold": DEFAULT_THRESHOLD,
        "embedders": {
            name: verification(vectors, images, DEFAULT_THRESHOLD)
            for name, vectors in embeddings.items()
        },
        "int8_vs_float32": {
            "min_cosine": min(cosines),
            "median_cosine": float(np.median(cosines)),
            "max_distance": float(np.sqrt(max(0.0, 2 - 2 * min(cosines)))),
        },
    }

    print(
        f"{report['images']} photos, {len(report['images_without_face'])} without "
        f"a face; threshold {DEFAULT_THRESHOLD}"
    )
    print(
        f"{'embedder':<14} {'accuracy':>8} {'FAR':>8} {'FRR':>7} "
        f"{'max same':>8} {'min diff':>8}"
    )
    for name, row in report["embedders"].items():
        print(
            f"{name:<14} {row['accuracy']:>8.1%} "
            f"{row['false_accepts']:>4}/{row['different_pairs']:<3} "
            f"{row['false_rejects']:>3}/{row['same_pairs']:<3} "
            f"{row['max_same_distance']:>8.3f} {row['min_different_distance']:>8.3f}"
        )
    shift = report["int8_vs_float32"]
    print(
        f"int8 against float32: cosine min {shift['min_cosine']:.4f}, median "
        f"{shift['median_cosine']:.4f}; largest move {shift['max_distance']:.3f}"
    )
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
