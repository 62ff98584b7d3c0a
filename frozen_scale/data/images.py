"""Images as the model sees them: RGB, square at the vision encoder's size, normalised.

One path for every consumer: training decodes shard bytes with `decode_image` (opened by
`image_safety.open_image`: allowed formats only, bounded size), evaluation and `frozen-scale
generate` pass PIL images through `fit_image`, and all of them end in `to_tensor`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

from frozen_scale.data.image_safety import DEFAULT_MAX_PIXELS, ImageError, open_image, to_rgb

def fit_image(img: PILImage.Image, image_size: int) -> PILImage.Image:
    """RGB, image_size x image_size (bicubic), as training decodes its shards."""
    img = to_rgb(img)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), PILImage.BICUBIC)
    return img


def decode_image(data: bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> PILImage.Image:
    """A shard's image bytes as the model's input; ImageError for bytes that are not an allowed image."""
    img = open_image(data, max_pixels)
    try:
        img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale when possible
        img.load()
    except Exception as err:  # noqa: BLE001 - truncated or corrupt content is one bad image
        raise ImageError("decode_error", type(err).__name__) from None
    if img.mode in ("RGBA", "LA", "PA", "P") and max(img.size) > 4 * image_size:
        img = img.resize((image_size, image_size), PILImage.BICUBIC)  # flatten the small copy, not the large
    return fit_image(img, image_size)


def to_tensor(img: PILImage.Image, mean, std) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return (arr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def pixel_values(images, image_size: int, mean, std) -> torch.Tensor | None:
    """PIL images -> [N, 3, S, S] (None for no image)."""
    if not images:
        return None
    return torch.stack([to_tensor(fit_image(img, image_size), mean, std) for img in images])
