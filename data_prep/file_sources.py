"""Sources of files: a folder of images with captions, and a COCO-style captions file. Their
paths stay inside their root (a captions file names images under it, never elsewhere)."""

from __future__ import annotations

import json
import posixpath
from typing import Iterator

from data_prep.sources import IMAGE_EXTENSIONS, SourceError, _clean, _decode_caption, row_key
from frozen_scale import storage


class ImageFolder:
    """Images under a folder (recursively, sorted by path); captions from `captions.jsonl`-style
    file ({"file": relative path, "caption": ..., other keys kept}) or sidecar `<stem>.txt`."""

    kind = "file"

    def __init__(self, path: str, *, captions: str | None = None, storage_options: dict | None = None):
        self.path, self.captions, self.storage_options = path, captions, storage_options
        fs, p = storage.filesystem(path, storage_options)
        if not fs.isdir(p):
            raise SourceError(f"image folder '{path}' does not exist or is not a folder")
        self.fs, self.root = fs, p.rstrip("/")
        if captions and not storage.exists(captions, storage_options):
            raise SourceError(f"captions file '{captions}' does not exist")

    def describe(self) -> dict:
        return {"type": "folder", "path": self.path, "captions": self.captions}

    def _caption_table(self) -> dict[str, dict]:
        table = {}
        with storage.open_url(self.captions, "rt", self.storage_options, compression="infer",
                              encoding="utf-8", errors="surrogateescape") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    table[str(rec.pop("file"))] = rec
                except (ValueError, KeyError, AttributeError, TypeError):
                    raise SourceError(f"{self.captions}:{n}: expected a JSON object with a 'file' key")
        return table

    def rows(self) -> Iterator[dict]:
        files = sorted(f for f in self.fs.find(self.root) if f.lower().endswith(IMAGE_EXTENSIONS))
        table = self._caption_table() if self.captions else None
        for i, f in enumerate(files):
            rel = f[len(self.root) + 1:]
            row = {"row": i, "key": row_key(i), "kind": "file", "url": self.fs.unstrip_protocol(f),
                   "caption": None, "extra": {"path": rel}}
            if table is not None:
                rec = dict(table.get(rel, {}))
                row["caption"], err = _decode_caption(rec.pop("caption", None))
                row["extra"].update({k: _clean(v) for k, v in rec.items()})
                if err:
                    row["error"] = err
            else:
                row["caption_url"] = self.fs.unstrip_protocol(f.rsplit(".", 1)[0] + ".txt")
            yield row


def _inside(name) -> str | None:
    """`name` as a path inside its root, or None when it is not one (absolute, or climbing out
    with '..'): a captions file names images under --images-root, never elsewhere."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm.startswith(("/", "../")) or norm in ("..", ".") or ":" in norm.split("/")[0]:
        return None
    return norm


class CocoCaptions:
    """A COCO-style captions json: one row per image (by id); `txt` is its first caption and the
    sample's json keeps all of them. Images come from `images_root/file_name`, else `coco_url`."""

    kind = "file"

    def __init__(self, path: str, *, images_root: str | None = None, storage_options: dict | None = None):
        self.path, self.images_root, self.storage_options = path, images_root, storage_options
        if not storage.exists(path, storage_options):
            raise SourceError(f"captions file '{path}' does not exist")

    def describe(self) -> dict:
        return {"type": "coco", "path": self.path, "images_root": self.images_root}

    def rows(self) -> Iterator[dict]:
        try:
            data = json.loads(storage.read_bytes(self.path, self.storage_options))
            images = sorted(data["images"], key=lambda im: im["id"])
            annotations = data["annotations"]
        except (ValueError, KeyError, TypeError) as err:
            raise SourceError(f"'{self.path}' is not a COCO captions file (needs 'images' and "
                              f"'annotations'): {err}")
        captions: dict = {}
        for ann in annotations:
            captions.setdefault(ann.get("image_id"), []).append(ann.get("caption"))
        for i, im in enumerate(images):
            caps = [c for c in captions.get(im["id"], []) if isinstance(c, str)]
            row = {"row": i, "key": row_key(i), "caption": caps[0].strip() if caps else None,
                   "extra": {"image_id": im["id"], "file_name": im.get("file_name"), "captions": caps}}
            if self.images_root:
                inside = _inside(im.get("file_name"))
                row.update(kind="file", url=storage.join(self.images_root, inside or ""))
                if inside is None:
                    row["error"] = "path_outside_root"
            else:
                row.update(kind="url", url=im.get("coco_url") or im.get("flickr_url"))
                if not row["url"]:
                    row["error"] = "missing_url"
            yield row
