"""URL validation and address classification against server-side request forgery.

A URL given by a client may only make us connect to a public address:

* `http`/`https` only; no userinfo (`user:pass@`), no whitespace, control characters or backslashes
  (parsers disagree about those), no percent-encoded or IDNA-invalid host names.
* Numeric host spellings are normalised the way browsers and `inet_aton` read them (WHATWG URL
  standard): `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1. A host whose last label
  is numeric must parse as IPv4, so there is no spelling that one parser reads as a name and
  another as an address.
* Every address the host resolves to is classified; one blocked address blocks the URL (a name
  that resolves to a public and a private address is exactly what rebinding attacks use).
  Blocked: unspecified, loopback, private, link-local, shared (CGNAT 100.64/10), multicast,
  reserved, site-local and anything else not globally routable; IPv6 forms that embed an IPv4
  address (mapped, compatible, translated, 6to4, Teredo, NAT64) are judged by the embedded address
  too. Cloud metadata addresses and names are blocked even when the operator allow-list covers them.
* `ssrf_allow_networks` (operator setting, empty by default) lets chosen internal networks through.

Resolution happens here, once per hop; the fetcher then connects to the checked address only
(`fetch.py`), so a second DNS answer cannot change where the connection goes. The resolver is a
parameter so tests can stub DNS and never send a query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

ALLOWED_SCHEMES = {"http": 80, "https": 443}

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "kubernetes.default",
        "kubernetes.default.svc",
    }
)
_LOCALHOST_NAMES = ("localhost", "localhost.localdomain")

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class UnsafeUrlError(Exception):
    """The URL must not be fetched; `code` is the stable problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Target:
    """A URL after validation: where to connect (`addresses`) and what to say (`host`, `path`)."""

    url: str  # normalised (IDNA host, numeric host in dotted form, no fragment)
    scheme: str
    host: str  # ASCII host name or the canonical address text
    port: int
    path: str  # path plus query, never empty
    literal: IPAddress | None  # the host was an address
    addresses: tuple[IPAddress, ...] = ()

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.literal, ipaddress.IPv6Address) else self.host
        return host if self.port == ALLOWED_SCHEMES[self.scheme] else f"{host}:{self.port}"


# -- addresses ----------------------------------------------------------------------------------


def _ipv4_alias(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address merely spells (mapped, translated, compatible): connecting
    to one is connecting to the other."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_TRANSLATED or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, translated, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    alias = _ipv4_alias(address)
    if alias is not None:
        found.append(alias)
    elif address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _special_use(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (CGNAT)"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if not address.is_global:
        return "not globally routable"
    return None


def block_reason(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why a connection to `address` is refused, or None when it is allowed.

    An IPv6 address that embeds an IPv4 address is refused if the embedded one is; one that is
    only another spelling of an IPv4 address (`::ffff:a.b.c.d`) is otherwise judged as that
    address, and the tunnelling forms (6to4, Teredo, NAT64) must also pass on their own."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    embedded = embedded_ipv4(address)
    candidates: list[IPAddress] = [address, *embedded]
    if any(candidate in METADATA_ADDRESSES for candidate in candidates):
        return "cloud metadata"
    # The allow-list vouches for each address it covers, not for the others the same address
    # carries (a Teredo address names a server and a client: allowing one must not admit the other).
    for candidate in embedded:
        if any(candidate in network for network in allow):
            continue
        reason = _special_use(candidate)
        if reason is not None:
            return f"{reason} (embedded IPv4)"
    if isinstance(address, ipaddress.IPv6Address) and _ipv4_alias(address) is not None:
        return None
    if any(candidate in network for candidate in candidates for network in allow):
        return None
    return _special_use(address)


# -- host names ---------------------------------------------------------------------------------


def _ipv4_number(part: str) -> int | None:
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if part == "":
        return 0
    try:
        return int(part, radix)
    except ValueError:
        return None


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """WHATWG IPv4 host parsing: None if the host is a name; UnsafeUrlError if it ends in a number
    but is no valid address (so no parser can read it as something else)."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not parts or not _NUMERIC_LABEL.match(parts[-1]):
        return None
    numbers = [_ipv4_number(part) if part else None for part in parts]
    if len(parts) > 4 or any(number is None for number in numbers):
        raise UnsafeUrlError("url_invalid", "The host looks numeric but is not a valid IPv4 address.")
    values = [number for number in numbers if number is not None]
    if any(value > 255 for value in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise UnsafeUrlError("url_invalid", "The host looks numeric but is not a valid IPv4 address.")
    result = values[-1]
    for index, value in enumerate(values[:-1]):
        result += value * 256 ** (3 - index)
    return ipaddress.IPv4Address(result)


def _split_netloc(netloc: str) -> tuple[str, str | None, bool]:
    """(host, port text or None, bracketed) from a netloc without userinfo."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UnsafeUrlError("url_invalid", "Unterminated IPv6 address in the URL.")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UnsafeUrlError("url_invalid", "Unexpected characters after the IPv6 address.")
        return host, (rest[1:] if rest else None), True
    host, colon, port = netloc.rpartition(":")
    if not colon:
        return netloc, None, False
    return host, port, False


def _normalise_host(raw_host: str, bracketed: bool) -> tuple[str, IPAddress | None]:
    if bracketed:
        if "%" in raw_host:
            raise UnsafeUrlError("url_invalid", "IPv6 zone identifiers are not allowed in URLs.")
        try:
            v6 = ipaddress.IPv6Address(raw_host)
        except ValueError as exc:
            raise UnsafeUrlError("url_invalid", "Invalid IPv6 address in the URL.") from exc
        return v6.compressed, v6
    if not raw_host:
        raise UnsafeUrlError("url_invalid", "The URL has no host.")
    if "%" in raw_host:
        raise UnsafeUrlError("url_invalid", "Percent-encoded host names are not allowed.")
    try:
        ascii_host = raw_host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError) as exc:
        raise UnsafeUrlError("url_invalid", "The host name is not a valid (IDNA) name.") from exc
    v4 = parse_ipv4_host(ascii_host)
    if v4 is not None:
        return str(v4), v4
    name = ascii_host[:-1] if ascii_host.endswith(".") else ascii_host
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise UnsafeUrlError("url_invalid", "The host name is not valid.")
    return name, None


def parse_url(url: str, *, max_length: int = 2048) -> Target:
    """Syntax checks and normalisation; no DNS. Raises UnsafeUrlError."""
    if not isinstance(url, str) or not url:
        raise UnsafeUrlError("url_invalid", "The URL is empty.")
    if len(url) > max_length:
        raise UnsafeUrlError("url_invalid", f"The URL is longer than {max_length} characters.")
    if _FORBIDDEN_CHARS.search(url):
        raise UnsafeUrlError("url_invalid", "The URL contains whitespace, control characters or '\\'.")
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError as exc:
        raise UnsafeUrlError("url_invalid", "The URL cannot be parsed.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeUrlError("url_scheme_not_allowed", "Only http and https URLs are accepted.")
    netloc = parts.netloc
    if "@" in netloc:
        raise UnsafeUrlError("url_credentials_not_allowed", "URLs with user information are not accepted.")
    raw_host, port_text, bracketed = _split_netloc(netloc)
    host, literal = _normalise_host(raw_host, bracketed)
    if port_text in (None, ""):
        port = ALLOWED_SCHEMES[scheme]
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise UnsafeUrlError("url_invalid", "The URL's port is not valid.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    shown_host = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    shown_port = "" if port == ALLOWED_SCHEMES[scheme] else f":{port}"
    normalised = f"{scheme}://{shown_host}{shown_port}{path}"
    return Target(url=normalised, scheme=scheme, host=host, port=port, path=path, literal=literal)


def _check_name(host: str) -> None:
    if host in METADATA_HOSTNAMES:
        raise UnsafeUrlError("url_host_blocked", "The host is a cloud metadata service.")
    if host in _LOCALHOST_NAMES or host.endswith(".localhost"):
        raise UnsafeUrlError("url_host_blocked", "The host is this machine (localhost).")


def check_url_syntax(url: str, *, allow: Sequence[IPNetwork] = (), max_length: int = 2048) -> Target:
    """Every check that needs no DNS: for webhook URLs at submission time (the notifier checks the
    resolved addresses at delivery time)."""
    target = parse_url(url, max_length=max_length)
    if target.literal is not None:
        reason = block_reason(target.literal, allow)
        if reason is not None:
            raise UnsafeUrlError("url_address_blocked", f"The URL points to a {reason} address.")
    else:
        _check_name(target.host)
    return target


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The operating system's resolver (getaddrinfo), addresses de-duplicated in order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        seen.setdefault(ipaddress.ip_address(text), None)
    return list(seen)


async def check_url(
    url: str,
    *,
    resolver: Resolver,
    allow: Sequence[IPNetwork] = (),
    dns_timeout: float = 5.0,
    max_length: int = 2048,
) -> Target:
    """Full check: syntax, names, and every resolved address. Returns the target with the
    addresses to connect to (in resolver order)."""
    target = check_url_syntax(url, allow=allow, max_length=max_length)
    if target.literal is not None:
        addresses: list[IPAddress] = [target.literal]
    else:
        try:
            addresses = await asyncio.wait_for(resolver(target.host, target.port), dns_timeout)
        except (OSError, UnicodeError, TimeoutError) as exc:
            raise UnsafeUrlError("url_unresolvable", "The URL's host name does not resolve.") from exc
        if not addresses:
            raise UnsafeUrlError("url_unresolvable", "The URL's host name does not resolve.")
        for address in addresses:
            reason = block_reason(address, allow)
            if reason is not None:
                raise UnsafeUrlError("url_address_blocked", f"The URL's host resolves to a {reason} address.")
    return Target(
        url=target.url,
        scheme=target.scheme,
        host=target.host,
        port=target.port,
        path=target.path,
        literal=target.literal,
        addresses=tuple(addresses),
    )
