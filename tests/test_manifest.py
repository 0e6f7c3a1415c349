"""The manifest contract between the exporter and the service."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service import create_app
from service.manifest import ModelContractError
from service.settings import Settings

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read(models_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((models_dir / "manifest.json").read_text())
    return document


def test_every_model_entry_is_complete(models_dir: Path) -> None:
    manifest = read(models_dir)

    assert manifest["format_version"] == 1
    assert manifest["defaults"]["classification"] == "efficientnet-lite0"
    for entry in manifest["models"]:
        assert SHA256.match(entry["sha256"])
        assert (models_dir / entry["file"]).is_file()
        assert "==" in entry["source"]["artifact"]
        assert SHA256.match(entry["source"]["sha256"])
        if "quantization" in entry:
            # An int8 variant's parity is its gate against float32
            # (tests/test_quantized.py).
            assert entry["parity"]["reference"] == "float32"
        else:
            assert entry["parity"]["max_abs_diff"] <= entry["parity"]["tolerance"]
        assert entry["inputs"][0]["shape"][0] == "batch"
        assert entry["preprocessing"]["channel_order"] == "RGB"


def test_classifier_entries_declare_what_the_classifier_reads(
    models_dir: Path,
) -> None:
    entries = [m for m in read(models_dir)["models"] if m["task"] == "classification"]

    float_entries = [entry for entry in entries if "quantization" not in entry]
    assert {entry["name"] for entry in float_entries} == {
        "efficientnet-lite0",
        "mobilenet-v2",
    }
    for entry in entries:
        assert entry["inputs"] == [
            {"name": "image", "shape": ["batch", 3, 224, 224], "dtype": "float32"}
        ]
        assert entry["outputs"] == [
            {"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}
        ]
        pre = entry["preprocessing"]
        assert pre["channel_order"] == "RGB" and pre["layout"] == "NCHW"
        assert pre["crop"] == 224 and pre["resize"] >= pre["crop"]
        parity = entry["parity"]
        assert parity["top1_agreement"] >= parity.get("min_top1_agreement", 1.0)


def test_face_entries_cover_every_role_of_the_pipeline(models_dir: Path) -> None:
    roles = {
        entry["preprocessing"].get("role"): entry
        for entry in read(models_dir)["models"]
        if entry["task"] != "classification"
    }

    assert set(roles) == {"pnet", "rnet", "onet", "embedder", "age", "gender"}
    assert roles["pnet"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert roles["embedder"]["outputs"][0]["shape"] == ["batch", 512]
    assert roles["age"]["preprocessing"]["class_years"][1:] == list(range(1, 81))
    assert roles["gender"]["preprocessing"]["classes"] == ["female", "male"]


def test_labels_cover_imagenet(models_dir: Path) -> None:
    entry = read(models_dir)["models"][0]
    labels = json.loads((models_dir / entry["labels"]["file"]).read_text())

    assert len(labels) == 1000
    assert [item["index"] for item in labels] == list(range(1000))
    assert labels[0] == {"index": 0, "wnid": "n01440764", "label": "tench"}
    assert labels[281]["wnid"] == "n02123045"
    assert len({item["wnid"] for item in labels}) == 1000


def test_preprocessing_follows_each_network(models_dir: Path) -> None:
    models = {entry["name"]: entry for entry in read(models_dir)["models"]}

    # EfficientNet-Lite's TensorFlow weights expect (pixel - 127) / 128.
    lite = models["efficientnet-lite0"]["preprocessing"]
    assert lite["mean"] == [127.0] * 3 and lite["std"] == [128.0] * 3
    mobilenet = models["mobilenet-v2"]["preprocessing"]
    assert mobilenet["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert mobilenet["std"] == pytest.approx([58.395, 57.12, 57.375])


@pytest.fixture
def models_copy(models_dir: Path, tmp_path: Path) -> Path:
    """A models folder to tamper with; ONNX files are linked, not copied."""
    for path in models_dir.iterdir():
        if path.suffix == ".onnx":
            (tmp_path / path.name).symlink_to(path)
        elif path.is_file():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def rename_input(manifest: dict[str, Any], folder: Path) -> None:
    manifest["models"][0]["inputs"][0]["name"] = "pixels"


def widen_output(manifest: dict[str, Any], folder: Path) -> None:
    manifest["models"][1]["outputs"][0]["shape"] = ["batch", 1001]


def wrong_hash(manifest: dict[str, Any], folder: Path) -> None:
    manifest["models"][1]["sha256"] = "0" * 64


def delete_onnx(manifest: dict[str, Any], folder: Path) -> None:
    (folder / manifest["models"][0]["file"]).unlink()


def unknown_default(manifest: dict[str, Any], folder: Path) -> None:
    manifest["defaults"]["classification"] = "resnet-50"


def newer_format(manifest: dict[str, Any], folder: Path) -> None:
    manifest["format_version"] = 2


def drop_manifest(manifest: dict[str, Any], folder: Path) -> None:
    (folder / "manifest.json").unlink()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            rename_input,
            "model efficientnet-lite0: input is image (float32), "
            "manifest says pixels (float32)",
        ),
        (
            widen_output,
            "model mobilenet-v2: output logits has shape ['batch', 1000], "
            "manifest says ['batch', 1001]",
        ),
        (wrong_hash, "model mobilenet-v2: sha256 of"),
        (delete_onnx, "efficientnet-lite0.onnx is missing; rebuild with"),
        (unknown_default, "default classification model 'resnet-50' is not in"),
        (newer_format, "format_version 2, this service reads 1"),
        (drop_manifest, "manifest.json not found; build the models with"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_service_refuses_a_folder_that_breaks_the_contract(
    models_copy: Path,
    tamper: Callable[[dict[str, Any], Path], None],
    message: str,
) -> None:
    manifest = read(models_copy)
    tamper(manifest, models_copy)
    if (models_copy / "manifest.json").exists():
        (models_copy / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ModelContractError) as caught:
        create_app(Settings(models_dir=models_copy, providers="cpu", workers=1))

    assert message in str(caught.value)


def test_untampered_copy_loads(models_copy: Path) -> None:
    app = create_app(Settings(models_dir=models_copy, providers="cpu", workers=1))

    assert app.extensions["vision"].registry.ready.wait(60)
