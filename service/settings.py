"""Service settings, read once from ``VISION_*`` environment variables.

Every setting has a default that works on a laptop, a one-line description
(shown in the README's table), and is validated when the app is created:
a bad value stops the start-up with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "VISION_"
REPOSITORY = Path(__file__).resolve().parents[1]
PROVIDER_CHOICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Settings whose values are never repeated in an error message.
SECRET_SETTINGS = frozenset({"api_keys"})
MIN_API_KEY_LENGTH = 16


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
    graceful_timeout: int = 30
    client_timeout: float = 20.0
    max_concurrency: int = 1
    batch_window_ms: float = 0.0
    max_batch: int = 32
    queue_timeout: float = 0.5
    providers: str = "auto"
    workers: int = 0
    threads: int = 0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_images: int = 16
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = True
    default_model: str = ""
    face_embedder: str = ""
    # Kept out of repr() so that logging the settings cannot leak a key.
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    api_keys_file: Path | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # 0 means "derive from the cores": workers x threads = cores, so
        # that concurrent requests never oversubscribe the CPU.
        if self.workers == 0:
            object.__setattr__(self, "workers", default_workers())
        if self.threads == 0:
            object.__setattr__(self, "threads", max(1, _cpu_count() // self.workers))
        # The keys of the file join those given directly, so that the rest
        # of the service reads one tuple.
        object.__setattr__(self, "api_keys", _gather_api_keys(self))

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
                shown = "<hidden>" if field.name in SECRET_SETTINGS else repr(raw)
                problems.append(f"{name}={shown}: {error}")
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


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 <= value <= 3600:
        raise ValueError("must be from 0 to 3600 seconds")
    return value


def _milliseconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of milliseconds") from None
    if not 0 <= value <= 1000:
        raise ValueError("must be from 0 to 1000 milliseconds")
    return value


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _switch(raw: str) -> bool:
    value = raw.lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError("expected on or off")


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


def _key_problem(key: str) -> str | None:
    """What makes ``key`` unusable, in words that do not repeat it."""
    if len(key) < MIN_API_KEY_LENGTH:
        return f"is shorter than {MIN_API_KEY_LENGTH} characters"
    # A key travels in an HTTP header: visible ASCII only, and no comma,
    # which separates the keys of VISION_API_KEYS.
    if not all("!" <= character <= "~" for character in key) or "," in key:
        return "may hold only visible ASCII characters other than the comma"
    return None


def _api_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    if not keys:
        raise ValueError("no key given")
    for number, key in enumerate(keys, 1):
        problem = _key_problem(key)
        if problem:
            raise ValueError(f"key {number} {problem}")
    return keys


def read_key_file(path: Path) -> tuple[str, ...]:
    """The keys of a key file: one a line, blank lines and ``#`` comments
    ignored. Raises ``ValueError`` for a file that is unreadable, holds no
    key or holds a bad one; the message never quotes a key."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    except OSError as error:
        raise ValueError(f"cannot read the file: {error.strerror}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        problem = _key_problem(key)
        if problem:
            raise ValueError(f"the key on line {number} {problem}")
        keys.append(key)
    if not keys:
        raise ValueError("the file holds no key")
    return tuple(keys)


def _key_file(raw: str) -> Path:
    path = Path(raw).expanduser()
    read_key_file(path)
    return path


def _gather_api_keys(settings: Settings) -> tuple[str, ...]:
    """``api_keys`` and the keys of ``api_keys_file``, checked, in order."""
    for number, key in enumerate(settings.api_keys, 1):
        problem = _key_problem(key)
        if problem:
            name = f"{PREFIX}API_KEYS"
            raise SettingsError(f"invalid settings: {name}: key {number} {problem}")
    file_keys: tuple[str, ...] = ()
    if settings.api_keys_file is not None:
        try:
            file_keys = read_key_file(settings.api_keys_file)
        except ValueError as error:
            name = f"{PREFIX}API_KEYS_FILE={str(settings.api_keys_file)!r}"
            raise SettingsError(f"invalid settings: {name}: {error}") from None
    return tuple(dict.fromkeys((*settings.api_keys, *file_keys)))


def _origins(raw: str) -> tuple[str, ...]:
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if entries == ["*"]:
        return ("*",)
    origins = []
    for entry in entries:
        if entry == "*":
            raise ValueError("* allows every origin and cannot be listed with others")
        origins.append(_origin(entry))
    return tuple(dict.fromkeys(origins))


def _origin(entry: str) -> str:
    """``entry`` as browsers send it in ``Origin``: scheme://host[:port]."""
    parts = urlsplit(entry)
    try:
        port_is_valid = parts.port != 0
    except ValueError:
        port_is_valid = False
    if (
        not port_is_valid
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(f"{entry!r} is not an origin like https://app.example.com")
    return f"{parts.scheme}://{parts.netloc.lower()}"


PARSERS: dict[str, Callable[[str], Any]] = {
    "models_dir": _directory,
    "bind": _bind,
    "timeout": _positive_int,
    "graceful_timeout": _positive_int,
    "client_timeout": _seconds,
    "max_concurrency": _positive_int,
    "batch_window_ms": _milliseconds,
    "max_batch": _positive_int,
    "queue_timeout": _seconds,
    "providers": _choice(PROVIDER_CHOICES),
    "workers": _positive_int,
    "threads": _positive_int,
    "max_body_bytes": _positive_int,
    "max_pixels": _positive_int,
    "max_images": _positive_int,
    "log_level": _choice(LOG_LEVELS, upper=True),
    "log_format": _choice(LOG_FORMATS),
    "access_log": _switch,
    "default_model": str,
    "face_embedder": str,
    "api_keys": _api_keys,
    "api_keys_file": _key_file,
    "cors_origins": _origins,
}

DESCRIPTIONS = {
    "models_dir": "folder with manifest.json and the ONNX files",
    "bind": "address gunicorn listens on, HOST:PORT or unix:PATH",
    "timeout": "seconds a worker may stay unresponsive before gunicorn restarts it",
    "graceful_timeout": "seconds a stopping worker gives requests in flight to finish",
    "client_timeout": "seconds to send a request, +1 s per 16 KiB sent; 0: no limit",
    "max_concurrency": "requests one worker serves at once on the /v1 inference routes",
    "batch_window_ms": "ms a network waits to batch concurrent requests; 0: off",
    "max_batch": "most images in one micro-batch",
    "queue_timeout": "seconds a request waits for a free slot before it gets 503",
    "providers": "onnxruntime providers: auto (CUDA if it starts), cpu, cuda (or stop)",
    "workers": "gunicorn worker processes (default: the CPU cores)",
    "threads": "onnxruntime intra-op threads per worker (default: cores / workers)",
    "max_body_bytes": "largest request body accepted, in bytes",
    "max_pixels": "largest image accepted, in pixels (width x height)",
    "max_images": "most images in one request",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text (one readable line per record) or json (one object a line)",
    "access_log": "on or off: gunicorn's line per request, on stdout",
    "default_model": "classifier used when a request names none",
    "face_embedder": "face embedding model, facenet or facenet-int8",
    "api_keys": "comma-separated API keys, one of which /v1 requests must send",
    "api_keys_file": "file of more API keys, one a line, # comments ignored",
    "cors_origins": "origins browsers may call from, comma-separated, or *",
}
