"""Resume cost of the data stream: seeking to the saved position against replaying the stream.

    python bench/resume_seek.py [--quick] [--rounds N] [--epochs 1,4,16]

A run that resumes must give the batches an uninterrupted run would have given (exact resume).
Replay restarts each worker's stream and skips the samples it had consumed: reading, not
decoding, every shard of every epoch so far, so its cost grows with the run. Seek restores the
shard cursor, the shuffle buffer (as sample references) and the buffer's RNG: it reads the shards
the buffer names and the current one, whatever the run length. For each run length (epochs of
the shard set already consumed) one stream is driven there, its position saved as a checkpoint
holds it (JSON), and the time to the first batch after resume is taken for both, alternating,
in the main process (num_workers=0), on local shards (file://; object storage adds a request and
the transfer per shard re-read, so the gap widens there). The first batches of both are checked
equal. Prints the ratio (replay / seek time to the first batch at the longest run) last.
Goal: the seek time does not grow with the run; ratio >= 10 at 16 epochs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import common  # the shared runner; picks the CPU accelerator
from common import add_thread_arg, alternate, machine, median, set_threads, write_world_shards

GOAL = 10.0


def stream(shards: Path, tokenizer, batch: int, buffer: int, state=None):
    from frozen_scale.data.loader import CaptionStream, ResumableBatches
    from frozen_scale.data.shards import list_shards

    ds = CaptionStream(list_shards(str(shards)), tokenizer, k=2, image_size=32, batch_size=batch, seed=0,
                       rank=0, world_size=1, shuffle_buffer=buffer, prompt="caption :", max_text_len=24,
                       state=state)
    return ResumableBatches(ds, 0)


def main(argv=None) -> float:
    parser = common.parser(__doc__, "--quick", "few shards, short runs: a smoke run for the tests")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--epochs", default=None, help="run lengths in epochs, comma-separated")
    add_thread_arg(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from frozen_scale.data.loader import StreamState
    from frozen_scale.world import text

    if args.quick:
        n_shards, per_shard, batch, buffer, epochs, rounds = 8, 16, 8, 32, [1, 3], 2
    else:
        n_shards, per_shard, batch, buffer, epochs, rounds = 48, 64, 16, 256, [1, 4, 16], 3
    epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else epochs
    rounds = args.rounds or rounds
    tokenizer = text.build_tokenizer()
    print(f"machine: {machine()}")
    print(f"{n_shards} shards x {per_shard} samples (32 px PNG, file://), batch {batch}, shuffle buffer {buffer}, "
          f"{rounds} rounds alternating, main process only")
    ratio = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_world_shards(Path(tmp) / "shards", n_shards * per_shard, per_shard, 32)
        for e in epochs:
            run = stream(shards, tokenizer, batch, buffer)
            for _ in range(e * n_shards * per_shard // batch):
                next(run)
            saved = json.dumps(run.state.to_dict())
            expected = next(run)["keys"]

            def first_batch(positions: bool):
                state = StreamState.from_dict(json.loads(saved))
                if not positions:
                    state.positions = {}
                keys = next(stream(shards, tokenizer, batch, buffer, state))["keys"]
                assert keys == expected, "a resumed stream did not continue the uninterrupted one"

            times = alternate({"replay": lambda: first_batch(False), "seek": lambda: first_batch(True)}, rounds)
            replay, seek = median(times["replay"]["wall"]), median(times["seek"]["wall"])
            ratio = replay / seek
            print(f"after {e:>3} epochs ({e * n_shards * per_shard:,} samples): first batch after resume: "
                  f"replay {replay * 1e3:8.1f} ms, seek {seek * 1e3:6.1f} ms, replay/seek {ratio:6.1f}")
    print("goal: seek flat in the run length")
    common.report(args, "resume_seek", ratio, f"replay / seek time to the first batch, {epochs[-1]} epochs", GOAL,
                  better="higher", digits=2)
    return ratio


if __name__ == "__main__":
    main()
