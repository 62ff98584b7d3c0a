"""The private-network guard: which addresses a download may connect to.

A URL list is untrusted input: a row (or a redirect) naming `localhost`, a cloud metadata address
(169.254.169.254) or an intranet host must not make the job fetch from inside the network it runs
in. Before each connection the host is resolved once, every address it resolves to is checked,
and the connection goes to a checked address (no second lookup a DNS answer could change).

Refused: loopback, private (RFC 1918, unique-local fc00::/7), link-local, shared (100.64/10),
multicast, unspecified, reserved and documentation ranges, IPv6 site-local, and IPv6 forms that
embed a refused IPv4 address (v4-mapped, 6to4, NAT64). A host with any refused address is refused.

Opt-ins: `AddressPolicy(allow_hosts=["images.internal:8080", "10.0.0.5"])` exempts those hosts
(by the name in the URL, optionally one port), `allow_private_network=True` turns the guard off.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class AddressRefused(Exception):
    """The host resolves to an address the policy refuses (reason `private_address`)."""


@functools.lru_cache(maxsize=4096)
def normalize_host(host: str) -> str:
    """Lower-case, no brackets or trailing dot; IP literals in their canonical form."""
    host = host.strip().lower().strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def parse_allowed(entry: str) -> tuple[str, int | None]:
    """'HOST', 'HOST:PORT', '[V6]', '[V6]:PORT' or a bare IPv6 literal -> (host, port or None)."""
    text = entry.strip()
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (text[close + 1:] and not text[close + 1:].startswith(":")):
            raise ValueError(f"--allow-host '{entry}': expected [IPV6] or [IPV6]:PORT")
        host, rest = text[1:close], text[close + 2:]
        port = rest or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or "/" in host or " " in host:
        raise ValueError(f"--allow-host '{entry}': expected HOST or HOST:PORT")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--allow-host '{entry}': port must be a number in 1..65535")
        port = int(port)
    return normalize_host(host), port


def address_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64[0]:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_is_public(embedded)
        if ip in _NAT64[1] or ip.is_site_local:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local
                                 or ip.is_private or ip.is_reserved)


def sockaddr_is_public(sockaddr: tuple) -> bool:
    try:
        return address_is_public(ipaddress.ip_address(sockaddr[0]))
    except ValueError:  # an address we cannot read is not one we can vouch for
        return False


@dataclass(frozen=True)
class AddressPolicy:
    allow_hosts: tuple[str, ...] = ()
    allow_private_network: bool = False

    def __post_init__(self):
        object.__setattr__(self, "_allowed", frozenset(parse_allowed(e) for e in self.allow_hosts))

    def exempt(self, host: str, port: int) -> bool:
        """True if this URL host (and port) was allowed explicitly, or the guard is off."""
        if self.allow_private_network:
            return True
        host = normalize_host(host)
        return (host, None) in self._allowed or (host, port) in self._allowed

    def permits(self, host: str, port: int, sockaddr: tuple) -> bool:
        return self.exempt(host, port) or sockaddr_is_public(sockaddr)

    def addresses(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """(family, sockaddr) to connect to for host:port, all checked; raises AddressRefused, or
        socket.gaierror when the name does not resolve."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        found = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
        if not self.exempt(host, port):
            refused = [sa[0] for _, sa in found if not sockaddr_is_public(sa)]
            if refused or not found:
                raise AddressRefused(f"{host} resolves to {refused[0] if refused else 'nothing'}")
        return found
