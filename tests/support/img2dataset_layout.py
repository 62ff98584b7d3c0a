"""A shard folder in img2dataset's output layout, written by hand (img2dataset is not a dependency):

    NNNNN.tar         webdataset samples {key}.jpg, {key}.txt, {key}.json (its TarWriter's layout);
                      keys are the shard id (5 digits) then the index in the shard (4 digits)
    NNNNN.parquet     one status row per input row, failures included
    NNNNN_stats.json  count, successes, failed_to_download, failed_to_resize, duration, status_dict

The images and captions are scenes of the built-in world, so the tiny test LM can train on them.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_img2dataset_folder(out: Path, kept: tuple[int, ...] = (5, 4, 3), with_stats: tuple[bool, ...] = (True, True, False),
                             failed: int = 1, seed: int = 0, image_size: int = 16) -> list[list[tuple[str, str]]]:
    """Shard i keeps kept[i] samples (and has `failed` failed rows); its stats file is written
    when with_stats[i]. Returns each shard's (key, caption) pairs."""
    import webdataset as wds

    from frozen_scale.world import scenes

    out.mkdir(parents=True, exist_ok=True)
    written, scene_index = [], 0
    for shard_id, n in enumerate(kept):
        name = f"{shard_id:05d}"
        samples, rows = [], []
        with wds.TarWriter(str(out / f"{name}.tar")) as sink:
            for i in range(n + failed):
                key = f"{shard_id:05d}{i:04d}"
                url = f"https://images.example.org/{key}.jpg"
                if i >= n:
                    rows.append({"url": url, "caption": "lost", "key": key, "status": "failed_to_download",
                                 "error_message": "HTTP Error 404: Not Found", "width": None, "height": None,
                                 "original_width": None, "original_height": None, "sha256": None})
                    continue
                scene = scenes.make_scene(seed, "train", scene_index)
                scene_index += 1
                buf = io.BytesIO()
                scenes.render(scene, image_size).convert("RGB").save(buf, "JPEG", quality=90)
                caption = scenes.caption(scene)
                meta = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
                        "width": image_size, "height": image_size, "original_width": 64, "original_height": 64,
                        "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
                sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": caption, "json": json.dumps(meta, indent=4)})
                samples.append((key, caption))
                rows.append(meta)
        pq.write_table(pa.Table.from_pylist(rows), out / f"{name}.parquet")
        if with_stats[shard_id]:
            stats = {"count": n + failed, "successes": n, "failed_to_download": failed, "failed_to_resize": 0,
                     "duration": 1.5, "start_time": 1700000000.0, "end_time": 1700000001.5,
                     "status_dict": {"success": n, "HTTP Error 404: Not Found": failed}}
            (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
        written.append(samples)
    return written
