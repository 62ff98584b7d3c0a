"""The blind baseline: every image replaced by a black one of the same size, the text unchanged.

What a model scores blind is what its language prior alone gets, so the gap to it is what the
images contribute. One meaning everywhere: `frozen-scale eval --blind`, the demo's blind numbers
(both through `eval.tasks`) and the blind variant of `frozen-scale reproduce`, which is also
trained on black images (the world's shards written with `blind=True`, `frozen_scale.world.shards`).
"""

from __future__ import annotations

from PIL import Image


def black_image(image_size: int) -> Image.Image:
    """What a blind model sees instead of every image."""
    return Image.new("RGB", (image_size, image_size), (0, 0, 0))
