"""HTTP requests of server-side tools: SSRF-guarded, address-pinned, size-bounded, text only.

The guard is `agentruns.netguard` (shared with webhooks). Its `send_pinned`
reads whole bodies; tools must stop reading at a size limit, so this module
streams the response from the same checked, pinned address.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from agentruns import __version__
from agentruns.errors import ToolError
from agentruns.netguard import HostNotFound, UnsafeURL, resolve_public

USER_AGENT = f"agentruns/{__version__} (+tool)"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
TEXT_SUFFIXES = ("+json", "+xml")


@dataclass(frozen=True, slots=True)
class TextResponse:
    status_code: int
    url: str
    content_type: str
    text: str
    truncated: bool
    location: str | None


def tool_http_client() -> httpx.AsyncClient:
    # No proxies from the environment: a proxy would defeat the address pinning.
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(30.0, connect=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"User-Agent": USER_AGENT},
    )


@contextlib.asynccontextmanager
async def open_public(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    allow_private: bool,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    content: bytes | None = None,
) -> AsyncIterator[httpx.Response]:
    """A streamed response from `url`, sent to an address the guard accepted."""
    try:
        target = await resolve_public(url, allow_private=allow_private)
    except UnsafeURL as exc:
        raise ToolError(f"refused to call {url}: {exc}") from exc
    except HostNotFound as exc:
        raise ToolError(str(exc)) from exc
    parsed = target.url.copy_merge_params(params) if params else target.url
    response: httpx.Response | None = None
    # Like netguard.send_pinned: the next checked address when one does not connect (a host
    # whose IPv6 address is unreachable from here, say).
    for ip in target.addresses[:3]:
        # Connect to the checked address; the server still sees its own name in Host and SNI.
        request = client.build_request(
            method,
            parsed.copy_with(host=str(ip)),
            headers={**(headers or {}), "Host": parsed.netloc.decode("ascii")},
            content=content,
            timeout=timeout_s,
            extensions={"sni_hostname": parsed.raw_host.decode("ascii")},
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
            break
        except httpx.ConnectError as exc:
            failure: httpx.HTTPError = exc
        except httpx.TimeoutException as exc:
            raise ToolError(f"{url} did not answer within {timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            failure = exc
            break
    if response is None:
        raise ToolError(f"cannot reach {url}: {type(failure).__name__}: {failure}") from failure
    try:
        yield response
    finally:
        await response.aclose()


def is_text(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return not kind or kind.startswith(TEXT_TYPES) or kind.endswith(TEXT_SUFFIXES)


async def read_text(response: httpx.Response, url: str, max_bytes: int) -> TextResponse:
    """The body as text, cut at `max_bytes`; ToolError if it is not text."""
    content_type = response.headers.get("content-type", "")
    if not is_text(content_type):
        raise ToolError(
            f"{url} answered {content_type.split(';', 1)[0]}, not text (HTTP "
            f"{response.status_code}); only text responses are passed to the model"
        )
    chunks: list[bytes] = []
    size = 0
    truncated = False
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                truncated = True
                break
    except httpx.HTTPError as exc:
        raise ToolError(f"reading the answer of {url} failed: {type(exc).__name__}: {exc}") from exc
    body = b"".join(chunks)[:max_bytes]
    if not content_type and b"\x00" in body[:1024]:
        raise ToolError(f"{url} answered binary data; only text is passed to the model")
    encoding = response.charset_encoding or "utf-8"
    try:
        text = body.decode(encoding, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    return TextResponse(
        status_code=response.status_code,
        url=url,
        content_type=content_type,
        text=text,
        truncated=truncated,
        location=response.headers.get("location"),
    )
