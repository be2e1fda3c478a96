"""The guard against server-side request forgery, for every URL the server calls on a user's behalf.

A URL is acceptable when it is http(s) and every address its host resolves to
is public: not loopback, private, link-local, shared (CGNAT), multicast,
reserved, or a cloud metadata endpoint; IPv4 addresses embedded in IPv6 ones
(IPv4-mapped, NAT64, 6to4) are judged as the IPv4 address they carry.

Checking a name and then letting the HTTP client resolve it again would let a
DNS answer change in between (DNS rebinding), so `send_pinned` connects to
the very address it checked, with the original `Host` header and TLS server
name, and never follows redirects.

    check_public_url(url, allow_private=False)     # at input time: UnsafeURL or None
    await send_pinned(client, "POST", url, ...)    # at send time: resolve, check, connect
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "HostNotFound",
    "UnsafeURL",
    "address_problem",
    "check_public_url",
    "check_url_syntax",
    "resolve_public",
    "send_pinned",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")

# Names that reach instance metadata on the big clouds without resolving to an
# obviously internal address from every vantage point.
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL is refused: wrong scheme, no host, or a non-public destination."""


class HostNotFound(OSError):
    """The URL's host name does not resolve (may be transient: not a refusal)."""


@dataclass(frozen=True, slots=True)
class PublicTarget:
    """A checked URL and the addresses its host resolved to (all of them acceptable)."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else `ip` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_problem(ip: IPAddress) -> str | None:
    """Why connecting to `ip` is refused ("a loopback address", ...), or None if it is public."""
    inner = _embedded_ipv4(ip)
    if inner in METADATA_ADDRESSES or ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for flag, name in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_unspecified", "an unspecified address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(inner, flag):
            return name
    # 100.64.0.0/10 (CGNAT) and other special ranges are neither private nor global.
    if not inner.is_global:
        return "not a public address"
    return None


def check_url_syntax(url: str) -> httpx.URL:
    """Parse `url` as the HTTP client will; refuse anything but http(s) with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeURL(f"{url!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UnsafeURL(f"{url!r}: only http:// and https:// URLs are allowed")
    if not parsed.host:
        raise UnsafeURL(f"{url!r} has no host")
    return parsed


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_hostname(parsed: httpx.URL) -> None:
    host = parsed.host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise UnsafeURL(f"{parsed.host} is a loopback name")
    if host in METADATA_HOSTNAMES:
        raise UnsafeURL(f"{parsed.host} is a cloud metadata host")


def _check_addresses(parsed: httpx.URL, addresses: list[IPAddress]) -> None:
    for ip in addresses:
        problem = address_problem(ip)
        if problem is None:
            continue
        if _literal_ip(parsed.host) is not None:
            raise UnsafeURL(f"{parsed.host} is {problem}")
        raise UnsafeURL(f"{parsed.host} resolves to {ip}, {problem}")


async def lookup_host(host: str, port: int) -> list[str]:
    """The addresses of `host`, as the system resolver gives them (tests replace this)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in infos]


async def _resolve(parsed: httpx.URL) -> list[IPAddress]:
    literal = _literal_ip(parsed.host)
    if literal is not None:
        return [literal]
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        resolved = await lookup_host(parsed.raw_host.decode("ascii"), port)
    except (OSError, UnicodeDecodeError) as exc:
        raise HostNotFound(f"cannot resolve {parsed.host}: {exc}") from exc
    found: list[IPAddress] = []
    for address in resolved:
        # Strip an IPv6 zone ("fe80::1%eth0"): the address alone decides.
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise HostNotFound(f"cannot resolve {parsed.host}: no addresses")
    return found


async def resolve_public(url: str, *, allow_private: bool = False) -> PublicTarget:
    """Parse, resolve and check `url`; raises `UnsafeURL` or `HostNotFound`.

    Every address of the host must be acceptable: a name with one public and
    one private record is refused, whichever the connection would have used.
    """
    parsed = check_url_syntax(url)
    if not allow_private:
        _check_hostname(parsed)
    addresses = await _resolve(parsed)
    if not allow_private:
        _check_addresses(parsed, addresses)
    return PublicTarget(parsed, tuple(addresses))


async def check_public_url(
    url: str, *, allow_private: bool = False, require_resolution: bool = False
) -> None:
    """Refuse (`UnsafeURL`) a URL that is not http(s) or reaches a non-public address.

    A name that does not resolve passes unless `require_resolution` (DNS may be
    down for a moment; the send-time check in `send_pinned` is the one that counts).
    """
    if allow_private and not require_resolution:
        check_url_syntax(url)  # no address is refused: no need to ask DNS
        return
    try:
        await resolve_public(url, allow_private=allow_private)
    except HostNotFound:
        if require_resolution:
            raise


def _pinned_request(
    client: httpx.AsyncClient,
    method: str,
    target: PublicTarget,
    ip: IPAddress,
    *,
    headers: dict[str, str],
    content: bytes | None,
    timeout: float | None,
) -> httpx.Request:
    url = target.url
    # The connection goes to `ip`; the server still sees its own name in Host and SNI.
    netloc = url.netloc.decode("ascii")
    extensions: dict[str, Any] = {"sni_hostname": url.raw_host.decode("ascii")}
    return client.build_request(
        method,
        url.copy_with(host=str(ip)),
        headers={**headers, "Host": netloc},
        content=content,
        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        extensions=extensions,
    )


async def send_pinned(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    allow_private: bool = False,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - httpx's per-phase timeout, as in httpx
    stream: bool = False,
) -> httpx.Response:
    """Resolve and check `url`, then send to an address that passed the check.

    Tries the host's addresses in order while connecting fails. Redirects are
    returned, never followed (a redirect could point anywhere). With `stream`,
    the body is left unread (read what you need, then `aclose()`). Raises
    `UnsafeURL`, `HostNotFound`, or httpx's errors. Use a client with
    `trust_env=False`: a proxy would defeat the pinning.
    """
    target = await resolve_public(url, allow_private=allow_private)
    last_error: httpx.ConnectError | None = None
    for ip in target.addresses[:3]:
        request = _pinned_request(
            client, method, target, ip, headers=headers or {}, content=content, timeout=timeout
        )
        try:
            return await client.send(request, follow_redirects=False, stream=stream)
        except httpx.ConnectError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error
