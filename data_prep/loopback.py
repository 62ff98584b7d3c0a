"""A loopback HTTP server for image URLs, for tests and benchmarks: 127.0.0.1 only.

    with ImageServer() as srv:
        url = srv.add("/a.jpg", jpeg_bytes)                       # plain 200
        srv.add("/flaky.png", png, fail_first=1)                  # 500 once, then 200
        srv.add("/slow.png", png, delay_s=3)                      # slower than a timeout
        srv.add("/optout.png", png, headers={"X-Robots-Tag": "noai"})
        srv.add("/drip", b"", content_length=10_000_000, drip=(64, 0.5))   # 64 bytes every 0.5 s
        srv.add("/stall", b"", content_length=1000, stall_s=60)            # headers, then nothing
        srv.add("/slowhead", png, header_drip=(1, 0.1))                    # headers a byte at a time

`srv.hits[path]` counts requests per path. The data_prep guard refuses loopback addresses: jobs
reading from it are given `allow_hosts=(srv.origin,)` (`--allow-host` on the command line).
"""

from __future__ import annotations

import collections
import io
import struct
import threading
import zlib
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    fail_first: int = 0
    content_length: int | None = None
    """Content-Length sent instead of the body's length (for drips and stalls)."""
    drip: tuple[int, float] | None = None
    """(bytes, seconds): the body sent that many bytes at a time with that pause between."""
    stall_s: float = 0.0
    """Pause after the headers, before the body."""
    header_drip: tuple[int, float] | None = None
    """(bytes, seconds): the status line and headers sent that slowly (a long header pads them)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv: ImageServer = self.server.owner
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.hits[path] += 1
            n = srv.hits[path]
            srv.user_agents.add(self.headers.get("User-Agent", ""))
        route = srv.routes.get(path)
        if route is None:
            return self._send(404, b"not found", "text/plain", {})
        if route.delay_s:
            time.sleep(route.delay_s)
        if n <= route.fail_first:
            return self._send(500, b"try again", "text/plain", {})
        if route.drip or route.stall_s or route.header_drip or route.content_length is not None:
            return self._send_slowly(route, srv)
        self._send(route.status, route.body, route.content_type, route.headers)

    def _send(self, status, body, ctype, headers):
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                for value in v if isinstance(v, list) else [v]:
                    self.send_header(k, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_slowly(self, route: Route, srv: "ImageServer"):
        length = len(route.body) if route.content_length is None else route.content_length
        head = (f"HTTP/1.1 {route.status} OK\r\nContent-Type: {route.content_type}\r\n"
                f"Content-Length: {length}\r\n").encode()
        if route.header_drip:
            head += b"X-Padding: " + b"p" * 2000 + b"\r\n"
        head += b"\r\n"
        self.close_connection = True
        try:
            self._trickle(head, route.header_drip, srv)
            if route.stall_s and srv.stopped.wait(route.stall_s):
                return
            body = route.body or b"\0" * 64
            sent = 0
            while sent < length and not srv.stopped.is_set():
                step = route.drip[0] if route.drip else length - sent
                piece = (body * (step // len(body) + 2))[: min(step, length - sent)]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if route.drip and srv.stopped.wait(route.drip[1]):
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _trickle(self, data: bytes, drip, srv):
        if not drip:
            self.wfile.write(data)
            self.wfile.flush()
            return
        for i in range(0, len(data), drip[0]):
            self.wfile.write(data[i:i + drip[0]])
            self.wfile.flush()
            if srv.stopped.wait(drip[1]):
                return


class ImageServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.hits: collections.Counter = collections.Counter()
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # clients that hang up early
        self.httpd.owner = self
        self.origin = f"{host}:{self.httpd.server_address[1]}"
        self.base = f"http://{self.origin}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes, **kwargs) -> str:
        self.routes[path] = Route(body, **kwargs)
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> "ImageServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def make_image(width: int, height: int, fmt: str = "JPEG", seed: int = 0, quality: int = 90) -> bytes:
    """A real encoded image with content that differs by seed (smooth gradients plus noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype("float32")
    f = rng.uniform(0.005, 0.05, size=(3, 2))
    phase = rng.uniform(0, 6.3, size=3)
    base = np.stack([128 + 100 * np.sin(x * f[c, 0] + y * f[c, 1] + phase[c]) for c in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def bomb_png(side: int = 12_000) -> bytes:
    """A small, valid 1-bit PNG of side x side pixels: a decompression bomb for pixel limits."""
    raw = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    parts = [raw.compress(row * 1000) for _ in range(side // 1000)]
    parts.append(raw.compress(row * (side % 1000)))
    parts.append(raw.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))
