"""Service settings, read once from ``VISION_*`` environment variables.

Every setting has a default that works on a laptop, a one-line description
(shown in the README's table), and is validated when the app is created:
a bad value stops the start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PREFIX = "VISION_"
REPOSITORY = Path(__file__).resolve().parents[1]
PROVIDER_CHOICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """One or more ``VISION_*`` variables hold an invalid value."""


def _cpu_count() -> int:
    # The affinity mask is what this process may use, which in a container
    # limited by cpusets is less than the machine's core count.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return _cpu_count()


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one service process."""

    models_dir: Path = REPOSITORY / "models"
    bind: str = "0.0.0.0:8000"
    timeout: int = 60
    providers: str = "auto"
    workers: int = 0
    threads: int = 0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_images: int = 16
    log_level: str = "INFO"
    default_model: str = ""

    def __post_init__(self) -> None:
        # 0 means "derive from the cores": workers x threads = cores, so
        # that concurrent requests never oversubscribe the CPU.
        if self.workers == 0:
            object.__setattr__(self, "workers", default_workers())
        if self.threads == 0:
            object.__setattr__(self, "threads", max(1, _cpu_count() // self.workers))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems = []
        for field in fields(cls):
            name = PREFIX + field.name.upper()
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[field.name] = PARSERS[field.name](raw.strip())
            except ValueError as error:
                problems.append(f"{name}={raw!r}: {error}")
        if problems:
            raise SettingsError("invalid settings: " + "; ".join(problems))
        return cls(**values)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _directory(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ValueError("no such directory")
    return path


def _bind(raw: str) -> str:
    host, separator, port = raw.rpartition(":")
    if raw.startswith("unix:"):
        return raw
    if not separator or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    return raw if host else f"0.0.0.0:{port}"


PARSERS: dict[str, Callable[[str], Any]] = {
    "models_dir": _directory,
    "bind": _bind,
    "timeout": _positive_int,
    "providers": _choice(PROVIDER_CHOICES),
    "workers": _positive_int,
    "threads": _positive_int,
    "max_body_bytes": _positive_int,
    "max_pixels": _positive_int,
    "max_images": _positive_int,
    "log_level": _choice(LOG_LEVELS, upper=True),
    "default_model": str,
}

DESCRIPTIONS = {
    "models_dir": "folder with manifest.json and the ONNX files",
    "bind": "address gunicorn listens on, HOST:PORT or unix:PATH",
    "timeout": "seconds a worker may spend on one request before it is restarted",
    "providers": "onnxruntime providers: auto (CUDA when available), cpu, cuda",
    "workers": "gunicorn worker processes (default: the CPU cores)",
    "threads": "onnxruntime intra-op threads per worker (default: cores / workers)",
    "max_body_bytes": "largest request body accepted, in bytes",
    "max_pixels": "largest image accepted, in pixels (width x height)",
    "max_images": "most images in one request",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "default_model": "classifier used when a request names none",
}
