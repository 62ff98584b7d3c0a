"""Options of a preparation job: how samples are fetched, checked, resized and written."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_MAX_CAPTION_CHARS = 2000
"""Web alt-texts past a few hundred characters are page text, not captions: 2000 characters is
several hundred tokens, beyond what training keeps (data.max_text_len); it also bounds what one
CSV field may hold (the reader's field limit follows it)."""
RESIZE_MODES = ("keep_ratio", "center_crop", "border", "no")
ENCODE_FORMATS = ("jpg", "webp", "png")
USER_AGENT = "frozen_scale-data-prep/0.1 (image-text dataset preparation; honours X-Robots-Tag noai/noimageai)"
UA_TOKEN = "frozen_scale"


@dataclass
class FetchOptions:
    timeout_s: float = 10.0
    """The whole download's deadline: connecting, TLS, headers, body, redirects and retries."""
    retries: int = 2
    """Extra attempts for transient failures (HTTP 5xx/429, connection errors)."""
    backoff_s: float = 0.5
    """First retry waits this long, then doubles."""
    max_bytes: int = 20 * 1024 * 1024
    """Downloads larger than this are rejected (too_many_bytes)."""
    user_agent: str = USER_AGENT
    disallowed_directives: tuple[str, ...] = ("noai", "noimageai")
    """X-Robots-Tag directives that opt an image out (generic or addressed to frozen_scale)."""
    allow_hosts: tuple[str, ...] = ()
    """HOST or HOST:PORT (as named in URLs) exempt from the private-network guard: an internal
    image server. Every other host resolving to a loopback, private, link-local, multicast or
    unspecified address is refused (private_address); see data_prep.netguard."""
    allow_private_network: bool = False
    """Turn the private-network guard off altogether."""

    def __post_init__(self):
        from data_prep.netguard import parse_allowed

        if self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        self.allow_hosts = tuple(self.allow_hosts)
        for entry in self.allow_hosts:
            parse_allowed(entry)


@dataclass
class ImageOptions:
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    """keep_ratio: shorter side -> image_size; center_crop: then crop to a square;
    border: longer side -> image_size, padded to a square; no: keep as decoded."""
    no_upscale: bool = False
    """Only ever shrink: images smaller than the target keep their size."""
    encode_format: str = "jpg"
    encode_quality: int = 95
    """jpeg/webp quality (1-100); for png the zlib level is derived from it."""
    max_pixels: int = 89_478_485
    """Decompression-bomb guard: width*height above this is rejected before decoding."""
    min_side: int = 0
    """Images whose shorter side (original) is below this are filtered out."""
    max_aspect_ratio: float = 0.0
    """Images with longer/shorter side above this are filtered (0: no limit)."""
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS
    """Captions longer than this are filtered (0: no limit)."""
    allow_empty_caption: bool = False

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode '{self.resize_mode}' is not one of {', '.join(RESIZE_MODES)}")
        if self.encode_format not in ENCODE_FORMATS:
            raise ValueError(f"encode format '{self.encode_format}' is not one of {', '.join(ENCODE_FORMATS)}")
        if not 1 <= self.encode_quality <= 100:
            raise ValueError(f"encode quality must be in 1..100, got {self.encode_quality}")
        if self.image_size < 1:
            raise ValueError(f"image size must be positive, got {self.image_size}")


@dataclass
class JobOptions:
    samples_per_shard: int = 10_000
    threads: int = 16
    """Concurrent downloads+decodes inside one shard task."""
    dedup_urls: bool = True
    dedup_images: bool = True
    fetch: FetchOptions = field(default_factory=FetchOptions)
    image: ImageOptions = field(default_factory=ImageOptions)

    def __post_init__(self):
        if self.samples_per_shard < 1:
            raise ValueError(f"samples per shard must be positive, got {self.samples_per_shard}")
        if self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads}")

    def fingerprint(self) -> dict:
        """What decides which row lands in which shard and how it looks: must match on resume."""
        d = asdict(self)
        d.pop("threads")
        d["fetch"] = {"max_bytes": self.fetch.max_bytes}
        return d
