"""Contract fuzzing: schemathesis sends generated requests to every operation.

Each operation of ``openapi.yaml`` gets requests that schemathesis derives
from the document, valid ones and ones that break the documented parameters
and bodies, plus requests that carry a real photo, so that the fuzzing also
reaches the success paths (random bytes are almost never an image). Every
response must not be a 5xx and must conform to the document: a documented
status, its content type, its headers and its body schema, which for errors
is the one problem+json shape. The requests go to the app in-process through
WSGI, and the number of examples per operation is bounded, so the whole run
takes seconds.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import OPENAPI_PATH, encode, photo

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PROBLEM_MEDIA_TYPE = "application/problem+json"
IMAGE_ROUTES = ("/v1/classify", "/v1/faces/detect", "/v1/faces/embed")
VERIFY_INPUTS = ("image1", "image2", "embedding1", "embedding2")

SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]

# A small photo with one face: every image route answers 200 for it.
FACE_JPEG = encode(
    Image.fromarray(photo("astronaut")).resize((192, 192)), "JPEG", quality=85
)
FACE_BASE64 = base64.b64encode(FACE_JPEG).decode("ascii")


def valid_requests(operation: APIOperation) -> list[st.SearchStrategy[Case]]:
    """Generated requests that carry the photo, with and without options.

    Most generated options are valid but still fail (a face index past the
    faces found, a minimum face size above the photo's), so requests with
    the options left out make sure the success path is reached too. The
    photo is put in after generation: a strategy holding it would print
    (and hypothesis would warn about) a repr of tens of kilobytes.
    """
    media_types = ["application/json"]
    if operation.path in IMAGE_ROUTES:
        media_types.append("image/jpeg")
    elif operation.path != "/v1/faces/verify":
        return []
    strategies = []
    for media_type in media_types:
        generated = operation.as_strategy(media_type=media_type)
        strategies += [generated.map(with_photo), generated.map(with_photo_only)]
    return strategies


def with_photo(case: Case) -> Case:
    """A copy of ``case`` with the photo as its image(s), its options kept.

    The copy is a new case: schemathesis keeps what it generated apart from
    later edits of a case's body, so an edited case may not send the edit.
    """
    query = dict(case.query or {})
    options = dict(case.body) if isinstance(case.body, dict) else {}
    body: Any
    if case.media_type == "image/jpeg":
        body = FACE_JPEG
    elif case.operation.path == "/v1/faces/verify":
        options = {k: v for k, v in options.items() if k not in VERIFY_INPUTS}
        body = {**options, "image1": FACE_BASE64, "image2": FACE_BASE64}
    else:
        body = {**options, "image": FACE_BASE64}
    # A random model name is an unknown model; these requests name a real one.
    for fields in (query, body):
        if isinstance(fields, dict) and "model" in fields:
            fields["model"] = "mobilenet-v2"
    return case.operation.Case(media_type=case.media_type, query=query, body=body)


def with_photo_only(case: Case) -> Case:
    """A copy of ``case`` with the photo as its image(s) and no options."""
    bare = case.operation.Case(media_type=case.media_type, query={}, body={})
    return with_photo(bare)


def photo_examples(operation: APIOperation) -> list[Case]:
    """One request with the photo and no options per media type, always run."""
    if operation.path in IMAGE_ROUTES:
        media_types = ["application/json", "image/jpeg"]
    elif operation.path == "/v1/faces/verify":
        media_types = ["application/json"]
    else:
        return []
    return [
        with_photo_only(operation.Case(media_type=media_type))
        for media_type in media_types
    ]


def operation_requests(operation: APIOperation) -> st.SearchStrategy[Case]:
    return st.one_of(
        operation.as_strategy(),
        operation.as_strategy(GenerationMode.NEGATIVE),
        *valid_requests(operation),
    )


@pytest.fixture(scope="module")
def case_counts() -> Iterator[dict[str, Counter[int]]]:
    """The statuses each operation answered; printed with ``pytest -s``."""
    counts: dict[str, Counter[int]] = {}
    yield counts
    for label, statuses in sorted(counts.items()):
        total = sum(statuses.values())
        print(f"schemathesis: {label}: {total} cases, statuses {dict(statuses)}")


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_operation_keeps_its_contract(
    app: Flask, operation: APIOperation, case_counts: dict[str, Counter[int]]
) -> None:
    statuses: Counter[int] = Counter()

    @given(case=operation_requests(operation))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        # Identical cases every run, so that CI is repeatable.
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    def exchange(case: Case) -> None:
        response = case.call(app=app)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            assert_problem_shape(response.headers, response.json())

    for case in photo_examples(operation):
        exchange = example(case=case)(exchange)
    exchange()

    case_counts[operation.label] = statuses
    # Operations without parameters or bodies have a single distinct case.
    assert sum(statuses.values()) >= (MAX_EXAMPLES // 2 if operation.body else 1)
    assert not any(status >= 500 for status in statuses), statuses
    assert 200 in statuses, f"no case reached the success path: {statuses}"


def assert_problem_shape(headers: dict[str, Any], body: Any) -> None:
    content_type = headers.get("Content-Type") or headers.get("content-type")
    if isinstance(content_type, list):
        content_type = content_type[0]
    assert content_type == PROBLEM_MEDIA_TYPE
    assert set(body) == {"type", "title", "status", "detail"}
