"""``service.client`` against a real gunicorn on the real models.

One keyed server serves the module: every call goes through the client
the README documents, with each way of giving an image, and errors come
back as ``ProblemError``. A stub server on the standard library checks
what the real one cannot be made to do on demand: drop a kept-alive
connection without warning, or answer an error that is not problem details.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import service.security
from service.client import (
    API_KEY_HEADER,
    Call,
    ProblemError,
    VisionClient,
    classify_call,
    sniff_image_type,
    verify_call,
)
from tests.conftest import encode, photo
from tests.servers import Server, warm_gunicorn

pytestmark = pytest.mark.slow

KEY = "client-test-key-3c9e1a7b5d"
EMBEDDING_SIZE = 512


@pytest.fixture(scope="module")
def server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("client-server")
    with warm_gunicorn(
        folder, models_dir, workers=1, VISION_API_KEYS=KEY, VISION_THREADS="2"
    ) as running:
        yield running


@pytest.fixture
def vision(server: Server) -> Iterator[VisionClient]:
    with VisionClient(server.url, api_key=KEY) as client:
        yield client


def jpeg(name: str, mirrored: bool = False) -> bytes:
    pixels = photo(name)
    if mirrored:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return encode(pixels)


# Images in every form --------------------------------------------------------


def test_classify_a_path(vision: VisionClient, tmp_path: Path) -> None:
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(jpeg("chelsea"))

    for source in (path, str(path)):
        answer = vision.classify(source, top_k=3)

        predictions = answer["results"][0]["predictions"]
        assert len(predictions) == 3
        assert "cat" in predictions[0]["label"]
        assert answer["model"]["name"] == "efficientnet-lite0"


def test_classify_bytes_and_a_file_object_with_options(vision: VisionClient) -> None:
    data = jpeg("chelsea")

    by_bytes = vision.classify(data, top_k=1, model="mobilenet-v2")
    by_file = vision.classify(io.BytesIO(data), top_k=1, model="mobilenet-v2")

    assert by_bytes == by_file
    assert by_bytes["model"]["name"] == "mobilenet-v2"
    assert len(by_bytes["results"][0]["predictions"]) == 1


def test_classify_several_images_answers_in_order(vision: VisionClient) -> None:
    answer = vision.classify([jpeg("chelsea"), jpeg("coffee")], top_k=5)

    labels = [
        [p["label"] for p in result["predictions"]] for result in answer["results"]
    ]
    assert len(labels) == 2
    assert any("cat" in label for label in labels[0])
    assert any("cup" in label or "espresso" in label for label in labels[1])


def test_detect_with_attributes(vision: VisionClient) -> None:
    answer = vision.detect(jpeg("astronaut"), attributes=["age", "gender"])

    face = answer["results"][0]["faces"][0]
    assert set(answer["models"]) == {"detector", "age", "gender"}
    assert face["gender"]["label"] == "female"
    assert 15 < face["age"]["years"] < 60
    assert vision.detect(jpeg("astronaut"), attributes="age")["results"][0]["faces"]


def test_embed_and_verify_by_images_embeddings_or_both(vision: VisionClient) -> None:
    astronaut, mirrored = jpeg("astronaut"), jpeg("astronaut", mirrored=True)
    embedding = vision.embed(astronaut, max_faces=1)["results"][0]["faces"][0][
        "embedding"
    ]
    assert len(embedding) == EMBEDDING_SIZE
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)

    by_images = vision.verify(astronaut, mirrored)
    by_embeddings = vision.verify(embedding, embedding)
    mixed = vision.verify(embedding, mirrored, threshold=0.9)

    assert by_images["verified"] and mixed["verified"]
    assert [f["source"] for f in by_images["faces"]] == ["image1", "image2"]
    assert by_embeddings["distance"] == pytest.approx(0.0, abs=1e-5)
    assert [f["source"] for f in mixed["faces"]] == ["embedding1", "image2"]
    assert mixed["threshold"] == 0.9
    assert mixed["distance"] == pytest.approx(by_images["distance"], abs=1e-3)


def test_models_and_probes(vision: VisionClient) -> None:
    names = {model["name"] for model in vision.models()}

    assert {"efficientnet-lite0", "mobilenet-v2", "facenet"} <= names
    assert vision.health() == {"status": "ok"}
    assert vision.ready() is True
    vision.wait_until_ready(timeout=1)


# Answers as a benchmark sees them --------------------------------------------


def test_last_response_carries_timing_and_the_connection_is_kept(
    vision: VisionClient,
) -> None:
    vision.classify(jpeg("chelsea"))
    first = vision.last_response
    socket_before = vision._connection.sock
    vision.classify(jpeg("coffee"))
    second = vision.last_response

    assert first is not None and second is not None and first is not second
    assert vision._connection.sock is socket_before
    timing = second.server_timing
    assert {"receive", "decode", "inference", "serialise", "total"} <= set(timing)
    assert 0 < timing["total"] <= second.elapsed * 1000


def test_a_prepared_call_can_be_sent_many_times(vision: VisionClient) -> None:
    call = classify_call([jpeg("chelsea"), jpeg("coffee")], top_k=1)

    answers = [vision.send(call) for _ in range(3)]

    assert call.images == 2
    assert {a.status for a in answers} == {200}
    assert len({a.body for a in answers}) == 1


# Errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "status", "slug"),
    [
        (lambda v: v.classify(b"not an image"), 400, "invalid-image"),
        (lambda v: v.classify(jpeg("chelsea"), top_k=50), 400, "invalid-parameter"),
        (lambda v: v.classify(jpeg("chelsea"), model="resnet50"), 400, "unknown-model"),
        (
            lambda v: v.detect(encode(np.full((64, 64, 3), 128, np.uint8), "PNG")),
            422,
            "no-face",
        ),
    ],
    ids=["invalid-image", "invalid-parameter", "unknown-model", "no-face"],
)
def test_an_error_raises_its_problem(
    vision: VisionClient,
    send: Callable[[VisionClient], object],
    status: int,
    slug: str,
) -> None:
    with pytest.raises(ProblemError) as raised:
        send(vision)

    error = raised.value
    assert (error.status, error.slug) == (status, slug)
    assert error.type == f"/problems/{slug}"
    assert error.title and error.detail
    assert str(error).startswith(f"{status} {slug}: ")
    # The connection survives an error answer.
    assert vision.health() == {"status": "ok"}


def test_without_the_key_only_the_probes_answer(server: Server) -> None:
    assert API_KEY_HEADER == service.security.KEY_HEADER
    with (
        VisionClient(server.url) as anonymous,
        VisionClient(server.url, api_key="wrong-key-0123456789") as wrong,
    ):
        assert anonymous.ready() is True
        for client in (anonymous, wrong):
            with pytest.raises(ProblemError) as raised:
                client.models()
            assert raised.value.slug == "unauthorized"
            assert raised.value.status == 401


def test_a_bad_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http"):
        VisionClient("localhost:8000")


# Request building ------------------------------------------------------------


def test_image_types_are_sniffed_from_their_bytes() -> None:
    pixels = photo("chelsea")[:32, :32]

    assert sniff_image_type(encode(pixels)) == "image/jpeg"
    assert sniff_image_type(encode(pixels, "PNG")) == "image/png"
    assert sniff_image_type(encode(pixels, "WEBP")) == "image/webp"
    assert sniff_image_type(encode(pixels, "GIF")) == "image/gif"
    assert sniff_image_type(encode(pixels, "BMP")) == "image/bmp"
    assert sniff_image_type(b"????") == "application/octet-stream"


def test_two_embeddings_are_sent_as_json() -> None:
    call = verify_call([1, 0], (0.0, 1.0), face1=None, threshold=1.2)

    assert call.content_type == "application/json"
    assert call.target == "/v1/faces/verify?threshold=1.2"
    assert call.body is not None
    assert json.loads(call.body) == {"embedding1": [1.0, 0.0], "embedding2": [0, 1]}
    assert call.images == 0


# A stub server for what the real one will not do on demand -------------------


class StubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[int, str | None]] = []

    def do_GET(self) -> None:
        self.seen.append((self.client_address[1], self.headers.get(API_KEY_HEADER)))
        if self.path == "/prefix/gateway":
            body = b"<html>Bad Gateway</html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
        else:
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # Close without saying so, as a server does with an idle kept-alive
        # connection: the client learns it only from its next request.
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    StubHandler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/prefix"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_connection_closed_by_the_server_is_reopened(stub: str) -> None:
    with VisionClient(stub, api_key="stub-key-abcdefghijklmnop") as client:
        answers = [client.send(Call("GET", "/healthz")) for _ in range(3)]

    assert [a.status for a in answers] == [200, 200, 200]
    ports = [port for port, _ in StubHandler.seen]
    assert len(set(ports)) == 3, "each request should have had a fresh connection"
    assert {key for _, key in StubHandler.seen} == {"stub-key-abcdefghijklmnop"}


def test_an_error_that_is_no_problem_json_keeps_its_text(stub: str) -> None:
    with VisionClient(stub) as client, pytest.raises(ProblemError) as raised:
        client.call(Call("GET", "/gateway"))

    assert raised.value.status == 502
    assert raised.value.detail == "<html>Bad Gateway</html>"
    assert raised.value.slug == "about:blank"
