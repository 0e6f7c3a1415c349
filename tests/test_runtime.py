"""onnxruntime providers: what VISION_PROVIDERS asks for and what a worker
does when CUDA cannot be had.

These tests run with the CPU build of onnxruntime, the one the project
installs, where CUDA is never available: ``cuda`` must then stop the start,
``auto`` must fall back to the CPU. On a machine with onnxruntime-gpu and a
GPU the refusals cannot happen, and those tests are skipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest

from service.manifest import ModelSpec, load_manifest
from service.runtime import (
    CPU,
    CUDA,
    ProviderUnavailable,
    choose_providers,
    create_session,
)
from tests.servers import SHUTDOWN_TIMEOUT_SECONDS, free_port, gunicorn

needs_cpu_only_onnxruntime = pytest.mark.skipif(
    CUDA in ort.get_available_providers(),
    reason="this onnxruntime offers CUDA, so it is never refused",
)


@pytest.fixture(scope="module")
def classifier_spec(models_dir: Path) -> ModelSpec:
    return next(
        spec
        for spec in load_manifest(models_dir).models
        if spec.task == "classification"
    )


def test_cpu_is_the_cpu_alone() -> None:
    assert choose_providers("cpu") == [CPU]


@needs_cpu_only_onnxruntime
def test_auto_falls_back_to_the_cpu() -> None:
    assert choose_providers("auto") == [CPU]


@needs_cpu_only_onnxruntime
def test_cuda_without_a_cuda_provider_is_refused() -> None:
    with pytest.raises(ProviderUnavailable, match="VISION_PROVIDERS=cuda") as caught:
        choose_providers("cuda")

    assert "onnxruntime-gpu" in str(caught.value)
    assert "VISION_PROVIDERS=auto" in str(caught.value)


@needs_cpu_only_onnxruntime
def test_a_session_that_lost_cuda_is_refused_when_cuda_is_required(
    classifier_spec: ModelSpec,
) -> None:
    # onnxruntime-gpu on a host without a GPU behaves like this: the CUDA
    # provider is asked for, and the session comes back on the CPU.
    with (
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),
        pytest.raises(ProviderUnavailable, match="could not start CUDA"),
    ):
        create_session(classifier_spec, [CUDA, CPU], 1, require_cuda=True)


@needs_cpu_only_onnxruntime
def test_a_session_that_lost_cuda_runs_on_the_cpu_otherwise(
    classifier_spec: ModelSpec, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        session = create_session(classifier_spec, [CUDA, CPU], 1)

    assert session.get_providers() == [CPU]
    assert "CUDA could not start; using the CPU" in caplog.text


@pytest.mark.slow
@needs_cpu_only_onnxruntime
def test_gunicorn_refuses_to_start_when_cuda_is_required(
    tmp_path: Path, models_dir: Path
) -> None:
    with gunicorn(
        tmp_path,
        VISION_BIND=f"127.0.0.1:{free_port()}",
        VISION_WORKERS="1",
        VISION_MODELS_DIR=str(models_dir),
        VISION_PROVIDERS="cuda",
    ) as server:
        try:
            status = server.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn kept running without CUDA:\n{server.errors()}")

        assert status != 0
        assert "ProviderUnavailable" in server.errors()
        assert "VISION_PROVIDERS=cuda" in server.errors()
