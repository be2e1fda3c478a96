"""HTTP tools and fetch_url against an in-memory transport: no network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from agentruns.engine.tools.base import ToolContext, ToolLimits
from agentruns.engine.tools.fetch import FetchUrl, html_to_text
from agentruns.engine.tools.http import HttpTool
from agentruns.engine.tools.specs import HttpToolSpec
from agentruns.errors import ToolError

Handler = Callable[[httpx.Request], httpx.Response]


def context(handler: Handler, **limits: Any) -> ToolContext:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ToolContext(http=client, limits=ToolLimits(**{"allow_private": True, **limits}))


def tool(
    handler: Handler,
    secrets: tuple[str, ...] | None = None,
    limits: dict[str, Any] | None = None,
    **spec: Any,
) -> HttpTool:
    parsed = HttpToolSpec.model_validate(
        {"type": "http", "name": "crm", "url": "http://127.0.0.1:9/find", **spec}
    )
    return HttpTool(parsed, context(handler, **(limits or {})), secrets)


async def test_post_sends_json_and_resolved_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", "tok-123")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=f"got {request.headers['authorization']}")

    crm = tool(handler, ("CRM_TOKEN",), headers={"Authorization": "Bearer ${CRM_TOKEN}"})
    assert await crm.call({"name": "Ada", "n": 2}) == "got Bearer [redacted]"
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/find"
    assert orjson.loads(request.content) == {"name": "Ada", "n": 2}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["host"] == "127.0.0.1:9"


async def test_get_sends_query_parameters() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    assert await tool(handler, method="GET").call({"q": "bread", "n": 2}) == '{"ok":true}'
    assert dict(seen[0].url.params) == {"q": "bread", "n": "2"} and seen[0].content == b""


@pytest.mark.parametrize(
    ("response", "mentions"),
    [
        (httpx.Response(503, text="try later"), "HTTP 503: try later"),
        (httpx.Response(302, headers={"location": "http://10.0.0.1/"}), "do not follow"),
        (
            httpx.Response(200, content=b"\x89PNG", headers={"content-type": "image/png"}),
            "not text",
        ),
    ],
)
async def test_bad_answers_are_tool_errors(response: httpx.Response, mentions: str) -> None:
    with pytest.raises(ToolError, match=mentions):
        await tool(lambda _request: response).call({})


async def test_secrets_in_errors_are_redacted_and_refused_ones_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_TOKEN", "tok-123")
    monkeypatch.setenv("OTHER", "other-456")

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"bad token {request.headers['x-key']}")

    with pytest.raises(ToolError) as caught:
        await tool(echo, ("CRM_TOKEN",), headers={"X-Key": "${CRM_TOKEN}"}).call({})
    assert "tok-123" not in str(caught.value) and "[redacted]" in str(caught.value)
    with pytest.raises(ToolError, match="not allowed"):
        await tool(echo, ("CRM_TOKEN",), headers={"X-Key": "${OTHER}"}).call({})


async def test_large_answers_are_cut() -> None:
    crm = tool(lambda _r: httpx.Response(200, text="x" * 5000), limits={"response_max_bytes": 100})
    output = await crm.call({})
    assert output.startswith("x" * 100) and "truncated" in output and len(output) < 200


async def test_private_addresses_are_refused_unless_allowed() -> None:
    def never(_request: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be sent")

    crm = tool(never, limits={"allow_private": False})
    with pytest.raises(ToolError, match="refused"):
        await crm.call({})
    fetch = FetchUrl(context(never, allow_private=False))
    for url in (
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/",
    ):
        with pytest.raises(ToolError, match="refused"):
            await fetch.call({"url": url})


async def test_fetch_url_follows_redirects_through_the_guard_and_reads_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(301, headers={"location": "/new"})
        if request.url.path == "/new":
            html = "<html><title>T</title><body><p>Hello</p><script>x()</script></body></html>"
            return httpx.Response(200, html=html)
        if request.url.path == "/away":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/"})
        return httpx.Response(404)

    fetch = FetchUrl(context(handler))
    assert await fetch.call({"url": "http://127.0.0.1:9/old"}) == "# T\n\nHello"
    with pytest.raises(ToolError, match="HTTP 404"):
        await fetch.call({"url": "http://127.0.0.1:9/missing"})
    # A public address (a literal, so no DNS) that redirects to the metadata endpoint.
    public = FetchUrl(context(handler, allow_private=False))
    with pytest.raises(ToolError, match=r"refused to call http://169\.254\.169\.254/"):
        await public.call({"url": "http://93.184.216.34/away"})


def test_html_to_text_keeps_visible_text_only() -> None:
    html = (
        "<!doctype html><html><head><title> A  page </title><style>b{}</style></head>"
        "<body><h1>Title</h1><div>one <b>two</b></div><script>evil()</script>"
        "<noscript>no</noscript><p>three &amp; four</p></body></html>"
    )
    assert html_to_text(html) == "# A page\n\nTitle\none two\nthree & four"
