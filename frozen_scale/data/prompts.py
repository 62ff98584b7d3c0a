"""Token layout of (possibly interleaved) image-text sequences.

An image occupies `k` consecutive positions of `input_ids` holding IMAGE_TOKEN (a negative id
no tokenizer produces); FrozenVLM replaces those positions with the image's k prefix vectors, in
image order. Labels are IGNORE on image and prompt positions, so the loss covers target text only.

A sequence is a list of segments: `Image()` or `Text(text, target=bool)`. Written as one string
(`frozen-scale generate --prompt`), `<image>` marks each image: `parse_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_TOKEN = -200
IGNORE = -100
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Image:
    """An image slot (the pixels travel separately, in the same order)."""


@dataclass(frozen=True)
class Text:
    text: str
    target: bool = False
    """Whether the loss is taken on these tokens."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int


def encode(segments, tokenizer, k: int, add_bos: bool = True, add_eos_to_target: bool = True,
           max_target_tokens: int | None = None) -> Encoded:
    """Lay out a sequence of segments as token ids with image slots and loss labels."""
    ids: list[int] = []
    labels: list[int] = []
    num_images = 0
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE)
    for seg in segments:
        if isinstance(seg, Image):
            ids.extend([IMAGE_TOKEN] * k)
            labels.extend([IGNORE] * k)
            num_images += 1
            continue
        toks = tokenizer(seg.text, add_special_tokens=False)["input_ids"] if seg.text else []
        if seg.target:
            if add_eos_to_target and tokenizer.eos_token_id is not None:
                toks = toks + [tokenizer.eos_token_id]
            if max_target_tokens is not None:
                toks = toks[:max_target_tokens]
            labels.extend(toks)
        else:
            labels.extend([IGNORE] * len(toks))
        ids.extend(toks)
    return Encoded(ids, labels, num_images)


def parse_prompt(prompt: str) -> list:
    """A prompt string -> segments: each `<image>` an Image(), the text between them Text().

    Spaces next to an `<image>` are dropped, as the task prompts write their text segments
    ([Image(), Text("caption :")] is "<image> caption :"); other spacing is kept as written.
    """
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    segments: list = []
    for i, piece in enumerate(pieces):
        if i > 0:
            segments.append(Image())
            piece = piece.lstrip()
        if i < len(pieces) - 1:
            piece = piece.rstrip()
        if piece:
            segments.append(Text(piece))
    return segments


def caption_prompt(prompt: str) -> str:
    """The captioning prompt of training and evaluation ([Image(), Text(prompt)]) as a string."""
    return f"{IMAGE_PLACEHOLDER} {prompt}" if prompt else IMAGE_PLACEHOLDER


def image_slot_runs(input_ids, k: int) -> list[list[int]]:
    """Positions of each image's k slots in a sequence of token ids, in image order."""
    ids = input_ids.tolist() if hasattr(input_ids, "tolist") else list(input_ids)
    slots = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN]
    if len(slots) % k:
        raise ValueError(f"{len(slots)} image slots is not a multiple of k={k}")
    runs = [slots[i:i + k] for i in range(0, len(slots), k)]
    if any(run[-1] - run[0] != k - 1 for run in runs):
        raise ValueError(f"image slots are not in runs of k={k}: {slots}")
    return runs


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only the attended tokens: left padding and a word prefix's blank
    slots take no position (each holds its predecessor's, clamped at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_batch(encoded: list[Encoded], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Stack encoded sequences; right padding for training, left padding for generation."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, cols] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, cols] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
