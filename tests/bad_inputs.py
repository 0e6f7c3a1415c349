"""The bad-input corpus: crafted requests, each with what the client must get.

The inputs are made here, in memory, from Pillow images and byte surgery on
good files; nothing is read from disk. Each ``BadInput`` names the routes it
is sent to and, for each, the expected status and problem slug (``None`` for
a success). ``tests/test_corpus.py`` sends them; the exact bodies of the
simpler mistakes are asserted in ``tests/test_errors.py``.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import encode, photo

CLASSIFY = "/v1/classify"
DETECT = "/v1/faces/detect"
VERIFY = "/v1/faces/verify"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
EXIF_IMAGE_DESCRIPTION = 0x010E
# The body limit of the app the over-the-limit case is sent to.
SMALL_BODY_LIMIT = 64 * 1024

Expected = tuple[int, str | None]


@dataclass(frozen=True)
class BadInput:
    """One request and the (status, slug) each route must answer it with."""

    name: str
    request: dict[str, Any]
    expected: dict[str, Expected]
    small_body_limit: bool = field(default=False)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_bomb() -> bytes:
    """A PNG of about 150 bytes declaring 50000x50000 RGB pixels."""
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(100)))
        + png_chunk(b"IEND", b"")
    )


def gif_bomb() -> bytes:
    """A GIF of a few dozen bytes whose screen and frame are 50000x50000."""
    size = struct.pack("<HH", 50_000, 50_000)
    return (
        b"GIF89a"
        + size
        + b"\x80\x00\x00"  # a global colour table of two entries
        + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c\x00\x00\x00\x00"  # an image descriptor at (0, 0)
        + size
        + b"\x00\x02\x02\x44\x01\x00\x3b"  # LZW data, then the trailer
    )


def cat_jpeg() -> bytes:
    return encode(photo("chelsea"), "JPEG", quality=85)


def cat_png() -> bytes:
    return encode(Image.fromarray(photo("chelsea")).resize((128, 85)), "PNG")


def with_byte_flipped(data: bytes, offset: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def png_with_huge_chunk_length(data: bytes) -> bytes:
    """The IDAT chunk claims 2 GB, far more than the file holds."""
    start = data.index(b"IDAT") - 4
    return data[:start] + struct.pack(">I", 0x7FFF_FFFF) + data[start + 4 :]


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.paste(1, (0, 0, 16, 32))
    return encode(image, "PNG", transparency=1)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "lime")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    picture = Image.fromarray(photo("chelsea")).resize((90, 60))
    return encode(picture, "JPEG", exif=exif)


def jpeg_with_huge_exif() -> bytes:
    """EXIF of about 60 KB (one APP1 segment holds at most 64 KB)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    exif[EXIF_IMAGE_DESCRIPTION] = "x" * 60_000
    data = encode(Image.new("RGB", (40, 30), "blue"), "JPEG", exif=exif)
    assert len(data) > 60_000
    return data


def multipart(**fields: Any) -> dict[str, Any]:
    """Request options for a form; bytes become file uploads."""
    data = {
        name: (io.BytesIO(value), f"{name}.jpg") if isinstance(value, bytes) else value
        for name, value in fields.items()
    }
    return {"data": data, "content_type": "multipart/form-data"}


def raw(data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    return {"data": data, "content_type": content_type}


def image_case(name: str, data: bytes, status: int, slug: str | None) -> BadInput:
    """A raw image sent to classify and detect, which decode it alike."""
    detect = (status, slug)
    if status == 200:
        # A decodable image without a face: detect finds nothing in it.
        detect = (422, "no-face")
    return BadInput(name, raw(data), {CLASSIFY: (status, slug), DETECT: detect})


def build_corpus() -> list[BadInput]:
    jpeg, png = cat_jpeg(), cat_png()
    invalid = (400, "invalid-image")
    fine = (200, None)
    cases = [
        image_case("empty-body", b"", 400, "empty-body"),
        image_case("text-as-jpeg", b"Hello, I am a JPEG, honestly.", *invalid),
        image_case(
            "jpeg-signature-then-text", b"\xff\xd8\xff" + b"text" * 50, *invalid
        ),
    ]
    for keep in (3, 20, 160, 600, len(jpeg) // 3, len(jpeg) - 2):
        cases.append(image_case(f"jpeg-truncated-at-{keep}", jpeg[:keep], *invalid))
    cases += [
        image_case("png-signature-only", PNG_SIGNATURE, *invalid),
        image_case("png-bad-ihdr-crc", with_byte_flipped(png, 29), *invalid),
        image_case("png-bad-ihdr-width", with_byte_flipped(png, 16), *invalid),
        # Pillow checks no CRC of pixel data and reads a chunk only as far
        # as the file goes; the pixels themselves are intact, so both of
        # these damaged files are served.
        image_case(
            "png-bad-idat-crc",
            with_byte_flipped(png, png.index(b"IEND") - 5),
            *fine,
        ),
        image_case("png-huge-idat-length", png_with_huge_chunk_length(png), *fine),
        image_case(
            "png-damaged-idat",
            with_byte_flipped(png, png.index(b"IDAT") + 12),
            *invalid,
        ),
        image_case("png-truncated-in-idat", png[: len(png) // 2], *invalid),
        image_case("png-bomb-50000x50000", png_bomb(), 413, "image-too-large"),
        image_case("gif-bomb-50000x50000", gif_bomb(), 413, "image-too-large"),
        image_case("one-pixel", encode(Image.new("RGB", (1, 1), "red"), "PNG"), *fine),
        image_case(
            "20000x1", encode(Image.new("RGB", (20_000, 1), "red"), "PNG"), *fine
        ),
        image_case("1x20000", encode(Image.new("L", (1, 20_000), 128), "PNG"), *fine),
        image_case("cmyk-jpeg", cmyk_jpeg(), *fine),
        image_case("16-bit-png", sixteen_bit_png(), *fine),
        image_case("palette-with-transparency", palette_png_with_transparency(), *fine),
        image_case("animated-gif", animated_gif(), *fine),
        image_case("huge-exif", jpeg_with_huge_exif(), *fine),
    ]
    cases += [
        image_case(f"exif-orientation-{value}", jpeg_with_orientation(value), *fine)
        for value in range(1, 9)
    ]
    cases += list(request_cases(jpeg))
    return cases


def request_cases(jpeg: bytes) -> Iterator[BadInput]:
    """Mistakes in the request around the image: form, JSON, type, options."""
    both = (CLASSIFY, DETECT)
    missing = (400, "missing-image")
    invalid_parameter = (400, "invalid-parameter")

    def to(routes: tuple[str, ...], expected: Expected) -> dict[str, Expected]:
        return dict.fromkeys(routes, expected)

    yield BadInput("form-without-image", multipart(top_k="3"), to(both, missing))
    yield BadInput("form-field-images", multipart(images=jpeg), to(both, missing))
    yield BadInput("form-field-Image", multipart(Image=jpeg), to(both, missing))
    yield BadInput(
        "form-image-empty-file", multipart(image=b""), to(both, (400, "invalid-image"))
    )
    yield BadInput(
        "json-base64-garbage",
        {"json": {"image": "***not//base64***"}},
        to(both, (400, "invalid-base64")),
    )
    yield BadInput(
        "json-base64-of-text",
        {"json": {"image": base64.b64encode(b"plain text").decode()}},
        to(both, (400, "invalid-image")),
    )
    yield BadInput(
        "json-empty-image",
        {"json": {"image": ""}},
        to(both, (400, "empty-body")),
    )
    yield BadInput(
        "json-truncated",
        raw(b'{"image": "/9j/4AAQ', "application/json"),
        to(both, (400, "invalid-json")),
    )
    yield BadInput(
        "json-not-utf8",
        raw(b'{"image": "\xff\xfe"}', "application/json"),
        to(both, (400, "invalid-json")),
    )
    yield BadInput(
        "json-number-too-long",
        raw(b'{"image": "", "top_k": ' + b"9" * 5000 + b"}", "application/json"),
        to(both, (400, "invalid-json")),
    )
    yield BadInput(
        "json-string",
        raw(b'"just a string"', "application/json"),
        to(both, (400, "invalid-json")),
    )
    for content_type in (
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
    ):
        yield BadInput(
            f"content-type-{content_type}",
            raw(jpeg, content_type),
            to(both, (415, "unsupported-media-type")),
        )
    yield BadInput(
        "body-over-the-limit",
        raw(bytes(SMALL_BODY_LIMIT + 1)),
        to(both, (413, "body-too-large")),
        small_body_limit=True,
    )
    for query in ("top_k=-1", "top_k=1000", "top_k=2.5", "top_k=%20", "top_k=five"):
        yield BadInput(
            f"query-{query}",
            {**raw(jpeg), "query_string": query},
            {CLASSIFY: invalid_parameter},
        )
    detect_queries = (
        "min_face_size=5",
        "min_face_size=5000",
        "min_face_size=big",
        "max_faces=0",
        "max_faces=101",
        "max_faces=1e2",
        "attributes=height",
    )
    for query in detect_queries:
        yield BadInput(
            f"query-{query}",
            {**raw(jpeg), "query_string": query},
            {DETECT: invalid_parameter},
        )
    verify_queries = (
        "threshold=-1",
        "threshold=4.5",
        "threshold=nan",
        "threshold=1e400",
        "threshold=close",
        "face1=-1",
        "face1=100",
        "face1=first",
        "face2=0.5",
        "min_face_size=11",
    )
    for query in verify_queries:
        yield BadInput(
            f"verify-query-{query}",
            {**multipart(image1=jpeg, image2=jpeg), "query_string": query},
            {VERIFY: invalid_parameter},
        )
    yield BadInput(
        "verify-embedding-too-large-numbers",
        {"json": {"embedding1": [10**400], "embedding2": [1.0]}},
        {VERIFY: invalid_parameter},
    )
    yield BadInput(
        "verify-embedding-number-too-long",
        multipart(embedding1="[" + "9" * 5000 + "]", embedding2="[1]"),
        {VERIFY: invalid_parameter},
    )
    yield BadInput(
        "verify-threshold-too-large-for-a-float",
        {"json": {"embedding1": [1.0], "embedding2": [1.0], "threshold": 10**400}},
        {VERIFY: invalid_parameter},
    )
    # Huge but finite numbers make a valid embedding: only the direction counts.
    yield BadInput(
        "verify-embeddings-of-huge-numbers",
        {"json": {"embedding1": [1e300] * 512, "embedding2": [-1e300] * 512}},
        {VERIFY: (200, None)},
    )
    yield BadInput(
        "verify-embedding-not-numbers",
        multipart(embedding1="[1, 2", embedding2="[1]"),
        {VERIFY: invalid_parameter},
    )
    yield BadInput(
        "verify-image1-missing",
        multipart(image2=jpeg),
        {VERIFY: missing},
    )


CORPUS = build_corpus()
