"""Checkpoint lineages: which checkpoints of a folder belong to the run that is resuming.

A checkpoint folder can hold the checkpoints of more than one run: an earlier run, or the run
before a rollback to an older step. Each start of training begins or continues a *lineage*
(an id recorded in every commit marker it writes, and in `{checkpoint_dir}/LINEAGE.json` with the
checkpoint it started from, its origin). Commit markers also carry a sequence number: the folder's
commit order, which is what "newest" means (not the step: a rollback's step 150 is newer than the
old run's step 300).

- `train.resume=''` starts a new lineage at step 0, refused in a folder that holds committed
  checkpoints unless `checkpoint.allow_fresh_start`;
- `train.resume=auto` continues the lineage of LINEAGE.json: its newest verified checkpoint, else
  its origin, else step 0 (it began fresh and committed nothing yet); in a folder without
  LINEAGE.json, the newest verified checkpoint by commit order;
- `train.resume=PATH` starts a new lineage from PATH (a rollback), unless LINEAGE.json says the
  current lineage began at PATH and has committed since, or PATH is the current lineage's newest
  checkpoint: then it continues (a requeue of the same job passes the same PATH).

A save never writes into a committed folder: a step whose `step_N` folder is taken (by another
lineage) is saved as `step_N-{lineage}`. Pruning keeps the newest `keep_last` by commit order and
never the checkpoint just committed nor the one the run started from.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

from frozen_scale import storage
from frozen_scale.config import InputError, NotFoundError
from frozen_scale.train import integrity

log = logging.getLogger("frozen_scale.train")

COMMIT_MARKER = "COMMITTED"
PREFIX = "step_"
LINEAGE_FILE = "LINEAGE.json"


def step_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def step_of(entry: str) -> int | None:
    """The step of a checkpoint folder name (`step_N` or `step_N-{lineage}`), None for others."""
    name = storage.base_name(entry)
    if not name.startswith(PREFIX):
        return None
    digits = name[len(PREFIX):].split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


@dataclass
class Committed:
    """One committed checkpoint as its marker describes it."""

    url: str
    step: int
    seq: int
    lineage: str | None
    files: dict | None

    @property
    def name(self) -> str:
        return storage.base_name(self.url)


def list_committed(checkpoint_dir: str, damaged: bool = False) -> list[Committed]:
    """Committed checkpoints, oldest first by commit order (markers without a sequence number,
    from before it was recorded, first, by step). Damaged ones only when `damaged`."""
    fs, root = storage.filesystem(checkpoint_dir, fresh=True)
    if not fs.exists(root):
        return []
    out = []
    for entry in fs.ls(root, detail=False):
        step = step_of(entry)
        if step is None:
            continue
        names = {storage.base_name(p) for p in fs.ls(entry, detail=False)} if fs.isdir(entry) else set()
        if COMMIT_MARKER not in names or (integrity.DAMAGED_MARKER in names and not damaged):
            continue
        url = storage.join(checkpoint_dir, storage.base_name(entry))
        try:
            marker = json.loads(fs.cat_file(storage.join(entry, COMMIT_MARKER)) or b"{}")
        except ValueError:
            marker = {}
        out.append(Committed(url, step, int(marker.get("seq", 0)), marker.get("lineage"), marker.get("files")))
    return sorted(out, key=lambda c: (c.seq, c.step, c.name))


def read_marker(url: str) -> dict:
    try:
        return json.loads(storage.read_bytes(storage.join(url, COMMIT_MARKER)) or b"{}")
    except FileNotFoundError as err:
        raise NotFoundError(f"{url} is not a committed checkpoint (no {COMMIT_MARKER} marker)") from err


def read_lineage(checkpoint_dir: str) -> dict | None:
    url = storage.join(checkpoint_dir, LINEAGE_FILE)
    return storage.read_json(url) if storage.exists(url) else None


def write_lineage(checkpoint_dir: str, lineage: str, origin: str | None) -> None:
    storage.write_json(storage.join(checkpoint_dir, LINEAGE_FILE),
                       {"lineage": lineage, "origin": origin, "started_at": time.time()})


def new_lineage() -> str:
    return uuid.uuid4().hex[:8]


def folder_for(checkpoint_dir: str, step: int, lineage: str) -> str:
    """Where this lineage saves `step`: `step_N`, or `step_N-{lineage}` when `step_N` holds
    another checkpoint's commit marker."""
    plain = storage.join(checkpoint_dir, step_name(step))
    if not storage.exists(storage.join(plain, COMMIT_MARKER)):
        return plain
    other = storage.join(checkpoint_dir, f"{step_name(step)}-{lineage}")
    if storage.exists(storage.join(other, COMMIT_MARKER)):
        raise InputError(f"{other} is already committed: a save never writes into a committed checkpoint")
    return other


def next_seq(checkpoint_dir: str) -> int:
    return 1 + max((c.seq for c in list_committed(checkpoint_dir, damaged=True)), default=0)


def same_url(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and a.rstrip("/") == b.rstrip("/")


def verified(c: Committed) -> bool:
    """Whether every file of `c` matches its marker; a damaged one is set aside, in one line."""
    problem = integrity.verify(c.url, c.files)
    if problem is None:
        return True
    log.warning("checkpoint %s is damaged (%s): set aside (%s marker), trying the previous one",
                c.url, problem, integrity.DAMAGED_MARKER)
    integrity.set_aside(c.url, problem)
    return False


def require_verified(url: str) -> str:
    """`url` when it is a committed checkpoint whose files verify; a one-line error otherwise."""
    marker = read_marker(url)
    if integrity.is_damaged(url):
        raise InputError(f"checkpoint {url} was set aside as damaged ({integrity.DAMAGED_MARKER} marker)")
    problem = integrity.verify(url, marker.get("files"))
    if problem:
        raise InputError(f"checkpoint {url} is damaged: {problem}")
    return url


def newest_verified(candidates: list[Committed]) -> Committed | None:
    for c in reversed(candidates):
        if verified(c):
            return c
    return None


def prune(checkpoint_dir: str, keep_last: int, protect: tuple[str, ...] = ()) -> list[int]:
    """Delete committed checkpoints beyond the newest `keep_last` by commit order (never one in
    `protect`, never a damaged one), and uncommitted leftovers of steps below the newest
    commit's. The marker goes first, so a half-deleted folder is never a committed checkpoint.
    Returns the steps deleted."""
    committed = list_committed(checkpoint_dir)
    if not committed:
        return []
    keep = {c.name for c in committed[-keep_last:]} | {storage.base_name(p) for p in protect if p}
    doomed = [c for c in committed if c.name not in keep]
    fs, root = storage.filesystem(checkpoint_dir)
    newest_step = committed[-1].step
    all_committed = {c.name for c in list_committed(checkpoint_dir, damaged=True)}
    for entry in fs.ls(root, detail=False):
        name, step = storage.base_name(entry), step_of(entry)
        leftover = step is not None and name not in all_committed and step < newest_step \
            and not fs.exists(storage.join(entry, integrity.DAMAGED_MARKER))
        if name in {c.name for c in doomed} or leftover:
            marker = storage.join(entry, COMMIT_MARKER)
            if fs.exists(marker):
                fs.rm(marker)
            fs.rm(entry, recursive=True)
    return [c.step for c in doomed]


@dataclass
class Start:
    """Where a run starts: the checkpoint to resume from (None: step 0), its lineage, and the
    checkpoint that lineage began from."""

    url: str | None
    lineage: str
    origin: str | None


def _lineage_candidates(checkpoint_dir: str, current: dict | None) -> list[Committed]:
    committed = list_committed(checkpoint_dir)
    return [c for c in committed if c.lineage == current["lineage"]] if current else committed


def newest(checkpoint_dir: str) -> str | None:
    """The checkpoint `train.resume=auto` would resume (damaged ones set aside), or None."""
    current = read_lineage(checkpoint_dir)
    found = newest_verified(_lineage_candidates(checkpoint_dir, current))
    if found:
        return found.url
    if current and current.get("origin"):
        return require_verified(current["origin"])
    if not current and list_committed(checkpoint_dir, damaged=True):
        raise InputError(f"no checkpoint under {checkpoint_dir} verifies: every committed one is damaged")
    return None


def resolve_start(resume: str, checkpoint_dir: str, allow_fresh: bool) -> Start:
    """Decide where this run starts (see the module docstring) and record its lineage. Rank 0."""
    current = read_lineage(checkpoint_dir)
    if resume == "":
        committed = list_committed(checkpoint_dir)
        if committed and not allow_fresh:
            raise InputError(
                f"{checkpoint_dir} already holds committed checkpoints (newest {committed[-1].name}): resume "
                "with train.resume=auto or a checkpoint path, choose another train.run_dir / checkpoint.dir, "
                "or start a new lineage beside them with checkpoint.allow_fresh_start=true")
        start = Start(None, new_lineage(), None)
    elif resume == "auto":
        url = newest(checkpoint_dir)
        if current:
            start = Start(url, current["lineage"], current.get("origin"))
        else:
            marker = read_marker(url) if url else {}
            start = Start(url, marker.get("lineage") or new_lineage(), None)
    else:
        require_verified(resume)
        start = _explicit(resume, checkpoint_dir, current)
    if not current or current["lineage"] != start.lineage:
        write_lineage(checkpoint_dir, start.lineage, start.origin)
        if start.url and resume not in ("", "auto"):
            log.info("rollback to %s: new checkpoint lineage %s", start.url, start.lineage)
    return start


def _explicit(resume: str, checkpoint_dir: str, current: dict | None) -> Start:
    if current:
        mine = _lineage_candidates(checkpoint_dir, current)
        if same_url(current.get("origin"), resume) and mine:  # a requeue of the job that rolled back
            return Start(newest(checkpoint_dir), current["lineage"], current["origin"])
        if same_url(current.get("origin"), resume) or (mine and same_url(mine[-1].url, resume)):
            return Start(resume, current["lineage"], current.get("origin"))
    return Start(resume, new_lineage(), resume)
