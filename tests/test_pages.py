"""The page at ``/``, the docs at ``/docs`` and the files they load.

What a browser is sent, checked without one: the pages and the contract
need no key while the API still does, the HTML pages carry a
Content-Security-Policy that allows their own files and nothing else, the
HTML loads only files the service serves, with no inline script or style,
and every file of the page ships in the wheel. ``test_browser.py`` runs the
pages in Chromium.
"""

from __future__ import annotations

import fnmatch
import tomllib
from html.parser import HTMLParser
from http import HTTPStatus
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import OPENAPI_PATH, REPOSITORY, make_app

KEY = "pages-test-key-4b7d9e1c3a5f"
WEB_DIR = REPOSITORY / "service" / "web"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
PAGE_FILES = {
    "/web/app.js": "text/javascript",
    "/web/app.css": "text/css",
    "/web/docs.js": "text/javascript",
    "/web/docs.css": "text/css",
    "/web/swagger-ui/swagger-ui-bundle.js": "text/javascript",
    "/web/swagger-ui/swagger-ui.css": "text/css",
}


@pytest.fixture(scope="module")
def keyed(models_dir: Path) -> FlaskClient:
    app: Flask = make_app(models_dir, api_keys=(KEY,))
    return app.test_client()


class Resources(HTMLParser):
    """What an HTML page loads or links to, and any inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.addresses.append(str(attributes[name]))
        if tag == "style" or "style" in attributes:
            self.inline.append(f"<{tag}> with a style")
        if any(name.startswith("on") for name in attributes):
            self.inline.append(f"<{tag}> with an event handler")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data.strip()[:40]}")


def resources_of(client: FlaskClient, path: str) -> Resources:
    parser = Resources()
    parser.feed(client.get(path, buffered=True).get_data(as_text=True))
    return parser


# Access --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/docs", "/openapi.yaml", *PAGE_FILES], ids=lambda path: path
)
def test_the_pages_and_their_files_need_no_key(keyed: FlaskClient, path: str) -> None:
    response = keyed.get(path, buffered=True)

    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)


def test_the_calls_the_pages_make_still_need_a_key(keyed: FlaskClient) -> None:
    assert keyed.get("/v1/models").status_code == HTTPStatus.UNAUTHORIZED
    assert keyed.post("/v1/classify").status_code == HTTPStatus.UNAUTHORIZED
    assert keyed.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


# Headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_html_pages_may_load_their_own_files_only(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path, buffered=True)

    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == PAGE_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path", ["/openapi.yaml", "/web/app.js", "/v1/models", "/healthz", "/nowhere"]
)
def test_everything_else_keeps_the_api_policy(client: FlaskClient, path: str) -> None:
    assert (
        client.get(path, buffered=True).headers["Content-Security-Policy"] == API_POLICY
    )


# What the pages load ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_html_runs_no_inline_code(client: FlaskClient, path: str) -> None:
    assert resources_of(client, path).inline == []


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_html_loads_only_what_the_service_serves(
    client: FlaskClient, path: str
) -> None:
    for address in resources_of(client, path).addresses:
        if address == "data:,":  # the empty favicon, which saves a request
            continue
        assert address.startswith("/") and not address.startswith("//"), address
        response = client.get(address, buffered=True)
        assert response.status_code == HTTPStatus.OK, address


@pytest.mark.parametrize(("path", "mimetype"), list(PAGE_FILES.items()))
def test_page_files_are_sent_with_their_type(
    client: FlaskClient, path: str, mimetype: str
) -> None:
    response = client.get(path, buffered=True)

    assert response.status_code == HTTPStatus.OK
    assert response.mimetype == mimetype


@pytest.mark.parametrize(
    "path",
    [
        "/web/swagger-ui/index.html",
        "/web/swagger-ui/swagger-ui-bundle.js.map",
        "/web/missing.js",
        "/web/%2e%2e/pages.py",
        "/web/..%2fpages.py",
    ],
)
def test_nothing_else_is_served_from_the_folders(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path, buffered=True)

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.mimetype == "application/problem+json"


def test_the_contract_is_served_as_it_ships(client: FlaskClient) -> None:
    response = client.get("/openapi.yaml", buffered=True)

    assert response.mimetype == "application/yaml"
    assert response.data == OPENAPI_PATH.read_bytes()
    assert yaml.safe_load(response.data)["openapi"].startswith("3.1")


def test_every_page_file_ships_in_the_wheel() -> None:
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    files = [path.relative_to(WEB_DIR.parent) for path in WEB_DIR.rglob("*")]

    assert files
    for path in files:
        assert any(fnmatch.fnmatch(str(path), pattern) for pattern in patterns), path
