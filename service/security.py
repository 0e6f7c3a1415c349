"""Who may call the service, and what every response tells browsers.

``protect(app, settings)`` adds three things to an app. With API keys
configured, every request but the probes (``/healthz``, ``/readyz``), the
pages of ``service.pages`` and CORS preflights must carry one, in
``X-API-Key`` or as ``Authorization: Bearer <key>``; anything else is a 401
``unauthorized`` problem. Responses to the origins of
``VISION_CORS_ORIGINS`` carry the CORS headers, errors included, so that a
web page can read why a call failed. And every response carries headers
that stop browsers from sniffing, framing or caching it: results are
personal data more often than not. The two HTML pages get a
Content-Security-Policy that lets them load their own scripts, styles and
images and call this origin, and nothing else.

Keys are compared in constant time and never written to the log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from flask import Flask, Request, Response, request

from service import pages
from service.errors import Unauthorized
from service.settings import Settings

logger = logging.getLogger(__name__)

# The probes, so that orchestrators need no key, and the pages, which hold
# no data; the API calls the pages make still need one.
OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | pages.OPEN_PATHS
OPEN_PREFIXES = (pages.OPEN_PREFIX,)
KEY_HEADER = "X-API-Key"
REALM = 'Bearer realm="vision-service"'
MISSING_KEY_DETAIL = (
    "This API needs a key: send it in the X-API-Key header or as "
    "Authorization: Bearer <key>."
)
WRONG_KEY_DETAIL = "The API key is not valid."

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The service answers JSON only: nothing may load from or frame it.
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
# For the HTML pages: their own files, the photo being shown (a blob: URL;
# Swagger UI's icons are data: URLs), calls to this origin only. No inline
# script, no plugins, no forms sent elsewhere, no framing.
PAGE_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-ID"
# Headers a page may read beyond the few that browsers always expose.
# Server-Timing and X-Request-ID let a page report where a slow or failed
# answer went, and which log lines belong to it.
CORS_EXPOSED_HEADERS = (
    "Allow, Retry-After, Server-Timing, WWW-Authenticate, X-Request-ID"
)
CORS_MAX_AGE_SECONDS = "600"


class KeyRing:
    """The accepted API keys, held as SHA-256 digests.

    Comparing digests, which all have one length, keeps the time of a
    comparison from telling a key's length; comparing against every key,
    without stopping at a match, keeps it from telling which key matched.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = _digest(presented)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


def _digest(key: str) -> bytes:
    # Header values arrive decoded as Latin-1; UTF-8 encodes any of them.
    return hashlib.sha256(key.encode("utf-8")).digest()


def protect(app: Flask, settings: Settings) -> None:
    """Add the API key check, CORS and the security headers to ``app``.

    Call it before other ``before_request`` hooks are added, so that a
    request without a valid key is turned away before it takes anything.
    """
    keys = KeyRing(settings.api_keys)
    origins = frozenset(settings.cors_origins)
    _log_policy(keys, origins)

    if keys:

        @app.before_request
        def require_api_key() -> None:
            check_api_key(request, keys)

    @app.after_request
    def add_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.path in pages.HTML_PATHS:
            policy = PAGE_CONTENT_SECURITY_POLICY
            response.headers["Content-Security-Policy"] = policy
        if origins:
            add_cors_headers(request, response, origins)
        return response


def _log_policy(keys: KeyRing, origins: frozenset[str]) -> None:
    if keys:
        logger.info(
            "API key required on every route but %s; accepted keys: %d",
            ", ".join([*sorted(OPEN_PATHS), *(f"{path}*" for path in OPEN_PREFIXES)]),
            len(keys),
        )
    else:
        logger.warning(
            "no API keys are configured (VISION_API_KEYS, VISION_API_KEYS_FILE): "
            "the API is open to anyone who can reach it"
        )
    if origins:
        logger.info("CORS allowed for origins: %s", ", ".join(sorted(origins)))


def check_api_key(incoming: Request, keys: KeyRing) -> None:
    """Raise ``Unauthorized`` unless ``incoming`` may pass without a key or
    carries one of ``keys``."""
    if is_open(incoming) or is_preflight(incoming):
        return
    presented = presented_key(incoming)
    if presented is None:
        raise Unauthorized(MISSING_KEY_DETAIL, headers={"WWW-Authenticate": REALM})
    if not keys.accepts(presented):
        challenge = f'{REALM}, error="invalid_token"'
        raise Unauthorized(WRONG_KEY_DETAIL, headers={"WWW-Authenticate": challenge})


def is_open(incoming: Request) -> bool:
    """Whether ``incoming`` asks for a probe or a page, which need no key."""
    path = incoming.path
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_key(incoming: Request) -> str | None:
    """The key in ``X-API-Key``, or else in a Bearer ``Authorization``."""
    key = incoming.headers.get(KEY_HEADER, "").strip()
    if key:
        return key
    scheme, _, credentials = incoming.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def is_preflight(incoming: Request) -> bool:
    """Whether ``incoming`` is a browser's CORS preflight. Browsers never
    send credentials with one, so it cannot carry a key."""
    return (
        incoming.method == "OPTIONS"
        and "Origin" in incoming.headers
        and "Access-Control-Request-Method" in incoming.headers
    )


def add_cors_headers(
    incoming: Request, response: Response, origins: frozenset[str]
) -> None:
    """Let the page at ``incoming``'s origin read ``response``, if allowed."""
    any_origin = "*" in origins
    if not any_origin:
        # The answer depends on Origin, so caches must key on it.
        response.vary.add("Origin")
    origin = incoming.headers.get("Origin")
    if origin is None or not (any_origin or origin.lower() in origins):
        return
    response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
    if is_preflight(incoming):
        # Flask's automatic OPTIONS answer lists the route's methods, in
        # the order of a set; sorted, every process sends the same list. An
        # unknown path has none, and the browser then refuses the call.
        if response.allow:
            methods = ", ".join(sorted(response.allow))
            response.headers["Access-Control-Allow-Methods"] = methods
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE_SECONDS
    else:
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
