"""Exact resume of the data stream by seeking: a saved position (shard cursor, shuffle buffer as
sample references, buffer RNG) restarts every worker where it stood, reading only the shards the
buffer names and the current one, and gives the same batches as the uninterrupted stream and as
the replay by sample count, with damaged shards in the mix."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from frozen_scale.data.loader import CaptionStream, ResumableBatches, StreamState
from frozen_scale.data.shards import list_shards
from frozen_scale.model.lm import load_tokenizer
from tests.support.core_fixtures import corrupt_first_png, truncate_shard, write_shards_plain


class CountingStream(CaptionStream):
    """Records every shard the stream opens (in-process streams only: num_workers=0)."""

    opened: list[str] = []

    def _shard_samples(self, shard, counter):
        CountingStream.opened.append(shard.url)
        return super()._shard_samples(shard, counter)


@pytest.fixture(scope="module")
def damaged_shards(tmp_path_factory) -> Path:
    """12 shards of 4 samples; one cut short mid-member, one with an image that does not decode."""
    root = write_shards_plain(tmp_path_factory.mktemp("seek"), count=48, per_shard=4, seed=5)
    truncate_shard(root / "00003.tar")
    corrupt_first_png(root / "00007.tar")
    return root


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    return load_tokenizer(str(tiny_lm_dir))


def make(shards: Path, tok, state=None, *, workers=0, rank=0, world=1, buffer=8, resample=False, batch=5,
         cls=CaptionStream, shard_list=None):
    ds = cls(shard_list or list_shards(str(shards)), tok, k=2, image_size=16, batch_size=batch, seed=11,
             rank=rank, world_size=world, shuffle_buffer=buffer, resample=resample, state=state)
    return ResumableBatches(ds, num_workers=workers)


def saved(batches: ResumableBatches, positions: bool = True) -> StreamState:
    state = StreamState.from_dict(json.loads(json.dumps(batches.state.to_dict())))  # as a checkpoint holds it
    if not positions:
        state.positions = {}
    return state


CASES = {  # 12 shards: more shards than slots, then fewer (2 ranks x 8 workers would be 16 slots)
    "one-slot": dict(),
    "no-buffer": dict(buffer=1),
    "resample": dict(resample=True),
    "two-ranks-two-workers": dict(workers=2, rank=1, world=2),
    "more-slots-than-shards": dict(workers=2, rank=1, world=8, buffer=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_seek_and_replay_both_continue_the_uninterrupted_stream(damaged_shards, tok, case):
    kw = CASES[case]
    used, after = 23, 6  # past two epochs of the one-slot stream
    full = make(damaged_shards, tok, **kw)
    keys = [next(full)["keys"] for _ in range(used + after)]
    part = make(damaged_shards, tok, **kw)
    for _ in range(used):
        next(part)
    assert part.skipped["corrupt_samples"] + part.skipped["shard_errors"] >= 1 or kw.get("world", 1) > 1
    seek = make(damaged_shards, tok, saved(part), **kw)
    assert [next(seek)["keys"] for _ in range(after)] == keys[used:]
    if kw.get("workers", 0) == 0:  # the skip counts carry on from the checkpoint
        assert seek.skipped == full.skipped
    replay = make(damaged_shards, tok, saved(part, positions=False), **kw)
    assert [next(replay)["keys"] for _ in range(after)] == keys[used:]


def test_seek_reads_the_buffer_and_current_shards_not_the_whole_history(damaged_shards, tok):
    part = make(damaged_shards, tok, cls=CountingStream)
    for _ in range(40):  # over four epochs of 12 shards
        next(part)
    state = saved(part)
    expected = [next(part)["keys"] for _ in range(2)]
    buffered = {ref[0] for ref in state.positions[0]["buffer"]}

    CountingStream.opened = []
    seek = make(damaged_shards, tok, state, cls=CountingStream)
    assert [next(seek)["keys"] for _ in range(2)] == expected
    # the buffer's shards once each, then the cursor's shard and what two batches read on from it
    assert len(CountingStream.opened) <= len(buffered) + 4, CountingStream.opened

    CountingStream.opened = []
    replay = make(damaged_shards, tok, saved(part, positions=False), cls=CountingStream)
    for _ in range(2):
        next(replay)
    assert len(CountingStream.opened) > 4 * 12  # replay reads every epoch again


def test_a_position_saved_over_other_shards_falls_back_to_replay(damaged_shards, tok, caplog):
    part = make(damaged_shards, tok)
    for _ in range(7):
        next(part)
    fewer = list_shards(str(damaged_shards))[:-1]
    expected = make(damaged_shards, tok, saved(part, positions=False), shard_list=fewer)
    with caplog.at_level("WARNING"):
        moved = make(damaged_shards, tok, saved(part), shard_list=fewer)
    assert "replaying the stream" in caplog.text and not moved.state.positions
    assert [next(moved)["keys"] for _ in range(3)] == [next(expected)["keys"] for _ in range(3)]


def test_buffered_samples_gone_from_their_shards_fall_back_to_replay(tmp_path, tok, caplog):
    root = write_shards_plain(tmp_path / "s", count=16, per_shard=4, seed=2)
    part = make(root, tok)
    for _ in range(3):
        next(part)
    state = saved(part)
    assert any(j > 0 for _, j in state.positions[0]["buffer"])
    for shard in root.glob("*.tar"):  # rewritten under the same names (and manifest): one sample each
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(shard, "w") as tar:
            for m, data in members:
                if m.name.split(".", 1)[0] == members[0][0].name.split(".", 1)[0]:
                    tar.addfile(m, io.BytesIO(data))
    replay = make(root, tok, saved(part, positions=False))
    with caplog.at_level("WARNING"):
        resumed = make(root, tok, state)
        assert next(resumed)["keys"] == next(replay)["keys"]
    assert "no longer in their shards" in caplog.text
