"""Tool specs as agents and bundles store them, and their validation at save time.

    {"type": "function", "name", "description", "parameters"} | {"type": "function", "ref"}
    {"type": "builtin", "name"}
    {"type": "http", "name", "description", "parameters", "url", "method", "headers", ...}
    {"type": "mcp", "name", "transport", "command", "args", "env", "url", "headers", ...}

Specs are stored as given (secrets stay `${NAME}` references); the worker
parses them again with the models below when it builds a run's toolset.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentruns.engine.tools.arguments import check_schema
from agentruns.engine.tools.builtin import BUILTIN_TOOLS
from agentruns.engine.tools.secrets import is_allowed, secret_names
from agentruns.netguard import UnsafeURL, check_url_syntax

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
SERVER_SIDE_KINDS = ("builtin", "http", "mcp")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_TOOL_TIMEOUT_S = 3600.0


class ToolSpecError(ValueError):
    """A tool spec this server cannot run; `field` says where (`tools[2].url`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_url(value: str) -> str:
    try:
        check_url_syntax(value)
    except UnsafeURL as exc:
        raise ValueError(str(exc)) from exc
    return value


def _no_secret_in(value: str, what: str) -> str:
    if secret_names(value):
        raise ValueError(f"${{...}} secrets are only resolved in header and env values, not {what}")
    return value


class HttpToolSpec(_Spec):
    """A tool the worker runs by sending the model's arguments to a URL."""

    type: Literal["http"]
    name: str = Field(pattern=f"^{TOOL_NAME.pattern}$")
    description: str = Field("", max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str = Field(max_length=2000)
    method: str = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0, le=MAX_TOOL_TIMEOUT_S)
    # None: idempotent if the method is GET (HTTP says GET has no side effects).
    idempotent: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(_no_secret_in(value, "in the url"))

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in HTTP_METHODS:
            raise ValueError(f"must be one of {', '.join(HTTP_METHODS)}")
        return value.upper()

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value)
        return value

    @property
    def is_idempotent(self) -> bool:
        return self.idempotent if self.idempotent is not None else self.method == "GET"


class McpServerSpec(_Spec):
    """An MCP server whose tools become the agent's tools."""

    type: Literal["mcp"]
    name: str = Field(pattern=f"^{TOOL_NAME.pattern}$")
    transport: Literal["stdio", "http"]
    command: str | None = Field(None, min_length=1, max_length=1000)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = Field(None, max_length=2000)
    headers: dict[str, str] = Field(default_factory=dict)
    allowed_tools: list[str] | None = None
    # None: "<name>_". Tool names are prefixed so two servers cannot collide.
    prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{0,32}$")
    timeout_s: float = Field(60.0, gt=0, le=MAX_TOOL_TIMEOUT_S)
    # None: trust each tool's own annotations (readOnlyHint / idempotentHint).
    idempotent: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(_no_secret_in(value, "in the url"))

    @model_validator(mode="after")
    def _transport_fields(self) -> McpServerSpec:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio MCP server needs a command")
            if self.url is not None or self.headers:
                raise ValueError("url and headers are for transport 'http'")
            _no_secret_in(self.command, "in the command")
            for arg in self.args:
                _no_secret_in(arg, "in args")
        else:
            if not self.url:
                raise ValueError("an http MCP server needs a url")
            if self.command is not None or self.args or self.env:
                raise ValueError("command, args and env are for transport 'stdio'")
        return self

    @property
    def tool_prefix(self) -> str:
        return f"{self.name}_" if self.prefix is None else self.prefix


def parse_ref(ref: Any) -> tuple[str, str]:
    """`"namespace/name"` of a registered tool, or ValueError."""
    namespace, _, name = str(ref).partition("/")
    if (
        not isinstance(ref, str)
        or not NAMESPACE.fullmatch(namespace)
        or not TOOL_NAME.fullmatch(name)
    ):
        raise ValueError(f"ref must look like 'namespace/tool_name', not {ref!r}")
    return namespace, name


def parse_server_spec(spec: dict[str, Any]) -> HttpToolSpec | McpServerSpec:
    """The typed form of an http or mcp spec (already validated when it was saved)."""
    if spec.get("type") == "http":
        return HttpToolSpec.model_validate(spec)
    return McpServerSpec.model_validate(spec)


def _pydantic_problem(where: str, exc: ValidationError) -> ToolSpecError:
    error = exc.errors()[0]
    field = ".".join([where, *(str(part) for part in error["loc"])])
    message = str(error["msg"]).removeprefix("Value error, ")
    return ToolSpecError(field, message)


def _check_secrets(
    where: str, parsed: HttpToolSpec | McpServerSpec, secrets_allowed: tuple[str, ...] | None
) -> None:
    if secrets_allowed is None:
        return
    maps = {"headers": parsed.headers}
    if isinstance(parsed, McpServerSpec):
        maps["env"] = parsed.env
    for field, values in maps.items():
        for key, value in values.items():
            for name in secret_names(value):
                if not is_allowed(name, secrets_allowed):
                    raise ToolSpecError(
                        f"{where}.{field}.{key}",
                        f"the secret ${{{name}}} is not allowed on this server "
                        "(the operator lists usable names in AGENTRUNS_TOOL_SECRETS)",
                    )


def validate_tool_spec(
    spec: Any,
    where: str,
    *,
    server_side_only: bool = False,
    allow_stdio: bool = True,
    secrets_allowed: tuple[str, ...] | None = None,
) -> str:
    """Check one spec; returns its name. `secrets_allowed` None: any secret may be used."""
    if not isinstance(spec, dict):
        raise ToolSpecError(where, "a tool spec must be a JSON object")
    kind = spec.get("type")
    if server_side_only and kind not in SERVER_SIDE_KINDS:
        raise ToolSpecError(
            f"{where}.type",
            f"a bundle holds server-side tools only ({', '.join(SERVER_SIDE_KINDS)}), not {kind!r}",
        )
    if kind in ("http", "mcp"):
        try:
            parsed = parse_server_spec(spec)
        except ValidationError as exc:
            raise _pydantic_problem(where, exc) from exc
        if isinstance(parsed, McpServerSpec) and parsed.transport == "stdio" and not allow_stdio:
            raise ToolSpecError(
                f"{where}.transport",
                "stdio MCP servers run a command on the server and are disabled for API "
                "clients (the operator can set AGENTRUNS_MCP_ALLOW_STDIO, or list the server "
                "in the config file's default bundle)",
            )
        _check_secrets(where, parsed, secrets_allowed)
        return parsed.name
    name = spec.get("name")
    if kind == "function" and spec.get("ref") is not None:
        try:
            _namespace, name = parse_ref(spec["ref"])
        except ValueError as exc:
            raise ToolSpecError(f"{where}.ref", str(exc)) from exc
        extra = set(spec) - {"type", "ref"}
        if extra:
            raise ToolSpecError(where, f"a ref takes no other fields ({sorted(extra)})")
    if not isinstance(name, str) or not name:
        raise ToolSpecError(f"{where}.name", "a tool needs a name (a non-empty string)")
    if kind == "builtin":
        if name not in BUILTIN_TOOLS:
            known = ", ".join(sorted(BUILTIN_TOOLS))
            raise ToolSpecError(f"{where}.name", f"unknown builtin tool {name!r} (known: {known})")
    elif kind == "function":
        try:
            check_schema(spec.get("parameters") or {"type": "object"})
        except ValueError as exc:
            raise ToolSpecError(f"{where}.parameters", str(exc)) from exc
    else:
        raise ToolSpecError(f"{where}.type", f"unsupported tool type {kind!r}")
    return name


def validate_tool_specs(
    specs: list[Any],
    *,
    field: str = "tools",
    server_side_only: bool = False,
    allow_stdio: bool = True,
    secrets_allowed: tuple[str, ...] | None = None,
) -> None:
    """Raise ToolSpecError naming the first spec this server cannot run."""
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        where = f"{field}[{index}]"
        name = validate_tool_spec(
            spec,
            where,
            server_side_only=server_side_only,
            allow_stdio=allow_stdio,
            secrets_allowed=secrets_allowed,
        )
        if name in seen:
            raise ToolSpecError(f"{where}.name", f"duplicate tool name {name!r}")
        seen.add(name)


def destination_urls(specs: list[dict[str, Any]], field: str = "tools") -> list[tuple[str, str]]:
    """(field, url) of every URL the worker would call for these specs."""
    found = []
    for index, spec in enumerate(specs):
        url = spec.get("url") if spec.get("type") in ("http", "mcp") else None
        if isinstance(url, str):
            found.append((f"{field}[{index}].url", url))
    return found
