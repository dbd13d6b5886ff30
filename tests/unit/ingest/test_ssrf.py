"""SSRF rules at the address-classification level: nothing here opens a connection or sends a DNS
query (names are answered by a stub)."""

from __future__ import annotations

import ipaddress

import pytest

from stt_common.ssrf import (
    IPAddress,
    UnsafeUrlError,
    block_reason,
    check_url,
    check_url_syntax,
    embedded_ipv4,
    parse_ipv4_host,
    parse_url,
)

ALLOW_LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.254", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),  # reserved (Python files 240/4 under is_private)
        ("255.255.255.255", "private"),
        ("192.0.2.10", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("0.1.2.3", "private"),  # "this network"
        ("fec0::1", "site-local"),
        ("2001:db8::1", "private"),  # documentation
        # IPv6 forms that carry an IPv4 address are judged by that address too.
        ("::ffff:127.0.0.1", "loopback (embedded IPv4)"),
        ("::ffff:10.0.0.1", "private (embedded IPv4)"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::127.0.0.1", "loopback (embedded IPv4)"),  # IPv4-compatible (deprecated)
        ("::ffff:0:127.0.0.1", "loopback (embedded IPv4)"),  # IPv4-translated
        ("64:ff9b::7f00:1", "loopback (embedded IPv4)"),  # NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ("2002:7f00:0001::1", "loopback (embedded IPv4)"),  # 6to4 of 127.0.0.1
        ("2002:c0a8:0101::1", "private (embedded IPv4)"),  # 6to4 of 192.168.1.1
    ],
)
def test_internal_addresses_are_blocked(address: str, reason: str) -> None:
    assert block_reason(ip(address)) == reason


def test_teredo_embeds_its_client_and_server() -> None:
    # Teredo server 65.54.227.120, client 127.0.0.1 (stored inverted: 0x80ffffe = ~127.0.0.1).
    teredo = ip("2001:0:4136:e378:8000:63bf:80ff:fffe")
    assert ipaddress.ip_address("127.0.0.1") in embedded_ipv4(teredo)
    assert block_reason(teredo) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert block_reason(ip(address)) is None


def test_allow_list_admits_chosen_networks_but_never_metadata() -> None:
    allow = [ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("169.254.0.0/16")]
    assert block_reason(ip("10.20.1.1"), allow) is None
    assert block_reason(ip("::ffff:10.20.1.1"), allow) is None
    assert block_reason(ip("10.21.0.1"), allow) == "private"
    assert block_reason(ip("169.254.169.254"), allow) == "cloud metadata"
    assert block_reason(ip("169.254.1.1"), allow) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7F.0.0.0x1", "127.0.0.1"),
        ("3232235777", "192.168.1.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("1.2.3.4.", "1.2.3.4"),
    ],
)
def test_numeric_hosts_are_read_like_browsers_and_inet_aton_read_them(host: str, expected: str) -> None:
    assert parse_ipv4_host(host) == ipaddress.IPv4Address(expected)


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.4.5", "0x1g.0.0.1", "4294967296", "09.0.0.1", "1..2"])
def test_numeric_looking_hosts_that_are_no_address_are_invalid(host: str) -> None:
    with pytest.raises(UnsafeUrlError) as caught:
        parse_ipv4_host(host)
    assert caught.value.code == "url_invalid"


def test_names_are_names() -> None:
    assert parse_ipv4_host("example.com") is None
    assert parse_ipv4_host("1.2.3.example") is None


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1/a.wav", "url_address_blocked"),
        ("http://127.0.0.1:8080/a.wav", "url_address_blocked"),
        ("http://[::1]/a.wav", "url_address_blocked"),
        ("http://[::ffff:127.0.0.1]/a.wav", "url_address_blocked"),
        ("http://[::ffff:7f00:1]/a.wav", "url_address_blocked"),
        ("http://2130706433/a.wav", "url_address_blocked"),
        ("http://0177.0.0.1/a.wav", "url_address_blocked"),
        ("http://0x7f.1/a.wav", "url_address_blocked"),
        ("http://127.1/a.wav", "url_address_blocked"),
        ("http://0.0.0.0/a.wav", "url_address_blocked"),
        ("http://10.0.0.5/a.wav", "url_address_blocked"),
        ("http://100.64.0.1/a.wav", "url_address_blocked"),
        ("http://169.254.169.254/latest/meta-data/", "url_address_blocked"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "url_address_blocked"),
        ("http://[fe80::1%25eth0]/", "url_invalid"),
        ("http://metadata.google.internal/computeMetadata/v1/", "url_host_blocked"),
        ("http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/", "url_host_blocked"),
        ("http://localhost/a.wav", "url_host_blocked"),
        ("http://foo.localhost/a.wav", "url_host_blocked"),
        ("file:///etc/passwd", "url_scheme_not_allowed"),
        ("gopher://127.0.0.1:6379/_INFO", "url_scheme_not_allowed"),
        ("ftp://example.com/a.wav", "url_scheme_not_allowed"),
        ("dict://example.com:11211/", "url_scheme_not_allowed"),
        ("//example.com/a.wav", "url_scheme_not_allowed"),
        ("http://user:pass@example.com/a.wav", "url_credentials_not_allowed"),
        ("http://example.com@127.0.0.1/a.wav", "url_credentials_not_allowed"),
        ("http://@example.com/a.wav", "url_credentials_not_allowed"),
        ("http://exa mple.com/a.wav", "url_invalid"),
        ("http://example.com\\@127.0.0.1/", "url_invalid"),
        ("http://example.com/\r\nHost: evil", "url_invalid"),
        ("http://%31%32%37.0.0.1/", "url_invalid"),
        ("http://256.1.1.1/", "url_invalid"),
        ("http:///a.wav", "url_invalid"),
        ("http://example.com:99999/", "url_invalid"),
        ("http://example.com:-1/", "url_invalid"),
        ("http://[::1/", "url_invalid"),
        ("http://ex_ample..com/", "url_invalid"),
        ("http://" + "a" * 2100 + ".com/", "url_invalid"),
    ],
)
def test_unsafe_urls_are_refused_without_dns(url: str, code: str) -> None:
    with pytest.raises(UnsafeUrlError) as caught:
        check_url_syntax(url)
    assert caught.value.code == code


def test_parse_normalises() -> None:
    target = parse_url("HTTPS://Example.COM.:443/a%20b.mp3?x=1#frag")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "example.com",
        443,
        "/a%20b.mp3?x=1",
    )
    assert target.url == "https://example.com/a%20b.mp3?x=1"
    assert parse_url("http://0x7f.1:81/").url == "http://127.0.0.1:81/"
    assert parse_url("http://[0:0::1]/").host_header == "[::1]"
    assert parse_url("http://bücher.example/x").host == "xn--bcher-kva.example"


class Stub:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise OSError("no such name")
        return [ipaddress.ip_address(a) for a in self.answers[host]]


async def test_every_resolved_address_is_checked() -> None:
    stub = Stub(
        {
            "public.test": ["93.184.216.34", "2606:2800:220:1::1"],
            "mixed.test": ["93.184.216.34", "10.0.0.7"],
            "rebind.test": ["127.0.0.1"],
            "mapped.test": ["::ffff:169.254.169.254"],
            "cgnat.test": ["100.64.12.1"],
            "empty.test": [],
        }
    )
    target = await check_url("https://public.test/a.mp3", resolver=stub)
    assert target.addresses == (ip("93.184.216.34"), ip("2606:2800:220:1::1"))
    for host in ("mixed.test", "rebind.test", "mapped.test", "cgnat.test"):
        with pytest.raises(UnsafeUrlError) as caught:
            await check_url(f"http://{host}/a.mp3", resolver=stub)
        assert caught.value.code == "url_address_blocked", host
    for host in ("empty.test", "unknown.test"):
        with pytest.raises(UnsafeUrlError) as caught:
            await check_url(f"http://{host}/a.mp3", resolver=stub)
        assert caught.value.code == "url_unresolvable"
    # Literal addresses and blocked names never reach the resolver.
    calls = len(stub.calls)
    for url in ("http://127.0.0.1/", "http://metadata.google.internal/", "http://[::1]/"):
        with pytest.raises(UnsafeUrlError):
            await check_url(url, resolver=stub)
    assert len(stub.calls) == calls


async def test_allow_list_applies_to_resolved_addresses() -> None:
    stub = Stub({"media.test": ["127.0.0.1"], "other.test": ["127.0.0.2"]})
    target = await check_url("http://media.test:8080/a.wav", resolver=stub, allow=ALLOW_LOOPBACK)
    assert target.addresses == (ip("127.0.0.1"),)
    assert target.host_header == "media.test:8080"
    with pytest.raises(UnsafeUrlError):
        await check_url("http://other.test/a.wav", resolver=stub, allow=ALLOW_LOOPBACK)
    with pytest.raises(UnsafeUrlError):
        await check_url("http://[::1]/a.wav", resolver=stub, allow=ALLOW_LOOPBACK)


async def test_a_slow_resolver_times_out_as_unresolvable() -> None:
    import asyncio

    async def slow(host: str, port: int) -> list[IPAddress]:
        await asyncio.sleep(5)
        return []

    with pytest.raises(UnsafeUrlError) as caught:
        await check_url("http://slow.test/", resolver=slow, dns_timeout=0.05)
    assert caught.value.code == "url_unresolvable"
