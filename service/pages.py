"""The pages for people: a page to try the API at ``/``, and its docs.

``/`` is a small page (``web/index.html``, plain JavaScript and CSS, no
build step) that sends a photo to the public API and draws the answers:
the classes, every face boxed with its age and gender, and a verify view
for two photos. ``/docs`` renders ``openapi.yaml``, which ``/openapi.yaml``
serves as it ships in the package, with Swagger UI's static files from the
``swagger-ui-bundle-v2`` package. Everything is served from this process,
so the pages work without a network beyond the service.

These routes hold no data and are not part of the API contract; the calls
the page makes go to the API and need a key where one is configured.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")
SWAGGER_UI_DIR = Path(str(swagger_ui_path))
# Only what docs.html loads; the bundle's own index.html runs an inline
# script, which the pages' Content-Security-Policy would refuse anyway.
SWAGGER_UI_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})
# RFC 9512 registers this type for YAML.
YAML_MEDIA_TYPE = "application/yaml"

# The two HTML documents, for security.py to give them their own policy.
HTML_PATHS = frozenset({"/", "/docs"})
# The paths that need no API key: the pages, their files and the contract.
OPEN_PATHS = HTML_PATHS | {"/openapi.yaml"}
OPEN_PREFIX = "/web/"

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
def index() -> Response:
    return send_from_directory(WEB_DIR, "index.html")


@blueprint.get("/docs")
def docs() -> Response:
    return send_from_directory(WEB_DIR, "docs.html")


@blueprint.get("/openapi.yaml")
def contract() -> Response:
    document = resources.files("service").joinpath("openapi.yaml").read_bytes()
    return Response(document, mimetype=YAML_MEDIA_TYPE)


@blueprint.get("/web/<path:name>")
def web_file(name: str) -> Response:
    return send_from_directory(WEB_DIR, name)


@blueprint.get("/web/swagger-ui/<name>")
def swagger_ui_file(name: str) -> Response:
    if name not in SWAGGER_UI_FILES:
        raise NotFound()
    return send_from_directory(SWAGGER_UI_DIR, name)
