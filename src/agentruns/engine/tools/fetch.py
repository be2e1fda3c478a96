"""The `fetch_url` built-in: GET a public web page and give the model its text."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.base import ToolContext
from agentruns.engine.tools.net import open_public, read_text
from agentruns.errors import ToolError

MAX_REDIRECTS = 5
_SKIPPED_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article"}
)


class _TextExtractor(HTMLParser):
    """The visible text of an HTML page: what a model can use, at a fraction of the tokens."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    body = "\n".join(line for line in lines if line)
    title = " ".join(parser.title.split())
    return f"# {title}\n\n{body}" if title else body


class FetchUrl:
    definition = ToolDefinition(
        name="fetch_url",
        description=(
            "Fetch a public web page or text document by URL (GET) and return its text. "
            "HTML is reduced to its visible text; binary content is refused."
        ),
        parameters={
            "type": "object",
            "properties": {
                "url": {
                    "type": "string",
                    "format": "uri",
                    "description": "An http:// or https:// URL",
                }
            },
            "required": ["url"],
        },
    )
    idempotent = True  # a GET

    def __init__(self, context: ToolContext) -> None:
        self.context = context
        self.timeout_s = context.limits.fetch_timeout_s

    async def call(self, arguments: dict[str, Any]) -> str:
        url = str(arguments["url"])
        limits = self.context.limits
        for _hop in range(MAX_REDIRECTS + 1):
            async with open_public(
                self.context.http,
                "GET",
                url,
                allow_private=limits.allow_private,
                timeout_s=self.timeout_s,
                headers={"Accept": "text/html, text/plain, application/json, */*;q=0.5"},
            ) as response:
                if response.is_redirect and response.headers.get("location"):
                    # Each hop goes through the guard again: a redirect may point anywhere.
                    url = urljoin(url, response.headers["location"])
                    continue
                answer = await read_text(response, url, limits.response_max_bytes)
            if answer.status_code >= 400:
                raise ToolError(f"GET {url} answered HTTP {answer.status_code}")
            text = answer.text
            if "html" in answer.content_type.lower() or text.lstrip()[:15].lower().startswith(
                ("<!doctype html", "<html")
            ):
                text = html_to_text(text)
            if answer.truncated:
                text += f"\n[truncated: the page is larger than {limits.response_max_bytes} bytes]"
            return text
        raise ToolError(f"too many redirects (more than {MAX_REDIRECTS})")
