"""Reading an image file the way every path does (training, `crossback predict`, the Classify RPC),
with its cost known before any pixel is decoded.

``open_image`` reads the header only: the format and the declared size. A JPEG is then set to decode
at the smallest of 1/1, 1/2, 1/4 or 1/8 scale that still covers the model's view (``Image.draft``), so a
12-megapixel photo for a 32 x 32 model decodes about 0.2 megapixels; other formats decode whole.
``decoded_pixels`` says how many pixels that decode touches, which is what a caller budgets. An image
that declares more than ``MAX_DECLARED_PIXELS`` (far beyond any camera frame) is refused unread.
Every failure is an ``ImageProblem`` whose message says why, for the caller to name the file or item.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from crossback.config.data import View

MAX_DECLARED_PIXELS = 8192 * 8192  # 67 megapixels; phone and camera frames are 12-50
# a decoded image and its converted copy (RGBA + RGB at most), per pixel: what a decode holds at its peak
HELD_BYTES_PER_PIXEL = 8
_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, TypeError, SyntaxError, EOFError)


class ImageProblem(ValueError):
    """An image cannot be read within the bounds; the message says why."""


def _mode(view: View) -> str:
    return "L" if view.channels == 1 else "RGB"


def open_image(source: bytes | Path, view: View) -> Image.Image:
    """The image's header, its decode scale set for ``view``; no pixel is decoded yet. The caller closes
    it (a ``with`` block) once ``to_array`` has read it."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 megapixels and refuses above 179; ours refuses below both
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except Image.DecompressionBombError:
        raise ImageProblem(f"declares more than {MAX_DECLARED_PIXELS} pixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image file of a format this build reads (PNG, JPEG, GIF, BMP, WebP, ...)") from None
    except OSError as exc:
        if not isinstance(source, (bytes, bytearray)) and exc.strerror:  # the file itself: missing, unreadable
            raise ImageProblem(exc.strerror.lower()) from None
        raise ImageProblem(f"not a readable image ({_why(exc)})") from None
    except _UNREADABLE as exc:
        raise ImageProblem(f"not a readable image ({_why(exc)})") from None
    width, height = image.size
    if width * height > MAX_DECLARED_PIXELS:
        image.close()
        raise ImageProblem(f"declares {width} x {height} pixels; at most {MAX_DECLARED_PIXELS} "
                           "(a decompression bomb?)")
    if width < 1 or height < 1:
        image.close()
        raise ImageProblem(f"declares {width} x {height} pixels")
    try:
        image.draft(_mode(view), (view.image_size, view.image_size))  # JPEG only; others ignore it
    except _UNREADABLE as exc:
        image.close()
        raise ImageProblem(f"not a readable image ({_why(exc)})") from None
    return image


def decoded_pixels(image: Image.Image) -> int:
    """Pixels ``to_array`` decodes for an image from ``open_image`` (after its draft scale)."""
    return math.prod(image.size)


def to_array(image: Image.Image, view: View) -> np.ndarray:
    """The image decoded, converted to the view's channels and resized to its size: (S, S, C) uint8."""
    try:
        image = image.convert(_mode(view))
    except _UNREADABLE as exc:
        raise ImageProblem(f"cannot be decoded ({_why(exc)})") from None
    if image.size != (view.image_size, view.image_size):
        image = image.resize((view.image_size, view.image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
