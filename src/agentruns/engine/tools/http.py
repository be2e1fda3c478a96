"""HTTP tools: the worker sends the model's arguments to a URL and returns the answer's text."""

from __future__ import annotations

from typing import Any

import orjson

from agentruns.engine.models.base import ToolDefinition
from agentruns.engine.tools.base import ToolContext
from agentruns.engine.tools.net import open_public, read_text
from agentruns.engine.tools.secrets import ResolvedSecrets
from agentruns.engine.tools.specs import HttpToolSpec
from agentruns.errors import ToolError

# Methods whose arguments travel in the query string rather than a JSON body.
QUERY_METHODS = ("GET", "DELETE")


def _query_value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class HttpTool:
    """One `{"type": "http"}` spec, bound to the worker's HTTP client and the caller's secrets."""

    def __init__(
        self, spec: HttpToolSpec, context: ToolContext, secrets_allowed: tuple[str, ...] | None
    ) -> None:
        self.spec = spec
        self.context = context
        self.secrets_allowed = secrets_allowed
        self.definition = ToolDefinition(
            name=spec.name, description=spec.description, parameters=spec.parameters
        )
        self.idempotent = spec.is_idempotent
        self.timeout_s = spec.timeout_s

    async def call(self, arguments: dict[str, Any]) -> str:
        secrets = ResolvedSecrets(self.secrets_allowed)
        try:
            return await self._send(arguments, secrets)
        except ToolError as exc:
            # Error texts quote answers and URLs; a secret must not ride along into events.
            raise ToolError(secrets.redact(str(exc))) from None

    async def _send(self, arguments: dict[str, Any], secrets: ResolvedSecrets) -> str:
        spec = self.spec
        headers = {"Accept": "application/json, text/*;q=0.9", **secrets.resolve_map(spec.headers)}
        params: dict[str, str] | None = None
        content: bytes | None = None
        if spec.method in QUERY_METHODS:
            params = {key: _query_value(value) for key, value in arguments.items()}
        else:
            headers.setdefault("Content-Type", "application/json")
            content = orjson.dumps(arguments)
        async with open_public(
            self.context.http,
            spec.method,
            spec.url,
            allow_private=self.context.limits.allow_private,
            timeout_s=spec.timeout_s,
            headers=headers,
            params=params,
            content=content,
        ) as response:
            answer = await read_text(response, spec.url, self.context.limits.response_max_bytes)
        text = secrets.redact(answer.text, cut=answer.truncated)
        if answer.truncated:
            limit = self.context.limits.response_max_bytes
            text += f"\n[truncated: the answer is larger than {limit} bytes]"
        if answer.status_code >= 400:
            raise ToolError(f"{spec.method} {spec.url} answered HTTP {answer.status_code}: {text}")
        if 300 <= answer.status_code < 400:
            raise ToolError(
                f"{spec.method} {spec.url} answered HTTP {answer.status_code} (a redirect to "
                f"{answer.location}); http tools do not follow redirects"
            )
        return text
