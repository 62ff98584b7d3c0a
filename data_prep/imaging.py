"""Safe decode, filters, resize and encode of one image.

Decoding never trusts the bytes: only the formats of `frozen_scale.data.images.ALLOWED_FORMATS`
are opened (anything else, EPS/PostScript among them, is a counted `format` rejection and never
reaches an external program), the pixel count is checked from the header before any pixel is
decoded (decompression bombs), truncated or non-image content is a counted rejection, and JPEGs
are decoded at a reduced scale (libjpeg DCT scaling via `Image.draft`) when the target is much
smaller than the original, which is most of the cost saved on web images.

Memory: the pixels being decoded at once in a process (all its threads together) stay within
`PIXEL_BUDGET`: a decode waits for room before it starts (an image larger than the whole budget
waits until it is alone), and holds it until its resized copy is made. A transparent image is resized before it is flattened on white, so the
flattening copies hold the small image, never the large one.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass

from PIL import Image

from data_prep.options import ImageOptions
from frozen_scale.data.image_safety import ImageError, open_image, to_rgb

PIXEL_BUDGET = 2 * 89_478_485
"""Pixels decoded at once in one process, over all its threads: about 4 bytes each while decoding
(RGBA), so ~0.7 GB, whatever the thread count."""


class _PixelBudget:
    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> int:
        n = min(n, self.total)
        with self._cond:
            while self.used + n > self.total:
                self._cond.wait()
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


_budget = _PixelBudget(PIXEL_BUDGET)

PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


class ImageRejected(Exception):
    """The image cannot or must not be used; `reason` is the counted name."""

    def __init__(self, reason: str, status: str = "failed_to_resize"):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class Processed:
    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int


def target_size(w: int, h: int, opts: ImageOptions) -> tuple[int, int]:
    """Size the image is resized to before any crop or border."""
    s = opts.image_size
    if opts.resize_mode == "no":
        return w, h
    if opts.resize_mode in ("keep_ratio", "center_crop"):
        k = s / min(w, h)
    else:  # border
        k = s / max(w, h)
    if opts.no_upscale and k >= 1:
        return w, h
    return max(1, round(w * k)), max(1, round(h * k))


def _open_checked(data: bytes, opts: ImageOptions) -> Image.Image:
    try:
        return open_image(data, opts.max_pixels)
    except ImageError as err:
        raise ImageRejected(err.reason) from None


def _check_filters(w: int, h: int, opts: ImageOptions) -> None:
    if opts.min_side and min(w, h) < opts.min_side:
        raise ImageRejected("too_small", "filtered")
    if opts.max_aspect_ratio and max(w, h) / min(w, h) > opts.max_aspect_ratio:
        raise ImageRejected("aspect_ratio", "filtered")


def _decode(img: Image.Image, want: tuple[int, int]) -> Image.Image:
    """Decode (within the process's pixel budget); transparent images come back still in their
    mode, to be resized first and flattened after (`_flatten`)."""
    if img.format == "JPEG" and want[0] < img.size[0] and want[1] < img.size[1]:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the requested size.
        img.draft("RGB", want)
    try:
        img.load()
    except Image.DecompressionBombError:
        raise ImageRejected("decompression_bomb")
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated_image" if "truncated" in str(err).lower() else "decode_error"
        raise ImageRejected(reason)
    if _transparent(img):
        return img.convert("RGBA") if img.mode in ("P", "PA") else img
    return to_rgb(img)


def _transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _filter(shrink: bool) -> Image.Resampling:
    # Shrinking: Pillow's box filter scaled to the output pixel is area averaging (OpenCV's
    # INTER_AREA, img2dataset's default), about 30% faster than its bilinear; enlarging: Lanczos.
    return Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS


def _resize(img: Image.Image, opts: ImageOptions) -> Image.Image:
    w, h = img.size
    tw, th = target_size(w, h, opts)
    s = opts.image_size
    if opts.resize_mode == "center_crop" and (tw > s or th > s):
        # Resize only the source region that survives the crop.
        cw, ch = min(tw, s), min(th, s)
        left, top = (tw - cw) // 2, (th - ch) // 2
        kx, ky = w / tw, h / th
        box = (left * kx, top * ky, (left + cw) * kx, (top + ch) * ky)
        return img.resize((cw, ch), _filter(tw < w), box=box)
    if (tw, th) != (w, h):
        img = img.resize((tw, th), _filter(tw < w))
    if opts.resize_mode == "border" and (tw, th) != (s, s) and tw <= s and th <= s:
        img = to_rgb(img)
        canvas = Image.new("RGB", (s, s), (0, 0, 0))
        canvas.paste(img, ((s - tw) // 2, (s - th) // 2))
        img = canvas
    return img


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    if fmt == "png":
        img.save(out, "PNG", compress_level=max(0, min(9, round((100 - quality) / 11))))
    else:
        img.save(out, PIL_FORMAT[fmt], quality=quality)
    return out.getvalue()


def process_image(data: bytes, opts: ImageOptions) -> Processed:
    """Original bytes -> encoded, resized image; raises ImageRejected with a counted reason."""
    img = _open_checked(data, opts)
    ow, oh = img.size
    _check_filters(ow, oh, opts)
    want = target_size(ow, oh, opts)
    # decoding and resizing hold the image whole (a transparent one twice: Pillow resizes it
    # premultiplied, in a copy), within the process's pixel budget
    held = _budget.acquire(ow * oh * (2 if _transparent(img) else 1))
    try:
        img = _decode(img, (math.ceil(want[0]), math.ceil(want[1])))
        img = _resize(img, opts)
        if img.mode != "RGB":  # transparent: flattened at its new size
            img = to_rgb(img)
    finally:
        _budget.release(held)
    return Processed(encode(img, opts.encode_format, opts.encode_quality), img.size[0], img.size[1], ow, oh)
