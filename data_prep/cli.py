"""`frozen-scale prep ...`: corpora -> webdataset shards (Ray).

    frozen-scale prep urls TABLE --out URL [--url-col url --caption-col caption --extra-cols a,b]
    frozen-scale prep folder DIR --out URL [--captions captions.jsonl]
    frozen-scale prep coco CAPTIONS.json --out URL [--images-root DIR]
    frozen-scale prep NAME --out URL ...     a registered generated source (the built-in world's:
                                             synthetic --count N [--seed 0 --split train])

Every command takes the shard, image, download and Ray options below. Re-running a command with
the same input, output and options resumes it (committed shards are skipped). Downloads never
reach loopback, private or link-local addresses unless allowed (--allow-host, --allow-private-network).
"""

from __future__ import annotations

import argparse
import json
import sys

from data_prep.options import ENCODE_FORMATS, RESIZE_MODES, FetchOptions, ImageOptions, JobOptions


def _storage_options(pairs: list[str]) -> dict:
    """key=value pairs; values parsed as JSON when they can be (so endpoint dicts work)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option expects key=value, got '{pair}'")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _common(p: argparse.ArgumentParser, image_size: int = 256) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder URL (path, file://, s3://, gs://, ...)")
    g.add_argument("--samples-per-shard", type=int, default=10_000)
    g.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec storage option for input and output (repeatable), e.g. "
                        'client_kwargs=\'{"endpoint_url": "http://host:9000"}\'')
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=int, default=image_size)
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="keep_ratio")
    g.add_argument("--no-upscale", action="store_true", help="never enlarge small images")
    g.add_argument("--encode-format", choices=ENCODE_FORMATS, default="jpg")
    g.add_argument("--encode-quality", type=int, default=95)
    g.add_argument("--max-pixels", type=int, default=ImageOptions.max_pixels,
                   help="decompression-bomb limit on width*height")
    g.add_argument("--min-side", type=int, default=0, help="filter images whose shorter side is smaller")
    g.add_argument("--max-aspect-ratio", type=float, default=0.0, help="filter longer/shorter side above this")
    g.add_argument("--max-caption-chars", type=int, default=ImageOptions.max_caption_chars,
                   help="filter longer captions (0: no limit); also bounds a CSV field")
    g.add_argument("--allow-empty-caption", action="store_true")
    g.add_argument("--no-dedup", action="store_true", help="keep repeated URLs and identical images")
    g = p.add_argument_group("downloads")
    g.add_argument("--timeout", type=float, default=FetchOptions.timeout_s,
                   help="seconds per download, all of it: connecting, redirects, retries, however slow the server")
    g.add_argument("--retries", type=int, default=FetchOptions.retries, help="retries of 5xx/connection errors")
    g.add_argument("--max-bytes", type=int, default=FetchOptions.max_bytes)
    g.add_argument("--threads", type=int, default=16, help="concurrent downloads per shard task")
    g.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="a host (as named in the URLs; optionally one port) exempt from the private-network "
                        "guard, e.g. an internal image server (repeatable)")
    g.add_argument("--allow-private-network", action="store_true",
                   help="turn the guard off: URLs may reach loopback, private and link-local addresses")
    g = p.add_argument_group("ray")
    g.add_argument("--address", default=None,
                   help="Ray cluster address, or auto for the one running here (default: a new local Ray)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    g.add_argument("--max-in-flight", type=int, default=None,
                   help="shard tasks submitted at once (default: the CPUs of the Ray cluster)")
    g.add_argument("--task-retries", type=int, default=3, help="retries of a shard task after a worker death")
    g.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frozen-scale prep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from data_prep.generated import generators

    made = generators()
    names = ",".join(["urls", "folder", "coco", *made])
    sub = parser.add_subparsers(dest="source", required=True, metavar="{" + names + "}")
    p = sub.add_parser("urls", help="a table of image URLs and captions (parquet/csv/tsv/json/jsonl/txt)")
    p.add_argument("table", help="file or folder of files (local or any fsspec URL)")
    p.add_argument("--input-format", default=None,
                   help="parquet, csv, tsv, json, jsonl or txt (default: by extension)")
    p.add_argument("--url-col", default="url")
    p.add_argument("--caption-col", default="caption", help="'' for no captions")
    p.add_argument("--extra-cols", default="", help="comma-separated columns kept in each sample's .json")
    _common(p)
    p = sub.add_parser("folder", help="a local or remote folder of images with captions")
    p.add_argument("folder")
    p.add_argument("--captions", default=None, help='jsonl of {"file": relative path, "caption": ...}; '
                                                    "default: sidecar <image stem>.txt files")
    _common(p)
    p = sub.add_parser("coco", help="a COCO-style captions json")
    p.add_argument("captions")
    p.add_argument("--images-root", default=None, help="folder holding file_name; default: download coco_url")
    _common(p)
    for gen in made.values():
        p = sub.add_parser(gen.name, help=gen.help)
        gen.add_arguments(p)
        _common(p, image_size=gen.image_size)
    return parser


def _options(a: argparse.Namespace) -> JobOptions:
    from data_prep.generated import generators

    made = a.source in generators()  # made, not fetched: nothing to resize, fetch or dedup
    image = ImageOptions(image_size=a.image_size, resize_mode="no" if made else a.resize_mode,
                         no_upscale=a.no_upscale, encode_format=a.encode_format,
                         encode_quality=a.encode_quality, max_pixels=a.max_pixels, min_side=a.min_side,
                         max_aspect_ratio=a.max_aspect_ratio, max_caption_chars=a.max_caption_chars,
                         allow_empty_caption=a.allow_empty_caption)
    fetch = FetchOptions(timeout_s=a.timeout, retries=a.retries, max_bytes=a.max_bytes,
                         allow_hosts=tuple(a.allow_host), allow_private_network=a.allow_private_network)
    return JobOptions(samples_per_shard=a.samples_per_shard, threads=1 if made else a.threads,
                      dedup_urls=not a.no_dedup and not made,
                      dedup_images=not a.no_dedup and not made, fetch=fetch, image=image)


def _source(a: argparse.Namespace, storage_options: dict):
    from data_prep import file_sources, sources

    if a.source == "urls":
        extra = [c.strip() for c in a.extra_cols.split(",") if c.strip()]
        return sources.UrlTable(a.table, url_col=a.url_col, caption_col=a.caption_col or None,
                                extra_cols=extra, input_format=a.input_format, storage_options=storage_options,
                                max_field_chars=a.max_caption_chars)
    if a.source == "folder":
        return file_sources.ImageFolder(a.folder, captions=a.captions, storage_options=storage_options)
    if a.source == "coco":
        return file_sources.CocoCaptions(a.captions, images_root=a.images_root, storage_options=storage_options)
    from data_prep.generated import generators

    return generators()[a.source].build(a)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from data_prep.manifest import JobMismatch
    from data_prep.pipeline import PrepIncomplete, run_job
    from data_prep.sources import SourceError

    try:
        storage_options = _storage_options(args.storage_option)
        opts = _options(args)
        source = _source(args, storage_options)
        manifest = run_job(source, args.out, opts, storage_options=storage_options, address=args.address,
                           num_cpus=args.num_cpus, max_in_flight=args.max_in_flight,
                           max_retries=args.task_retries, progress=not args.no_progress)
    except PrepIncomplete as err:
        print(f"frozen-scale prep: {err}", file=sys.stderr)
        return 1
    except (SourceError, JobMismatch, ValueError, FileNotFoundError, PermissionError) as err:
        print(f"frozen-scale prep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frozen-scale prep: interrupted; committed shards are kept, re-run to resume", file=sys.stderr)
        return 130
    print(f"wrote {manifest['num_samples']} samples in {len(manifest['shards'])} shards "
          f"({manifest['num_rows']} rows) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
