"""Inputs -> numbered rows -> shard-sized work units.

A row is a plain dict (it travels to Ray workers):
    row      its number in the input, 0-based; decides its shard (row // samples_per_shard)
    key      webdataset __key__, derived from the row (None: the worker derives it)
    kind     "url" (http download), "file" (fsspec read) or "generated" (`data_prep.generated`)
    url      for url/file rows
    caption  str or None; caption_url: a sidecar file holding it (folder sources)
    extra    columns kept in the sample's .json
    error    a failure already known in the driver (duplicate_url, caption_not_utf8, bad_row)

URL tables follow img2dataset's conventions: one file or a folder of them, formats txt, csv,
tsv, json, jsonl, parquet (and .gz of the text ones), `url_col`, `caption_col` and additional
columns saved with each sample.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from typing import Iterator

from data_prep.generated import KIND
from frozen_scale import storage

CSV_FIELD_MARGIN = 65536
"""Characters a CSV field may hold beyond the caption limit (a long URL, an extra column)."""
TOO_LONG = "__field_too_long__"
TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class SourceError(ValueError):
    """A user-facing problem with the input (missing file, unknown column, bad format)."""


@dataclass
class Unit:
    shard: int
    rows: list[dict]


def row_key(row: int) -> str:
    return f"{row:09d}"


def _decode_caption(value) -> tuple[str | None, str | None]:
    """(caption, error): bytes or surrogate-escaped text that is not UTF-8 is an error."""
    if value is None:
        return None, None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return value.decode("utf-8", errors="replace"), "caption_not_utf8"
    if not isinstance(value, str):
        return str(value), None
    try:
        value.encode("utf-8")
        return value, None
    except UnicodeEncodeError:
        raw = value.encode("utf-8", errors="surrogateescape")
        return raw.decode("utf-8", errors="replace"), "caption_not_utf8"


def _clean(value):
    """JSON-safe extra column value (no surrogates, no bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)


def detect_format(path: str) -> str:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for fmt in TABLE_FORMATS:
        if name.endswith("." + fmt):
            return fmt
    raise SourceError(f"cannot tell the format of '{path}' from its name; pass --input-format "
                      f"({', '.join(TABLE_FORMATS)})")


class UrlTable:
    """Rows of URL+caption tables (one file or a folder of files of one format)."""

    kind = "url"

    def __init__(self, path: str, *, url_col: str = "url", caption_col: str | None = "caption",
                 extra_cols: list[str] | None = None, input_format: str | None = None,
                 storage_options: dict | None = None, max_field_chars: int = 0):
        self.path, self.url_col, self.caption_col = path, url_col, caption_col
        # a CSV field may hold a caption over the limit (counted as filtered) plus a long URL; 0: csv's default
        self.field_limit = max_field_chars + CSV_FIELD_MARGIN if max_field_chars else csv.field_size_limit()
        self.extra_cols = list(extra_cols or [])
        self.storage_options = storage_options
        fs, p = storage.filesystem(path, storage_options)
        if not fs.exists(p):
            raise SourceError(f"input '{path}' does not exist")
        if fs.isdir(p):
            found = sorted(fs.find(p))
            known = [f for f in found if (_has_format(f, input_format) if input_format else _known(f))]
            if not known:
                raise SourceError(f"input folder '{path}' holds no {input_format or 'table'} files")
            fmt = input_format or detect_format(known[0])
            self.files = [fs.unstrip_protocol(f) for f in known if _has_format(f, fmt)]
        else:
            fmt = input_format or detect_format(p)
            self.files = [path]
        if fmt not in TABLE_FORMATS:
            raise SourceError(f"input format '{fmt}' is not one of {', '.join(TABLE_FORMATS)}")
        self.format = fmt
        # Fail on a wrong column or unreadable file now, before any worker starts.
        try:
            next(iter(getattr(self, f"_read_{fmt}")(self.files[0])), None)
        except (OSError, UnicodeError, ValueError) as err:
            if isinstance(err, SourceError):
                raise
            raise SourceError(f"cannot read '{self.files[0]}' as {fmt}: {err}")

    def describe(self) -> dict:
        return {"type": "urls", "path": self.path, "format": self.format, "url_col": self.url_col,
                "caption_col": self.caption_col, "extra_cols": self.extra_cols}

    def records(self) -> Iterator[dict | None]:
        """Raw records in input order; None for a line that cannot be parsed (still a row)."""
        for f in self.files:
            yield from getattr(self, f"_read_{self.format}")(f)

    def _text(self, f: str):
        return storage.open_url(f, "rt", self.storage_options, compression="infer",
                                encoding="utf-8", errors="surrogateescape", newline="")

    def _read_csv(self, f: str, delimiter: str = ","):
        """Rows of a CSV/TSV file. A field over the field limit is one row counted as
        `caption_too_long` (the reader goes on at the next line); a quote that is never closed
        stops the job with the line it opened on, instead of reading the rest of the file as
        one caption."""
        csv.field_size_limit(self.field_limit)
        with self._text(f) as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            header = next(reader, None)
            if header is None:
                return
            self._check_columns(header, f)
            while True:
                start = reader.line_num + 1
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    if "field limit" in str(err):
                        yield {TOO_LONG: True}
                        continue
                    if "unexpected end of data" in str(err):
                        raise SourceError(f"{f}: line {start}: a quote opened in this row is never closed (the rest "
                                          "of the file would read as one field); fix the table's quoting")
                    yield None
                    continue
                if not values:
                    continue
                yield dict(zip(header, values)) if len(values) == len(header) else None

    def _read_tsv(self, f: str):
        return self._read_csv(f, "\t")

    def _read_jsonl(self, f: str):
        checked = False
        with self._text(f) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    yield None
                    continue
                if not isinstance(rec, dict):
                    yield None
                    continue
                if not checked:
                    self._check_columns(list(rec), f)
                    checked = True
                yield rec

    def _read_json(self, f: str):
        with self._text(f) as fh:
            try:
                data = json.load(fh)
            except ValueError as err:
                raise SourceError(f"'{f}' is not valid JSON: {err}")
        if not isinstance(data, list):
            raise SourceError(f"'{f}' must hold a JSON array of objects")
        if data and isinstance(data[0], dict):
            self._check_columns(list(data[0]), f)
        for rec in data:
            yield rec if isinstance(rec, dict) else None

    def _read_txt(self, f: str):
        if self.url_col != "url" or self.extra_cols:
            raise SourceError("txt input holds one URL per line: it has no columns to choose")
        with self._text(f) as fh:
            for line in fh:
                if line.strip():
                    yield {"url": line.strip()}

    def _read_parquet(self, f: str):
        import pyarrow.parquet as pq

        with storage.open_url(f, "rb", self.storage_options) as fh:
            pf = pq.ParquetFile(fh)
            self._check_columns(pf.schema_arrow.names, f)
            cols = [c for c in [self.url_col, self.caption_col, *self.extra_cols] if c]
            for batch in pf.iter_batches(batch_size=8192, columns=list(dict.fromkeys(cols))):
                yield from batch.to_pylist()

    def _check_columns(self, names: list[str], f: str) -> None:
        wanted = [c for c in [self.url_col, self.caption_col, *self.extra_cols] if c]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise SourceError(f"'{f}' has no column {', '.join(repr(m) for m in missing)}; "
                              f"its columns are: {', '.join(map(str, names))}")

    def rows(self) -> Iterator[dict]:
        for i, rec in enumerate(self.records()):
            row = {"row": i, "key": row_key(i), "kind": "url", "url": None, "caption": None, "extra": {}}
            if rec is None or TOO_LONG in rec:
                row["error"] = "bad_row" if rec is None else "caption_too_long"
                yield row
                continue
            url = rec.get(self.url_col)
            row["url"] = _clean(url) if url is not None else None
            if self.caption_col:
                row["caption"], err = _decode_caption(rec.get(self.caption_col))
                if err:
                    row["error"] = err
            row["extra"] = {c: _clean(rec.get(c)) for c in self.extra_cols}
            if not row["url"]:
                row["error"] = "missing_url"
            yield row


def _known(f: str) -> bool:
    try:
        detect_format(f)
        return True
    except SourceError:
        return False


def _has_format(f: str, fmt: str) -> bool:
    name = f.lower()
    return name.endswith("." + fmt) or name.endswith("." + fmt + ".gz")


def units(source, samples_per_shard: int, dedup_urls: bool = True, skip: set[int] = frozenset(),
          on_total=None) -> Iterator[Unit]:
    """Group rows into shard-sized units (row r -> shard r // samples_per_shard), marking repeated
    URLs (first occurrence wins, deterministic). Units in `skip` are read but not yielded.
    `on_total(rows)` is called once the input has been read to its end."""
    seen: set[bytes] = set()
    batch: list[dict] = []
    shard = 0
    for row in source.rows():
        url = row.get("url")
        if dedup_urls and url and row.get("kind") == "url":
            digest = hashlib.blake2b(url.encode("utf-8", "replace"), digest_size=12).digest()
            if digest in seen and "error" not in row:
                row["error"] = "duplicate_url"
            seen.add(digest)
        assert row["row"] == shard * samples_per_shard + len(batch)
        batch.append(row)
        if len(batch) == samples_per_shard:
            if shard not in skip:
                yield Unit(shard, batch)
            shard, batch = shard + 1, []
    if batch and shard not in skip:
        yield Unit(shard, batch)
    if on_total is not None:
        on_total(shard * samples_per_shard + len(batch))


def count_hint(source) -> int | None:
    """Number of rows if cheaply known (for the progress bar)."""
    if source.kind == KIND:
        return source.count
    if isinstance(source, UrlTable) and source.format == "parquet":
        import pyarrow.parquet as pq

        total = 0
        for f in source.files:
            with storage.open_url(f, "rb", source.storage_options) as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total
    return None
