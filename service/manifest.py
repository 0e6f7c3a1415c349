"""The model manifest as the service reads it.

``models/manifest.json`` is written by the exporter and is the only thing
the service knows about a model: file, hash, tensor names and shapes,
preprocessing and labels. Reading it checks every field the service relies
on, and that each file on disk is the one the exporter wrote, so a stale or
hand-edited folder fails at start-up with a message saying what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_FORMAT = 1


class ModelContractError(RuntimeError):
    """The models folder does not hold what the manifest promises."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Label:
    index: int
    wnid: str
    label: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    task: str
    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Each network family reads its own keys; see ``service.vision``.
    preprocessing: dict[str, Any]
    labels: tuple[Label, ...]
    source: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    models: tuple[ModelSpec, ...]
    defaults: dict[str, str]


def load_manifest(models_dir: Path) -> Manifest:
    """Read and check ``models_dir/manifest.json`` and the files it names."""
    path = models_dir / "manifest.json"
    if not path.is_file():
        raise ModelContractError(
            f"{path} not found; build the models with `python -m export`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelContractError(f"{path} is not valid JSON: {error}") from None
    if raw.get("format_version") != SUPPORTED_FORMAT:
        raise ModelContractError(
            f"{path}: format_version {raw.get('format_version')!r}, "
            f"this service reads {SUPPORTED_FORMAT}"
        )
    try:
        models = tuple(_model_spec(entry, models_dir) for entry in raw["models"])
        defaults = {str(k): str(v) for k, v in raw["defaults"].items()}
    except (KeyError, TypeError, ValueError) as error:
        raise ModelContractError(f"{path} is malformed: {error!r}") from None
    if not models:
        raise ModelContractError(f"{path} lists no models")
    names = [spec.name for spec in models]
    for task, name in defaults.items():
        if name not in names:
            raise ModelContractError(
                f"{path}: default {task} model {name!r} is not in the manifest"
            )
    return Manifest(models, defaults)


def _model_spec(entry: dict[str, Any], models_dir: Path) -> ModelSpec:
    name = str(entry["name"])
    path = models_dir / entry["file"]
    _check_file(path, entry["sha256"], f"model {name}")
    labels: tuple[Label, ...] = ()
    if "labels" in entry:
        labels_path = models_dir / entry["labels"]["file"]
        _check_file(labels_path, entry["labels"]["sha256"], f"labels of {name}")
        labels = tuple(
            Label(int(item["index"]), str(item["wnid"]), str(item["label"]))
            for item in json.loads(labels_path.read_text())
        )
    return ModelSpec(
        name=name,
        version=str(entry["version"]),
        task=str(entry["task"]),
        path=path,
        sha256=str(entry["sha256"]),
        inputs=tuple(_tensor_spec(item) for item in entry["inputs"]),
        outputs=tuple(_tensor_spec(item) for item in entry["outputs"]),
        preprocessing=dict(entry["preprocessing"]),
        labels=labels,
        source={str(k): str(v) for k, v in entry["source"].items()},
    )


def _tensor_spec(item: dict[str, Any]) -> TensorSpec:
    shape = tuple(d if isinstance(d, str) else int(d) for d in item["shape"])
    return TensorSpec(str(item["name"]), shape, str(item["dtype"]))


def _check_file(path: Path, expected_sha256: str, what: str) -> None:
    if not path.is_file():
        raise ModelContractError(
            f"{what}: {path} is missing; rebuild with `python -m export`"
        )
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected_sha256:
        raise ModelContractError(
            f"{what}: sha256 of {path} is {digest.hexdigest()}, the manifest "
            f"says {expected_sha256}; rebuild with `python -m export`"
        )
