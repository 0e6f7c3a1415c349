"""A Python client for the service's HTTP API, on the standard library only.

::

    from service.client import ProblemError, VisionClient

    with VisionClient("http://localhost:8000", api_key=None) as vision:
        vision.wait_until_ready()
        best = vision.classify("cat.jpg", top_k=3)["results"][0]["predictions"][0]
        print(best["label"], best["probability"])

        people = vision.detect("group.jpg", attributes=["age", "gender"])
        try:
            same = vision.verify("me.jpg", "passport.jpg")["verified"]
        except ProblemError as error:
            print(error.slug, error.detail)  # "no-face", "image2 has no face ..."

An image is a file path (``str`` or ``pathlib.Path``), the bytes of an image
file, or a binary file object; ``classify``, ``detect`` and ``embed`` also
take a list of them and answer one result per image. Answers are the JSON
documents that ``openapi.yaml`` describes, typed as ``TypedDict``s; an
error answer raises ``ProblemError`` with the problem details the service
sent. Connection failures raise ``OSError`` as the socket module does.

A client keeps one HTTP/1.1 connection open between calls and opens a new
one when the server has closed it. It is not thread-safe: give each thread
its own client. ``send`` sends a prepared ``Call`` as it is and returns the
raw ``Response``, with the wall time and the service's ``Server-Timing``,
for benchmarks that build their requests once and send them many times.

This module imports nothing from the rest of the service, so it can be
copied into a project on its own.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NotRequired, TypedDict, cast

__all__ = [
    "Call",
    "Classification",
    "Detection",
    "Embeddings",
    "ModelInfo",
    "ProblemError",
    "Response",
    "Verification",
    "VisionClient",
    "classify_call",
    "detect_call",
    "embed_call",
    "parse_server_timing",
    "verify_call",
]

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_S = 60.0
# service.security.KEY_HEADER; repeated here so the client stands alone.
API_KEY_HEADER = "X-API-Key"
USER_AGENT = "vision-service-client/0.1"
# A server closes an idle kept-alive connection after a few seconds
# (gunicorn: 5); a request that finds it closed is sent again once, on a
# fresh connection. Every route is safe to repeat: none changes state.
_STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
Images = ImageSource | Sequence[ImageSource]
# One side of a verification: an image, or an embedding from ``embed``.
FaceSource = ImageSource | Sequence[float]


# Answers, as openapi.yaml describes them -------------------------------------


class ModelRef(TypedDict):
    name: str
    version: str


class Prediction(TypedDict):
    label: str
    wnid: str
    index: int
    probability: float


class ClassificationResult(TypedDict):
    predictions: list[Prediction]


class Classification(TypedDict):
    model: ModelRef
    results: list[ClassificationResult]


class Point(TypedDict):
    x: float
    y: float


class Box(TypedDict):
    x: float
    y: float
    width: float
    height: float


class Landmarks(TypedDict):
    left_eye: Point
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point


class AgeEstimate(TypedDict):
    years: float
    range: list[float]


class GenderEstimate(TypedDict):
    label: str
    probability: float


class DetectedFace(TypedDict):
    box: Box
    score: float
    landmarks: Landmarks
    age: NotRequired[AgeEstimate]
    gender: NotRequired[GenderEstimate]


class DetectedFaces(TypedDict):
    width: int
    height: int
    faces: list[DetectedFace]


class DetectionModels(TypedDict):
    detector: ModelRef
    age: NotRequired[ModelRef]
    gender: NotRequired[ModelRef]


class Detection(TypedDict):
    models: DetectionModels
    results: list[DetectedFaces]


class EmbeddedFace(TypedDict):
    box: Box
    score: float
    landmarks: Landmarks
    embedding: list[float]


class EmbeddedFaces(TypedDict):
    width: int
    height: int
    faces: list[EmbeddedFace]


class Embeddings(TypedDict):
    model: ModelRef
    results: list[EmbeddedFaces]


class ComparedFace(TypedDict):
    source: str
    face: NotRequired[int]
    box: NotRequired[Box]


class Verification(TypedDict):
    model: ModelRef
    distance: float
    similarity: float
    threshold: float
    verified: bool
    faces: list[ComparedFace]


class ModelInfo(TypedDict):
    name: str
    version: str
    task: str
    default: bool
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocessing: dict[str, Any]
    source: dict[str, str]
    providers: list[str]


# Requests --------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One prepared request: build it once, send it as often as needed."""

    method: str
    # Path and query, below the client's base URL.
    target: str
    body: bytes | None = None
    content_type: str | None = None
    # How many images the body carries, for benchmarks counting images/s.
    images: int = 0


def classify_call(
    images: Images, *, top_k: int | None = None, model: str | None = None
) -> Call:
    """``POST /v1/classify`` of one or more images."""
    return _images_call("/v1/classify", images, {"top_k": top_k, "model": model})


def detect_call(
    images: Images,
    *,
    attributes: str | Iterable[str] | None = None,
    min_face_size: int | None = None,
    max_faces: int | None = None,
) -> Call:
    """``POST /v1/faces/detect``; ``attributes`` may hold "age", "gender"."""
    if attributes is not None and not isinstance(attributes, str):
        attributes = ",".join(attributes)
    options = {
        "attributes": attributes or None,
        "min_face_size": min_face_size,
        "max_faces": max_faces,
    }
    return _images_call("/v1/faces/detect", images, options)


def embed_call(
    images: Images, *, min_face_size: int | None = None, max_faces: int | None = None
) -> Call:
    """``POST /v1/faces/embed``."""
    options = {"min_face_size": min_face_size, "max_faces": max_faces}
    return _images_call("/v1/faces/embed", images, options)


def verify_call(
    first: FaceSource,
    second: FaceSource,
    *,
    threshold: float | None = None,
    face1: int | None = None,
    face2: int | None = None,
    min_face_size: int | None = None,
) -> Call:
    """``POST /v1/faces/verify`` of two faces, each an image or an embedding.

    Two embeddings go as JSON; otherwise the images go as files of a form,
    next to an embedding given for the other side.
    """
    options = {
        "threshold": threshold,
        "face1": face1,
        "face2": face2,
        "min_face_size": min_face_size,
    }
    target = _target("/v1/faces/verify", options)
    sides = {"1": first, "2": second}
    embeddings = {
        side: [float(v) for v in cast(Sequence[float], source)]
        for side, source in sides.items()
        if not _is_image(source)
    }
    if len(embeddings) == 2:
        document = {f"embedding{side}": vector for side, vector in embeddings.items()}
        body = json.dumps(document).encode()
        return Call("POST", target, body, "application/json")
    form = _Form()
    for side, source in sides.items():
        if side in embeddings:
            form.add_field(f"embedding{side}", json.dumps(embeddings[side]))
        else:
            data, name = _read_image(cast(ImageSource, source))
            form.add_file(f"image{side}", data, name or f"image{side}")
    body, content_type = form.finish()
    return Call("POST", target, body, content_type, images=2 - len(embeddings))


def _images_call(path: str, images: Images, options: Mapping[str, Any]) -> Call:
    """One image as the raw body; several as repeated ``image`` form files."""
    target = _target(path, options)
    if _is_image(images):
        data, _ = _read_image(cast(ImageSource, images))
        return Call("POST", target, data, sniff_image_type(data), images=1)
    sources = list(cast(Sequence[ImageSource], images))
    if not sources:
        raise ValueError("no images given")
    form = _Form()
    for number, source in enumerate(sources, 1):
        data, name = _read_image(source)
        form.add_file("image", data, name or f"image{number}")
    body, content_type = form.finish()
    return Call("POST", target, body, content_type, images=len(sources))


def _target(path: str, options: Mapping[str, Any]) -> str:
    given = {name: value for name, value in options.items() if value is not None}
    return f"{path}?{urllib.parse.urlencode(given)}" if given else path


def _is_image(source: object) -> bool:
    return isinstance(source, str | os.PathLike | bytes | bytearray | memoryview) or (
        hasattr(source, "read")
    )


def _read_image(source: ImageSource) -> tuple[bytes, str | None]:
    """The bytes of an image source, and its file name when it has one."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.read_bytes(), path.name
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None
    data = source.read()
    name = getattr(source, "name", None)
    return bytes(data), Path(name).name if isinstance(name, str) else None


_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_image_type(data: bytes) -> str:
    """The media type of an image file's bytes; octet-stream when unknown,
    which the service accepts and identifies itself."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    return "application/octet-stream"


class _Form:
    """A multipart/form-data body, built part by part."""

    def __init__(self) -> None:
        self.boundary = uuid.uuid4().hex
        self.parts: list[bytes] = []

    def add_field(self, name: str, value: str) -> None:
        head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
        self._add(head.encode(), value.encode())

    def add_file(self, name: str, data: bytes, filename: str) -> None:
        # A quote or line break would end the header early; neither matters
        # to the service, which reads no file names.
        safe = "".join(c for c in filename if c not in '"\r\n\\') or "image"
        head = (
            f'Content-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
            f"Content-Type: {sniff_image_type(data)}\r\n\r\n"
        )
        self._add(head.encode(), data)

    def _add(self, head: bytes, data: bytes) -> None:
        self.parts.append(b"--" + self.boundary.encode() + b"\r\n" + head + data)

    def finish(self) -> tuple[bytes, str]:
        closing = b"--" + self.boundary.encode() + b"--\r\n"
        body = b"\r\n".join([*self.parts, closing])
        return body, f"multipart/form-data; boundary={self.boundary}"


# Answers and errors ----------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """A raw answer: status, headers, body, and how long it took."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    # Seconds from sending the request to receiving the last byte of the
    # answer, measured here: what a caller waits.
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.status < 400

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def server_timing(self) -> dict[str, float]:
        """The ``Server-Timing`` durations by name, in milliseconds."""
        return parse_server_timing(self.headers.get("Server-Timing", ""))


class ProblemError(Exception):
    """The service answered with an error (4xx or 5xx).

    ``type``, ``title``, ``status`` and ``detail`` are the members of the
    problem details body; ``slug`` is the last part of ``type``
    (``"no-face"``), the thing to branch on. An error body that is not
    problem details (a proxy's page, say) is kept in ``detail`` as text.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        self.status = response.status
        problem = _problem_of(response)
        self.type = str(problem.get("type", "about:blank"))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{self.status} {self.slug}: {self.detail}")

    @property
    def slug(self) -> str:
        return self.type.rsplit("/", 1)[-1]

    @property
    def retry_after(self) -> float | None:
        """Seconds the service asked to wait before retrying, if it did."""
        value = self.response.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:  # an HTTP date; the service never sends one
            return None


def _problem_of(response: Response) -> dict[str, Any]:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        return problem
    text = response.body.decode("utf-8", "replace").strip()
    return {"status": response.status, "detail": text[:500]}


def parse_server_timing(value: str) -> dict[str, float]:
    """``"decode;dur=3.1, total;dur=9"`` -> ``{"decode": 3.1, "total": 9.0}``.

    Metrics without ``dur`` count as 0; a name given twice adds up.
    Quoted ``desc`` values may hold commas and semicolons.
    """
    durations: dict[str, float] = {}
    for metric in _split_unquoted(value, ","):
        name, *parameters = (part.strip() for part in _split_unquoted(metric, ";"))
        if not name:
            continue
        duration = 0.0
        for parameter in parameters:
            key, _, raw = parameter.partition("=")
            if key.strip().lower() == "dur":
                try:
                    duration = float(raw.strip().strip('"'))
                except ValueError:
                    duration = 0.0
        durations[name] = durations.get(name, 0.0) + duration
    return durations


def _split_unquoted(text: str, separator: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for character in text:
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(character)
    pieces.append("".join(current))
    return pieces


# The client ------------------------------------------------------------------


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        # Requests and answers are single writes; waiting to coalesce them
        # with more data (Nagle) would only add latency.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _SecureConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class VisionClient:
    """The service at ``url``, over one kept-alive connection.

    ``api_key`` is sent in ``X-API-Key`` on every request when given.
    ``timeout`` bounds, in seconds, connecting and each wait for data.
    ``last_response`` is the raw answer to the latest call.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        self.url = url.rstrip("/")
        # A service behind a proxy may live below a path prefix.
        self._prefix = parts.path.rstrip("/")
        connection_class = _Connection if parts.scheme == "http" else _SecureConnection
        self._connection = connection_class(parts.hostname, parts.port, timeout=timeout)
        self._headers = {"User-Agent": USER_AGENT}
        if api_key:
            self._headers[API_KEY_HEADER] = api_key
        self.last_response: Response | None = None

    def __enter__(self) -> VisionClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        self._connection.close()

    # Inference

    def classify(
        self, images: Images, *, top_k: int | None = None, model: str | None = None
    ) -> Classification:
        """ImageNet classes of one image or several, ``top_k`` each (default
        5), by ``model`` (default: the service's default classifier)."""
        answer = self.call(classify_call(images, top_k=top_k, model=model))
        return cast(Classification, answer)

    def detect(
        self,
        images: Images,
        *,
        attributes: str | Iterable[str] | None = None,
        min_face_size: int | None = None,
        max_faces: int | None = None,
    ) -> Detection:
        """Faces of each image, largest first; ``attributes=["age",
        "gender"]`` adds the estimates. An image without a face raises
        ``ProblemError`` with slug ``no-face``."""
        call = detect_call(
            images,
            attributes=attributes,
            min_face_size=min_face_size,
            max_faces=max_faces,
        )
        return cast(Detection, self.call(call))

    def embed(
        self,
        images: Images,
        *,
        min_face_size: int | None = None,
        max_faces: int | None = None,
    ) -> Embeddings:
        """Faces of each image with their unit-length embeddings."""
        call = embed_call(images, min_face_size=min_face_size, max_faces=max_faces)
        return cast(Embeddings, self.call(call))

    def verify(
        self,
        first: FaceSource,
        second: FaceSource,
        *,
        threshold: float | None = None,
        face1: int | None = None,
        face2: int | None = None,
        min_face_size: int | None = None,
    ) -> Verification:
        """Whether two faces are one person. Each side is an image (its
        largest face, or face ``face1``/``face2`` counted from the largest)
        or an embedding from ``embed``."""
        call = verify_call(
            first,
            second,
            threshold=threshold,
            face1=face1,
            face2=face2,
            min_face_size=min_face_size,
        )
        return cast(Verification, self.call(call))

    # Models and probes

    def models(self) -> list[ModelInfo]:
        """Every model the service runs, with its source and providers."""
        answer = self.call(Call("GET", "/v1/models"))
        return cast(list[ModelInfo], answer["models"])

    def health(self) -> dict[str, str]:
        """``{"status": "ok"}`` while the service answers at all."""
        return cast(dict[str, str], self.call(Call("GET", "/healthz")))

    def ready(self) -> bool:
        """Whether the models are loaded and warmed up (``/readyz``)."""
        response = self.send(Call("GET", "/readyz"))
        if response.status == 503:
            return False
        if not response.ok:
            raise ProblemError(response)
        return True

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Wait until ``/readyz`` says ready, also while the service starts
        and refuses connections; ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.ready():
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.url} was not ready within {timeout:g} s")
            time.sleep(interval)

    # Raw requests

    def call(self, call: Call) -> Any:
        """Send ``call`` and return its JSON answer; raise ``ProblemError``
        for a 4xx or 5xx answer."""
        response = self.send(call)
        if not response.ok:
            raise ProblemError(response)
        return response.json()

    def send(self, call: Call) -> Response:
        """Send ``call`` and return the answer, whatever its status."""
        headers = dict(self._headers)
        if call.content_type is not None:
            headers["Content-Type"] = call.content_type
        connection = self._connection
        # http.client reconnects by itself when it has no socket; one it has
        # may have been closed by the server since the last answer.
        reused = connection.sock is not None
        try:
            response = self._exchange(call, headers)
        except _STALE_CONNECTION:
            connection.close()
            if not reused:
                raise
            response = self._exchange(call, headers)
        self.last_response = response
        return response

    def _exchange(self, call: Call, headers: dict[str, str]) -> Response:
        connection = self._connection
        started = time.perf_counter()
        try:
            connection.request(
                call.method, self._prefix + call.target, call.body, headers
            )
            answer = connection.getresponse()
            body = answer.read()
        except BaseException:
            # The connection is in an unknown state: half a request or
            # answer may be on it. The next call starts a fresh one.
            connection.close()
            raise
        elapsed = time.perf_counter() - started
        return Response(answer.status, answer.headers, body, elapsed)
