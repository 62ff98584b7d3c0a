"""Opening image bytes from outside safely, without torch (data_prep's workers import it too).

Bytes are opened only as one of `ALLOWED_FORMATS`, each decoded inside Pillow by its own code,
none by an external program:
- JPEG, PNG, WEBP: what web images and the project's shards are;
- GIF (first frame): common on the web, a plain LZW decoder;
- BMP, TIFF: scanned and archival collections.
Everything else Pillow could open is refused as `format`: EPS and PostScript run Ghostscript,
PDF, PSD, ICO, and the rarely used formats whose decoders see little hostile input.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb bound: width x height above it is refused before decoding."""


FOREIGN_MAGIC = (b"%PDF", b"%!PS", b"\xc5\xd0\xd3\xc6", b"8BPS", b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")
"""Starts of well-known documents and icons (PDF, PostScript/EPS, PSD, ICO/CUR), named `format`
even where Pillow has no reader for them."""


class ImageError(ValueError):
    """Bytes that must not or cannot be used as an image; `reason` is the counted name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _sniff_allowed(data: bytes) -> bool:
    """Whether the bytes start like one of ALLOWED_FORMATS (Pillow is then asked for that one)."""
    return (data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n"
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or data[:6] in (b"GIF87a", b"GIF89a")
            or data[:2] == b"BM" or data[:4] in (b"II*\x00", b"MM\x00*"))


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> PILImage.Image:
    """Open (not decode) `data` as an allowed format whose size is within `max_pixels`; raises
    ImageError('format' | 'not_an_image' | 'decompression_bomb')."""
    if not data:
        raise ImageError("not_an_image", "empty")
    try:
        img = PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except PILImage.DecompressionBombError as err:
        raise ImageError("decompression_bomb", str(err)) from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image" if _sniff_allowed(data) or not _other_format(data) else "format") from None
    except Exception as err:  # noqa: BLE001 - any codec error on hostile bytes is one bad image
        raise ImageError("not_an_image", type(err).__name__) from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("not_an_image", "no pixels")
    if w * h > max_pixels:
        raise ImageError("decompression_bomb", f"{w}x{h}")
    return img


def _other_format(data: bytes) -> bool:
    """Whether some Pillow format outside the allow-list would claim the bytes (checked by the
    plugins' own cheap `_accept` prefix tests only: nothing is opened)."""
    head = data[:16]
    if head.startswith(FOREIGN_MAGIC):
        return True
    PILImage.init()
    for name, (_, accept) in PILImage.OPEN.items():
        if name not in ALLOWED_FORMATS and accept is not None:
            try:
                if accept(head):
                    return True
            except Exception:  # noqa: BLE001
                continue
    return False


def to_rgb(img: PILImage.Image) -> PILImage.Image:
    """A decoded image as RGB, as it is meant to be seen: EXIF orientation applied, 16-bit and
    32-bit grey scaled to 8 bits (not clipped), CMYK through its ICC profile when it has one,
    transparency flattened on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = PILImage.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        img = _cmyk_to_srgb(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def _cmyk_to_srgb(img: PILImage.Image) -> PILImage.Image:
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
        return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img.convert("RGB")  # an unreadable profile: Pillow's plain conversion
