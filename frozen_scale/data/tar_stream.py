"""Reading a shard's tar stream safely, and counting what could not be used.

`tar_samples` reads an uncompressed tar as webdataset file samples, with a size cap per member;
`Counter` counts skipped shards and samples in one loader worker and stops the stream
(`LoaderStalled`, one line) when too many come in a row: a loader that cannot make progress says
so instead of spinning.
"""

from __future__ import annotations

from frozen_scale.config import InputError


class LoaderStalled(InputError):
    """No shard could be read, or no sample used, many times in a row: the data cannot feed training."""


STALL_PREFIX = "data: "


class Counter:
    """Skips counted inside one worker, and how many came in a row (a loader that cannot make
    progress stops instead of spinning: `limit` shards or samples in a row)."""

    def __init__(self, limit: int = 0):
        self.corrupt = 0
        self.shard_errors = 0
        self.limit = limit
        self.bad_shards_in_row = self.bad_samples_in_row = 0

    def shard_error(self, exn, url: str = "") -> bool:
        self.shard_errors += 1
        self.bad_shards_in_row += 1
        if self.limit and self.bad_shards_in_row >= self.limit:
            raise LoaderStalled(f"{STALL_PREFIX}{self.bad_shards_in_row} shards in a row could not be read; the last, "
                                f"{url or '?'}: {_one_line(exn)}")
        return True  # skip the rest of the shard, go on

    def shard_read(self) -> None:
        self.bad_shards_in_row = 0

    def bad_sample(self, why: str) -> None:
        self.corrupt += 1
        self.bad_samples_in_row += 1
        if self.limit and self.bad_samples_in_row >= self.limit:
            raise LoaderStalled(f"{STALL_PREFIX}{self.bad_samples_in_row} samples in a row could not be used; the "
                                f"last: {why}")

    def good_sample(self) -> None:
        self.bad_samples_in_row = 0


def _one_line(exn) -> str:
    text = f"{type(exn).__name__}: {exn}" if isinstance(exn, BaseException) else str(exn)
    return " ".join(text.split())[:300]


def tar_samples(stream, url: str, counter: Counter, max_member_bytes: int):
    """The members of an uncompressed tar stream as webdataset file samples ({fname, data, __url__}).
    A compressed tar is a shard error (never inflated: a small shard cannot become a huge one); a
    member over `max_member_bytes` is skipped unread and counted."""
    import tarfile

    try:
        tar = tarfile.open(fileobj=stream, mode="r|")
        for info in tar:
            if not info.isreg() or info.name.startswith("__"):
                continue
            if info.size > max_member_bytes:
                counter.bad_sample(f"{info.name} in {url} is {info.size} bytes, over data.max_member_bytes "
                                   f"({max_member_bytes})")
                continue
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
            tar.members = []
    except (tarfile.TarError, OSError, EOFError) as exn:
        counter.shard_error(exn, url)
