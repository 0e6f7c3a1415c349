"""Read and write ``models/manifest.json``, the exporter's contract with the
service.

The manifest lists, per model, everything the service needs to run it
without knowing how it was built: the ONNX file and its sha256, input and
output names and shapes, preprocessing, labels, and where the weights came
from. The service reads nothing else about a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def exporter_fingerprint() -> str:
    """Hash the exporter's own source, so a changed recipe re-exports."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / MANIFEST_NAME
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "models": []}
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def write_manifest(models_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically: readers see the old or the new one."""
    path = models_dir / MANIFEST_NAME
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)


def find_model(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in manifest.get("models", []):
        if entry.get("name") == name:
            return dict(entry)
    return None
