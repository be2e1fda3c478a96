"""The SSRF guard (agentruns.netguard): which URLs and addresses are refused, and why."""

from __future__ import annotations

import ipaddress

import pytest

from agentruns import netguard
from agentruns.netguard import HostNotFound, UnsafeURL, address_problem, check_public_url


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests do no I/O: names resolve from this table only."""
    answers = {
        "public.example": ["93.184.216.34"],
        "inside.example": ["10.0.0.7"],
        "mixed.example": ["93.184.216.34", "127.0.0.1"],
        "mapped.example": ["::ffff:169.254.169.254"],
        "localhost": ["127.0.0.1", "::1"],
    }

    async def lookup(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"no such host {host}")
        return answers[host]

    monkeypatch.setattr(netguard, "lookup_host", lookup)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT
        ("240.0.0.1", "private"),  # reserved, which Python counts as private
        # IPv4 hidden in IPv6 is judged as the IPv4 address it carries.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
    ],
)
def test_non_public_addresses_are_named(address: str, problem: str) -> None:
    found = address_problem(ipaddress.ip_address(address))
    assert found is not None and problem in found


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "https://10.0.0.5/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./",
        "http://localhost:8080/",
        "http://api.localhost/",
    ],
)
async def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        await check_public_url(url)
    await check_public_url(url, allow_private=True)  # the operator may allow them


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)"],
)
async def test_only_http_and_https(url: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(UnsafeURL, match="only http"):
            await check_public_url(url, allow_private=allow_private)


async def test_a_url_without_host_is_refused() -> None:
    with pytest.raises(UnsafeURL, match="no host"):
        await check_public_url("http:///path")


async def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    await check_public_url("https://public.example/hook")
    with pytest.raises(UnsafeURL, match=r"inside\.example resolves to 10\.0\.0\.7, a private"):
        await check_public_url("https://inside.example/hook")
    with pytest.raises(UnsafeURL, match="loopback"):
        await check_public_url("https://mixed.example/hook")
    with pytest.raises(UnsafeURL, match="metadata"):
        await check_public_url("https://mapped.example/hook")
    # A name that does not resolve is not a refusal at input time; it is at send time.
    await check_public_url("https://nowhere.example/hook")
    with pytest.raises(HostNotFound, match=r"nowhere\.example"):
        await check_public_url("https://nowhere.example/hook", require_resolution=True)
