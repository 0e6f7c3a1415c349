"""Bytes to an RGB image: decode, orient, convert, within limits.

Accepts JPEG, PNG, WebP, GIF (first frame) and BMP. The pixel limit is
checked on the header, before any pixel is decoded, so a decompression bomb
(a small file declaring billions of pixels) costs nothing. Large JPEGs are
decoded at a reduced scale (libjpeg's DCT scaling, "draft" mode) when the
caller needs fewer pixels, which is several times faster than a full decode
followed by a resize.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.metrics import IMAGES_DECODED

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# The service enforces its own pixel limit (``max_pixels``) before decoding;
# Pillow's global guard would only warn or fail at a different threshold.
Image.MAX_IMAGE_PIXELS = None

WHITE = (255, 255, 255)

# How each supported format's files begin (WebP aside: RIFF, size, WEBP).
# A file that begins like one but will not open is damaged, not foreign.
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


def decode_image(
    data: bytes, *, max_pixels: int, min_side: int = 0, label: str = "image"
) -> Image.Image:
    """Decode ``data`` into an upright RGB image.

    ``min_side`` is the shortest side the caller will use; a JPEG may be
    decoded smaller than its full size as long as both sides stay at least
    that long. ``label`` names the image in error messages ("image 2").
    """
    if not data:
        raise InvalidImage(f"{label} is empty (0 bytes).")
    image = _open(data, label)

    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{label} is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}."
        )
    if width < 1 or height < 1:
        raise InvalidImage(f"{label} has no pixels ({width}x{height}).")

    file_format = str(image.format)
    try:
        if file_format == "JPEG" and min_side and min(width, height) >= 2 * min_side:
            image.draft("RGB", (min_side, min_side))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(image)
    except (ImageTooLarge, InvalidImage):
        raise
    except Exception as error:
        # Decoders signal damaged data with many exception types (OSError
        # for truncation, SyntaxError, ValueError, struct and zlib errors);
        # all of them mean the client sent a broken file.
        logger.debug("decoding %s failed: %r", label, error)
        raise InvalidImage(f"{label} could not be decoded: {_reason(error)}.") from None
    IMAGES_DECODED.labels(file_format.lower()).inc()
    return rgb


def _open(data: bytes, label: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        pass
    except Exception as error:
        raise InvalidImage(f"{label} could not be read: {_reason(error)}.") from None

    claimed = _signature_format(data)
    if claimed:
        raise InvalidImage(
            f"{label} looks like a {claimed} file but is damaged or truncated."
        )

    # Tell an image of a format we do not take from bytes that are no image.
    try:
        other = Image.open(io.BytesIO(data)).format
    except Exception:
        other = None
    if other:
        raise UnsupportedMediaType(
            f"{label} is {other}; supported formats are {', '.join(SUPPORTED_FORMATS)}."
        )
    raise InvalidImage(
        f"{label} is not a recognised image; supported formats are "
        f"{', '.join(SUPPORTED_FORMATS)}."
    )


def _signature_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` begins with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent pixels are composited onto white, as a viewer shows them;
    16-bit greyscale is scaled down rather than clipped at 255.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        # The 16-bit modes span 0..65535 however dark the picture; mode I
        # has no fixed range, so values that fit in a byte are read as such.
        sixteen_bit = image.mode != "I" or pixels.max(initial=0) > 255
        peak = 65535.0 if sixteen_bit else 255.0
        grey = np.clip(np.rint(pixels * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _reason(error: Exception) -> str:
    text = str(error).strip().rstrip(".")
    if "truncated" in text.lower():
        return "the data is truncated"
    return text or type(error).__name__
