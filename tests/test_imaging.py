"""Decoding bytes into upright RGB images: formats, orientation, modes, limits.

Every image is made here, with Pillow and numpy or from scikit-image's
sample photos, so each test states the pixels it expects. Damaged files are
made by cutting or flipping the bytes of good ones, and the decompression
bomb is a PNG header written byte by byte.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import encode, photo
from PIL import Image, ImageFile

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.imaging import decode_image, to_rgb

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)

ROOMY_PIXEL_LIMIT = 100_000_000
SUPPORTED = "supported formats are JPEG, PNG, WEBP, GIF, BMP"
EXIF_ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode(data: bytes, **options: Any) -> Image.Image:
    options.setdefault("max_pixels", ROOMY_PIXEL_LIMIT)
    return decode_image(data, **options)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and the CRC of type and body."""
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


# --- formats ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_each_supported_format_decodes_to_rgb_at_full_size(fmt: str) -> None:
    cat = photo("chelsea")
    height, width = cat.shape[:2]

    image = decode(encode(cat, fmt))

    assert image.mode == "RGB"
    assert image.size == (width, height)
    # Lossy and palette formats change pixels a little, never the picture.
    assert np.abs(pixels(image) - cat).mean() < 12


def test_animated_gif_decodes_to_its_first_frame() -> None:
    first, second = Image.new("RGB", (20, 10), RED), Image.new("RGB", (20, 10), GREEN)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2

    image = decode(data)

    assert image.size == (20, 10)
    assert (pixels(image) == RED).all()


def test_tiff_is_an_unsupported_media_type() -> None:
    data = encode(photo("chelsea"), "TIFF")

    with pytest.raises(UnsupportedMediaType) as raised:
        decode(data, label="image 2")

    assert raised.value.detail == f"image 2 is TIFF; {SUPPORTED}."


def test_random_bytes_are_an_invalid_image() -> None:
    noise = np.random.default_rng(7).bytes(4096)

    with pytest.raises(InvalidImage) as raised:
        decode(noise)

    assert raised.value.detail == f"image is not a recognised image; {SUPPORTED}."


def test_no_bytes_are_an_invalid_image() -> None:
    with pytest.raises(InvalidImage) as raised:
        decode(b"")

    assert raised.value.detail == "image is empty (0 bytes)."


# --- EXIF orientation --------------------------------------------------------

# How a camera stores an upright picture under each EXIF orientation; the
# tag tells the viewer which transform undoes it (6: turn 90 degrees
# clockwise to view, 8: turn 90 degrees anticlockwise, 5 and 7: mirrored).
STORED_UNDER_ORIENTATION: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda upright: upright,
    2: np.fliplr,
    3: lambda upright: np.rot90(upright, 2),
    4: np.flipud,
    5: lambda upright: upright.transpose(1, 0, 2),
    6: lambda upright: np.rot90(upright, 1),
    7: lambda upright: np.rot90(upright.transpose(1, 0, 2), 2),
    8: lambda upright: np.rot90(upright, -1),
}


def upright_picture() -> np.ndarray:
    """64 wide, 48 high, blue, with a red 16x16 block in the top-left corner.

    The block is aligned to JPEG's 16-pixel blocks in every orientation, so
    compression leaves its colour clean.
    """
    picture = np.zeros((48, 64, 3), dtype=np.uint8)
    picture[:, :] = BLUE
    picture[:16, :16] = RED
    return picture


@pytest.mark.parametrize("orientation", sorted(STORED_UNDER_ORIENTATION))
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = STORED_UNDER_ORIENTATION[orientation](upright_picture())
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    data = encode(np.ascontiguousarray(stored), "JPEG", quality=95, exif=exif)
    if orientation >= 5:
        assert Image.open(io.BytesIO(data)).size == (48, 64)

    image = decode(data)

    assert image.size == (64, 48)
    corners = pixels(image)[[4, 4, -5, -5], [4, -5, 4, -5]]
    top_left, top_right, bottom_left, bottom_right = corners
    assert np.abs(top_left - RED).max() < 40
    for corner in (top_right, bottom_left, bottom_right):
        assert np.abs(corner - BLUE).max() < 40


# --- modes -------------------------------------------------------------------


def png_of(image: Image.Image, **options: Any) -> bytes:
    data = encode(image, "PNG", **options)
    assert Image.open(io.BytesIO(data)).mode == image.mode
    return data


def palette_image() -> Image.Image:
    """Two pixels: palette index 0 (red) and 1 (blue)."""
    image = Image.new("P", (2, 1), 0)
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    return image


def one_bit_image() -> Image.Image:
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    return image


def rgba_image() -> Image.Image:
    image = Image.new("RGBA", (3, 1))
    image.putdata([(*RED, 255), (*BLUE, 0), (*BLACK, 128)])
    return image


def la_image() -> Image.Image:
    image = Image.new("LA", (2, 1))
    image.putdata([(100, 255), (0, 0)])
    return image


def grey_16_bit(values: list[int]) -> Image.Image:
    return Image.fromarray(np.array([values], dtype=np.uint16))


MODE_CASES = [
    pytest.param(
        lambda: png_of(Image.fromarray(np.array([[0, 128, 255]], np.uint8))),
        [BLACK, (128, 128, 128), WHITE],
        id="greyscale-L",
    ),
    pytest.param(lambda: png_of(one_bit_image()), [BLACK, WHITE], id="1-bit"),
    pytest.param(lambda: png_of(palette_image()), [RED, BLUE], id="palette-P"),
    pytest.param(
        lambda: png_of(palette_image(), transparency=1),
        [RED, WHITE],
        id="palette-with-transparency",
    ),
    pytest.param(
        lambda: png_of(rgba_image()),
        [RED, WHITE, (127, 127, 127)],
        id="RGBA-onto-white",
    ),
    pytest.param(lambda: png_of(la_image()), [(100, 100, 100), WHITE], id="LA"),
    pytest.param(
        lambda: png_of(grey_16_bit([65535, 32768, 0])),
        [WHITE, (128, 128, 128), BLACK],
        id="16-bit-greyscale",
    ),
    pytest.param(
        lambda: png_of(grey_16_bit([255, 0])),
        [(1, 1, 1), BLACK],
        id="dark-16-bit-greyscale",
    ),
]


@pytest.mark.parametrize(("make_file", "expected"), MODE_CASES)
def test_every_mode_becomes_rgb_with_the_same_colours(
    make_file: Callable[[], bytes], expected: list[tuple[int, int, int]]
) -> None:
    image = decode(make_file())

    assert image.mode == "RGB"
    assert pixels(image)[0].tolist() == [list(colour) for colour in expected]


def test_cmyk_jpeg_becomes_rgb() -> None:
    red_in_cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    data = encode(red_in_cmyk, "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    image = decode(data)

    assert image.mode == "RGB"
    assert np.abs(pixels(image) - RED).max() <= 2


def test_to_rgb_returns_an_rgb_image_unchanged() -> None:
    image = Image.new("RGB", (3, 2), RED)

    assert to_rgb(image) is image


def test_to_rgb_reads_small_values_of_mode_i_as_eight_bit() -> None:
    image = Image.fromarray(np.array([[200, 0]], dtype=np.int32))
    assert image.mode == "I"

    assert pixels(to_rgb(image))[0].tolist() == [[200, 200, 200], list(BLACK)]


# --- pixel limit -------------------------------------------------------------


def test_an_image_over_the_pixel_limit_is_too_large() -> None:
    data = encode(Image.new("RGB", (200, 100), RED), "PNG")

    with pytest.raises(ImageTooLarge) as raised:
        decode(data, max_pixels=19_999)

    assert raised.value.detail == "image is 200x100 = 20000 pixels; the limit is 19999."


def test_an_image_at_the_pixel_limit_is_decoded() -> None:
    data = encode(Image.new("RGB", (200, 100), RED), "PNG")

    assert decode(data, max_pixels=20_000).size == (200, 100)


def decompression_bomb() -> bytes:
    """A PNG of 147 bytes whose header declares 50000x50000 RGB pixels."""
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(100)))
        + png_chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow allocates pixel memory outside Python's allocator, where
    # tracemalloc cannot see it, so the test also fails any pixel loading.
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: loads.append(1))
    data = decompression_bomb()

    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge) as raised:
            decode(data, max_pixels=50_000_000)
        seconds = time.perf_counter() - started
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert raised.value.detail == (
        "image is 50000x50000 = 2500000000 pixels; the limit is 50000000."
    )
    assert loads == []
    assert peak_bytes < 10_000_000
    assert seconds < 1.0


# --- draft decoding of large JPEGs ---------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    coffee = Image.fromarray(photo("coffee")).resize((2000, 1600))
    return encode(coffee, "JPEG", quality=90)


def test_a_large_jpeg_decodes_smaller_but_no_shorter_than_min_side(
    large_jpeg: bytes,
) -> None:
    image = decode(large_jpeg, min_side=256)

    width, height = image.size
    assert width < 2000 and height < 1600
    assert min(width, height) >= 256
    assert width / height == pytest.approx(2000 / 1600, rel=0.01)


def test_a_large_jpeg_decodes_at_full_size_without_min_side(
    large_jpeg: bytes,
) -> None:
    assert decode(large_jpeg).size == (2000, 1600)


def test_min_side_leaves_other_formats_at_full_size() -> None:
    data = encode(Image.new("RGB", (2000, 1600), RED), "PNG")

    assert decode(data, min_side=256).size == (2000, 1600)


# --- damaged files -------------------------------------------------------------


@pytest.fixture(scope="module")
def cat_jpeg() -> bytes:
    return encode(photo("chelsea"), "JPEG")


@pytest.mark.parametrize(
    ("keep", "detail"),
    [
        pytest.param(
            lambda size: 10,
            "image could not be read: the data is truncated.",
            id="in-the-header",
        ),
        pytest.param(
            lambda size: 300,
            "image could not be read: the data is truncated.",
            id="in-the-tables",
        ),
        pytest.param(
            lambda size: size // 2,
            "image could not be decoded: the data is truncated.",
            id="mid-scan",
        ),
        pytest.param(
            lambda size: size - 2,
            "image could not be decoded: the data is truncated.",
            id="without-end-marker",
        ),
    ],
)
def test_a_truncated_jpeg_is_an_invalid_image(
    cat_jpeg: bytes, keep: Callable[[int], int], detail: str
) -> None:
    with pytest.raises(InvalidImage) as raised:
        decode(cat_jpeg[: keep(len(cat_jpeg))])

    assert raised.value.detail == detail


@pytest.fixture(scope="module")
def cat_png() -> bytes:
    return encode(photo("chelsea"), "PNG")


def test_a_png_with_a_bad_header_checksum_is_an_invalid_image(
    cat_png: bytes,
) -> None:
    # Signature (8) + IHDR length, type and body (4 + 4 + 13): its CRC is next.
    damaged = bytearray(cat_png)
    damaged[29] ^= 0xFF

    with pytest.raises(InvalidImage) as raised:
        decode(bytes(damaged))

    assert raised.value.detail == (
        "image looks like a PNG file but is damaged or truncated."
    )


def test_a_png_with_damaged_pixel_data_is_an_invalid_image(cat_png: bytes) -> None:
    damaged = bytearray(cat_png)
    start = cat_png.index(b"IDAT") + 4
    damaged[start + 10 : start + 20] = bytes(10)

    with pytest.raises(InvalidImage) as raised:
        decode(bytes(damaged))

    # The rest of the sentence is the decoder's own account of the damage.
    assert raised.value.detail.startswith("image could not be decoded: ")
    assert "broken" in raised.value.detail
