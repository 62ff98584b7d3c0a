"""data_prep pieces without Ray: imaging, X-Robots-Tag, sources (formats, folders, COCO),
the CLI's user errors."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_prep import cli
from data_prep.fetch import robots_opt_out
from data_prep.imaging import ImageRejected, process_image
from data_prep.loopback import make_image
from data_prep.options import ImageOptions, JobOptions
from data_prep.shard import LocalRegistry, write_shard
from data_prep.file_sources import CocoCaptions, ImageFolder
from data_prep.sources import SourceError, UrlTable, units


@pytest.mark.parametrize("mode,no_upscale,src,expected", [
    ("keep_ratio", False, (400, 200), (128, 64)),
    ("center_crop", False, (400, 200), (64, 64)),
    ("border", False, (400, 200), (64, 64)),
    ("no", False, (400, 200), (400, 200)),
    ("keep_ratio", True, (40, 30), (40, 30)),
    ("keep_ratio", False, (40, 30), (85, 64)),
    ("center_crop", True, (40, 30), (40, 30)),
])
def test_resize_modes(mode, no_upscale, src, expected):
    opts = ImageOptions(image_size=64, resize_mode=mode, no_upscale=no_upscale, encode_format="png")
    out = process_image(make_image(*src, "JPEG", seed=1), opts)
    img = Image.open(io.BytesIO(out.data))
    assert img.size == expected == (out.width, out.height) and (out.original_width, out.original_height) == src


def test_border_pads_and_jpeg_is_decoded_at_reduced_scale():
    big = make_image(1600, 1200, "JPEG", seed=2)
    out = process_image(big, ImageOptions(image_size=100, resize_mode="border", encode_format="jpg"))
    img = Image.open(io.BytesIO(out.data)).convert("RGB")
    assert img.size == (100, 100)
    assert max(img.getpixel((50, 2))) < 20 and max(img.getpixel((50, 97))) < 20  # black bars top and bottom
    probe = Image.open(io.BytesIO(big))
    probe.draft("RGB", (134, 100))
    assert probe.size == (200, 150)  # libjpeg's 1/8 scale is what the decoder gets asked for


@pytest.mark.parametrize("fmt,pil", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encoders(fmt, pil):
    out = process_image(make_image(90, 70, "PNG", seed=3), ImageOptions(image_size=32, encode_format=fmt))
    assert Image.open(io.BytesIO(out.data)).format == pil


def test_rgba_and_grey_images_become_rgb():
    for mode in ("RGBA", "L", "P"):
        buf = io.BytesIO()
        Image.new(mode, (40, 40)).save(buf, "PNG")
        out = process_image(buf.getvalue(), ImageOptions(image_size=16, encode_format="png"))
        assert Image.open(io.BytesIO(out.data)).mode == "RGB"


def test_pixel_limit_rejects_before_decoding():
    with pytest.raises(ImageRejected) as err:
        process_image(make_image(300, 300, "PNG"), ImageOptions(max_pixels=300 * 299))
    assert err.value.reason == "decompression_bomb"


@pytest.mark.parametrize("values,opted_out", [
    (["noai"], True), (["noindex, NoImageAI"], True), (["otherbot: noai"], False),
    (["frozen_scale: noai"], True), (["noindex"], False), (["nofollow", "noai"], True), ([], False),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
])
def test_robots_tag(values, opted_out):
    assert robots_opt_out(values, ("noai", "noimageai")) is opted_out


def _rows(source, n=100):
    return [r for u in units(source, n) for r in u.rows]


def test_table_formats_agree(tmp_path):
    recs = [{"url": f"http://127.0.0.1:9/{i}.jpg", "caption": f"cap {i}", "lic": f"l{i}"} for i in range(5)]
    lines = "".join(f"{r['url']},{r['caption']},{r['lic']}\n" for r in recs)
    (tmp_path / "t.csv").write_text("url,caption,lic\n" + lines)
    with gzip.open(tmp_path / "t.tsv.gz", "wt") as f:
        f.write("url\tcaption\tlic\n" + "".join(f"{r['url']}\t{r['caption']}\t{r['lic']}\n" for r in recs))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "t.json").write_text(json.dumps(recs))
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet")
    expected = None
    for name in ("t.csv", "t.tsv.gz", "t.jsonl", "t.json", "t.parquet"):
        table = UrlTable(str(tmp_path / name), extra_cols=["lic"])
        got = [(r["key"], r["url"], r["caption"], r["extra"]) for r in _rows(table)]
        expected = expected or got
        assert got == expected and len(got) == 5, name
    assert expected[4] == ("000000004", recs[4]["url"], "cap 4", {"lic": "l4"})


def test_folder_of_tables_numbers_rows_across_files_and_marks_bad_lines(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    (d / "a.jsonl").write_text('{"url": "http://h/1", "caption": "x"}\n{not json\n')
    (d / "b.jsonl").write_text('{"url": "http://h/1", "caption": "same url"}\n{"url": "http://h/3", "caption": "z"}\n')
    rows = _rows(UrlTable(str(d)), n=3)
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert [r.get("error") for r in rows] == [None, "bad_row", "duplicate_url", None]
    assert [u.shard for u in units(UrlTable(str(d)), 3)] == [0, 1]


def test_folder_source_with_sidecars_and_with_captions_file(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / "b.png").write_bytes(make_image(40, 30, "PNG", seed=1))
    (d / "sub" / "a.jpg").write_bytes(make_image(50, 40, "JPEG", seed=2))
    (d / "b.txt").write_text("a sidecar caption\n")
    opts = JobOptions(samples_per_shard=10, threads=2, image=ImageOptions(image_size=16, encode_format="png"))

    (unit,) = list(units(ImageFolder(str(d)), 10))
    stats = write_shard(unit, str(tmp_path / "o1"), opts, registry=LocalRegistry())
    assert stats["status_counts"] == {"success": 1, "filtered": 1}  # sub/a.jpg has no sidecar
    with tarfile.open(tmp_path / "o1" / "00000.tar") as tar:
        assert tar.extractfile("000000000.txt").read() == b"a sidecar caption"
        assert json.loads(tar.extractfile("000000000.json").read())["path"] == "b.png"

    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"file": "sub/a.jpg", "caption": "nested", "author": "me"}) + "\n")
    (unit,) = list(units(ImageFolder(str(d), captions=str(caps)), 10))
    stats = write_shard(unit, str(tmp_path / "o2"), opts, registry=LocalRegistry())
    assert stats["num_samples"] == 1 and stats["error_histogram"] == {"empty_caption": 1}
    with tarfile.open(tmp_path / "o2" / "00000.tar") as tar:
        assert json.loads(tar.extractfile("000000001.json").read())["author"] == "me"


def test_coco_source(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "x.jpg").write_bytes(make_image(64, 48, "JPEG", seed=4))
    coco = {"images": [{"id": 7, "file_name": "x.jpg"}, {"id": 3, "file_name": "missing.jpg"}],
            "annotations": [{"image_id": 7, "caption": "first"}, {"image_id": 7, "caption": "second"},
                            {"image_id": 3, "caption": "lost"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    (unit,) = list(units(CocoCaptions(str(tmp_path / "captions.json"), images_root=str(root)), 10))
    opts = JobOptions(samples_per_shard=10, threads=2, image=ImageOptions(image_size=16, encode_format="png"))
    stats = write_shard(unit, str(tmp_path / "o"), opts, registry=LocalRegistry())
    assert stats["error_histogram"] == {"file_not_found": 1}
    with tarfile.open(tmp_path / "o" / "00000.tar") as tar:  # sorted by id: image 3 is row 0
        meta = json.loads(tar.extractfile("000000001.json").read())
        assert meta["captions"] == ["first", "second"] and tar.extractfile("000000001.txt").read() == b"first"


@pytest.mark.parametrize("argv,message", [
    (["urls", "/nonexistent/t.csv", "--out", "/tmp/x"], "does not exist"),
    (["urls", "{table}", "--out", "{out}", "--url-col", "link"], "no column 'link'"),
    (["urls", "{table}", "--out", "{out}", "--encode-quality", "0"], "quality"),
    (["urls", "{out}/t.xlsx", "--out", "{out}"], "does not exist"),
    (["folder", "/nonexistent", "--out", "{out}"], "not a folder"),
    (["synthetic", "--count", "3", "--split", "nope", "--out", "{out}"], "unknown split"),
    (["urls", "{table}", "--out", "{out}", "--storage-option", "novalue"], "key=value"),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, message):
    table = tmp_path / "t.csv"
    table.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    argv = [a.format(table=table, out=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_cli_unknown_extension_is_explained(tmp_path, capsys):
    (tmp_path / "t.xlsx").write_text("x")
    assert cli.main(["urls", str(tmp_path / "t.xlsx"), "--out", str(tmp_path / "o")]) == 2
    assert "--input-format" in capsys.readouterr().err
