"""Streaming image-caption batches from webdataset shards on any fsspec URL, resumable exactly.

Order policy (docs/training.md, "Data loading policy"):
- Streams are split by node, then by worker: (rank, worker) pairs are `slots`. In epoch e the
  shard list is permuted by (seed, e) and slot s reads shards s, s+S, s+2S, ... When there are
  fewer shards than slots, every slot reads every shard and keeps samples i with i % S == s.
- Each slot's stream is endless (epoch after epoch), so every rank yields batches for as long
  as the trainer asks: uneven shard sizes never hang a rank. An "epoch" is a sample count:
  the manifest's total, consumed over all ranks.
- A shuffle buffer seeded by (seed, rank, worker) mixes samples across shards.
- Each worker builds whole batches; DataLoader takes batch i from worker i % W.
- Exact resume: every batch carries its worker's position: the shard cursor (epoch, place in
  the slot's shard order, samples passed in the current shard), the shuffle buffer as sample
  references (shard, index in shard) and the buffer RNG's state. The trainer saves, per worker,
  the position at the last batch it used, and the batch index. On resume each worker re-reads
  only the shards its buffer refers to and the current one, then continues: the cost is
  bounded by the buffer and a shard, not by how long the run has been going. Workers are
  rotated so batch b again comes from worker b % W. A state without positions falls back to
  replaying the stream by raw-sample count; so, with a warning, does one saved over other
  shards, shard sizes or buffer settings, or one whose buffered samples left their shards.
- A truncated shard or a sample that fails to decode is skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field

import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from frozen_scale import storage
from frozen_scale.config import FrozenConfig
from frozen_scale.data import prompts
from frozen_scale.data.images import decode_image, to_tensor  # noqa: F401  (also imported from here)
from frozen_scale.data.shards import Shard
from frozen_scale.data.tar_stream import Counter, LoaderStalled, _one_line, tar_samples  # noqa: F401

log = logging.getLogger(__name__)

POSITION_FORMAT = 1


@dataclass
class StreamState:
    """Where a rank's data stream stands: enough to replay it exactly."""

    batches: int = 0
    """Batches this rank has consumed."""
    raw_consumed: dict[int, int] = field(default_factory=dict)
    """Logical worker -> raw samples that worker had consumed at its last consumed batch."""
    num_workers: int = 1
    world_size: int = 1
    positions: dict[int, dict] = field(default_factory=dict)
    """Logical worker -> its position at its last consumed batch (module docstring): resume seeks
    there instead of replaying."""

    def to_dict(self) -> dict:
        return {"batches": self.batches, "raw_consumed": {str(k): v for k, v in self.raw_consumed.items()},
                "num_workers": self.num_workers, "world_size": self.world_size,
                "positions": {str(k): v for k, v in self.positions.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamState":
        return cls(int(d["batches"]), {int(k): int(v) for k, v in d["raw_consumed"].items()},
                   int(d["num_workers"]), int(d["world_size"]),
                   {int(k): v for k, v in d.get("positions", {}).items()})


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def word_targets(tokenizer, captions: list[str], k: int) -> torch.Tensor:
    """[N, k]: what a word prefix (`model.prefix_kind=words`) is trained to write for each caption:
    its words as a sentence ("a red circle ."; a final "." added where it has none, as the LM's text
    writes a scene), cut at k, then the pad token (blank slots)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("model.prefix_kind=words needs a tokenizer with a pad token")
    sentences = [cap if cap.rstrip().endswith(".") else f"{cap} ." for cap in captions]
    out = torch.full((len(captions), k), pad, dtype=torch.long)
    for row, ids in enumerate(tokenizer(sentences, add_special_tokens=False)["input_ids"]):
        out[row, : min(len(ids), k)] = torch.tensor(ids[:k], dtype=torch.long)
    return out


class CaptionStream(IterableDataset):
    """Endless, deterministic, resumable stream of collated image-caption batches for one rank."""

    def __init__(self, shards: list[Shard], tokenizer, *, k: int, image_size: int, batch_size: int,
                 seed: int, rank: int, world_size: int, shuffle_buffer: int = 256, resample: bool = False,
                 prompt: str = "", max_text_len: int = 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 image_keys=("png", "jpg", "jpeg", "webp"), caption_key: str = "txt",
                 images_per_sequence: int = 1, text_before_image: int = 0, position_shift: int = 0,
                 prefix_targets: bool = False, state: StreamState | None = None,
                 max_member_bytes: int = 64 * 1024 * 1024, max_consecutive_failures: int = 100):
        super().__init__()
        self.shards, self.tokenizer, self.k = shards, tokenizer, k
        self.image_size, self.batch_size = image_size, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.resample = shuffle_buffer, resample
        self.prompt, self.max_text_len = prompt, max_text_len
        self.mean, self.std = list(mean), list(std)
        self.image_keys, self.caption_key = tuple(image_keys), caption_key
        self.images_per_sequence, self.text_before_image = images_per_sequence, text_before_image
        self.position_shift = position_shift
        self.prefix_targets = prefix_targets
        self.max_member_bytes, self.max_consecutive_failures = max_member_bytes, max_consecutive_failures
        self.state = state or StreamState()
        self.fingerprint = self._fingerprint()
        if self.state.positions and any(p.get("stream") != self.fingerprint for p in self.state.positions.values()):
            log.warning("the saved data position was taken over other shards or buffer settings: replaying the "
                        "stream by sample count instead of seeking")
            self.state.positions = {}

    @classmethod
    def from_config(cls, cfg: FrozenConfig, shards: list[Shard], tokenizer, *, seed: int, rank: int,
                    world_size: int, state: StreamState | None = None) -> "CaptionStream":
        """The stream a run config describes: the prefix length k, image size and normalisation
        from `cfg.model`, the batch size from `cfg.train`, the rest from `cfg.data`."""
        model, data = cfg.model, cfg.data
        return cls(shards, tokenizer, k=model.prefix_length, image_size=model.vision.image_size,
                   batch_size=cfg.train.micro_batch_size, seed=seed, rank=rank, world_size=world_size,
                   shuffle_buffer=data.shuffle_buffer, resample=data.resample, prompt=data.prompt,
                   max_text_len=data.max_text_len, mean=model.vision.mean, std=model.vision.std,
                   image_keys=data.image_key.split(";"), caption_key=data.caption_key,
                   images_per_sequence=data.images_per_sequence, text_before_image=data.text_before_image,
                   position_shift=data.position_shift, prefix_targets=model.prefix_kind == "words",
                   state=state, max_member_bytes=data.max_member_bytes,
                   max_consecutive_failures=data.max_consecutive_failures)

    def _fingerprint(self) -> str:
        """What a saved position depends on besides the seed and the slot: the shard list, the
        buffer and the sampling mode."""
        key = json.dumps([[[s.url, s.num_samples] for s in self.shards], self.shuffle_buffer, self.resample,
                          POSITION_FORMAT])
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    # -- raw stream ------------------------------------------------------------------------
    def _shard_samples(self, shard: Shard, counter: Counter):
        try:
            stream = storage.open_url(shard.url).open()
        except (OSError, ValueError) as exn:
            counter.shard_error(exn, shard.url)
            return
        errors_before, seen = counter.shard_errors, 0
        try:
            for sample in group_by_keys(tar_samples(stream, shard.url, counter, self.max_member_bytes),
                                        handler=lambda exn: counter.shard_error(exn, shard.url)):
                seen += 1
                yield sample
        finally:
            stream.close()
        if counter.shard_errors == errors_before:
            if shard.num_samples is not None and seen < shard.num_samples:
                counter.shard_errors += 1  # a tar cut short at a member boundary reads as a clean end
            else:
                counter.shard_read()

    def _raw(self, slot: int, slots: int, counter: Counter, cursor: dict):
        """Endless stream of (ref, sample), ref = (shard index, sample index in that shard).
        `cursor` is updated in place to where the stream stands after the sample last yielded;
        a stream started from a copy of it continues exactly there."""
        n = len(self.shards)
        if self.resample:
            rng = random.Random(f"{self.seed}-resample-{slot}")
            if "rng" in cursor:
                rng.setstate(_rng_from_json(cursor["rng"]))
            while True:
                cursor["rng"] = _rng_to_json(rng.getstate())  # the state before this shard's draw
                yield from self._from_shard(rng.randrange(n), counter, cursor)
        epoch, start = cursor.setdefault("epoch", 0), cursor.get("pos", 0)
        cursor.setdefault("index", 0)
        while True:
            order = list(range(n))
            random.Random(f"{self.seed}-epoch-{epoch}").shuffle(order)
            mine = order[slot::slots] if n >= slots else order
            for pos in range(start, len(mine)):
                cursor["pos"] = pos
                if n >= slots:
                    yield from self._from_shard(mine[pos], counter, cursor)
                    continue
                for ref, sample in self._from_shard(mine[pos], counter, cursor):
                    index = cursor["index"]
                    cursor["index"] = index + 1
                    if index % slots == slot:
                        yield ref, sample
            epoch, start = epoch + 1, 0
            cursor.update(epoch=epoch, pos=0, index=0)

    def _from_shard(self, i: int, counter: Counter, cursor: dict):
        """Shard i's samples after the first cursor['in_shard'] (read, not decoded)."""
        passed = cursor.get("in_shard", 0)
        for j, sample in enumerate(self._shard_samples(self.shards[i], counter)):
            if j < passed:
                continue
            cursor["in_shard"] = j + 1
            yield (i, j), sample
        cursor["in_shard"] = 0

    def _fetch(self, refs: list) -> list | None:
        """The samples behind buffer references, reading each shard they name once; None when
        some are no longer there (the shards were rewritten since the checkpoint)."""
        wanted: dict[int, set[int]] = {}
        for i, j in refs:
            wanted.setdefault(int(i), set()).add(int(j))
        found = {}
        for i in sorted(wanted):
            last = max(wanted[i])
            for j, sample in enumerate(self._shard_samples(self.shards[i], Counter())):
                if j in wanted[i]:
                    found[(i, j)] = sample
                if j >= last:
                    break
        missing = [tuple(r) for r in refs if tuple(r) not in found]
        if missing:
            log.warning("resume: %d buffered samples are no longer in their shards (first: sample %d of %s): "
                        "the shards changed since the checkpoint; replaying the stream by sample count",
                        len(missing), missing[0][1], self.shards[missing[0][0]].url)
            return None
        return [((int(i), int(j)), found[(int(i), int(j))]) for i, j in refs]

    def _position(self, cursor: dict, buf: list, rng: random.Random, counter: Counter) -> dict:
        return {"stream": self.fingerprint, "cursor": dict(cursor), "buffer": [list(ref) for ref, _ in buf],
                "buffer_rng": _rng_to_json(rng.getstate()) if self.shuffle_buffer > 1 else None,
                "skipped": [counter.corrupt, counter.shard_errors]}

    # -- decode + collate ------------------------------------------------------------------
    def _decode(self, sample):
        image_key = next((key for key in self.image_keys if key in sample), None)
        if image_key is None or self.caption_key not in sample:
            members = ";".join(sorted(k for k in sample if not k.startswith("__"))) or "none"
            raise ValueError(f"no member among {';'.join(self.image_keys)} with a {self.caption_key} "
                             f"(the sample has {members})")
        img = decode_image(sample[image_key], self.image_size)
        caption = sample[self.caption_key].decode("utf-8").strip()
        if not caption:
            raise ValueError("empty caption")
        return to_tensor(img, self.mean, self.std), caption, sample["__key__"]

    def collate(self, items):
        batch = self._collate(items)
        if self.position_shift:
            # drawn from the keys, so a rebuilt batch is the same batch (exact resume)
            rows = batch["input_ids"].shape[0]
            rng = random.Random("shift|" + "|".join(key for _, _, key in items))
            batch["position_shift"] = torch.tensor([rng.randint(0, self.position_shift) for _ in range(rows)])
        if self.prefix_targets:
            batch["prefix_targets"] = word_targets(self.tokenizer, batch["captions"], self.k)
        return batch

    def _collate(self, items):
        if self.images_per_sequence > 1 or self.text_before_image > 0:
            return self.collate_interleaved(items)
        # [bos] [k image slots] [prompt] caption [eos]: the head is the same for every sample and
        # the captions are tokenized in one call (same ids as prompts.encode, per sample).
        if not hasattr(self, "_head"):
            head = prompts.encode([prompts.Image()] + ([prompts.Text(self.prompt)] if self.prompt else []),
                                  self.tokenizer, self.k)
            self._head = head.input_ids
        captions = [(" " + cap if self.prompt else cap) for _, cap, _ in items]
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        encoded = []
        for ids in self.tokenizer(captions, add_special_tokens=False)["input_ids"]:
            target = (ids + eos)[: self.max_text_len]
            encoded.append(prompts.Encoded(self._head + target, [prompts.IGNORE] * len(self._head) + target, 1))
        batch = prompts.pad_batch(encoded, self.tokenizer.pad_token_id)
        batch["pixel_values"] = torch.stack([img for img, _, _ in items])
        batch["captions"] = [cap for _, cap, _ in items]
        batch["keys"] = [key for _, _, key in items]
        return batch

    def collate_interleaved(self, items):
        """Items grouped into sequences of 1..images_per_sequence pairs, each group preceded by
        0..text_before_image other captions written as text (no loss):
        [bos] (other caption .)* ([image] prompt caption .)* [image] prompt caption [eos].
        Group sizes and counts are drawn from the items' keys, so a batch is the same however
        often it is rebuilt (exact resume). pixel_values holds the images in slot order."""
        rng = random.Random("|".join(key for _, _, key in items))
        groups, start = [], 0
        while start < len(items):
            size = rng.randint(1, self.images_per_sequence)
            groups.append(list(range(start, min(start + size, len(items)))))
            start += size
        encoded = []
        for group in groups:
            others = [i for i in range(len(items)) if i not in group]
            count = min(rng.randint(0, self.text_before_image), len(others))
            written = [items[i][1] for i in rng.sample(others, count)]
            head = [prompts.Text(" ".join(f"{cap} ." for cap in written))] if written else []
            seq = prompts.encode(head, self.tokenizer, self.k)
            for place, i in enumerate(group):
                pair = prompts.encode([prompts.Image()] + ([prompts.Text(self.prompt)] if self.prompt else []),
                                      self.tokenizer, self.k, add_bos=False)
                target = self._caption_ids(items[i][1], last=place == len(group) - 1)
                seq.input_ids += pair.input_ids + target
                seq.labels += pair.labels + target
                seq.num_images += 1
            encoded.append(seq)
        batch = prompts.pad_batch(encoded, self.tokenizer.pad_token_id)
        batch["pixel_values"] = torch.stack([items[i][0] for group in groups for i in group])
        batch["captions"] = [items[i][1] for group in groups for i in group]
        batch["keys"] = [items[i][2] for group in groups for i in group]
        return batch

    def _caption_ids(self, caption: str, last: bool) -> list[int]:
        """A caption's target ids: as in the single-pair layout (caption + [eos]) for a sequence's
        last pair, 'caption .' (the world's sentence end) for the others; max_text_len at most."""
        ids = self.tokenizer((" " + caption) if self.prompt else caption, add_special_tokens=False)["input_ids"]
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        end = eos if last else self.tokenizer(" .", add_special_tokens=False)["input_ids"]
        return (ids + end)[: self.max_text_len]

    def __iter__(self):
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (physical + self.state.batches) % workers  # logical worker: see module docstring
        slot, slots = self.rank * workers + worker, self.world_size * workers
        rng = random.Random(f"{self.seed}-buffer-{self.rank}-{worker}")
        position = self.state.positions.get(worker)
        raw_count = self.state.raw_consumed.get(worker, 0)
        counter = Counter(self.max_consecutive_failures)
        buf = self._fetch(position["buffer"]) if position is not None else None
        if buf is not None:  # seek: restore the cursor, the buffer, its RNG and the skip counts
            cursor, skip = dict(position["cursor"]), 0
            if position["buffer_rng"] is not None:
                rng.setstate(_rng_from_json(position["buffer_rng"]))
            counter.corrupt, counter.shard_errors = position.get("skipped", (0, 0))
        else:  # replay from the start, skipping what was consumed (shard errors are met again)
            cursor, buf, skip, raw_count = {}, [], raw_count, 0
        items = []
        for entry in self._raw(slot, slots, counter, cursor):
            if self.shuffle_buffer > 1:
                buf.append(entry)
                if len(buf) < self.shuffle_buffer:
                    continue
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                entry = buf.pop()
            raw_count += 1
            if raw_count <= skip:
                continue
            try:
                items.append(self._decode(entry[1]))
            except Exception as exn:  # noqa: BLE001 - any undecodable sample is counted and skipped
                counter.bad_sample(f"{entry[1].get('__key__', '?')} in {entry[1].get('__url__', '?')}: "
                                   f"{_one_line(exn)}")
                continue
            counter.good_sample()
            if len(items) == self.batch_size:
                batch = self.collate(items)
                position = json.dumps(self._position(cursor, buf, rng, counter))
                batch.update(worker=worker, raw_consumed=raw_count, position=position,
                             corrupt=counter.corrupt, shard_errors=counter.shard_errors)
                yield batch
                items = []


# the stream is iterated through these (imported from here by the trainer and the tests)
from frozen_scale.data.batches import ResumableBatches, ignore_stop_signals, make_loader  # noqa: E402,F401
