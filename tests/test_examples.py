"""The README's curl and fetch examples run, as printed, against a real server.

The examples of "The API" section are read out of README.md, pointed at a
gunicorn on a free port, and run in a folder holding the photos they name
(scikit-image samples written as JPEG). A renamed option, a changed field
or a broken example then fails here instead of in a user's terminal.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import OPENAPI_PATH, REPOSITORY, encode, photo
from tests.servers import Server, warm_gunicorn

README_URL = "http://localhost:8000"
COMMAND_TIMEOUT_SECONDS = 60
# A placeholder that stands for data a reader fills in, not a runnable value.
ELLIPSIS = "..."
CAT_CLASSES = {"tiger cat", "tabby", "Egyptian cat"}


def api_section() -> str:
    text = (REPOSITORY / "README.md").read_text()
    start = text.index("\n## The API\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def fenced_blocks(language: str) -> list[str]:
    pattern = rf"^```{language}\n(.*?)^```$"
    return re.findall(pattern, api_section(), flags=re.MULTILINE | re.DOTALL)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block, continuation lines joined."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.removesuffix("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


CURL_COMMANDS = [
    command
    for block in fenced_blocks("sh")
    for command in shell_commands(block)
    if command.startswith("curl ") and ELLIPSIS not in command
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Server]:
    with warm_gunicorn(tmp_path_factory.mktemp("examples"), models_dir, 1) as server:
        yield server


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name, in a folder to run them in."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(photo("astronaut"))
    # Another picture of the same face: mirrored and smaller.
    passport = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    passport = passport.resize((384, 384))
    files = {
        "cat.jpg": encode(photo("chelsea")),
        "dog.jpg": encode(photo("coffee")),
        "group.jpg": encode(astronaut),
        "me.jpg": encode(astronaut),
        "passport.jpg": encode(passport),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_the_readme_has_examples_for_every_route_of_the_contract() -> None:
    routes = set(yaml.safe_load(OPENAPI_PATH.read_text())["paths"])
    curl_text = " ".join(CURL_COMMANDS)
    (fetch_text,) = fenced_blocks("js")

    assert {route for route in routes if route not in curl_text} == set()
    assert {route for route in routes if route not in fetch_text} == set()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("command", CURL_COMMANDS)
def test_curl_example_answers(command: str, server: Server, photos: Path) -> None:
    command = command.replace(README_URL, server.url)
    # --fail-with-body turns an error status into a non-zero exit.
    command = command.replace("curl ", "curl -sS --fail-with-body ", 1)
    finished = subprocess.run(
        ["bash", "-c", command],
        cwd=photos,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    body = finished.stdout.split("\n\n")[-1]  # after the headers of -i
    if "/metrics" in command:
        families = {family.name for family in text_string_to_metric_families(body)}
        assert "vision_http_requests" in families
    else:
        assert isinstance(json.loads(body), dict)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_fetch_example_runs_in_node(server: Server, photos: Path) -> None:
    (script,) = fenced_blocks("js")
    assert README_URL in script
    (photos / "examples.mjs").write_text(script.replace(README_URL, server.url))
    finished = subprocess.run(
        ["node", "examples.mjs"],
        cwd=photos,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()

    # The printed top-3 classes of the cat, then the verdict on one face.
    top_three = json.loads(lines[0].replace("'", '"'))
    assert top_three[0] in CAT_CLASSES
    verdict = next(line for line in lines if line.startswith(("true", "false")))
    assert verdict.split()[0] == "true"
    assert lines[-1] == "ok ready"
