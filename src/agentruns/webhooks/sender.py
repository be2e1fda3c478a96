"""One HTTP attempt of a webhook, and what its outcome means for the delivery.

Success is any 2xx. Connection errors, timeouts, 408, 429 and 5xx are worth
retrying; any other answer (other 4xx, and 3xx: redirects are not followed)
ends the delivery as failed at once, as does a URL the SSRF guard refuses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from agentruns import __version__
from agentruns.netguard import HostNotFound, UnsafeURL, send_pinned
from agentruns.webhooks.retry import parse_retry_after

USER_AGENT = f"agentruns-webhooks/{__version__}"
# Enough of an error body to say what went wrong, not enough to fill the database.
_BODY_EXCERPT_BYTES = 300
RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivered: bool
    retryable: bool
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


def webhook_client(*, max_connections: int = 100) -> httpx.AsyncClient:
    """The HTTP client of a dispatcher: no proxies from the environment (they would
    connect by name, bypassing the pinned address) and no redirects."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
        headers={"user-agent": USER_AGENT},
    )


async def _excerpt(response: httpx.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _BODY_EXCERPT_BYTES:
            break
    text = b"".join(chunks)[:_BODY_EXCERPT_BYTES].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


async def _classify(response: httpx.Response) -> AttemptResult:
    code = response.status_code
    if 200 <= code < 300:
        return AttemptResult(delivered=True, retryable=False, status_code=code)
    reason = f"HTTP {code}{await _excerpt(response)}"
    if 300 <= code < 400:
        location = response.headers.get("location", "nowhere")
        return AttemptResult(
            delivered=False,
            retryable=False,
            status_code=code,
            error=f"HTTP {code}: redirects are not followed (to {location})",
        )
    if code >= 500 or code in RETRYABLE_STATUS:
        retry_after = None
        if code in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        return AttemptResult(False, True, code, reason, retry_after)
    return AttemptResult(False, False, code, reason)


async def post_webhook(
    http: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    allow_private: bool,
) -> AttemptResult:
    """POST `body` to `url` once, within `timeout_s` in all (DNS, connect, send, answer)."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await send_pinned(
                http,
                "POST",
                url,
                allow_private=allow_private,
                headers={"content-type": "application/json", **headers},
                content=body,
                timeout=timeout_s,
                stream=True,
            )
            try:
                return await _classify(response)
            finally:
                await response.aclose()
    except UnsafeURL as exc:
        return AttemptResult(False, False, error=f"refused by the SSRF guard: {exc}")
    except HostNotFound as exc:
        return AttemptResult(False, True, error=str(exc))
    except (TimeoutError, httpx.TimeoutException):
        return AttemptResult(False, True, error=f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        return AttemptResult(False, True, error=f"connection failed: {detail}")
