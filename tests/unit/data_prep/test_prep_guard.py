"""Downloads against hostile servers and hostile URLs: a deadline no slow sender can stretch, and
the private-network guard (refused before any connection; opt-ins per host or altogether).
Every server here is a loopback server the test starts; every refused address is checked never
to have been connected to (socket.connect is recorded, and refuses anything but loopback)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pyarrow.parquet as pq
import pytest

from data_prep import cli
from data_prep.fetch import fetch_url
from data_prep.loopback import ImageServer, make_image
from data_prep.netguard import AddressPolicy, address_is_public, parse_allowed
from data_prep.options import FetchOptions, ImageOptions, JobOptions
from data_prep.shard import LocalRegistry, write_shard
from data_prep.sources import UrlTable, units

TIMEOUT = 2.0
MARGIN = 1.0  # the bound: a failed download ends within --timeout + 1 s
JPEG = make_image(64, 48, "JPEG", seed=1)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        srv.add("/ok.jpg", JPEG)
        srv.add("/drip", b"", content_length=10_000_000, drip=(64, 0.5))
        srv.add("/stall", b"", content_length=1000, stall_s=60)
        srv.add("/slow-headers", JPEG, header_drip=(1, 0.05))
        yield srv


@pytest.fixture
def connects(monkeypatch):
    """Every address a socket connects to; anything but loopback is refused without connecting."""
    seen: list[tuple] = []
    real = socket.socket.connect

    def connect(sock, address):
        seen.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a test download tried to connect to {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def timed_fetch(url: str, opts: FetchOptions):
    start = time.monotonic()
    got = fetch_url(url, opts)
    return got, time.monotonic() - start


@pytest.mark.parametrize("path", ["/drip", "/stall", "/slow-headers"])
def test_a_slow_sender_cannot_stretch_the_deadline(server, path):
    # /drip: 64 bytes every 0.5 s of a declared 10 MB (it would take a day); /stall: headers then
    # silence; /slow-headers: the headers a byte every 50 ms (over 100 s of them)
    opts = FetchOptions(timeout_s=TIMEOUT, retries=2, allow_hosts=(server.origin,))
    got, seconds = timed_fetch(server.url(path), opts)
    assert got.error == "timeout" and got.data is None
    assert seconds <= TIMEOUT + MARGIN, f"{path} held the download {seconds:.1f} s"
    assert got.attempts == 1  # a timeout is not retried: it would start a second wait


def test_the_deadline_holds_through_a_shard_and_is_counted(server, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("url,caption\n" + "".join(f"{server.url(p)},{p}\n" for p in ("/ok.jpg", "/drip", "/stall")))
    opts = JobOptions(samples_per_shard=10, threads=3, image=ImageOptions(image_size=16),
                      fetch=FetchOptions(timeout_s=TIMEOUT, allow_hosts=(server.origin,)))
    (unit,) = list(units(UrlTable(str(table)), 10))
    start = time.monotonic()
    stats = write_shard(unit, str(tmp_path / "out"), opts, registry=LocalRegistry())
    assert time.monotonic() - start <= TIMEOUT + MARGIN + 2  # + the shard's own writing, on a loaded machine
    assert stats["status_counts"] == {"success": 1, "failed_to_download": 2}
    assert stats["error_histogram"] == {"timeout": 2}


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("172.32.0.1", True), ("2606:4700:4700::1111", True),
    ("::ffff:8.8.8.8", True),
    ("127.0.0.1", False), ("127.9.9.9", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("172.31.255.255", False), ("192.168.1.1", False), ("169.254.169.254", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("239.255.255.250", False), ("100.64.0.1", False), ("255.255.255.255", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("fd12:3456::1", False),
    ("ff02::1", False), ("fec0::1", False), ("::ffff:10.0.0.1", False), ("::ffff:127.0.0.1", False),
    ("64:ff9b::a9fe:a9fe", False), ("2002:c0a8:101::1", False),
])
def test_address_classes(address, public):
    assert address_is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("entry,parsed", [
    ("images.internal", ("images.internal", None)), ("Images.Internal.:8080", ("images.internal", 8080)),
    ("10.0.0.5:80", ("10.0.0.5", 80)), ("[::1]:9000", ("::1", 9000)), ("[::1]", ("::1", None)),
    ("0:0::1", ("::1", None)),
])
def test_allow_host_entries(entry, parsed):
    assert parse_allowed(entry) == parsed


@pytest.mark.parametrize("entry", ["host:0", "host:99999", "host:http", "[::1", "a/b", ""])
def test_bad_allow_host_entries_are_user_errors(entry):
    with pytest.raises(ValueError, match="allow-host"):
        FetchOptions(allow_hosts=(entry,))


def test_refused_rows_are_counted_and_never_connected_to(server, tmp_path, connects):
    with ImageServer() as other:  # loopback too, but not allowed: the redirect must not reach it
        other.add("/x.jpg", make_image(40, 30, "JPEG", seed=2))
        server.add("/away", b"", status=302, headers={"Location": other.url("/x.jpg")})
        server.add("/to-localhost", b"", status=301,
                   headers={"Location": f"http://localhost:{server.origin.rsplit(':', 1)[1]}/ok.jpg"})
        port = server.origin.rsplit(":", 1)[1]
        urls = [server.url("/ok.jpg"),                       # allowed origin: fetched
                f"http://localhost:{port}/ok.jpg",           # the same server by another name: refused
                "http://169.254.169.254/latest/meta-data/",  # the cloud metadata address
                f"http://[::1]:{port}/ok.jpg",
                server.url("/away"),                         # allowed origin -> another loopback port
                server.url("/to-localhost"),
                "http://10.0.0.1/a.jpg", "http://192.168.1.1/a.jpg", "http://172.16.5.4/a.jpg",
                "http://2130706433/a.jpg"]                   # 127.0.0.1 as a number
        table = tmp_path / "t.csv"
        table.write_text("url,caption\n" + "".join(f"{u},row {i}\n" for i, u in enumerate(urls)))
        opts = JobOptions(samples_per_shard=20, threads=4, image=ImageOptions(image_size=16),
                          fetch=FetchOptions(timeout_s=5, allow_hosts=(server.origin,)))
        (unit,) = list(units(UrlTable(str(table)), 20))
        stats = write_shard(unit, str(tmp_path / "out"), opts, registry=LocalRegistry())
        assert other.hits["/x.jpg"] == 0

    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [(r["status"], r["error_message"]) for r in rows] == (
        [("success", None)] + [("failed_to_download", "private_address")] * (len(urls) - 1))
    assert stats["error_histogram"] == {"private_address": len(urls) - 1}
    # (the allowed origin's connection may be a kept-alive one: then nothing new was connected)
    assert all(a == ("127.0.0.1", int(port)) for a in connects), f"connected elsewhere: {connects}"


def test_the_checked_address_is_the_one_connected_to(server, connects, monkeypatch):
    """One lookup per connection: a second answer (DNS rebinding) is never used."""
    port = int(server.origin.rsplit(":", 1)[1])
    answers = iter([("127.0.0.1", port), ("10.9.9.9", port), ("10.9.9.9", port)])
    lookups = []

    def getaddrinfo(host, p, *args, **kwargs):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", next(answers))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    opts = FetchOptions(timeout_s=5, allow_hosts=(f"rebind.test:{port}",))
    got = fetch_url(f"http://rebind.test:{port}/ok.jpg", opts)
    assert got.error is None and got.data == JPEG
    assert lookups == ["rebind.test"] and connects == [("127.0.0.1", port)]


def test_guard_opt_ins(server, connects):
    url = server.url("/ok.jpg")
    assert fetch_url(url, FetchOptions(timeout_s=5)).error == "private_address"
    assert fetch_url(url, FetchOptions(timeout_s=5, allow_hosts=("127.0.0.1",))).data == JPEG  # any port
    assert fetch_url(url, FetchOptions(timeout_s=5, allow_hosts=("127.0.0.1:1",))).error == "private_address"
    assert fetch_url(url, FetchOptions(timeout_s=5, allow_private_network=True)).data == JPEG
    # a kept-alive connection opened under a permissive policy is not reused under a strict one
    assert fetch_url(url, FetchOptions(timeout_s=5)).error == "private_address"
    assert not AddressPolicy().exempt("127.0.0.1", 80)


def test_cli_allow_host_errors_are_one_line(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    assert cli.main(["urls", str(table), "--out", str(tmp_path / "o"), "--allow-host", "host:99999"]) == 2
    err = capsys.readouterr().err.strip()
    assert "port" in err and "\n" not in err and "Traceback" not in err


def test_the_watchdog_keeps_up_with_many_downloads(server):
    """Many short downloads at once, each with its deadline registered: none is cut short."""
    opts = FetchOptions(timeout_s=30, allow_hosts=(server.origin,))
    errors = []

    def worker():
        for _ in range(20):
            got = fetch_url(server.url("/ok.jpg"), opts)
            if got.data != JPEG:
                errors.append(got.error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("url,host_header,target", [
    ("http://h/a b/ü.jpg?x=1&y=ä", "h", "/a%20b/%C3%BC.jpg?x=1&y=%C3%A4"),
    ("http://h/100%.jpg", "h", "/100%25.jpg"),
    ("http://h/a%20b.jpg", "h", "/a%20b.jpg"),
    ("http://H:8080", "h:8080", "/"),
    ("http://[::1]:81/x#fragment", "[::1]:81", "/x"),
    ("https://bücher.example/x", "xn--bcher-kva.example", "/x"),
    ("https://h:443/x", "h", "/x"),
])
def test_request_targets(url, host_header, target):
    from data_prep.fetch import _target

    t = _target(url)
    assert (t.host_header, t.path) == (host_header, target)


@pytest.mark.parametrize("url,error", [
    ("http://h:99999/x", "invalid_url"), ("http:///x", "invalid_url"), ("ftp://h/x", "unsupported_scheme"),
    ("http://unknown.test/x", "dns_error"),
])
def test_bad_urls_are_counted_not_raised(url, error, connects, monkeypatch):
    def no_such_name(*args, **kwargs):  # no lookup leaves this machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    assert fetch_url(url, FetchOptions(timeout_s=5, retries=0)).error == error
    assert connects == []


def test_a_url_with_spaces_and_non_ascii_reaches_its_file(server):
    server.add("/a%20b/%C3%BC.jpg", JPEG)
    got = fetch_url(server.url("/a b/ü.jpg"), FetchOptions(timeout_s=5, allow_hosts=(server.origin,)))
    assert got.data == JPEG
