"""`frozen-scale generate RUN --image a.png [--image b.png ...] [--prompt TEXT]`: use a trained model.

RUN is an export folder (`frozen-scale export`) or a training run folder (its export/, made from
the newest committed checkpoint if missing, as `frozen-scale eval` does). The prompt places the
images: one `<image>` per --image, in order, e.g.

  frozen-scale generate runs/demo/prefix --image a.png --prompt "<image> question : what color is the circle ? answer :"

Without --prompt the one image is captioned with the prompt training used. Images are decoded,
resized and normalised as training's shards are. Greedy decoding, or beam search (--beams N).
The generated text is printed. --attention out.png also draws where each generated token looked:
the share of the LM's attention (heads averaged) on each image's prefix slots vs the text, per
layer and averaged over layers (`frozen_scale.model.attention`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from frozen_scale.config import InputError, NotFoundError
from frozen_scale.data import prompts


def check_request(images: list[str], prompt: str | None) -> None:
    """What can be checked before the model is loaded: the files and the prompt's images."""
    from PIL import Image as PILImage

    for name in images:
        if not Path(name).is_file():
            raise NotFoundError(f"no such image file: {name}")
        try:
            with PILImage.open(name) as img:
                img.verify()
        except (PILImage.UnidentifiedImageError, OSError, SyntaxError) as err:
            raise InputError(f"cannot read image {name}: {_reason(err)}") from None
    if prompt is None:
        if len(images) != 1:
            raise InputError(f"without --prompt one image is captioned, got {len(images)} --image; "
                            f"write a --prompt with one {prompts.IMAGE_PLACEHOLDER} per image")
        return
    slots = sum(isinstance(s, prompts.Image) for s in prompts.parse_prompt(prompt))
    if slots != len(images):
        raise InputError(f"the prompt has {slots} {prompts.IMAGE_PLACEHOLDER} but {len(images)} --image were given")


def read_images(names: list[str], image_size: int) -> list:
    """The files decoded as training decodes shard images (PIL, RGB, square at image_size)."""
    from PIL import UnidentifiedImageError

    from frozen_scale.data.images import decode_image

    out = []
    for name in names:
        try:
            out.append(decode_image(Path(name).read_bytes(), image_size))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"cannot read image {name}: {_reason(err)}") from None
    return out


def _reason(err: Exception) -> str:
    from PIL import UnidentifiedImageError

    return "not an image format PIL reads" if isinstance(err, UnidentifiedImageError) else str(err)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="frozen-scale generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="export folder or training run folder")
    parser.add_argument("--image", action="append", required=True, metavar="FILE",
                        help="an image file (repeat for several, in the prompt's order)")
    parser.add_argument("--prompt", default=None,
                        help=f"text with one {prompts.IMAGE_PLACEHOLDER} per --image (default: caption the image)")
    parser.add_argument("--beams", type=int, default=1, metavar="N", help="beam search width (1: greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=24, metavar="N", help="at most this many tokens")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--attention", default=None, metavar="PNG", help="also draw the attention map here")
    args = parser.parse_args(argv)
    if args.beams < 1 or args.max_new_tokens < 1:
        parser.error("--beams and --max-new-tokens must be >= 1")
    return args


def main(argv: list[str]) -> int:
    """User errors (frozen_scale.config.UserError) reach `frozen-scale`'s main: one line, exit 2."""
    args = parse_args(argv)
    from frozen_scale.eval.tasks import load_model, resolve_export

    check_request(args.image, args.prompt)
    device = args.device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here")
    export_dir = resolve_export(args.run)
    model, tokenizer, _ = load_model(export_dir, device=device)
    images = read_images(args.image, model.cfg.vision.image_size)
    common = dict(max_new_tokens=args.max_new_tokens, num_beams=args.beams)
    if args.attention is None:
        print(model.generate_text(images, args.prompt, **common))
        return 0
    from frozen_scale.eval.attention_map import draw_attention

    text, shares = model.generate_text(images, args.prompt, return_attention=True, **common)
    print(text)
    prompt = args.prompt if args.prompt is not None else prompts.caption_prompt(model.caption_prompt)
    path = draw_attention(shares, images, args.attention, title=f"{prompt} -> {text}")
    print(f"attention map -> {path}", file=sys.stderr)
    return 0
