"""Eval inputs: images from webdataset shards, and COCO-style caption references.

Shards are the ones data_prep writes (or any webdataset tars): a sample is the files sharing a
`__key__`, with the image under one of png/jpg/jpeg/webp, optionally `txt` (a caption) and
`json`. A COCO captions file (`captions_val2014.json` layout):

    {"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, ...],
     "annotations": [{"image_id": 42, "caption": "A dog on a couch."}, ...]}

matches a sample when the sample's __key__ equals the image id (as text) or the file name
without its extension.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import PurePosixPath

from webdataset.tariterators import group_by_keys, tar_file_expander

from frozen_scale import storage
from frozen_scale.config import InputError, NotFoundError
from frozen_scale.data.loader import decode_image
from frozen_scale.data.shards import list_shards

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def iter_samples(spec: str, image_size: int, keys: set[str] | None = None) -> Iterator[dict]:
    """Samples of the shards named by `spec` (anything `list_shards` takes), in
    shard order: {"key", "image" (PIL, resized), "txt", "json"}. With `keys`, only those samples
    are decoded. A sample without an image is skipped."""
    for shard in list_shards(spec):
        with storage.open_url(shard.url) as stream:
            for sample in group_by_keys(tar_file_expander([{"url": shard.url, "stream": stream}])):
                key = sample["__key__"]
                if keys is not None and key not in keys:
                    continue
                image_key = next((k for k in IMAGE_KEYS if k in sample), None)
                if image_key is None:
                    continue
                out = {"key": key, "image": decode_image(sample[image_key], image_size)}
                if "txt" in sample:
                    out["txt"] = sample["txt"].decode("utf-8").strip()
                if "json" in sample:
                    out["json"] = json.loads(sample["json"])
                yield out


def read_input_json(path: str):
    """A json file the user named: NotFoundError when it is missing, InputError when it is not json."""
    try:
        return storage.read_json(path)
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {path}") from None
    except ValueError as err:
        raise InputError(f"{path}: not valid json ({err})") from None


def load_coco_captions(path: str) -> dict[str, list[str]]:
    """{key: [reference captions]} from a COCO captions json, under both the image id and the
    file-name stem of each image."""
    data = read_input_json(path)
    if not isinstance(data, dict) or "annotations" not in data:
        raise InputError(f"{path}: not a COCO captions file (no 'annotations' list)")
    names = {img["id"]: PurePosixPath(img.get("file_name", "")).stem for img in data.get("images", [])}
    refs: dict[str, list[str]] = {}
    for ann in data["annotations"]:
        if "image_id" not in ann or "caption" not in ann:
            raise InputError(f"{path}: every annotation needs image_id and caption, got {ann}")
        image_id = ann["image_id"]
        for key in {str(image_id), names.get(image_id) or str(image_id)}:
            refs.setdefault(key, []).append(ann["caption"])
    return refs
