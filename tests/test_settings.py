"""Settings from VISION_* variables: defaults, parsing and validation."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError


def test_defaults_fill_the_cores_without_oversubscribing() -> None:
    settings = Settings.from_env({})
    cores = len(os.sched_getaffinity(0))

    assert settings.bind == "0.0.0.0:8000"
    assert settings.workers == cores
    assert settings.workers * settings.threads <= max(cores, settings.workers)
    assert settings.providers == "auto"
    assert (settings.models_dir / "README.md").is_file()


def test_values_are_parsed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "VISION_MODELS_DIR": str(tmp_path),
            "VISION_BIND": "127.0.0.1:9000",
            "VISION_PROVIDERS": "CUDA",
            "VISION_WORKERS": "3",
            "VISION_THREADS": "2",
            "VISION_MAX_BODY_BYTES": "1000",
            "VISION_MAX_PIXELS": "5000",
            "VISION_MAX_IMAGES": "4",
            "VISION_LOG_LEVEL": "debug",
            "VISION_DEFAULT_MODEL": "mobilenet-v2",
            "UNRELATED": "ignored",
        }
    )

    assert settings.models_dir == tmp_path
    assert settings.bind == "127.0.0.1:9000"
    assert settings.providers == "cuda"
    assert (settings.workers, settings.threads) == (3, 2)
    assert (settings.max_body_bytes, settings.max_pixels) == (1000, 5000)
    assert settings.max_images == 4
    assert settings.log_level == "DEBUG"
    assert settings.default_model == "mobilenet-v2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("off", False), ("OFF", False), ("0", False), ("on", True), ("true", True)],
)
def test_the_access_log_is_switched(raw: str, expected: bool) -> None:
    assert Settings().access_log is True
    assert Settings.from_env({"VISION_ACCESS_LOG": raw}).access_log is expected


def test_a_bare_port_binds_every_interface() -> None:
    assert Settings.from_env({"VISION_BIND": ":8080"}).bind == "0.0.0.0:8080"


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "VISION_WORKERS": "zero",
                "VISION_THREADS": "0",
                "VISION_PROVIDERS": "tpu",
                "VISION_BIND": "localhost",
                "VISION_MODELS_DIR": "/no/such/folder",
                "VISION_LOG_LEVEL": "LOUD",
                "VISION_ACCESS_LOG": "sometimes",
            }
        )

    message = str(caught.value)
    assert "VISION_WORKERS='zero': expected a whole number" in message
    assert "VISION_THREADS='0': must be at least 1" in message
    assert "VISION_PROVIDERS='tpu': expected one of auto, cpu, cuda" in message
    assert "VISION_BIND='localhost': expected HOST:PORT" in message
    assert "VISION_MODELS_DIR='/no/such/folder': no such directory" in message
    assert "VISION_LOG_LEVEL='LOUD': expected one of DEBUG" in message
    assert "VISION_ACCESS_LOG='sometimes': expected on or off" in message


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    for field in fields(Settings):
        assert f"| `VISION_{field.name.upper()}` |" in readme, field.name
